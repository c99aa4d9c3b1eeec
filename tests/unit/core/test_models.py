"""The arch registry: torchvision's resnet18 / mobilenet_v2 for any C×H×W input, and every arch's head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.models import ARCHS, build_model, head_name
from core.spec import ModelSpec

IMAGE_ARCHS = ["resnet18", "mobilenet_v2"]


def spec(arch: str, **kw: object) -> ModelSpec:
    return ModelSpec.model_validate({"arch": arch, **kw})


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_torchvision_archs_build_and_run_on_small_images(
    arch: str, shape: tuple[int, int, int]
) -> None:
    """8×8 grey digits go through resnet18's stride-32 stack too: adaptive pooling takes 1×1 maps."""
    torch.manual_seed(0)
    model = build_model(spec(arch), shape, 7)
    x = torch.randn(4, *shape)
    model.train()
    out = model(x)
    assert out.shape == (4, 7)
    out.sum().backward()  # trains: every parameter gets a gradient
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, 7)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == shape[0]


@pytest.mark.parametrize(
    ("arch", "kw", "head"),
    [
        ("mlp", {"hidden": [16, 8]}, "5"),
        ("mlp", {"hidden": [16], "dropout": 0.5}, "4"),
        ("linear", {}, "1"),
        ("cnn", {"channels": [4, 8]}, "7"),
        ("resnet18", {}, "fc"),
        ("resnet18", {"dropout": 0.3}, "fc.1"),
        ("mobilenet_v2", {}, "classifier.1"),
    ],
)
def test_every_arch_names_its_head(arch: str, kw: dict[str, object], head: str) -> None:
    s = spec(arch, **kw)
    shape = (1, 8, 8)
    with torch.device("meta"):  # structure only
        model = build_model(s, shape, 5)
    assert head_name(s, model) == head
    module = model.get_submodule(head)
    assert isinstance(module, nn.Linear)
    assert module.out_features == 5


def test_mobilenet_dropout_follows_the_spec() -> None:
    model = build_model(spec("mobilenet_v2", dropout=0.4), (3, 16, 16), 3)
    drop = model.get_submodule("classifier.0")
    assert isinstance(drop, nn.Dropout)
    assert drop.p == 0.4


def test_weight_file_names_are_torchvisions() -> None:
    from torchvision.models import MobileNet_V2_Weights, ResNet18_Weights

    assert ARCHS["resnet18"].weight_urls == (ResNet18_Weights.IMAGENET1K_V1.url,)
    assert ARCHS["resnet18"].weight_files == ("resnet18-f37072fd.pth",)
    assert ARCHS["mobilenet_v2"].weight_urls == (
        MobileNet_V2_Weights.IMAGENET1K_V1.url,
        MobileNet_V2_Weights.IMAGENET1K_V2.url,
    )
    assert ARCHS["mobilenet_v2"].weight_files[0] == "mobilenet_v2-b0353104.pth"
    assert {n for n, a in ARCHS.items() if a.pretrained} == set(IMAGE_ARCHS)
    assert all(bool(a.weight_urls) == a.pretrained for a in ARCHS.values())


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_image_archs_have_the_state_layout_of_torchvision(arch: str) -> None:
    """Same names and shapes as torchvision's own model (apart from the first conv's channels and the
    head), so torchvision's weight files load by name."""
    import torchvision

    with torch.device("meta"):
        ours = build_model(spec(arch), (3, 32, 32), 1000).state_dict()
        theirs = getattr(torchvision.models, arch)().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
