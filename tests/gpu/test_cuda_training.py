"""Training on a CUDA device, end to end through the core's pipeline: mixed precision (bf16, fp16
with its gradient scaler), channels_last and torch.compile on a CIFAR-shaped CNN; precision "auto"
on the GPU at hand; the streamed batch path (pinned host buffers, copies on a side stream) against
the in-memory one; and a run stopped mid-epoch that resumes to the uninterrupted run's weights,
bit for bit. Skipped without a GPU (tests/gpu/conftest.py); `bench/gpu.sh` runs them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tas.core.batches import StreamedBatches, _Reader
from tas.core.data.dataset import Arrays, DatasetInfo, LoadContext, Loaded
from tas.core.data.registry import BUILTIN_DATASETS
from tas.core.loop import epoch_order
from tas.core.pipeline import PipelineResult, RunContext, run_pipeline
from tas.core.spec import JobSpec
from tests.helpers.pipeline import RecordingHooks

pytestmark = pytest.mark.gpu

CLASSES = 10
CIFAR = DatasetInfo(
    "cifar_shaped",
    "classification",
    (3, 32, 32),
    CLASSES,
    [str(i) for i in range(CLASSES)],
    kind="image",
)
TIMING = ("epoch_seconds", "samples_per_second")


def images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 CIFAR-shaped images whose class shows in their brightness (training has signal)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    noise = torch.randint(0, 100, (n, 3, 32, 32), generator=g)
    return (noise + 15 * y.view(-1, 1, 1, 1)).to(torch.uint8), y


def cifar_load(ctx: LoadContext) -> Loaded:
    X, y = images(1280, 0)
    tX, ty = images(256, 1)
    return Loaded(Arrays(X, y), test=Arrays(tX, ty))


def cnn_spec(
    precision: str = "bf16", compile: bool = False, epochs: int = 4, **training: Any
) -> dict[str, Any]:
    """A CNN with dropout (the CUDA RNG), adam (optimizer state), augmentation (seeded per step)
    and a short last batch (1024 training samples, batch 48)."""
    return {
        "name": "gpu",
        "dataset": {
            "id": "upload-1",
            "val_fraction": 0.2,
            "augment": {"crop_padding": 2, "hflip": True},
        },
        "model": {"arch": "cnn", "channels": [16, 32], "dropout": 0.1},
        "training": {
            "optimizer": "adam",
            "lr": 3e-3,
            "epochs": epochs,
            "batch_size": 48,
            "seed": 1,
            "precision": precision,
            "channels_last": "on",
            "compile": compile,
            **training,
        },
        "resources": {"device": "cuda"},
    }


def run(
    tmp_path: Path,
    spec: dict[str, Any],
    job: str = "job",
    hooks: RecordingHooks | None = None,
    info: DatasetInfo = CIFAR,
    load: Any = cifar_load,
    **ctx: Any,
) -> tuple[PipelineResult, RecordingHooks]:
    hooks = hooks or RecordingHooks()
    context = RunContext(
        job_dir=tmp_path / job, datasets_dir=tmp_path / "datasets", device="cuda", **ctx
    )
    return run_pipeline(JobSpec.model_validate(spec), info, context, hooks, load), hooks


def weights(result: PipelineResult) -> dict[str, torch.Tensor]:
    return load_file(str(Path(result.model_dir or "") / "model.safetensors"))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cifar_shaped_cnn_trains_with_amp_channels_last_and_compile(
    tmp_path: Path, precision: str
) -> None:
    """The job a GPU worker runs for a CNN: autocast in the asked precision (fp16 with its
    scaler), channels_last, the compiled forward; it learns, and the model saved is the plain
    module's float32 weights, readable without any of it."""
    result, hooks = run(tmp_path, cnn_spec(precision, compile=True))
    out = hooks.outputs("train")
    assert result.status == "succeeded"
    assert out["device"].startswith("cuda") and out["precision"] == precision
    assert out["channels_last"] is True
    assert out["compile"] is True, out["compile"]  # compiled, not fallen back
    losses = [row["train_loss"] for row in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    assert result.evaluation is not None
    assert result.evaluation["metrics"]["accuracy"] > 0.5, result.evaluation
    saved = weights(result)
    assert all(t.dtype == torch.float32 for t in saved.values())
    assert not any(k.startswith("_orig_mod.") for k in saved)


def test_digits_mlp_with_auto_precision(tmp_path: Path) -> None:
    """precision "auto" on the GPU at hand: bf16 where it is native, else fp16 with a scaler;
    channels_last "auto" leaves an MLP alone."""
    source = BUILTIN_DATASETS["digits"]
    spec = {
        "name": "digits-gpu",
        "dataset": {"name": "digits"},
        "model": {"arch": "mlp", "hidden": [64]},
        "training": {"optimizer": "adam", "lr": 3e-3, "epochs": 8, "batch_size": 32},
        "resources": {"device": "cuda"},
    }
    result, hooks = run(tmp_path, spec, info=source.info, load=source.load)
    out = hooks.outputs("train")
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    assert out["precision"] == ("bf16" if native_bf16 else "fp16")
    assert out["channels_last"] is False
    assert result.evaluation is not None
    assert result.evaluation["metrics"]["accuracy"] > 0.85, result.evaluation


def test_streamed_batches_use_pinned_buffers_and_a_side_stream() -> None:
    """The reader gathers into page-locked buffers and copies on its own stream; what reaches the
    training stream is each batch of the epoch's order, exactly."""
    cuda = torch.device("cuda")
    X, y = images(200, 6)
    order = epoch_order(1, 0, 200, torch.device("cpu"))
    source = StreamedBatches(X, y, 32, cuda)
    reader = _Reader(source, order, 0, 7)  # what `source.epoch` iterates, opened here to look in
    try:
        for step, (xb, yb) in reader:
            idx = order[step * 32 : (step + 1) * 32]
            assert xb.device.type == "cuda" and torch.equal(xb.cpu(), X[idx])
            assert torch.equal(yb.cpu(), y[idx])
        assert reader.copy_stream is not None
        assert reader.copy_stream != torch.cuda.current_stream(cuda)
        assert reader.pinned is not None and all(t.is_pinned() for t in reader.pinned)
    finally:
        reader.close()
    assert not reader.thread.is_alive()


@pytest.mark.usefixtures("deterministic")
def test_streamed_job_trains_to_the_in_memory_jobs_weights(tmp_path: Path) -> None:
    """A job whose data exceed the device budget streams them from host memory a batch at a time;
    with deterministic kernels it ends with the in-memory job's weights, bit for bit."""
    in_memory, h1 = run(tmp_path, cnn_spec("bf16"), job="memory")
    streamed, h2 = run(tmp_path, cnn_spec("bf16"), job="streamed", device_data_mb=0)
    assert h1.outputs("train")["data"]["streamed"] is False
    assert h2.outputs("train")["data"]["streamed"] is True
    assert same(weights(in_memory), weights(streamed))
    assert strip(in_memory.history) == strip(streamed.history)


@pytest.mark.usefixtures("deterministic")
@pytest.mark.parametrize(
    ("precision", "compile"), [("bf16", False), ("fp16", False), ("bf16", True)]
)
def test_stop_mid_epoch_then_resume_on_cuda_is_bitwise_identical(
    tmp_path: Path, precision: str, compile: bool
) -> None:
    """Stopped mid-epoch and resumed from its checkpoint (the CUDA RNG of dropout, fp16's scaler,
    adam's state, channels_last weights), the job ends where an uninterrupted run ends."""
    spec = cnn_spec(precision, compile=compile)
    reference, _ = run(tmp_path, spec, job="reference")

    # 22 steps an epoch (1024 / 48, the last short): the 30th boundary is epoch 2, step 7.
    stopped, _ = run(tmp_path, spec, job="victim", hooks=RecordingHooks(stop_at=(30, "preempted")))
    assert stopped.status == "preempted" and stopped.checkpoint is not None
    assert (stopped.checkpoint.epoch, stopped.checkpoint.step) == (1, 7)

    resumed, _ = run(tmp_path, spec, job="victim")
    assert resumed.status == "succeeded" and resumed.resumed_from is not None
    assert same(weights(reference), weights(resumed))
    assert strip(resumed.history) == strip(reference.history)
