"""A cache of preprocessed tensors: a second job on the same data and preprocessing spec skips the
decode, the split and the normalisation.

An entry is the exact output of `prepare()`, so a job (or a resumed attempt) that reads it trains on
bit-for-bit the tensors it would have computed itself:

    <cache_dir>/preprocessed/<key>/
        tensors.safetensors   train/val/test X (compact: uint8 images, float32 features) and y,
                              the normaliser's mean and std
        meta.json             format, key, what it was built from, the collect and preprocess
                              stage records, sizes, the tensors file's byte count and sha256

The key is the sha256 of the dataset's content identity (an upload's hash; for a built-in,
"builtin:<name>" plus, for torchvision's sets, the names, sizes and mtimes of its files: a replaced
file never reuses a stale entry), the dataset schema, the preprocessing spec (val/test fractions,
split seed, stratify, normalisation resolved) and `CACHE_FORMAT`.

Writes are atomic: the entry is built in a temporary directory and renamed into place. Two workers
racing on the same key both finish: the loser of the rename drops its copy (its tensors, in memory,
are identical). A corrupt or partial entry (unreadable meta, wrong size, checksum mismatch) is never
used: it is moved aside and rebuilt. Reading verifies the tensors file's sha256 (about 1 GB/s), so a
bit flip is caught too.

A hit maps the tensors file into memory (copy-on-write) instead of reading it: a tensor's pages are
read from the file when a batch touches them and the kernel may drop them again, so a dataset larger
than memory can be trained on (streamed to the device a batch at a time), and two jobs on one entry
share its pages.

Eviction is explicit: `evict(max_bytes)` deletes the least recently used entries (a hit touches the
entry's meta.json) until the cache fits; `stats()` says what it holds."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import struct
import time
import uuid
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from tas.core import fsio
from tas.core.data.dataset import Arrays, DatasetInfo
from tas.core.data.prepare import Normalizer, Prepared

log = logging.getLogger(__name__)

#: Bump when the entry layout or anything `prepare()` computes changes: old entries are then unused.
CACHE_FORMAT = 3  # 2: each split's source indices; 3: compact (uint8 images), not normalised
SUBDIR = "preprocessed"
TENSORS = "tensors.safetensors"
META = "meta.json"

#: torchvision's built-ins: the folder (under datasets_dir) whose files' stats join the key.
BUILTIN_FILES = {
    "mnist": "MNIST/raw",
    "fashion_mnist": "FashionMNIST/raw",
    "cifar10": "cifar-10-batches-py",
}


@dataclass(frozen=True)
class PrepSpec:
    """What, besides the data, decides `prepare()`'s output."""

    val_fraction: float
    test_fraction: float
    split_seed: int
    stratify: bool
    normalize: bool  # resolved: the spec's value or the dataset's default
    #: Fixed per-channel {"mean", "std"} (pretrained weights' own) instead of fitted statistics.
    norm_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @classmethod
    def of(
        cls, dataset: Any, info: DatasetInfo, norm_stats: dict[str, list[float]] | None = None
    ) -> PrepSpec:
        """From a `DatasetSpec` (or anything with its fields)."""
        norm = info.default_normalize if dataset.normalize is None else bool(dataset.normalize)
        return cls(
            float(dataset.val_fraction),
            float(dataset.test_fraction),
            int(dataset.split_seed),
            bool(dataset.stratify),
            norm,
            (tuple(norm_stats["mean"]), tuple(norm_stats["std"])) if norm_stats else None,
        )


def _builtin_stamp(name: str, datasets_dir: Path | None) -> dict[str, Any]:
    """A built-in's version: torchvision sets' files (name, size, mtime; a stat each, no reading);
    scikit-learn's version for everything (the bundled sets ship with it)."""
    stamp: dict[str, Any] = {}
    try:
        stamp["scikit-learn"] = metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:  # pragma: no cover
        stamp["scikit-learn"] = None
    folder = BUILTIN_FILES.get(name)
    if folder is not None and datasets_dir is not None:
        root = Path(datasets_dir) / folder
        files = []
        if root.is_dir():
            for p in sorted(root.rglob("*")):
                try:
                    st = p.stat()
                except OSError:
                    continue
                if p.is_file():
                    files.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
        stamp["files"] = files
    return stamp


def cache_key(
    fingerprint: str, info: DatasetInfo, prep: PrepSpec, datasets_dir: Path | None = None
) -> str:
    """The entry's name: sha256 of everything that decides the preprocessed tensors."""
    blob: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "fingerprint": fingerprint,
        "info": {
            "task": info.task,
            "input_shape": list(info.input_shape),
            "num_classes": info.num_classes,
            "class_names": info.class_names,
            "target_dim": info.target_dim,
            "kind": info.kind,
        },
        "prep": asdict(prep),
    }
    if fingerprint.startswith("builtin:"):
        blob["builtin"] = _builtin_stamp(info.name, datasets_dir)
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


