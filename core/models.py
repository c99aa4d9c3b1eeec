"""Architecture registry. Each builder gets the model spec, the sample shape and the output width."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}


def _mlp(spec: Any, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in spec.hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[spec.activation]()]
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def _linear(spec: Any, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), out_dim))


def _cnn(spec: Any, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
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
# torchvision is imported only when one of these is built: the API imports this registry to check
# specs, and importing torchvision there would cost every process a second for nothing.

_TORCHVISION_WEIGHTS = "https://download.pytorch.org/models/"


def _input_conv(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
    """`conv` taking `channels` input channels instead of 3 (same kernel, stride, padding)."""
    if channels == conv.in_channels:
        return conv
    return nn.Conv2d(
        channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        bias=conv.bias is not None,
    )


def _resnet18(spec: Any, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    """torchvision's resnet18 for C×H×W samples: the first conv takes C channels, `fc` has `out_dim`
    outputs (behind a dropout when `model.dropout` > 0). Adaptive pooling takes any H×W (8×8 too)."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=out_dim)
    model.conv1 = _input_conv(model.conv1, input_shape[0])
    if spec.dropout > 0:
        model.fc = nn.Sequential(nn.Dropout(spec.dropout), model.fc)
    return model


def _resnet_head(model: nn.Module) -> str:
    return "fc.1" if isinstance(model.fc, nn.Sequential) else "fc"


def _mobilenet_v2(spec: Any, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    """torchvision's mobilenet_v2: the first conv takes C channels, `classifier.1` has `out_dim`
    outputs; `model.dropout` is the classifier's dropout (torchvision's default is 0.2)."""
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(num_classes=out_dim, dropout=spec.dropout)
    stem = model.features[0]
    stem[0] = _input_conv(stem[0], input_shape[0])
    return model


#: The ModelSpec fields that shape a network; each arch's `options` says which of them it reads.
NETWORK_OPTIONS = ("hidden", "activation", "dropout", "channels")


@dataclass(frozen=True)
class Arch:
    build: Callable[[Any, tuple[int, ...], int], nn.Module]
    #: "image" archs need a C×H×W sample; "any" take whatever shape and flatten it.
    needs: str = "any"
    #: Whether torchvision publishes ImageNet weights for it (`model.pretrained`).
    pretrained: bool = False
    #: The name of the head module in a built model (what transfer learning replaces and what
    #: `freeze: "backbone"` leaves trainable): "fc", "classifier.1", a Sequential's last child.
    head: Callable[[nn.Module], str] = last_child
    #: torchvision's download addresses of the pretrained weights, the preferred first; the files
    #: are looked for in TAS_WEIGHTS_DIR under the address's file name (`weight_files`).
    weight_urls: tuple[str, ...] = ()
    #: The ModelSpec fields its network is built from (of NETWORK_OPTIONS): a model card keeps
    #: these and drops the other network options (no `hidden` for a cnn). None: keeps them all.
    options: tuple[str, ...] | None = None

    @property
    def weight_files(self) -> tuple[str, ...]:
        return tuple(url.rsplit("/", 1)[-1] for url in self.weight_urls)


ARCHS: dict[str, Arch] = {
    "mlp": Arch(_mlp, options=("hidden", "activation", "dropout")),
    "linear": Arch(_linear, options=()),
    "cnn": Arch(_cnn, needs="image", options=("channels", "activation", "dropout")),
    "resnet18": Arch(
        _resnet18,
        needs="image",
        pretrained=True,
        head=_resnet_head,
        # ResNet18_Weights.IMAGENET1K_V1 (the only one torchvision has)
        weight_urls=(_TORCHVISION_WEIGHTS + "resnet18-f37072fd.pth",),
        options=("dropout",),
    ),
    "mobilenet_v2": Arch(
        _mobilenet_v2,
        needs="image",
        pretrained=True,
        head=lambda model: "classifier.1",
        # MobileNet_V2_Weights.IMAGENET1K_V1, then IMAGENET1K_V2 (torchvision's DEFAULT)
        weight_urls=(
            _TORCHVISION_WEIGHTS + "mobilenet_v2-b0353104.pth",
            _TORCHVISION_WEIGHTS + "mobilenet_v2-7ebf99e0.pth",
        ),
        options=("dropout",),
    ),
}


def build_model(spec: Any, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    """A freshly initialised model (never pretrained weights: `core.transfer.load_pretrained` does
    that, so rebuilding a trained model from its card reads nothing but its own weights)."""
    return ARCHS[spec.arch].build(spec, tuple(input_shape), out_dim)


def head_name(spec: Any, model: nn.Module) -> str:
    """The name of `model`'s head module, as its arch declares it."""
    return ARCHS[spec.arch].head(model)
