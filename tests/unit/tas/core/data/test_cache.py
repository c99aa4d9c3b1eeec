"""The preprocessed-tensor cache: a second job on the same data and spec skips the load and the
preprocessing, trains on bit-for-bit the same tensors, and ends with the same weights."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tas.core.data.cache import (
    META,
    TENSORS,
    PreprocessCache,
    PrepSpec,
    cache_key,
)
from tas.core.data.dataset import Arrays, DatasetInfo, LoadContext, Loaded
from tas.core.data.prepare import prepare
from tas.core.data.registry import BUILTIN_DATASETS
from tas.core.pipeline import PipelineResult, RunContext, run_pipeline
from tas.core.spec import JobSpec
from tests.helpers.datasets import write_mnist
from tests.helpers.pipeline import RecordingHooks

INFO = DatasetInfo(
    "digits32", "classification", (1, 32, 32), 10, [str(i) for i in range(10)], kind="image"
)
COPIES = 7  # 7 × 1,797 = 12,579 samples of 32×32: about 50 MB of float32 to split and normalise


def _digits_csv(folder: Path, copies: int) -> Path:
    """sklearn's digits, tiled with pixel noise, as a CSV (label, 64 pixel values): a real decode."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    X = np.tile(X, (copies, 1)) + rng.integers(-1, 2, (X.shape[0] * copies, 64))
    rows = np.concatenate([np.tile(y, copies)[:, None], np.clip(X, 0, 16)], axis=1)
    path = folder / "digits.csv"
    np.savetxt(path, rows, fmt="%d", delimiter=",")
    return path


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _digits_csv(tmp_path_factory.mktemp("big"), COPIES)


@pytest.fixture(scope="module")
def digits_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy (1,797 samples): for the tests that don't time anything."""
    return _digits_csv(tmp_path_factory.mktemp("small"), 1)


class CountingLoad:
    """Parses the CSV and upscales the 8×8 images to 32×32 (bilinear), counting its calls."""

    def __init__(self, path: Path) -> None:
        self.path, self.calls = path, 0

    def __call__(self, ctx: LoadContext) -> Loaded:
        self.calls += 1
        rows = np.loadtxt(self.path, delimiter=",", dtype=np.float32)
        small = torch.from_numpy(rows[:, 1:]).reshape(-1, 1, 8, 8) / 16.0
        X = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
        return Loaded(Arrays(X.contiguous(), torch.from_numpy(rows[:, 0]).long()))


def spec(**dataset: Any) -> dict[str, Any]:
    return {
        "name": "cached",
        "dataset": {"id": "upload-1", "val_fraction": 0.15, "split_seed": 1, **dataset},
        "model": {"arch": "mlp", "hidden": [16], "dropout": 0.1},
        "training": {"optimizer": "adam", "lr": 1e-3, "epochs": 1, "batch_size": 256, "seed": 5},
    }


Runner = Callable[..., tuple[PipelineResult, RecordingHooks]]


@pytest.fixture
def run(tmp_path: Path) -> Runner:
    def go(
        s: dict[str, Any],
        load: Callable[[LoadContext], Loaded],
        job: str,
        fingerprint: str | None = "sha256:abc",
        info: DatasetInfo = INFO,
        hooks: RecordingHooks | None = None,
    ) -> tuple[PipelineResult, RecordingHooks]:
        hooks = hooks or RecordingHooks()
        ctx = RunContext(
            job_dir=tmp_path / job,
            datasets_dir=tmp_path / "datasets",
            device="cpu",
            cache_dir=tmp_path / "cache",
            data_fingerprint=fingerprint,
        )
        return run_pipeline(JobSpec.model_validate(s), info, ctx, hooks, load), hooks

    return go


def weights(result: PipelineResult) -> dict[str, torch.Tensor]:
    return load_file(str(Path(result.model_dir or "") / "model.safetensors"))


def stage_seconds(hooks: RecordingHooks, *names: str) -> float:
    return sum(hooks.outputs(n)["seconds"] for n in names)


def the_key(s: dict[str, Any], fingerprint: str = "sha256:abc") -> str:
    d = JobSpec.model_validate(s).dataset
    return cache_key(fingerprint, INFO, PrepSpec.of(d, INFO))


