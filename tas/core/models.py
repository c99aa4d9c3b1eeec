"""Architecture registry. Each builder gets the model spec, the sample shape and the output width."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from tas.core.torchvision_models import Weights, torchvision_models
from tas.core.torchvision_models import build as torchvision_build
from tas.core.torchvision_models import head_path as torchvision_head


class NetworkSpec(Protocol):
    """What an arch builder reads: the spec's `model` section (`tas.core.spec.ModelSpec` has these
    fields; a Protocol rather than that class, because the spec imports this registry to check arch
    names against it)."""

    @property
    def arch(self) -> str: ...

    @property
    def hidden(self) -> list[int]: ...

    @property
    def activation(self) -> str: ...

    @property
    def dropout(self) -> float: ...

    @property
    def channels(self) -> list[int]: ...

    @property
    def pretrained(self) -> bool: ...


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}


def _mlp(spec: NetworkSpec, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in spec.hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[spec.activation]()]
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def _linear(spec: NetworkSpec, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), out_dim))


def _cnn(spec: NetworkSpec, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    """Conv blocks (conv-act-pool) while the image is big enough to halve, then a linear head."""
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for ch in spec.channels:
        layers += [nn.Conv2d(c, ch, kernel_size=3, padding=1), ACTIVATIONS[spec.activation]()]
        if min(h, w) >= 4:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = ch
    layers += [nn.Flatten()]
    if spec.dropout > 0:
        layers.append(nn.Dropout(spec.dropout))
    layers.append(nn.Linear(c * h * w, out_dim))
    return nn.Sequential(*layers)


def last_child(model: nn.Module) -> str:
    """The head of an `nn.Sequential` (mlp, linear, cnn): its last child, e.g. "4"."""
    names = [name for name, _ in model.named_children()]
    if not names:
        raise ValueError(f"{type(model).__name__} has no child modules to call its head")
    return names[-1]


# --- torchvision's image models ------------------------------------------------------------------
# Every classification model of torchvision, by its builder's name, from torchvision's own list
# (`tas.core.torchvision_models`). torchvision is imported only when one of those names is looked up:
# the API imports this registry to check specs, and "mlp" must not cost every process torchvision.


#: The ModelSpec fields that shape a network; each arch's `options` says which of them it reads.
NETWORK_OPTIONS = ("hidden", "activation", "dropout", "channels")


@dataclass(frozen=True)
class Arch:
    #: (the model spec, the sample shape, the output width) → a freshly initialised model.
    build: Callable[[NetworkSpec, tuple[int, ...], int], nn.Module]
    #: "image" archs need a C×H×W sample; "any" take whatever shape and flatten it.
    needs: str = "any"
    #: Whether torchvision publishes ImageNet weights for it (`model.pretrained`).
    pretrained: bool = False
    #: The name of the head module in a built model (what transfer learning replaces and what
    #: `freeze: "backbone"` leaves trainable): "fc", "classifier.1", a Sequential's last child.
    head: Callable[[nn.Module], str] = last_child
    #: torchvision's name for it (its builder's), for torchvision's models; None for tas's own.
    torchvision: str | None = None
    #: The ModelSpec fields its network is built from (of NETWORK_OPTIONS): a model card keeps
    #: these and drops the other network options (no `hidden` for a cnn). None: keeps them all.
    options: tuple[str, ...] | None = None

    @property
    def weights(self) -> tuple[Weights, ...]:
        """torchvision's weights that fit it, its DEFAULT first; () for tas's own archs."""
        if self.torchvision is None:
            return ()
        return torchvision_models()[self.torchvision].weights

    @property
    def weight_urls(self) -> tuple[str, ...]:
        return tuple(w.url for w in self.weights)

    @property
    def weight_files(self) -> tuple[str, ...]:
        """The files looked for in TAS_WEIGHTS_DIR (torchvision's names), the default first."""
        return tuple(w.file for w in self.weights)


def _torchvision_arch(name: str) -> Arch:
    return Arch(
        functools.partial(torchvision_build, name),
        needs="image",
        pretrained=True,
        head=torchvision_head,
        torchvision=name,
        options=("dropout",),
    )


class ArchRegistry(Mapping[str, Arch]):
    """tas's own archs, then torchvision's, added on the first lookup of a name tas lacks."""

    def __init__(self, own: dict[str, Arch]) -> None:
        self._own = own
        self._all: dict[str, Arch] | None = None

    def _full(self) -> dict[str, Arch]:
        if self._all is None:
            tv = {n: _torchvision_arch(n) for n in torchvision_models()}
            self._all = {**tv, **self._own}
        return self._all

    def __getitem__(self, name: str) -> Arch:
        own = self._own.get(name)
        return own if own is not None else self._full()[name]

    def __contains__(self, name: object) -> bool:
        return name in self._own or name in self._full()

    def __iter__(self) -> Iterator[str]:
        return iter(self._full())

    def __len__(self) -> int:
        return len(self._full())


ARCHS = ArchRegistry(
    {
        "mlp": Arch(_mlp, options=("hidden", "activation", "dropout")),
        "linear": Arch(_linear, options=()),
        "cnn": Arch(_cnn, needs="image", options=("channels", "activation", "dropout")),
    }
)


def build_model(spec: NetworkSpec, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    """A freshly initialised model (never pretrained weights: `tas.core.transfer.load_pretrained` does
    that, so rebuilding a trained model from its card reads nothing but its own weights)."""
    return ARCHS[spec.arch].build(spec, tuple(input_shape), out_dim)


class _EmptyOnMeta(TorchFunctionMode):
    """`torch.empty` (what layers allocate their weights with) on the meta device, the rest of
    torch as usual: for models that compute their layout with tensors (RegNet's widths), which a
    whole-meta build cannot do (`.tolist()` of a meta tensor has no data)."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func is torch.empty:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def build_on_meta(spec: NetworkSpec, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    """The model on the meta device: its structure and shapes, no memory and no weights, so a spec
    check costs milliseconds even for a model of hundreds of millions of parameters."""
    try:
        with torch.device("meta"):
            return build_model(spec, input_shape, out_dim)
    except NotImplementedError:
        with _EmptyOnMeta():
            model = build_model(spec, input_shape, out_dim)
        return model.to("meta")  # the few small buffers made with zeros/ones


def input_problems(spec: NetworkSpec, input_shape: tuple[int, ...]) -> list[str]:
    """Why a torchvision model cannot take samples of `input_shape` ([] when it can, and for tas's
    own archs, which size themselves to the data). One forward of two samples on the meta device
    (shapes only, milliseconds) finds what the architecture itself refuses: ViT's fixed size, a
    stack of strides that shrinks a small image to nothing."""
    arch = ARCHS[spec.arch]
    if arch.torchvision is None or len(input_shape) != 3:
        return []
    try:
        model = build_on_meta(spec, tuple(input_shape), 2)
        model.eval()
        with torch.device("meta"), torch.no_grad():
            model(torch.empty(2, *input_shape))
    except Exception as exc:
        w = arch.weights[0]
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [
            f"arch {spec.arch!r} cannot take samples of shape {list(input_shape)} ({reason});"
            f" torchvision's weights for it were trained on {w.crop_size}×{w.crop_size} images"
            f" and take at least {w.min_size[0]}×{w.min_size[1]}: upload the images resized"
            f" (POST /datasets with size={w.crop_size}) or pick a smaller-input arch (resnet18,"
            " mobilenet_v2, cnn)"
        ]
    return []


def head_name(spec: NetworkSpec, model: nn.Module) -> str:
    """The name of `model`'s head module, as its arch declares it."""
    return ARCHS[spec.arch].head(model)
