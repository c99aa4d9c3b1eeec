"""Preprocess: seeded, stratified splits by index, and normalisation fitted on the training split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tas.core.data import prepare as prepare_module
from tas.core.data.dataset import Arrays, DatasetInfo, Loaded, as_float
from tas.core.data.prepare import Normalizer, prepare, split_indices

IMG = DatasetInfo("img", "classification", (3, 4, 4), 3, kind="image")
TAB = DatasetInfo("tab", "classification", (5,), 3)


def labels(counts: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])[
        torch.randperm(sum(counts))
    ]


def test_split_is_seeded_disjoint_and_complete() -> None:
    y = labels([50, 30, 20])
    a = split_indices(y, 0.2, 0.1, seed=5)
    b = split_indices(y, 0.2, 0.1, seed=5)
    assert a.val is not None and a.test is not None and b.val is not None
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    every = torch.cat([a.train, a.val, a.test]).sort().values
    assert torch.equal(every, torch.arange(100))
    c = split_indices(y, 0.2, 0.1, seed=6)
    assert c.val is not None and not torch.equal(a.val, c.val)


def test_stratified_split_keeps_class_proportions() -> None:
    y = labels([80, 15, 5])
    s = split_indices(y, 0.2, seed=1, stratify=True)
    assert s.stratified and s.val is not None
    assert torch.bincount(y[s.val]).tolist() == [16, 3, 1]
    assert torch.bincount(y[s.train]).tolist() == [64, 12, 4]


def test_stratify_falls_back_when_a_class_has_one_sample() -> None:
    y = labels([10, 10, 1])
    s = split_indices(y, 0.3, seed=1, stratify=True)
    assert not s.stratified and s.val is not None and s.val.numel() == 6


def test_regression_targets_split_at_random() -> None:
    s = split_indices(torch.randn(40, 1), 0.25, seed=0, stratify=True)
    assert not s.stratified and s.val is not None and s.val.numel() == 10


def test_no_validation_split() -> None:
    s = split_indices(labels([5, 5]), 0.0)
    assert s.val is None and s.train.numel() == 10


def test_normalizer_uses_training_statistics_only() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 3, 4, 4, generator=g) * torch.tensor([1.0, 5.0, 0.0]).view(3, 1, 1) + 10
    y = torch.arange(200) % 3
    test = Arrays(torch.full((10, 3, 4, 4), 100.0), torch.zeros(10, dtype=torch.long))
    p = prepare(Loaded(Arrays(X.clone(), y), test=test), IMG, val_fraction=0.25, split_seed=3)
    assert p.normalizer is not None and p.normalizer.kind == "per_channel"
    assert p.normalizer.mean.shape == (3, 1, 1)
    s = split_indices(y, 0.25, seed=3)
    train_raw = X[s.train]
    assert torch.allclose(p.normalizer.mean.flatten(), train_raw.mean(dim=(0, 2, 3)), atol=1e-4)
    assert p.normalizer.std.flatten()[2] == 1.0  # a constant channel: divided by 1, not by 0
    # the splits stay as they were; their batches are normalised by `inputs`
    assert torch.equal(p.train.X, train_raw)
    train = p.inputs(p.train.X)
    assert torch.allclose(train.mean(dim=(0, 2, 3))[:2], torch.zeros(2), atol=1e-4)
    assert p.test is not None and p.test_source == "official"
    assert torch.equal(test.X, torch.full((10, 3, 4, 4), 100.0))  # the loader's tensor is untouched
    assert torch.allclose(p.inputs(p.test.X), p.normalizer(test.X))


def test_uint8_images_stay_compact_and_normalise_like_their_float_copy() -> None:
    """uint8 pixels are split as they are; their statistics (from a histogram) and their
    normalised batches equal those of the float32 images (value / 255) to float precision."""
    g = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (300, 3, 4, 4), dtype=torch.uint8, generator=g)
    pixels[:, 2] = 7  # a constant channel
    y = torch.arange(300) % 3
    compact = prepare(Loaded(Arrays(pixels, y)), IMG, val_fraction=0.2, split_seed=3)
    floats = prepare(Loaded(Arrays(as_float(pixels), y)), IMG, val_fraction=0.2, split_seed=3)
    assert compact.train.X.dtype == torch.uint8 and compact.val is not None
    assert compact.normalizer is not None and floats.normalizer is not None
    assert torch.allclose(compact.normalizer.mean, floats.normalizer.mean, rtol=1e-6, atol=1e-7)
    assert torch.allclose(compact.normalizer.std, floats.normalizer.std, rtol=1e-5, atol=1e-7)
    assert float(compact.normalizer.std.flatten()[2]) == 1.0
    for part in ("train", "val"):
        got = compact.inputs(getattr(compact, part).X)
        want = floats.inputs(getattr(floats, part).X)
        assert got.dtype == torch.float32 and torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    per_feature = Normalizer.fit(pixels.flatten(1), "per_feature")
    reference = Normalizer.fit(as_float(pixels).flatten(1), "per_feature")
    assert torch.allclose(per_feature.mean, reference.mean, atol=1e-6)
    assert torch.allclose(per_feature.std, reference.std, atol=1e-5)


def test_tabular_normalizer_is_per_feature_and_roundtrips() -> None:
    X = torch.randn(60, 5) * torch.arange(1, 6) + torch.arange(5)
    p = prepare(Loaded(Arrays(X, torch.arange(60) % 3)), TAB, val_fraction=0.0, test_fraction=0.2)
    assert p.normalizer is not None and p.normalizer.mean.shape == (5,)
    assert p.test is not None and p.test_source == "held_out" and len(p.test) == 12
    d = p.normalizer.to_dict()
    assert d["kind"] == "per_feature" and len(d["mean"]) == 5
    again = Normalizer.from_dict(d)
    sample = torch.randn(7, 5)
    assert torch.equal(again(sample), p.normalizer(sample))


def test_normalize_off_and_bad_data() -> None:
    X = torch.randn(30, 5)
    p = prepare(Loaded(Arrays(X.clone(), torch.arange(30) % 3)), TAB, 0.2, normalize=False)
    assert p.normalizer is None and p.outputs()["normalization"] is None
    X[3, 1] = float("nan")
    from tas.core.errors import DataError

    with pytest.raises(DataError, match="NaN"):
        prepare(Loaded(Arrays(X, torch.arange(30) % 3)), TAB, 0.2)
    with pytest.raises(DataError, match="shape"):
        prepare(Loaded(Arrays(torch.randn(30, 4), torch.arange(30) % 3)), TAB, 0.2)


def _file_backed(t: torch.Tensor) -> bool:
    """Whether the tensor's memory lies in a mapping of a file (Linux's /proc/self/maps)."""
    ptr = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= ptr < end:
                return True
    return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_a_split_too_large_for_memory_goes_to_a_scratch_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Past the threshold a split is gathered a chunk at a time into a memory-mapped scratch file:
    the same numbers, none of them in the process's own memory."""
    g = torch.Generator().manual_seed(2)
    pixels = torch.randint(0, 256, (500, 3, 4, 4), dtype=torch.uint8, generator=g)
    y = torch.arange(500) % 3
    loaded = Loaded(Arrays(pixels, y))
    in_memory = prepare(loaded, IMG, val_fraction=0.2, test_fraction=0.0, split_seed=1)
    monkeypatch.setattr(prepare_module, "SCRATCH_SPLIT_BYTES", 0)
    monkeypatch.setattr(prepare_module, "CHUNK_BYTES", 1000)  # many chunks
    scratch = prepare(loaded, IMG, val_fraction=0.2, split_seed=1, scratch_dir=tmp_path)
    assert scratch.val is not None and in_memory.val is not None
    for got, want in ((scratch.train, in_memory.train), (scratch.val, in_memory.val)):
        assert got.X.dtype == torch.uint8 and torch.equal(got.X, want.X)
        assert torch.equal(got.y, want.y)
        assert _file_backed(got.X) and not _file_backed(want.X)
    assert scratch.normalizer is not None and in_memory.normalizer is not None
    assert torch.equal(scratch.normalizer.mean, in_memory.normalizer.mean)
    assert list(tmp_path.iterdir()) == []  # an unnamed file: nothing left behind