@dataclass
class CacheHit:
    prepared: Prepared
    meta: dict[str, Any]
    seconds: float


def _flat(prepared: Prepared) -> dict[str, torch.Tensor]:
    t: dict[str, torch.Tensor] = {}
    for name in ("train", "val", "test"):
        part: Arrays | None = getattr(prepared, name)
        if part is not None:
            t[f"{name}.X"] = part.X.detach().cpu().contiguous()
            t[f"{name}.y"] = part.y.detach().cpu().contiguous()
    for name, idx in prepared.indices.items():
        t[f"{name}.index"] = idx.detach().cpu().contiguous()
    if prepared.normalizer is not None:
        t["normalizer.mean"] = prepared.normalizer.mean.detach().cpu().contiguous()
        t["normalizer.std"] = prepared.normalizer.std.detach().cpu().contiguous()
    return t


#: safetensors' dtype names → numpy's, for the dtypes an entry holds.
_NUMPY_DTYPES: dict[str, type[np.generic]] = {
    "U8": np.uint8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "BOOL": np.bool_,
}


def map_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, each a copy-on-write memory map of its bytes in the file
    (safetensors' layout: an 8-byte little-endian header length, a JSON header of dtypes, shapes and
    byte ranges, then the data): nothing is read until used. An empty or misaligned tensor is
    copied instead."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    base = 8 + length
    out: dict[str, torch.Tensor] = {}
    for name, d in header.items():
        if name == "__metadata__":
            continue
        dtype = np.dtype(_NUMPY_DTYPES[d["dtype"]])
        shape = tuple(int(s) for s in d["shape"])
        begin, end = (int(o) for o in d["data_offsets"])
        if end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"{name}: {end - begin} bytes for shape {list(shape)} of {dtype}")
        if end == begin:
            out[name] = torch.from_numpy(np.empty(shape, dtype))
            continue
        mapped: np.ndarray = np.memmap(
            path, dtype=dtype, mode="c", offset=base + begin, shape=shape
        )
        if (base + begin) % dtype.itemsize:
            mapped = np.array(mapped)
        out[name] = torch.from_numpy(mapped)
    return out


