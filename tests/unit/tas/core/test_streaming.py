"""Compact data (uint8 images decoded and normalised per batch on the device) and streaming (a
reader thread gathering each batch from host memory): the same numbers as the whole float32 path,
bitwise-identical weights between the streamed and in-memory paths, and an exact resume."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tas.core.augment import BatchAugment
from tas.core.batches import StreamedBatches, fits_on_device
from tas.core.data import prepare as prepare_module
from tas.core.data.dataset import Arrays, DatasetInfo, LoadContext, Loaded, as_float
from tas.core.data.prepare import InputTransform, Normalizer
from tas.core.errors import Stopped
from tas.core.loop import LoopConfig, TrainData, Trainer, epoch_order
from tas.core.pipeline import PipelineResult, RunContext, run_pipeline
from tas.core.spec import JobSpec
from tests.helpers.pipeline import RecordingHooks

CPU = torch.device("cpu")
INFO = DatasetInfo(
    "tiny_images", "classification", (3, 12, 12), 4, [str(i) for i in range(4)], kind="image"
)
TIMING = ("epoch_seconds", "samples_per_second")


def pixels(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images whose class shows in their mean brightness (so training has signal)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    noise = torch.randint(0, 120, (n, 3, 12, 12), generator=g)
    return (noise + 40 * y.view(-1, 1, 1, 1)).to(torch.uint8), y


def uint8_load(ctx: LoadContext) -> Loaded:
    X, y = pixels(150, 0)
    tX, ty = pixels(40, 1)
    return Loaded(Arrays(X, y), test=Arrays(tX, ty))


def float_load(ctx: LoadContext) -> Loaded:
    """The same images as float32 in [0, 1]: what the loaders produced before images stayed uint8."""
    loaded = uint8_load(ctx)
    assert loaded.test is not None
    return Loaded(
        Arrays(as_float(loaded.train.X), loaded.train.y),
        test=Arrays(as_float(loaded.test.X), loaded.test.y),
    )


def spec(epochs: int = 3) -> dict[str, Any]:
    """A CNN with dropout (the RNG), adam (optimizer state), augmentation (seeded per step), a
    last short batch (150 * 0.8 = 120 training samples, batch 16: 8 steps, the last of 8)."""
    return {
        "name": "s",
        "dataset": {
            "id": "upload-1",
            "val_fraction": 0.2,
            "augment": {"crop_padding": 2, "hflip": True},
        },
        "model": {"arch": "cnn", "channels": [4], "dropout": 0.1},
        "training": {"optimizer": "adam", "lr": 3e-3, "epochs": epochs, "batch_size": 16},
    }


Run = Callable[..., PipelineResult]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    def go(
        job: str,
        load: Callable[[LoadContext], Loaded] = uint8_load,
        hooks: RecordingHooks | None = None,
        s: dict[str, Any] | None = None,
        **ctx: Any,
    ) -> PipelineResult:
        context = RunContext(
            job_dir=tmp_path / job, datasets_dir=tmp_path / "datasets", device="cpu", **ctx
        )
        return run_pipeline(
            JobSpec.model_validate(s or spec()), INFO, context, hooks or RecordingHooks(), load
        )

    return go


def weights(result: PipelineResult) -> dict[str, torch.Tensor]:
    return load_file(str(Path(result.model_dir or "") / "model.safetensors"))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tas-batch-reader"]


# --- uint8 images: the same numbers as the float32 path -------------------------------------


def loop_trainer(**kw: Any) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 16), nn.ReLU(), nn.Linear(16, 4))
    cfg = LoopConfig(epochs=2, batch_size=16, seed=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    augment = BatchAugment(crop_padding=2, hflip=True)
    return Trainer(model, opt, nn.CrossEntropyLoss(), cfg, augment=augment, **kw)


def test_uint8_batches_decoded_on_the_device_train_to_the_float_paths_bits() -> None:
    """The old path normalised whole float32 tensors up front; the new one keeps uint8 and
    decodes + normalises each batch before the augmentation. With the same statistics the model
    sees the same numbers: the weights are equal to the bit."""
    X, y = pixels(100, 3)
    norm = Normalizer.fit(as_float(X), "per_channel")
    old = TrainData(norm(as_float(X)), y, norm(as_float(X[:30])), y[:30])
    new = TrainData(X, y, X[:30], y[:30], transform=InputTransform(norm))
    a, b = loop_trainer(), loop_trainer()
    sa, sb = a.fit(old), b.fit(new)
    assert same(a.model.state_dict(), b.model.state_dict())
    assert strip(sa.history) == strip(sb.history)


def test_uint8_images_through_the_pipeline_match_the_float_path(run: Run) -> None:
    """The whole pipeline (split, statistics, augmentation and normalisation on the device,
    evaluation) on uint8 images and on their float32 copies: the same numbers to float
    tolerance (the uint8 statistics come from an exact histogram, the float ones from float32
    sums)."""
    compact = run("uint8", uint8_load)
    floats = run("float32", float_load)
    wa, wb = weights(compact), weights(floats)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5), k
    for ra, rb in zip(strip(compact.history), strip(floats.history), strict=True):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-6), k
    assert compact.evaluation is not None and floats.evaluation is not None
    ma, mb = compact.evaluation["metrics"], floats.evaluation["metrics"]
    assert ma["accuracy"] == mb["accuracy"]
    assert ma["loss"] == pytest.approx(mb["loss"], rel=1e-4)


# --- streaming ---------------------------------------------------------------------------------


def test_streaming_trains_the_same_weights_as_in_memory(run: Run, tmp_path: Path) -> None:
    """A budget of 0 MB forces streaming; with a cache, the streamed run reads the entry's memory
    map. Same weights, same rows, same evaluation, to the bit."""
    cache = {"cache_dir": tmp_path / "cache", "data_fingerprint": "sha256:tiny"}
    hooks = RecordingHooks()
    in_memory = run("memory", hooks=hooks, **cache)
    assert hooks.outputs("train")["data"] == {
        "streamed": False,
        "bytes": (120 + 30) * 3 * 12 * 12 + (120 + 30) * 8,
        "dtype": "uint8",
    }
    hooks = RecordingHooks()
    streamed = run("streamed", hooks=hooks, device_data_mb=0, **cache)
    assert hooks.outputs("preprocess")["cache"]["hit"] is True  # from the memory map
    assert hooks.outputs("train")["data"]["streamed"] is True
    assert same(weights(in_memory), weights(streamed))
    assert strip(in_memory.history) == strip(streamed.history)
    assert in_memory.evaluation == streamed.evaluation
    assert readers() == []  # each epoch's reader thread was joined


@pytest.mark.parametrize("stop_at", [5, 13])  # epoch 1 step 5; epoch 2 step 5 (8 steps/epoch)
def test_streaming_stop_mid_epoch_then_resume_is_bitwise_identical(run: Run, stop_at: int) -> None:
    reference = run("reference", device_data_mb=0)
    hooks = RecordingHooks(stop_at=(stop_at, "preempted"))
    stopped = run("victim", hooks=hooks, device_data_mb=0)
    assert stopped.status == "preempted" and stopped.checkpoint is not None
    assert (stopped.checkpoint.epoch, stopped.checkpoint.step) == divmod(stop_at - 1, 8)
    assert readers() == []  # the stop left no reader behind
    resumed = run("victim", device_data_mb=0)
    assert resumed.resumed_from is not None
    assert same(weights(reference), weights(resumed))
    assert strip(resumed.history) == strip(reference.history)
    assert resumed.model_sha256 == reference.model_sha256


def test_a_streamed_run_resumes_in_memory_to_the_same_weights(run: Run) -> None:
    """The batches, not the path, decide the weights: a job streamed on one worker and resumed
    where its data fit ends as an uninterrupted run does."""
    reference = run("reference")
    stopped = run("victim", hooks=RecordingHooks(stop_at=(11, "preempted")), device_data_mb=0)
    assert stopped.status == "preempted"
    resumed = run("victim")
    assert same(weights(reference), weights(resumed))


def test_larger_than_memory_path_end_to_end_trains_the_same_weights(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every piece of the path for data larger than memory at once: splits gathered into scratch
    files, the cache entry written from them, and the job streamed from the entry's map on its
    first (miss) and second (hit) run: the in-memory run's weights, to the bit."""
    reference = run("reference")
    monkeypatch.setattr(prepare_module, "SCRATCH_SPLIT_BYTES", 0)
    cache = {"cache_dir": tmp_path / "cache", "data_fingerprint": "sha256:big", "device_data_mb": 0}
    for job in ("miss", "hit"):
        hooks = RecordingHooks()
        result = run(job, hooks=hooks, **cache)
        assert hooks.outputs("preprocess")["cache"]["hit"] is (job == "hit")
        assert hooks.outputs("train")["data"]["streamed"] is True
        assert same(weights(reference), weights(result))
        assert reference.evaluation == result.evaluation


