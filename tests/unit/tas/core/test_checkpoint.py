"""Checkpoints: atomic (a kill mid-save leaves the last good one), verified (a corrupt file is
caught by its checksum), weights-only (loading runs no code), and retained as promised."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from tas.core.checkpoint import MANIFEST, STATE, WEIGHTS, CheckpointManager
from tas.core.state import capture_rng, restore_rng


def save(m: CheckpointManager, epoch: int, acc: float | None, step: int = 0) -> Any:
    weights = {"w": torch.full((3,), float(epoch)), "b": torch.zeros(2)}
    state = {"epoch": epoch, "rng": capture_rng(), "nested": {"t": torch.arange(4), "x": [1, 2.5]}}
    metrics = None if acc is None else {"val_accuracy": acc, "train_loss": 1.0 / epoch}
    return m.save(weights, state, epoch=epoch, step=step, metrics=metrics)


def names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_roundtrip_and_record(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path, keep_last=2, monitor="val_accuracy", mode="max")
    rec = save(m, 1, 0.5)
    assert (rec.epoch, rec.step, rec.metric_name, rec.metric_value, rec.is_best) == (
        1,
        0,
        "val_accuracy",
        0.5,
        True,
    )
    assert rec.kept_paths == (rec.path,)
    manifest = json.loads((Path(rec.path) / MANIFEST).read_text())
    assert manifest["files"][WEIGHTS] == rec.sha256
    loaded = m.load_latest_valid()
    assert loaded is not None
    assert torch.equal(loaded.weights["w"], torch.full((3,), 1.0))
    assert torch.equal(loaded.state["nested"]["t"], torch.arange(4))
    assert loaded.state["nested"]["x"] == [1, 2.5]


def test_rng_state_survives_weights_only(tmp_path: Path) -> None:
    import random

    import numpy as np

    m = CheckpointManager(tmp_path)
    save(m, 1, None)  # captures the RNG state inside save()
    loaded = m.load_latest_valid()
    assert loaded is not None
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    restore_rng(loaded.state["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


@pytest.mark.parametrize("victim", [WEIGHTS, STATE, MANIFEST])
def test_corrupt_latest_falls_back_to_previous(tmp_path: Path, victim: str) -> None:
    m = CheckpointManager(tmp_path, keep_last=3, monitor="val_accuracy", mode="max")
    save(m, 1, 0.5)
    second = save(m, 2, 0.6)
    latest = save(m, 3, 0.7)
    path = Path(latest.path) / victim
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # torn
    found = m.latest_valid()
    assert found is not None and found.path == second.path
    loaded = m.load_latest_valid()
    assert loaded is not None and torch.equal(loaded.weights["w"], torch.full((3,), 2.0))


def test_bit_flip_is_caught_by_the_checksum(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path, keep_last=2)
    first = save(m, 1, None)
    latest = save(m, 2, None)
    p = Path(latest.path) / WEIGHTS
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01  # same size, one bit: still parseable, but not what was written
    p.write_bytes(bytes(data))
    assert m.verify(first.path) and not m.verify(latest.path)
    assert m.latest_valid() == m.records()[0]


def test_no_valid_checkpoint(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path / "none")
    assert m.latest_valid() is None and m.records() == []


def test_retention_keeps_last_k_and_never_the_best(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path, keep_last=2, monitor="val_accuracy", mode="max")
    save(m, 1, 0.5)
    best = save(m, 2, 0.9)
    for epoch, acc in [(3, 0.6), (4, 0.7), (5, 0.8)]:
        rec = save(m, epoch, acc)
    assert names(tmp_path) == [
        "ckpt-e000002-s0000000",
        "ckpt-e000004-s0000000",
        "ckpt-e000005-s0000000",
    ]
    assert set(rec.kept_paths) == {best.path, *(str(tmp_path / n) for n in names(tmp_path))}
    assert [r.is_best for r in m.records()] == [True, False, False]
    newer_best = save(m, 6, 0.95)
    assert newer_best.is_best
    assert names(tmp_path) == ["ckpt-e000005-s0000000", "ckpt-e000006-s0000000"]


def test_min_mode_and_mid_epoch_checkpoints_are_never_best(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path, keep_last=1, monitor="train_loss", mode="min")
    m.save({"w": torch.zeros(1)}, {}, epoch=1, step=0, metrics={"train_loss": 0.1})
    m.save({"w": torch.zeros(1)}, {}, epoch=1, step=7, metrics=None)  # a stop mid-epoch
    m.save({"w": torch.zeros(1)}, {}, epoch=2, step=0, metrics={"train_loss": 0.3})
    recs = m.records()
    assert [(r.epoch, r.step, r.is_best) for r in recs] == [(1, 0, True), (2, 0, False)]


def test_a_kill_midway_leaves_the_previous_checkpoint_whole(tmp_path: Path) -> None:
    """A save killed before its rename leaves only a temp dir: invisible, and cleaned up later."""
    m = CheckpointManager(tmp_path, keep_last=2)
    good = save(m, 1, None)
    torn = tmp_path / ".tmp-deadbeef"
    torn.mkdir()
    (torn / WEIGHTS).write_bytes(b"half a file")
    assert m.latest_valid() == m.records()[0] and m.records()[0].path == good.path
    os.utime(torn, (0, 0))  # an old leftover
    CheckpointManager(tmp_path)  # a new attempt's manager sweeps it
    assert not torn.exists()


def test_resave_at_the_same_position_replaces_it(tmp_path: Path) -> None:
    """After a fallback, a resumed run saves the same (epoch, step) again."""
    m = CheckpointManager(tmp_path, keep_last=2)
    save(m, 1, None)
    first = save(m, 2, None)
    (Path(first.path) / STATE).write_bytes(b"corrupt")
    again = save(m, 2, None)
    assert again.path == first.path and m.verify(again.path)


class Boom:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("touch /tmp/tas-pwned-by-checkpoint",))


def test_a_pickle_payload_in_a_checkpoint_is_refused(tmp_path: Path) -> None:
    """weights_only=True with no fallback: a state.pt carrying a __reduce__ payload is never run,
    even with a manifest whose checksum matches it."""
    marker = Path("/tmp/tas-pwned-by-checkpoint")
    marker.unlink(missing_ok=True)
    m = CheckpointManager(tmp_path, keep_last=2)
    rec = save(m, 1, None)
    buf = io.BytesIO()
    torch.save({"x": Boom()}, buf)  # torch's own zip format, with a reducer inside
    evil = buf.getvalue()
    (Path(rec.path) / STATE).write_bytes(evil)
    manifest = json.loads((Path(rec.path) / MANIFEST).read_text())
    manifest["files"][STATE] = hashlib.sha256(evil).hexdigest()
    (Path(rec.path) / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(pickle.UnpicklingError, match=r"(?i)weights.only"):
        m.load_latest_valid()
    assert not marker.exists()
