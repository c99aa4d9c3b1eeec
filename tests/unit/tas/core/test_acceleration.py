"""The speed options of the training step (tas.core.acceleration) on the CPU: channels_last
computes what the contiguous layout computes, torch.compile's forward trains the plain module's
parameters, a compile that cannot run falls back to the plain forward, and the spec refuses
channels_last "on" where it has nothing to lay out."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

from tas.core.acceleration import (
    accelerate,
    channels_last_inputs,
    compiled,
    convolves_images,
    to_channels_last,
    use_channels_last,
)
from tas.core.augment import BatchAugment
from tas.core.data.registry import BUILTIN_DATASETS
from tas.core.models import build_model
from tas.core.spec import JobSpec, ModelSpec, spec_problems

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object: nothing asks CUDA
CL = torch.channels_last


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSpec(arch="cnn", channels=[8, 16]), (3, 16, 16), 5)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSpec(arch="mlp", hidden=[32]), (3, 16, 16), 5)


def conv_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]


# --- channels_last ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "model", "device", "expected"),
    [
        ("auto", cnn, CUDA, True),  # an image convolution on a GPU: where it pays
        ("auto", cnn, CPU, False),  # the CPU: only when asked
        ("on", cnn, CPU, True),
        ("off", cnn, CUDA, False),
        ("auto", mlp, CUDA, False),  # a flattening model has no convolution to lay out
        ("on", mlp, CUDA, False),  # (and the spec refuses "on" for it)
    ],
)
def test_channels_last_resolution(
    setting: str, model: Callable[[], nn.Module], device: torch.device, expected: bool
) -> None:
    assert use_channels_last(setting, model(), (3, 16, 16), device) is expected


def test_channels_last_needs_an_image_sample_shape_and_a_known_setting() -> None:
    assert not convolves_images(cnn(), (768,))  # flat samples: nothing is an image
    with pytest.raises(ValueError, match="allowed: auto, on, off"):
        use_channels_last("yes", cnn(), (3, 16, 16), CPU)


def test_channels_last_cnn_computes_what_the_contiguous_one_does() -> None:
    """Same weights, both layouts: the same outputs (to rounding: the convolution sums in another
    order), the conv weights really channels_last, the parameters the same objects (an optimizer
    built before the conversion still holds them), the state_dict's keys unchanged."""
    plain, fast = cnn(), cnn()
    params_before = list(fast.parameters())
    to_channels_last(fast)
    assert list(fast.parameters()) == params_before and all(
        a is b for a, b in zip(fast.parameters(), params_before, strict=True)
    )
    assert all(w.is_contiguous(memory_format=CL) for w in conv_weights(fast))
    assert not all(w.is_contiguous(memory_format=CL) for w in conv_weights(plain))
    assert fast.state_dict().keys() == plain.state_dict().keys()

    x = torch.randn(6, 3, 16, 16)
    xb = channels_last_inputs(None)(x)
    assert xb.is_contiguous(memory_format=CL) and torch.equal(xb, x)
    torch.testing.assert_close(fast(xb), plain(x), rtol=1e-5, atol=1e-5)


def test_channels_last_training_matches_contiguous_training() -> None:
    """A few SGD steps in each layout (inputs decoded by an input function, then augmented, as the
    loop does): the batches the model gets are channels_last, and the weights stay equal to
    rounding."""
    plain, fast = cnn(), cnn()
    acc = accelerate(fast, "on", False, (3, 16, 16), CPU)
    assert acc.channels_last

    def decode(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255

    inputs = acc.inputs(decode)
    augment = acc.batches(BatchAugment(crop_padding=2, hflip=True))
    assert inputs is not None and augment is not None
    seen: list[torch.Tensor] = []
    fast.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    forward = acc.training_forward()
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (plain, fast)]
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        X = torch.randint(0, 256, (8, 3, 16, 16), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 5, (8,), generator=g)
        for fwd, prep, aug, opt in (
            (plain, decode, BatchAugment(crop_padding=2, hflip=True), opts[0]),
            (forward, inputs, augment, opts[1]),
        ):
            xb = aug(prep(X), torch.Generator().manual_seed(step))
            loss = nn.functional.cross_entropy(fwd(xb), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert len(seen) == 4 and all(x.is_contiguous(memory_format=CL) for x in seen)
    for (k, a), b in zip(plain.state_dict().items(), fast.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
    assert acc.outputs() == {"channels_last": True, "compile": False}


def test_no_channels_last_leaves_the_batch_functions_alone() -> None:
    acc = accelerate(mlp(), "auto", False, (3, 16, 16), CUDA)

    def decode(x: torch.Tensor) -> torch.Tensor:
        return x

    assert not acc.channels_last
    assert acc.inputs(None) is None and acc.inputs(decode) is decode
    assert acc.batches(None) is None


@pytest.mark.parametrize(
    ("arch", "setting", "problem"),
    [("mlp", "on", True), ("linear", "on", True), ("mlp", "auto", False), ("cnn", "on", False)],
)
def test_spec_refuses_channels_last_on_for_a_flattening_model(
    arch: str, setting: str, problem: bool
) -> None:
    spec = JobSpec.model_validate(
        {
            "name": "cl",
            "dataset": {"name": "digits"},
            "model": {"arch": arch},
            "training": {"channels_last": setting},
        }
    )
    problems = spec_problems(spec, BUILTIN_DATASETS["digits"].info)
    if problem:
        assert [p[0] for p in problems] == [("training", "channels_last")]
        assert f"arch {arch!r} flattens its input" in problems[0][1]
        assert "'auto' or 'off'" in problems[0][1]
    else:
        assert problems == []


# --- torch.compile ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inductor() -> Iterator[None]:
    """Skips unless torch.compile builds here (inductor compiles C++ on the CPU: a C++ compiler)."""
    probe = compiled(nn.Linear(3, 2), True)
    try:
        probe(torch.randn(2, 3))
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"torch.compile does not run here: {exc}")
    if not probe.active:  # pragma: no cover
        pytest.skip(f"torch.compile does not run here: {probe.fallback}")
    yield
    torch._dynamo.reset()


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))