def test_streamed_batches_follow_the_epoch_order_from_any_step() -> None:
    X = torch.arange(50, dtype=torch.uint8).view(50, 1).expand(50, 3).contiguous()
    y = torch.arange(50)
    order = epoch_order(2, 1, 50, CPU)
    source = StreamedBatches(X, y, 8, CPU)
    with source.epoch(order, 3, 7) as batches:
        got = list(batches)
    assert [s for s, _ in got] == [3, 4, 5, 6]
    for step, (xb, yb) in got:
        idx = order[step * 8 : (step + 1) * 8]
        assert torch.equal(xb, X[idx]) and torch.equal(yb, y[idx])
    assert got[-1][1][0].shape == (2, 3)  # the last batch is short
    assert readers() == []


def test_a_reader_error_is_raised_in_the_training_thread() -> None:
    X, y = torch.zeros(10, 2), torch.zeros(10, dtype=torch.long)
    order = torch.arange(20)  # indices past the data
    with pytest.raises(IndexError), StreamedBatches(X, y, 4, CPU).epoch(order, 0, 5) as batches:
        for _ in batches:
            pass
    assert readers() == []


def test_stopping_mid_epoch_joins_the_reader() -> None:
    class StopAt:
        calls = 0

        def should_stop(self) -> str | None:
            self.calls += 1
            return "cancelled" if self.calls == 3 else None

        def __getattr__(self, name: str) -> Callable[..., None]:
            return lambda *a, **k: None

    X, y = pixels(64, 4)
    data = TrainData(X, y, transform=InputTransform(None), device=CPU, stream=True)
    with pytest.raises(Stopped):
        loop_trainer(hooks=StopAt()).fit(data)
    assert readers() == []


