"""Checkpoints: everything needed to continue a run exactly where it stopped.

One checkpoint is one directory `ckpt-e<epoch>-s<step>/`:
- `model.safetensors`: the weights (safetensors: loading it runs no code);
- `state.pt`: the rest (optimizer, scheduler, RNG states, epoch, step in epoch, partial-epoch
  accumulators, early-stopping state, metric history), `torch.save`d and read back ONLY with
  `torch.load(weights_only=True)`, no fallback (a full unpickle could run any code);
- `manifest.json`: position, monitored metric, and the sha256 of each file.

Saved atomically (`tas.core.fsio`): a kill at any instant leaves the previous checkpoints intact, and a
file corrupted later is caught by its checksum, in which case `latest_valid` falls back to the one
before. Retention keeps the last `keep_last` plus the best by the monitored metric, never deleting
the best.

Given an artifact store (`tas.core.objstore`, e.g. S3), the same checkpoints are bundles under a
prefix of it instead: `<prefix>/ckpt-e<epoch>-s<step>/` holds the two objects and the bundle's
manifest, written last (an object store has no rename), whose `meta` is the manifest above without
`files` (the bundle's manifest has each object's size and sha256). A save cut off before its
manifest is never seen; every object read is verified; the manager behaves the same either way, a
checkpoint's `path` being its URL in the store."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch
from torch import nn

from tas.core import fsio
from tas.core.errors import CheckpointMismatch
from tas.core.objstore import (
    ObjectStore,
    ObjectStoreError,
    delete_bundle,
    list_bundles,
    open_bundle,
    sweep_torn,
    write_bundle,
)
from tas.core.objstore.base import join
from tas.core.state import capture_rng, restore_rng

WEIGHTS = "model.safetensors"
STATE = "state.pt"
MANIFEST = "manifest.json"
#: The layout of `state.pt`, as `save_training` writes it and `restore_training` reads it.
STATE_FORMAT = 1
_NAME = re.compile(r"^ckpt-e(\d+)-s(\d+)$")


@dataclass(frozen=True)
class CheckpointRecord:
    """A saved checkpoint. `epoch` counts completed epochs; `step` counts steps done in the next one
    (0 for an epoch-end checkpoint). `sha256` is the weights file's."""

    epoch: int
    step: int
    path: str
    metric_name: str | None
    metric_value: float | None
    is_best: bool
    sha256: str
    #: Set on the record `save` returns: every checkpoint kept after retention (the others are gone).
    kept_paths: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "path": self.path,
            "metric_name": self.metric_name,
            "metric_value": self.metric_value,
            "is_best": self.is_best,
            "sha256": self.sha256,
            "kept_paths": list(self.kept_paths),
        }


@dataclass
class LoadedCheckpoint:
    record: CheckpointRecord
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    manifest: dict[str, Any]


def _position(name: str) -> tuple[int, int] | None:
    m = _NAME.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