def train(forward: Callable[[torch.Tensor], torch.Tensor], model: nn.Module) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    losses = []
    for bs in (8, 8, 5):  # a short last batch: a second static shape
        x, y = torch.randn(bs, 6, generator=g), torch.randint(0, 3, (bs,), generator=g)
        loss = nn.functional.cross_entropy(forward(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.slow
@pytest.mark.usefixtures("inductor")
def test_compiled_forward_trains_the_plain_module() -> None:
    """The compiled forward's gradients land on the plain module's parameters: the same training
    as the eager forward (to rounding: inductor fuses the arithmetic), and the plain module's
    state_dict, the one checkpoints and the saved model read, has no `_orig_mod.` prefix."""
    eager_model, model = tiny_mlp(), tiny_mlp()
    acc = accelerate(model, "auto", True, (6,), CPU)
    forward = acc.training_forward()
    assert forward.active
    eager = train(eager_model, eager_model)
    fast = train(forward, model)
    assert forward.active and forward.fallback is None  # both shapes compiled
    assert fast == pytest.approx(eager, rel=1e-5)
    assert list(model.state_dict()) == list(eager_model.state_dict())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, eager_model.state_dict()[k], rtol=1e-5, atol=1e-6)
    assert acc.outputs() == {"channels_last": False, "compile": True}


@pytest.mark.slow
@pytest.mark.usefixtures("inductor")
def test_a_model_error_under_compile_is_the_models_own() -> None:
    """Dynamo meets a shape mismatch first (on its fake tensors); the error raised is the plain
    forward's, and compile stays on."""
    forward = compiled(tiny_mlp(), True)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as info:
        forward(torch.randn(4, 7))
    assert "torch._dynamo" not in type(info.value).__module__
    assert forward.active and forward.fallback is None


@pytest.mark.slow
def test_a_compile_that_fails_falls_back_to_the_plain_forward(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker without a working C++ compiler: the job still trains, eagerly, with the same losses
    as a plain run; why is logged and reported in the stage's outputs."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()  # compiled code of the same forward from an earlier test is reused
    model, eager_model = tiny_mlp(), tiny_mlp()
    acc = accelerate(model, "auto", True, (6,), CPU)
    forward = acc.training_forward()
    with (
        inductor_config.patch({"cpp.cxx": (None, "/nonexistent/c++")}),
        caplog.at_level(logging.WARNING, logger="tas.core.acceleration"),
    ):
        losses = train(forward, model)
    torch._dynamo.reset()
    assert losses == train(eager_model, eager_model)  # the plain forward, bit for bit
    assert not forward.active and forward.fallback is not None
    assert "compiler" in forward.fallback.lower()
    assert "training with the plain forward" in caplog.text
    out: dict[str, Any] = acc.outputs()
    assert out["compile"].startswith("fell back to the plain forward: ")


def test_compile_refused_at_once_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where torch.compile refuses outright (a Python that Dynamo does not support), the plain
    forward is used from the first step, and the reason kept."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", refuse)
    model = tiny_mlp()
    forward = compiled(model, True)
    x = torch.randn(2, 6)
    assert torch.equal(forward(x), model(x))
    assert forward.fallback == "RuntimeError: Dynamo is not supported on this Python"


def test_compile_off_is_the_module_itself() -> None:
    model = tiny_mlp()
    acc = accelerate(model, "auto", False, (6,), CPU)
    forward = acc.training_forward()
    x = torch.randn(2, 6)
    assert not forward.active and forward.fallback is None
    assert torch.equal(forward(x), model(x))
    assert acc.outputs() == {"channels_last": False, "compile": False}