def test_fits_on_device_budget() -> None:
    assert fits_on_device(1 << 20, CPU, 1) and not fits_on_device((1 << 20) + 1, CPU, 1)
    assert not fits_on_device(1, CPU, 0)
    assert fits_on_device(1 << 40, CPU, None)  # the CPU keeps what it has in memory


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_streaming_pinned_and_async_equals_in_memory() -> None:
    """On a GPU the reader gathers into pinned buffers and copies on a side stream: the batches,
    and so the weights, equal the in-memory path's on the same device."""
    cuda = torch.device("cuda")
    X, y = pixels(200, 6)
    norm = Normalizer.fit(X, "per_channel")
    order = epoch_order(1, 0, 200, CPU)
    with StreamedBatches(X, y, 32, cuda).epoch(order, 0, 7) as batches:
        for step, (xb, yb) in batches:
            idx = order[step * 32 : (step + 1) * 32]
            assert xb.device.type == "cuda" and torch.equal(xb.cpu(), X[idx])
            assert torch.equal(yb.cpu(), y[idx])
    trained = []
    for stream in (False, True):
        data = TrainData(
            X if stream else X.to(cuda),
            y if stream else y.to(cuda),
            transform=InputTransform(norm).to(cuda),
            device=cuda,
            stream=stream,
        )
        trainer = loop_trainer()
        trainer.model.to(cuda)
        trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.05)
        trainer.params = list(trainer.model.parameters())
        trainer.fit(data)
        trained.append({k: v.cpu() for k, v in trainer.model.state_dict().items()})
    assert same(trained[0], trained[1])
    assert readers() == []
