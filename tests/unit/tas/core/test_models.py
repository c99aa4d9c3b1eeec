"""The arch registry: torchvision's classification models for any C×H×W input, and every arch's head."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from tas.core.models import ARCHS, build_model, build_on_meta, head_name, input_problems
from tas.core.spec import ModelSpec

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


def test_the_registry_is_torchvisions_list_with_its_weights_enums() -> None:
    """Every torchvision classification builder is an arch, each with its weights enum's DEFAULT
    first (address, file name, transforms): nothing is written by hand per model."""
    import torchvision.models as tvm
    from torchvision.models import MobileNet_V2_Weights, ResNet18_Weights

    names = set(tvm.list_models(module=tvm))
    assert {"resnet50", "efficientnet_b0", "convnext_tiny", "vit_b_16"} <= names
    assert set(ARCHS) == names | {"mlp", "linear", "cnn"}
    assert {n for n, a in ARCHS.items() if a.pretrained} == names
    assert all(bool(a.weight_urls) == a.pretrained for a in ARCHS.values())
    for name in names:
        assert ARCHS[name].weight_urls[0] == tvm.get_model_weights(name).DEFAULT.url
    assert ARCHS["resnet18"].weight_urls == (ResNet18_Weights.IMAGENET1K_V1.url,)
    assert ARCHS["resnet18"].weight_files == ("resnet18-f37072fd.pth",)
    # DEFAULT (V2) first; V1's file, the same model, is accepted too
    assert ARCHS["mobilenet_v2"].weight_urls == (
        MobileNet_V2_Weights.IMAGENET1K_V2.url,
        MobileNet_V2_Weights.IMAGENET1K_V1.url,
    )
    vit = ARCHS["vit_b_16"].weights
    assert [w.name for w in vit] == [
        "ViT_B_16_Weights.IMAGENET1K_V1",
        "ViT_B_16_Weights.IMAGENET1K_SWAG_LINEAR_V1",  # not SWAG_E2E: 384×384, another model
    ]
    assert vit[0].transforms() == {
        "weights": "ViT_B_16_Weights.IMAGENET1K_V1",
        "resize_size": 256,
        "crop_size": 224,
        "interpolation": "bilinear",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "min_size": [224, 224],
    }


def test_looking_up_tas_own_archs_does_not_import_torchvision() -> None:
    """The API checks every spec against the registry; an mlp must not cost it torchvision."""
    import subprocess
    import sys

    code = (
        "import sys; from tas.core.models import ARCHS; from tas.core.spec import JobSpec;"
        " JobSpec.model_validate({'name': 'a', 'dataset': {'name': 'iris'},"
        " 'model': {'arch': 'mlp'}}); assert 'cnn' in ARCHS and ARCHS['mlp'].weights == ();"
        " print('torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("arch", "head", "stem"),
    [
        ("resnet50", "fc", "conv1"),
        ("efficientnet_b0", "classifier.1", "features.0.0"),
        ("convnext_tiny", "classifier.2", "features.0.0"),
        ("vit_b_16", "heads.head", "conv_proj"),
        ("squeezenet1_1", "classifier.1", "features.0"),  # a 1×1 conv head
        ("swin_t", "head", "features.0.0"),
        ("regnet_y_400mf", "fc", "stem.0"),  # its layout is computed with tensors: meta-safe too
        ("googlenet", "fc", "conv1.conv"),  # no auxiliary heads: one output to train on
        ("densenet121", "classifier", "features.conv0"),
    ],
)
def test_torchvision_models_adapt_generically(arch: str, head: str, stem: str) -> None:
    """Head found under fc/classifier/heads/head with the job's outputs, the stem takes grey input,
    and the state layout is torchvision's own (so its weight files load by name). Shapes only."""
    import torchvision.models as tvm

    s = spec(arch)
    build = functools.partial(
        tvm.get_model_builder(arch),
        **({"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}),
    )
    try:
        with torch.device("meta"):
            theirs = {k: v.shape for k, v in build().state_dict().items()}
    except NotImplementedError:  # RegNet computes its widths with tensors: a small one on the CPU
        theirs = {k: v.shape for k, v in build().state_dict().items()}
    model = build_on_meta(s, (1, 224, 224), 6)
    assert head_name(s, model) == head
    h = model.get_submodule(head)
    assert isinstance(h, nn.Linear | nn.Conv2d)
    assert (h.out_features if isinstance(h, nn.Linear) else h.out_channels) == 6
    conv = model.get_submodule(stem)
    assert isinstance(conv, nn.Conv2d) and conv.in_channels == 1
    ours = {k: v.shape for k, v in model.state_dict().items()}
    assert ours.keys() == theirs.keys()
    differ = {k for k in ours if ours[k] != theirs[k]}
    assert differ == {f"{stem}.weight", f"{head}.weight", f"{head}.bias"}
    model.eval()
    with torch.device("meta"), torch.no_grad():
        assert model(torch.empty(2, 1, 224, 224)).shape == (2, 6)


@pytest.mark.parametrize("arch", ["vit_b_16", "efficientnet_b0", "convnext_tiny"])
def test_dropout_is_the_classifiers(arch: str) -> None:
    """torchvision's classifier dropout follows model.dropout (0 by default, as mobilenet_v2 had);
    a classifier without one gets one in front of the head."""
    off = build_on_meta(spec(arch), (3, 224, 224), 3)
    on = build_on_meta(spec(arch, dropout=0.3), (3, 224, 224), 3)
    drops = [m.p for m in on.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    assert drops == [0.3]
    assert all(m.p == 0 for m in off.modules() if isinstance(m, nn.Dropout))
    head_on = head_name(spec(arch, dropout=0.3), on)
    assert isinstance(on.get_submodule(head_on), nn.Linear)


def test_pretrained_vit_is_built_for_its_weights_input_size() -> None:
    """vit_h_14's DEFAULT weights are for 518×518: its position embeddings are sized for that."""
    model = build_on_meta(spec("vit_h_14", pretrained=True), (3, 518, 518), 2)
    assert model.image_size == 518  # type: ignore[comparison-overlap]
    assert build_on_meta(spec("vit_h_14"), (3, 224, 224), 2).image_size == 224  # type: ignore[comparison-overlap]


@pytest.mark.parametrize(
    ("arch", "shape", "fits"),
    [
        ("vit_b_16", (3, 224, 224), True),
        ("vit_b_16", (1, 8, 8), False),
        ("vit_b_16", (3, 32, 32), False),
        ("convnext_tiny", (1, 8, 8), False),
        ("convnext_tiny", (3, 32, 32), True),
        ("resnet18", (1, 8, 8), True),
        ("cnn", (1, 8, 8), True),
    ],
)
def test_input_sizes_a_model_cannot_take_are_named(
    arch: str, shape: tuple[int, int, int], fits: bool
) -> None:
    problems = input_problems(spec(arch), shape)
    if fits:
        assert problems == []
    else:
        (msg,) = problems
        assert f"arch {arch!r} cannot take samples of shape {list(shape)}" in msg
        assert "size=224" in msg  # the size torchvision's weights were trained on


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_image_archs_have_the_state_layout_of_torchvision(arch: str) -> None:
    """Same names and shapes as torchvision's own model (apart from the first conv's channels and the
    head), so torchvision's weight files load by name."""
    import torchvision

    with torch.device("meta"):
        ours = build_model(spec(arch), (3, 32, 32), 1000).state_dict()
        theirs = getattr(torchvision.models, arch)().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
