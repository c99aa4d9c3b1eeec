"""torchvision's image classification models by name, described by torchvision's own API.

The list of names is `torchvision.models.list_models(module=torchvision.models)` (the classification
builders: resnet18 … resnet152, mobilenet_v2/v3, efficientnet_*, convnext_*, vit_*, swin_*, …); each
model's weights enum (`get_model_weights(name)`) gives its ImageNet weights: the download address,
the file name (with torchvision's sha256 prefix in it), the transforms the weights were trained
with (resize and crop size, mean and std) and the smallest input they take. Nothing is written by
hand per model: a new torchvision release brings its new models with it.

Building one adapts it generically to a job's data:
- the head (the last Linear, or a 1×1 Conv2d as in SqueezeNet, under `fc`, `classifier`, `heads`
  or `head`) gets the job's number of outputs (torchvision's `num_classes`);
- the first conv that takes 3 channels takes the data's C instead (grey digits, 4-band arrays);
- `model.dropout` is the classifier's dropout: its Dropout layers get that probability, and a
  classifier without one gets one in front of the head when it is above 0;
- auxiliary classifiers (GoogLeNet, Inception v3) are left out: the training loop takes one output;
- models built for one input size (ViT) are built for their weights' size when pretrained.

torchvision is imported on first use only: the API imports the arch registry to check every spec,
and an import of torchvision costs each process seconds when no job asks for one of these."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

#: Where a torchvision classifier keeps its head, in the order they are looked for.
HEAD_CONTAINERS = ("fc", "classifier", "heads", "head")


class TorchvisionOptions(Protocol):
    """The model spec's fields a torchvision model is built from (`tas.core.spec.ModelSpec` has
    them; a Protocol, because the spec imports the arch registry built on this module)."""

    @property
    def pretrained(self) -> bool: ...

    @property
    def dropout(self) -> float: ...


@dataclass(frozen=True)
class Weights:
    """One entry of a torchvision weights enum, as tas needs it."""

    name: str  # e.g. "ResNet18_Weights.IMAGENET1K_V1"
    url: str
    crop_size: int
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    min_size: tuple[int, int]
    num_classes: int

    @property
    def file(self) -> str:
        """torchvision's file name: the address's last part, e.g. "resnet18-f37072fd.pth"."""
        return self.url.rsplit("/", 1)[-1]

    def transforms(self) -> dict[str, Any]:
        """The transforms the weights were trained with (the card records them)."""
        return {
            "weights": self.name,
            "resize_size": self.resize_size,
            "crop_size": self.crop_size,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "min_size": list(self.min_size),
        }


@dataclass(frozen=True)
class TorchvisionModel:
    name: str
    #: torchvision's DEFAULT weights first, then the other entries that fit the same built model
    #: (same input size and normalisation), whose files are accepted too when placed by hand.
    weights: tuple[Weights, ...]

    @property
    def default(self) -> Weights:
        return self.weights[0]


def _weights(entry: Any) -> Weights:
    t = entry.transforms()
    return Weights(
        name=f"{type(entry).__name__}.{entry.name}",
        url=entry.url,
        crop_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        mean=tuple(float(m) for m in t.mean),
        std=tuple(float(s) for s in t.std),
        interpolation=str(t.interpolation.value),
        min_size=(int(entry.meta["min_size"][0]), int(entry.meta["min_size"][1])),
        num_classes=len(entry.meta.get("categories") or []),
    )


@functools.cache
def torchvision_models() -> dict[str, TorchvisionModel]:
    """Every classification model torchvision has, by builder name (imports torchvision)."""
    import torchvision.models as tvm

    out: dict[str, TorchvisionModel] = {}
    for name in tvm.list_models(module=tvm):
        enum = tvm.get_model_weights(name)
        default = _weights(enum.DEFAULT)
        others = [_weights(w) for w in enum if w is not enum.DEFAULT]
        fitting = [
            w
            for w in others
            if (w.min_size, w.mean, w.std, w.num_classes)
            == (default.min_size, default.mean, default.std, default.num_classes)
        ]
        out[name] = TorchvisionModel(name, (default, *fitting))
    return out


# --- building ------------------------------------------------------------------------------------


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def head_path(model: nn.Module) -> str:
    """The head of a torchvision classifier: the last Linear (or Conv2d, SqueezeNet's 1×1 conv)
    under its `fc`, `classifier`, `heads` or `head` module."""
    for container in HEAD_CONTAINERS:
        if not hasattr(model, container):
            continue
        found: list[str] = [
            name
            for name, m in model.get_submodule(container).named_modules(prefix=container)
            if isinstance(m, nn.Linear | nn.Conv2d)
        ]
        if found:
            return found[-1]
    raise ValueError(
        f"{type(model).__name__} has no Linear head under any of {', '.join(HEAD_CONTAINERS)}"
    )


def input_conv_path(model: nn.Module) -> str | None:
    """The first Conv2d that takes the image's 3 channels (the stem), in registration order, which
    is the order torchvision's models run their stem in."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.in_channels == 3:
            return str(name)
    return None


def input_conv(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
    """`conv` taking `channels` input channels instead of 3 (same kernel, stride, padding)."""
    if channels == conv.in_channels:
        return conv
    return nn.Conv2d(
        channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )


def build(
    name: str, spec: TorchvisionOptions, input_shape: tuple[int, ...], out_dim: int
) -> nn.Module:
    """torchvision's `name` for C×H×W samples and `out_dim` outputs, freshly initialised (the
    pretrained weights are loaded by `tas.core.transfer`, from TAS_WEIGHTS_DIR)."""
    import torchvision.models as tvm

    builder = tvm.get_model_builder(name)
    kwargs: dict[str, Any] = {"num_classes": out_dim}
    with warnings.catch_warnings():  # GoogLeNet warns that its init default will change
        warnings.simplefilter("ignore", FutureWarning)
        model = builder(**kwargs)
    rebuild = False
    if getattr(model, "aux_logits", False):  # GoogLeNet, Inception v3: one output to train on
        kwargs.update(aux_logits=False, init_weights=True)
        rebuild = True
    size = getattr(model, "image_size", None)
    wanted = torchvision_models()[name].default.min_size[0]
    if spec.pretrained and isinstance(size, int) and size != wanted:
        kwargs["image_size"] = wanted  # ViT's position embeddings are sized for the weights' input
        rebuild = True
    if rebuild:
        model = builder(**kwargs)
    if hasattr(model, "transform_input"):
        # With ImageNet weights torchvision re-normalises RGB input to what Google's weights expect.
        model.transform_input = bool(spec.pretrained) and input_shape[0] == 3
    stem = input_conv_path(model)
    if stem is not None:
        conv = model.get_submodule(stem)
        assert isinstance(conv, nn.Conv2d)
        _set(model, stem, input_conv(conv, input_shape[0]))
    _set_dropout(model, spec.dropout)
    assert isinstance(model, nn.Module)  # torchvision's builders are untyped
    return model


def _set_dropout(model: nn.Module, p: float) -> None:
    """The classifier's dropout: Dropout layers in the head's container or right on the model
    (GoogLeNet and Inception keep theirs there) get `p`; with none, one goes in front of the head."""
    head = head_path(model)
    container = model.get_submodule(head.split(".", 1)[0])
    drops = [m for m in container.modules() if isinstance(m, nn.Dropout)]
    drops += [m for m in model.children() if isinstance(m, nn.Dropout)]
    for d in drops:
        d.p = p
    if not drops and p > 0:
        _set(model, head, nn.Sequential(nn.Dropout(p), model.get_submodule(head)))