class _Directory:
    """Checkpoints as directories on a local disk, each published by an atomic rename."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        fsio.remove_stale_tmp(self.dir)

    def paths(self) -> list[str]:
        """Checkpoint directories, oldest first (by epoch, then step)."""
        if not self.dir.is_dir():
            return []
        found = [(pos, p) for p in self.dir.iterdir() if p.is_dir() and (pos := _position(p.name))]
        return [str(p) for _, p in sorted(found)]

    def manifests(self) -> list[tuple[str, dict[str, Any]]]:
        return [(p, m) for p in self.paths() if (m := self.manifest(p)) is not None]

    @staticmethod
    def manifest(path: str) -> dict[str, Any] | None:
        try:
            m = json.loads((Path(path) / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        return m if isinstance(m, dict) and isinstance(m.get("files"), dict) else None

    def read(self, path: str) -> tuple[dict[str, Any], dict[str, bytes]] | None:
        """The manifest and the bytes of the files it names (not yet checked against it)."""
        m = self.manifest(path)
        if m is None or set(m["files"]) != {WEIGHTS, STATE}:
            return None
        try:
            return m, {name: (Path(path) / name).read_bytes() for name in m["files"]}
        except OSError:
            return None

    def write(self, name: str, blobs: dict[str, bytes], manifest: dict[str, Any]) -> str:
        tmp = fsio.new_tmp_dir(self.dir)
        try:
            files = {n: fsio.write_durable(tmp / n, data) for n, data in blobs.items()}
            manifest = {**manifest, "files": files}
            fsio.write_durable(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
            final = self.dir / name
            fsio.publish_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return str(final)

    def delete(self, paths: list[str]) -> None:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)
        if paths:
            fsio.fsync_dir(self.dir)


class _Bundles:
    """Checkpoints as bundles under a prefix of an artifact store (`tas.core.objstore.bundle`)."""

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        # What saves killed mid-upload left (only old ones: a young one may be a save running).
        sweep_torn(store, self.prefix, older_than_s=600.0)

    def _key(self, path: str) -> str:
        return path[len(self.store.describe("")) :]

    def paths(self) -> list[str]:
        return [p for p, _ in self.manifests()]

    def manifests(self) -> list[tuple[str, dict[str, Any]]]:
        """Committed bundles only (a save cut off before its manifest is not listed), oldest first,
        each with its checkpoint manifest (the bundle's meta and, as `files`, each sha256)."""
        found = []
        for bundle in list_bundles(self.store, self.prefix, newest_first=False):
            if (pos := _position(bundle.name)) is not None:
                files = {n: e.sha256 for n, e in bundle.manifest.objects.items()}
                found.append((pos, bundle.describe(), {**bundle.meta, "files": files}))
        return [(path, m) for _, path, m in sorted(found, key=lambda f: f[0])]

    def read(self, path: str) -> tuple[dict[str, Any], dict[str, bytes]] | None:
        """The manifest and the objects' bytes, each verified against the bundle's manifest."""
        try:
            bundle = open_bundle(self.store, self._key(path))
            if set(bundle.names()) != {WEIGHTS, STATE}:
                return None
            blobs = {name: bundle.read_bytes(name) for name in bundle.names()}
        except (ObjectStoreError, OSError):
            return None
        files = {n: e.sha256 for n, e in bundle.manifest.objects.items()}
        return {**bundle.meta, "files": files}, blobs

    def write(self, name: str, blobs: dict[str, bytes], manifest: dict[str, Any]) -> str:
        key = join(self.prefix, name)
        with write_bundle(self.store, key) as w:
            for n, data in blobs.items():
                w.put_bytes(n, data)
            return w.commit(manifest).describe()

    def delete(self, paths: list[str]) -> None:
        for path in paths:
            delete_bundle(self.store, self._key(path))


class CheckpointManager:
    def __init__(
        self,
        directory: Path | str,
        keep_last: int = 2,
        monitor: str | None = None,
        mode: Literal["min", "max"] = "min",
        *,
        store: ObjectStore | None = None,
    ) -> None:
        """Checkpoints in `directory`, or, given a `store`, under the prefix `directory` of it."""
        if keep_last < 1:
            raise ValueError("keep_last must be at least 1")
        self.dir = Path(directory)
        self.keep_last = keep_last
        self.monitor = monitor
        self.mode = mode
        self._where: _Directory | _Bundles = (
            _Bundles(store, str(directory)) if store is not None else _Directory(self.dir)
        )

    # --- reading -----------------------------------------------------------------------------

    def _better(self, a: float, b: float | None) -> bool:
        if b is None:
            return True
        return a > b if self.mode == "max" else a < b

    @staticmethod
    def _metric(m: dict[str, Any]) -> float | None:
        v = m.get("metric_value")
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else None

    def _best_dir(self, manifests: list[tuple[str, dict[str, Any]]]) -> str | None:
        best: tuple[str, float] | None = None
        for path, m in manifests:
            v = self._metric(m)
            if (
                v is not None
                and m.get("metric_name") == self.monitor
                and self._better(v, best[1] if best else None)
            ):
                best = (path, v)
        return best[0] if best else None

    def _record(self, path: str, m: dict[str, Any], best: str | None) -> CheckpointRecord:
        return CheckpointRecord(
            epoch=int(m["epoch"]),
            step=int(m["step"]),
            path=path,
            metric_name=m.get("metric_name"),
            metric_value=self._metric(m),
            is_best=path == best,
            sha256=str(m["files"].get(WEIGHTS, "")),
        )

    def records(self) -> list[CheckpointRecord]:
        """Checkpoints on disk with a readable manifest, oldest first (contents not verified)."""
        manifests = self._where.manifests()
        best = self._best_dir(manifests)
        return [self._record(p, m, best) for p, m in manifests]

    def best(self) -> CheckpointRecord | None:
        return next((r for r in self.records() if r.is_best), None)

    def _read_verified(self, path: str) -> tuple[dict[str, Any], dict[str, bytes]] | None:
        """The manifest and file bytes, if every file matches its checksum; else None."""
        read = self._where.read(path)
        if read is None:
            return None
        m, blobs = read
        for name, digest in m["files"].items():
            if fsio.sha256_bytes(blobs[name]) != digest:
                return None
        return m, blobs

    def verify(self, path: Path | str) -> bool:
        return self._read_verified(str(path)) is not None

    def latest_valid(self) -> CheckpointRecord | None:
        """The newest checkpoint whose files all match their checksums (older ones are tried in turn
        when the newest is corrupt or torn)."""
        loaded = self.load_latest_valid()
        return loaded.record if loaded else None

    def load_latest_valid(
        self, map_location: str | torch.device = "cpu"
    ) -> LoadedCheckpoint | None:
        """Verify and parse in one read of each file (no window between check and use)."""
        records = {r.path: r for r in self.records()}
        for path in reversed(self._where.paths()):
            verified = self._read_verified(path)
            if verified is None:
                continue
            manifest, blobs = verified
            record = records.get(path) or self._record(path, manifest, None)
            return self._parse(record, manifest, blobs, map_location)
        return None

    def load_best_weights(
        self, map_location: str | torch.device = "cpu"
    ) -> tuple[CheckpointRecord, dict[str, torch.Tensor]] | None:
        """The best checkpoint by the monitored metric and its weights, verified against their
        checksums; None when there is no best or its files do not match (no fallback to another:
        the caller decides what a missing best means)."""
        best = self.best()
        if best is None:
            return None
        verified = self._read_verified(best.path)
        if verified is None:
            return None
        weights = safetensors.torch.load(verified[1][WEIGHTS])
        return best, {k: v.to(map_location) for k, v in weights.items()}

    @staticmethod
    def _parse(
        record: CheckpointRecord,
        manifest: dict[str, Any],
        blobs: dict[str, bytes],
        map_location: str | torch.device,
    ) -> LoadedCheckpoint:
        weights = safetensors.torch.load(blobs[WEIGHTS])
        if torch.device(map_location).type != "cpu":
            weights = {k: v.to(map_location) for k, v in weights.items()}
        state = torch.load(io.BytesIO(blobs[STATE]), map_location=map_location, weights_only=True)
        return LoadedCheckpoint(record, weights, state, manifest)

    # --- writing -----------------------------------------------------------------------------

    def save(
        self,
        weights: dict[str, torch.Tensor],
        state: dict[str, Any],
        *,
        epoch: int,
        step: int,
        metrics: dict[str, float] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> CheckpointRecord:
        """Write a checkpoint atomically, then apply retention. `metrics` are the epoch's metrics
        (None mid-epoch: such a checkpoint is never "best")."""
        value = None
        if metrics and self.monitor in metrics:
            v = metrics[self.monitor]
            value = float(v) if v is not None and math.isfinite(v) else None
        weights_cpu = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
        weights_bytes = safetensors.torch.save(weights_cpu)
        buf = io.BytesIO()
        torch.save(state, buf)

        manifest = {
            "format": 1,
            "epoch": epoch,
            "step": step,
            "metric_name": self.monitor,
            "metric_value": value,
            "metrics": metrics or {},
            "created_at": time.time(),
            "extra": extra or {},
        }
        final = self._where.write(
            f"ckpt-e{epoch:06d}-s{step:07d}",
            {WEIGHTS: weights_bytes, STATE: buf.getvalue()},
            manifest,
        )
        kept = self._retain()
        record = next(r for r in kept if r.path == final)
        return dataclasses.replace(record, kept_paths=tuple(r.path for r in kept))

    def _retain(self) -> list[CheckpointRecord]:
        """Delete all but the last `keep_last` and the best; return what is kept."""
        records = self.records()
        keep = {r.path for r in records[-self.keep_last :]} | {r.path for r in records if r.is_best}
        self._where.delete([r.path for r in records if r.path not in keep])
        return [r for r in records if r.path in keep]


# --- a training run's checkpoint: what is written, and read back, in one place ---------------------


@dataclass
class Resumable:
    """The live objects of a run whose state a checkpoint carries beside the loop's own."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None


def save_training(
    manager: CheckpointManager,
    live: Resumable,
    loop: dict[str, Any],
    *,
    metrics: dict[str, float] | None,
    seed: int,
    batch_size: int,
    spec_sha256: str,
    job: str,
    rank_rng: list[dict[str, Any]] | None = None,
) -> CheckpointRecord:
    """Checkpoint a run: the weights, `state.pt` (every key `restore_training` reads) and, in the
    manifest, the fingerprint of the spec a resume must match. `loop` is the loop's state as
    `LoopState.to_dict` gives it; `metrics` the epoch's row (None mid-epoch: never the best)."""
    epoch, step = int(loop["epoch"]), int(loop["step"])
    state = {
        "format": STATE_FORMAT,
        "loop": loop,
        "optimizer": live.optimizer.state_dict(),
        "scheduler": live.scheduler.state_dict() if live.scheduler is not None else None,
        "scaler": live.scaler.state_dict() if live.scaler is not None else None,
        "rng": capture_rng(),
        # For a reader of the file: the data order is a pure function of (seed, epoch), and a
        # resume starts at `step` of it; nothing reads this back.
        "data_order": {"seed": seed, "epoch": epoch, "step": step, "batch_size": batch_size},
    }
    if rank_rng is not None:  # a data-parallel run: each process's generators, in rank order
        state["rank_rng"] = rank_rng
    return manager.save(
        live.model.state_dict(),
        state,
        epoch=epoch,
        step=step,
        metrics=metrics,
        extra={"spec_sha256": spec_sha256, "job": job},
    )


def restore_training(
    loaded: LoadedCheckpoint, live: Resumable, *, spec_sha256: str
) -> dict[str, Any]:
    """Put what `save_training` wrote back into the live objects and the random generators; return
    the loop's state (for `LoopState.from_dict`). A checkpoint of another spec is refused: its
    weights and optimizer state would continue a different run."""
    if loaded.manifest.get("extra", {}).get("spec_sha256") != spec_sha256:
        raise CheckpointMismatch(
            f"the checkpoint of epoch {loaded.record.epoch} step {loaded.record.step} was"
            " written for another spec"
        )
    state = loaded.state
    live.model.load_state_dict(loaded.weights)
    live.optimizer.load_state_dict(state["optimizer"])
    if live.scheduler is not None and state.get("scheduler") is not None:
        live.scheduler.load_state_dict(state["scheduler"])
    if live.scaler is not None and state.get("scaler") is not None:
        live.scaler.load_state_dict(state["scaler"])
    restore_rng(state["rng"])
    loop: dict[str, Any] = state["loop"]
    return loop