class PreprocessCache:
    """The entries under `<cache_dir>/preprocessed/`."""

    def __init__(self, cache_dir: Path | str) -> None:
        self.root = Path(cache_dir) / SUBDIR

    def entry_dir(self, key: str) -> Path:
        return self.root / key

    # --- reading ---------------------------------------------------------------------------------

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The entry's meta if it looks complete (cheap: its meta and the tensors file's size, no
        tensor read), else None. `load` verifies it fully."""
        entry = self.entry_dir(key)
        try:
            meta = json.loads((entry / META).read_text())
            if not isinstance(meta, dict):
                return None
            if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
                return None
            if (entry / TENSORS).stat().st_size != meta["tensors"]["bytes"]:
                return None
            return meta
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def load(self, key: str) -> CacheHit | None:
        """The cached `Prepared`, verified (size, sha256, tensor names and shapes); None when the
        entry is missing, partial or corrupt. A hit marks the entry as recently used."""
        started = time.monotonic()
        meta = self.lookup(key)
        if meta is None:
            return None
        entry = self.entry_dir(key)
        try:
            if fsio.sha256_file(entry / TENSORS) != meta["tensors"]["sha256"]:
                raise ValueError("the tensors file does not match its sha256")
            tensors = map_tensors(entry / TENSORS)
            prepared = self._prepared(tensors, meta)
        except Exception as exc:  # corrupt: a miss; out of the way so the caller's rebuild lands
            log.warning("preprocessed cache entry %s unusable (%s): discarded", key, exc)
            self._discard(entry)
            return None
        with contextlib.suppress(OSError):  # evicted meanwhile: fine
            os.utime(entry / META)  # last use, for `evict`
        return CacheHit(prepared, meta, time.monotonic() - started)

    @staticmethod
    def _prepared(t: dict[str, torch.Tensor], meta: dict[str, Any]) -> Prepared:
        parts: dict[str, Arrays | None] = {}
        sizes = meta["sizes"]
        for name in ("train", "val", "test"):
            if f"{name}.X" in t:
                arrays = Arrays(t[f"{name}.X"], t[f"{name}.y"])
                if len(arrays) != sizes[name] or arrays.y.shape[0] != sizes[name]:
                    raise ValueError(f"{name}: {len(arrays)} samples, meta says {sizes[name]}")
                parts[name] = arrays
            else:
                if sizes.get(name):
                    raise ValueError(f"{name}: missing")
                parts[name] = None
        indices = {}
        for name, part in parts.items():
            if part is not None:
                idx = t[f"{name}.index"]
                if idx.shape != (len(part),):
                    raise ValueError(f"{name}: {tuple(idx.shape)} indices for {len(part)} samples")
                indices[name] = idx
        p = meta["prepared"]
        normalizer = None
        if p["normalizer"] is not None:
            normalizer = Normalizer(t["normalizer.mean"], t["normalizer.std"], p["normalizer"])
        return Prepared(
            parts["train"],  # type: ignore[arg-type]
            parts["val"],
            parts["test"],
            normalizer,
            bool(p["stratified"]),
            p["test_source"],
            indices,
        )

    # --- writing ---------------------------------------------------------------------------------

    def store(
        self, key: str, prepared: Prepared, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write the entry atomically. Returns {"stored": bool, "bytes": int} (stored False when
        another process published the same key first: its entry is kept, ours dropped). Raises on
        I/O errors (the caller decides whether that matters)."""
        final = self.entry_dir(key)
        tmp = fsio.new_tmp_dir(self.root)
        try:
            tensors = _flat(prepared)
            safetensors.torch.save_file(
                tensors, str(tmp / TENSORS), metadata={"format": f"tas-preprocessed-{CACHE_FORMAT}"}
            )
            with open(tmp / TENSORS, "rb+") as f:
                os.fsync(f.fileno())
            size = (tmp / TENSORS).stat().st_size
            meta = {
                "format": CACHE_FORMAT,
                "key": key,
                "created": dt.datetime.now(dt.UTC).isoformat(),
                "tensors": {
                    "file": TENSORS,
                    "bytes": size,
                    "sha256": fsio.sha256_file(tmp / TENSORS),
                },
                "sizes": {
                    name: len(part) if (part := getattr(prepared, name)) is not None else 0
                    for name in ("train", "val", "test")
                },
                "prepared": {
                    "stratified": prepared.stratified,
                    "test_source": prepared.test_source,
                    "normalizer": prepared.normalizer.kind if prepared.normalizer else None,
                },
                "outputs": prepared.outputs(),
                **(extra or {}),
            }
            fsio.write_durable(tmp / META, json.dumps(meta, indent=1).encode())
            fsio.fsync_dir(tmp)
            stored = self._publish(tmp, final, key)
            return {"stored": stored, "bytes": size}
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            fsio.remove_stale_tmp(self.root)

    def _publish(self, tmp: Path, final: Path, key: str) -> bool:
        for _ in range(2):
            try:
                os.rename(tmp, final)  # fails if `final` exists (a directory with files in it)
                fsio.fsync_dir(self.root)
                return True
            except OSError:
                if not final.exists():
                    raise
                if self.lookup(key) is not None:
                    return False  # someone else published it first: keep theirs
                self._discard(final)  # a corrupt or partial entry: aside, then try again
        return False

    def _discard(self, entry: Path) -> None:
        trash = self.root / f"{fsio.TRASH_PREFIX}{uuid.uuid4().hex}"
        try:
            os.rename(entry, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    # --- housekeeping ----------------------------------------------------------------------------

    def _entries(self) -> list[tuple[Path, int, float]]:
        """(entry, bytes, last use) for every published entry."""
        out: list[tuple[Path, int, float]] = []
        if not self.root.is_dir():
            return out
        for entry in self.root.iterdir():
            if entry.name.startswith((fsio.TMP_PREFIX, fsio.TRASH_PREFIX)) or not entry.is_dir():
                continue
            try:
                size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
                used = (entry / META).stat().st_mtime if (entry / META).exists() else 0.0
            except OSError:
                continue
            out.append((entry, size, used))
        return out

    def stats(self) -> dict[str, Any]:
        entries = self._entries()
        return {
            "path": str(self.root),
            "entries": len(entries),
            "bytes": sum(size for _, size, _ in entries),
        }

    def evict(self, max_bytes: int) -> list[str]:
        """Delete the least recently used entries until the cache holds at most `max_bytes`;
        returns the keys deleted. A reader holding an evicted entry's file open keeps its data."""
        entries = sorted(self._entries(), key=lambda e: e[2])
        total = sum(size for _, size, _ in entries)
        removed = []
        for entry, size, _ in entries:
            if total <= max_bytes:
                break
            self._discard(entry)
            total -= size
            removed.append(entry.name)
        return removed
