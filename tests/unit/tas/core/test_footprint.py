"""The model-size and training-memory estimate: counted on the meta device, so a spec asking for
billions of parameters is refused in milliseconds without allocating them."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import pytest

from tas.core.footprint import (
    Footprint,
    Limit,
    _forward_outputs,
    _sequential_outputs,
    estimate,
    human_count,
    optimizer_state_copies,
    size_problems,
)
from tas.core.models import build_on_meta
from tas.core.spec import JobSpec

PARAMS = Limit(150_000_000, "TAS_MAX_PARAMETERS")


def job(model: dict[str, Any] | None = None, **training: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "t",
            "dataset": {"name": "digits"},
            "model": model or {"arch": "mlp", "hidden": [8]},
            "training": {"optimizer": "adam", **training},
        }
    )


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def test_billions_of_parameters_are_refused_in_milliseconds_without_allocating_them() -> None:
    spec = job({"arch": "mlp", "hidden": [65536, 65536, 65536]})
    before, start = peak_rss_mb(), time.perf_counter()
    problems = size_problems(
        spec, (1, 8, 8), 10, max_parameters=PARAMS, max_memory_mb=Limit(16_384, "memory")
    )
    elapsed, grown = time.perf_counter() - start, peak_rss_mb() - before
    # 8.6 billion fp32 parameters would be 32 GiB; none of it exists
    assert elapsed < 1.0, elapsed
    assert grown < 50, f"peak RSS grew by {grown:.0f} MB"
    [(where, message)] = problems
    assert where == ("model", "hidden")
    assert message.startswith("model.hidden [65536, 65536, 65536]: 8.6 billion parameters")
    assert "65536×65536" in message
    assert "at most 150,000,000 (TAS_MAX_PARAMETERS)" in message


def test_the_parameter_check_needs_no_forward_pass() -> None:
    """Over the parameter limit, the activations are not sized at all (they need a forward pass
    for torchvision's models, whose first one in a process loads torch's meta kernels)."""
    fp = estimate(job({"arch": "mlp", "hidden": [65536, 65536]}), (64,), 10, max_parameters=10**6)
    assert fp.parameters > 10**6 and fp.activations_per_sample is None


def test_a_small_mlp_is_counted_exactly() -> None:
    """4 inputs → 8 → 3: (4·8 + 8) + (8·3 + 3) = 67 parameters; per sample the input (4), the
    Flatten (4), Linear (8), ReLU (8) and head (3) outputs = 27 values kept for the backward, and
    4·8 + 8·3 = 56 multiply-accumulates forward."""
    fp = estimate(job({"arch": "mlp", "hidden": [8]}, batch_size=10), (4,), 3)
    assert fp == Footprint(67, ("1.weight", (8, 4)), 2, 10, 27, macs_per_sample=56)
    assert fp.step_flops == 6 * 56 * 10
    assert fp.weight_bytes == 67 * 4 * 4  # parameters, gradients and Adam's two moments
    assert fp.activation_bytes == 10 * 27 * 4
    assert fp.training_bytes == fp.weight_bytes + fp.activation_bytes


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        ({"arch": "mlp", "hidden": [16, 8], "dropout": 0.2, "activation": "gelu"}, (4,)),
        ({"arch": "linear"}, (2, 3)),
        ({"arch": "cnn", "channels": [4, 8, 6]}, (3, 17, 9)),
        ({"arch": "cnn", "channels": [5], "dropout": 0.1, "activation": "tanh"}, (1, 3, 3)),
    ],
)
def test_layer_rules_give_what_a_forward_pass_gives(
    model: dict[str, Any], shape: tuple[int, ...]
) -> None:
    net = build_on_meta(job(model).model, shape, 5)
    assert _sequential_outputs(net, shape) == _forward_outputs(net, shape)


def test_torchvision_models_are_sized_by_a_forward_pass_on_meta() -> None:
    spec = job({"arch": "resnet18"}, batch_size=64)
    fp = estimate(spec, (3, 224, 224), 10)
    assert 11_000_000 < fp.parameters < 12_000_000  # resnet18 with a 10-class head
    assert fp.activations_per_sample is not None and fp.activations_per_sample > 3 * 224 * 224
    assert size_problems(spec, (3, 224, 224), 10, max_parameters=PARAMS, max_memory_mb=None) == []


def test_a_batch_whose_activations_exceed_the_memory_blames_the_batch_size() -> None:
    spec = job({"arch": "cnn", "channels": [32, 64]}, batch_size=4096)
    [(where, message)] = size_problems(
        spec, (1, 28, 28), 10, max_parameters=PARAMS, max_memory_mb=Limit(1000, "worker w1")
    )
    assert where == ("training", "batch_size")
    assert "model.channels [32, 64] with training.batch_size 4096" in message
    assert "at most 1,000 MB (worker w1)" in message


def test_weights_over_the_memory_blame_the_layer_sizes() -> None:
    spec = job({"arch": "mlp", "hidden": [4096, 4096]}, batch_size=16)
    [(where, message)] = size_problems(
        spec, (64,), 10, max_parameters=PARAMS, max_memory_mb=Limit(100, "TAS_X")
    )
    assert where == ("model", "hidden")
    assert "17.1 million parameters" in message and "(TAS_X)" in message
    assert size_problems(spec, (64,), 10, max_parameters=PARAMS, max_memory_mb=None) == []


def test_data_parallel_processes_each_hold_the_weights_and_share_the_batch() -> None:
    """N processes on one machine's memory hold N copies of the weights and the whole batch's
    activations between them; on a GPU each, a process holds one copy and its share."""
    one = estimate(job({"arch": "mlp", "hidden": [8]}, batch_size=10), (4,), 3)
    spec = job({"arch": "mlp", "hidden": [8]}, batch_size=10)
    spec.resources.processes = 2
    two = estimate(spec, (4,), 3)
    assert two.training_bytes == 2 * one.weight_bytes + one.activation_bytes
    assert two.process_bytes == one.weight_bytes + one.activation_bytes // 2
    big = job({"arch": "mlp", "hidden": [4096, 4096]}, batch_size=64)
    single = estimate(big, (1, 8, 8), 10)
    # a memory that fits one process's run but not four copies of its weights
    mb = (single.training_bytes * 2) / 2**20
    assert (
        size_problems(big, (1, 8, 8), 10, max_parameters=PARAMS, max_memory_mb=Limit(mb, "m")) == []
    )
    big.resources.processes = 4
    [(where, message)] = size_problems(
        big, (1, 8, 8), 10, max_parameters=PARAMS, max_memory_mb=Limit(mb, "the machine")
    )
    assert where == ("model", "hidden")
    assert "4 processes × " in message and "resources.processes" in message
    # with a GPU each, every process has the whole memory to itself: it fits
    gpu = Limit(mb, "a GPU", per_process=True)
    assert size_problems(big, (1, 8, 8), 10, max_parameters=PARAMS, max_memory_mb=gpu) == []


def test_too_many_channels_blame_the_channels() -> None:
    spec = job({"arch": "cnn", "channels": [4096, 4096, 4096]})
    [(where, message)] = size_problems(
        spec, (1, 28, 28), 10, max_parameters=PARAMS, max_memory_mb=None
    )
    assert where == ("model", "channels") and "4096×4096×3×3" in message


def test_other_archs_blame_the_arch() -> None:
    [(where, message)] = size_problems(
        job({"arch": "resnet18"}),
        (3, 32, 32),
        10,
        max_parameters=Limit(1_000_000, "P"),
        max_memory_mb=None,
    )
    assert where == ("model", "arch") and message.startswith("model.arch 'resnet18': 11.2 million")


@pytest.mark.parametrize(
    ("training", "copies"),
    [
        ({"optimizer": "sgd"}, 0),
        ({"optimizer": "sgd", "momentum": 0.9}, 1),
        ({"optimizer": "momentum"}, 1),
        ({"optimizer": "momentum", "momentum": 0.0}, 0),
        ({"optimizer": "adam"}, 2),
        ({"optimizer": "adamw"}, 2),
        ({"optimizer": "adagrad"}, 1),
    ],
)
def test_optimizer_state_copies(training: dict[str, Any], copies: int) -> None:
    assert optimizer_state_copies(job(**training).training) == copies


def test_human_counts() -> None:
    assert human_count(8_594_980_874) == "8.6 billion"
    assert human_count(11_181_642) == "11.2 million"
    assert human_count(4096) == "4,096"


def test_a_convolution_s_work_is_counted_from_its_output_size() -> None:
    """cnn [4, 8] on 3×16×16: conv 3→4 at 16×16 (16·16·4·3·9), pooled to 8×8, conv 4→8 at 8×8
    (8·8·8·4·9), pooled to 4×4, head 128→5: the work of a step follows the image, not the
    parameters."""
    fp = estimate(job({"arch": "cnn", "channels": [4, 8]}, batch_size=6), (3, 16, 16), 5)
    assert fp.macs_per_sample == 16 * 16 * 4 * 3 * 9 + 8 * 8 * 8 * 4 * 9 + 128 * 5
    bigger = estimate(job({"arch": "cnn", "channels": [4, 8]}, batch_size=6), (3, 64, 64), 5)
    assert bigger.parameters - fp.parameters == (16 * 16 - 4 * 4) * 8 * 5  # only the head grows
    assert bigger.macs_per_sample is not None and bigger.macs_per_sample > 15 * fp.macs_per_sample


def test_torchvision_models_work_matches_their_published_figures() -> None:
    """torchvision's docs give resnet18 1.81 and resnet50 4.09 billion multiply-accumulates (its
    "GFLOPS" column) for a 224×224 image; the forward hooks on meta find the same."""
    for arch, published in (("resnet18", 1.81e9), ("resnet50", 4.09e9)):
        fp = estimate(job({"arch": arch}), (3, 224, 224), 1000)
        assert fp.macs_per_sample is not None
        assert abs(fp.macs_per_sample - published) / published < 0.01, (arch, fp.macs_per_sample)


def test_a_step_over_the_work_limit_names_it() -> None:
    spec = job({"arch": "cnn", "channels": [256, 256]}, batch_size=512)
    [(where, message)] = size_problems(
        spec,
        (3, 64, 64),
        10,
        max_parameters=PARAMS,
        max_memory_mb=None,
        max_step_tflop=Limit(1, "TAS_MAX_STEP_TFLOP"),
    )
    assert where == ("training", "batch_size")
    assert "one training step is about 1.9 TFLOP" in message
    assert "at most 1 TFLOP a step (TAS_MAX_STEP_TFLOP)" in message