def test_second_job_is_a_hit_skips_the_load_and_trains_the_same(
    run: Runner, big_csv: Path, tmp_path: Path
) -> None:
    load = CountingLoad(big_csv)
    first, h1 = run(spec(), load, "first")
    assert load.calls == 1
    pre1 = h1.outputs("preprocess")
    assert pre1["cache"]["hit"] is False and pre1["cache"]["stored"] is True
    assert h1.outputs("collect")["cached"] is False

    second, h2 = run(spec(), load, "second")
    assert load.calls == 1  # the decode did not run again
    collect, pre2 = h2.outputs("collect"), h2.outputs("preprocess")
    assert collect["cached"] is True
    assert collect["train_samples"] == 1797 * COPIES and collect["input_shape"] == [1, 32, 32]
    assert pre2["cache"]["hit"] is True and pre2["cache"]["key"] == pre1["cache"]["key"]
    assert pre2["cache"]["seconds"] <= pre2["seconds"]
    # the same stage records as a miss (minus timings and the cache note)
    drop = ("seconds", "cache")
    assert {k: v for k, v in pre2.items() if k not in drop} == {
        k: v for k, v in pre1.items() if k not in drop
    }
    # faster: the preprocess stage alone, and the collect + preprocess pair by far
    assert pre2["seconds"] < pre1["seconds"]
    assert stage_seconds(h2, "collect", "preprocess") < 0.5 * stage_seconds(
        h1, "collect", "preprocess"
    )
    # the same training, to the bit
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first.evaluation == second.evaluation

    # the entry holds exactly what prepare() computes
    hit = PreprocessCache(tmp_path / "cache").load(pre1["cache"]["key"])
    assert hit is not None
    d = JobSpec.model_validate(spec()).dataset
    fresh = prepare(load(LoadContext(tmp_path)), INFO, d.val_fraction, split_seed=d.split_seed)
    for part in ("train", "val"):
        got, want = getattr(hit.prepared, part), getattr(fresh, part)
        assert torch.equal(got.X, want.X) and torch.equal(got.y, want.y)
        assert got.X.dtype == want.X.dtype and got.y.dtype == want.y.dtype
    assert hit.prepared.test is None and fresh.test is None
    assert hit.prepared.normalizer is not None and fresh.normalizer is not None
    assert torch.equal(hit.prepared.normalizer.mean, fresh.normalizer.mean)
    assert torch.equal(hit.prepared.normalizer.std, fresh.normalizer.std)
    assert hit.prepared.stratified == fresh.stratified


@pytest.mark.parametrize(
    ("change", "fingerprint"),
    [
        ({"split_seed": 2}, "sha256:abc"),
        ({"val_fraction": 0.2}, "sha256:abc"),
        ({"normalize": False}, "sha256:abc"),
        ({"stratify": False}, "sha256:abc"),
        ({}, "sha256:other"),
    ],
)
def test_a_changed_spec_or_fingerprint_is_a_miss(
    run: Runner, digits_csv: Path, change: dict[str, Any], fingerprint: str
) -> None:
    load = CountingLoad(digits_csv)
    run(spec(), load, "a")
    _, hooks = run(spec(**change), load, "b", fingerprint=fingerprint)
    assert load.calls == 2
    assert hooks.outputs("preprocess")["cache"]["hit"] is False
    assert hooks.outputs("preprocess")["cache"]["key"] != the_key(spec())


def test_no_cache_without_a_fingerprint_or_a_directory(
    run: Runner, digits_csv: Path, tmp_path: Path
) -> None:
    load = CountingLoad(digits_csv)
    run(spec(), load, "a", fingerprint=None)
    _, hooks = run(spec(), load, "b", fingerprint=None)
    assert load.calls == 2 and "cache" not in hooks.outputs("preprocess")
    assert not (tmp_path / "cache").exists()


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "bit flip in the tensors (same size: the checksum catches it)": lambda e: _flip_a_byte(
        e / TENSORS
    ),
    "truncated tensors": lambda e: _truncate(e / TENSORS),
    "missing tensors": lambda e: (e / TENSORS).unlink(),
    "garbage meta": lambda e: (e / META).write_text("{not json"),
    "missing meta": lambda e: (e / META).unlink(),
    "meta of another key": lambda e: (e / META).write_text(
        json.dumps({**json.loads((e / META).read_text()), "key": "0" * 64})
    ),
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS), ids=list(range(len(CORRUPTIONS))))
def test_a_corrupt_entry_is_rebuilt_not_a_failure(
    run: Runner, digits_csv: Path, tmp_path: Path, corrupt: str
) -> None:
    load = CountingLoad(digits_csv)
    first, _ = run(spec(), load, "a")
    entry = tmp_path / "cache" / "preprocessed" / the_key(spec())
    CORRUPTIONS[corrupt](entry)
    again, hooks = run(spec(), load, "b")
    assert load.calls == 2
    pre = hooks.outputs("preprocess")
    assert pre["cache"]["hit"] is False and pre["cache"]["stored"] is True
    assert again.model_sha256 == first.model_sha256
    # the rebuilt entry serves the next job
    _, hooks = run(spec(), load, "c")
    assert load.calls == 2 and hooks.outputs("preprocess")["cache"]["hit"] is True


def test_racing_writers_both_finish_and_one_entry_wins(digits_csv: Path, tmp_path: Path) -> None:
    loaded = CountingLoad(digits_csv)(LoadContext(tmp_path))
    prepared = prepare(loaded, INFO, 0.15)
    caches = [PreprocessCache(tmp_path / "cache") for _ in range(4)]
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def write(c: PreprocessCache) -> None:
        try:
            results.append(c.store("k" * 64, prepared))
        except BaseException as exc:  # pragma: no cover - the failure is the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r["stored"] for r in results) == [False, False, False, True]
    hit = caches[0].load("k" * 64)
    assert hit is not None and torch.equal(hit.prepared.train.X, prepared.train.X)
    left = sorted(p.name for p in (tmp_path / "cache" / "preprocessed").iterdir())
    assert left == ["k" * 64]  # no temporary directories left behind


