"""`page_out`: a memory-mapped array's pages leave the process's resident set and the array reads
the same afterwards; anonymous memory is never touched; and `prepare` pages out a large mapped
source once the splits have been copied from it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tas.core.data import prepare as prepare_module
from tas.core.data.dataset import Arrays, DatasetInfo, Loaded
from tas.core.data.pages import page_out
from tas.core.data.prepare import prepare

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc and madvise are Linux's")

MB = 1 << 20


def rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise KeyError("RssFile")


def mapped(tmp_path: Path, nbytes: int) -> torch.Tensor:
    path = tmp_path / "x.bin"
    np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8).tofile(path)
    return torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c"))


def test_a_mapped_arrays_pages_leave_the_resident_set_and_read_the_same(tmp_path: Path) -> None:
    X = mapped(tmp_path, 64 * MB)
    before = rss_file_kib()
    total = int(X.sum(dtype=torch.int64))  # touches every page
    touched = rss_file_kib()
    assert touched - before > 48 * 1024
    if not page_out(X):
        pytest.skip("this kernel has no MADV_PAGEOUT")
    assert touched - rss_file_kib() > 48 * 1024
    assert int(X.sum(dtype=torch.int64)) == total


def test_anonymous_memory_is_left_alone() -> None:
    X = torch.arange(4 * MB, dtype=torch.int64)
    assert page_out(X) is False
    assert torch.equal(X, torch.arange(4 * MB, dtype=torch.int64))
    assert page_out(torch.empty(0)) is False


def test_prepare_pages_out_a_large_mapped_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 4096
    X = mapped(tmp_path, n * 3 * 8 * 8).view(n, 3, 8, 8)
    y = torch.arange(n) % 4
    monkeypatch.setattr(prepare_module, "SCRATCH_SPLIT_BYTES", 64 * 1024)
    seen: list[int] = []
    real = prepare_module.page_out
    monkeypatch.setattr(prepare_module, "page_out", lambda t: seen.append(t.data_ptr()) or real(t))
    info = DatasetInfo("m", "classification", (3, 8, 8), num_classes=4, kind="image")
    got = prepare(Loaded(Arrays(X, y)), info, 0.1, scratch_dir=tmp_path)
    assert seen == [X.data_ptr()]
    idx = got.indices["train"]
    assert torch.equal(got.train.X, X.index_select(0, idx))  # the source reads the same after