def test_evict_drops_the_least_recently_used(digits_csv: Path, tmp_path: Path) -> None:
    from tas.core.data import builtin

    prepared = prepare(builtin.load_iris(LoadContext(tmp_path)), BUILTIN_DATASETS["iris"].info, 0.2)
    cache = PreprocessCache(tmp_path / "cache")
    for i, key in enumerate(["a" * 64, "b" * 64, "c" * 64]):
        cache.store(key, prepared)
        os.utime(cache.entry_dir(key) / META, (1000 + i, 1000 + i))
    assert cache.load("a" * 64) is not None  # a hit: now the most recently used
    stats = cache.stats()
    assert stats["entries"] == 3
    per_entry = stats["bytes"] // 3
    assert cache.evict(2 * per_entry) == ["b" * 64]
    assert cache.lookup("b" * 64) is None and cache.lookup("a" * 64) is not None
    assert cache.evict(0) == ["c" * 64, "a" * 64]
    assert cache.stats()["entries"] == 0


def test_builtin_torchvision_files_join_the_key(run: Runner, tmp_path: Path) -> None:
    """A replaced MNIST file must not reuse the entry built from the old one (stat, no read)."""
    write_mnist(tmp_path / "datasets", "MNIST", n_train=60, n_test=20)
    source = BUILTIN_DATASETS["mnist"]
    calls = {"n": 0}

    def load(ctx: LoadContext) -> Loaded:
        calls["n"] += 1
        return source.load(ctx)

    s = {
        "name": "m",
        "dataset": {"name": "mnist", "val_fraction": 0.2},
        "model": {"arch": "mlp", "hidden": [8]},
        "training": {"epochs": 1, "batch_size": 16},
    }
    first, _ = run(s, load, "a", fingerprint="builtin:mnist", info=source.info)
    second, hooks = run(s, load, "b", fingerprint="builtin:mnist", info=source.info)
    assert calls["n"] == 1 and hooks.outputs("preprocess")["cache"]["hit"] is True
    assert hooks.outputs("collect")["test_samples"] == 20
    assert first.evaluation == second.evaluation and first.evaluation is not None
    assert first.evaluation["split"] == "test"

    raw = tmp_path / "datasets" / "MNIST" / "raw"
    write_mnist(tmp_path / "fresh", "MNIST", n_train=61, n_test=20)
    for f in raw.iterdir():
        f.write_bytes((tmp_path / "fresh" / "MNIST" / "raw" / f.name).read_bytes())
    _, hooks = run(s, load, "c", fingerprint="builtin:mnist", info=source.info)
    assert calls["n"] == 2 and hooks.outputs("preprocess")["cache"]["hit"] is False
    assert hooks.outputs("collect")["train_samples"] == 61


def test_a_resumed_job_reads_the_split_it_trained_on(
    run: Runner, digits_csv: Path, tmp_path: Path
) -> None:
    """Miss on the first attempt, hit on the resumed one: the same weights as an uninterrupted run
    without a cache."""
    load = CountingLoad(digits_csv)
    s = spec()
    s["training"]["epochs"] = 2
    reference, _ = run(s, load, "reference", fingerprint=None)
    stopped, _ = run(s, load, "victim", hooks=RecordingHooks(stop_at=(9, "preempted")))
    assert stopped.status == "preempted"
    resumed, hooks = run(s, load, "victim")
    assert hooks.outputs("preprocess")["cache"]["hit"] is True
    assert resumed.resumed_from is not None
    assert resumed.model_sha256 == reference.model_sha256


def _mapped_from(t: torch.Tensor, path: Path) -> bool:
    """Whether the tensor's memory lies in a mapping of `path` (Linux's /proc/self/maps)."""
    ptr = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= ptr < end:
                return True
    return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_a_hit_maps_the_entry_instead_of_reading_it(tmp_path: Path) -> None:
    """The split tensors of a hit are the file's pages (copy-on-write: writing to one leaves the
    entry as it is), equal to what safetensors itself reads, uint8 images kept as uint8."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 1, 32, 32), dtype=torch.uint8, generator=g)
    prepared = prepare(Loaded(Arrays(images, torch.arange(60) % 10)), INFO, 0.2)
    cache = PreprocessCache(tmp_path / "cache")
    cache.store("m" * 64, prepared)
    hit = cache.load("m" * 64)
    assert hit is not None
    path = cache.entry_dir("m" * 64) / TENSORS
    X = hit.prepared.train.X
    assert X.dtype == torch.uint8 and torch.equal(X, prepared.train.X)
    assert _mapped_from(X, path) and not _mapped_from(prepared.train.X, path)
    read = load_file(str(path))
    assert hit.prepared.val is not None
    assert torch.equal(read["train.X"], X) and torch.equal(read["val.X"], hit.prepared.val.X)
    X[0, 0, 0, 0] ^= 0xFF  # private to this process
    assert torch.equal(load_file(str(path))["train.X"], prepared.train.X)
    assert cache.load("m" * 64) is not None  # the entry still verifies
