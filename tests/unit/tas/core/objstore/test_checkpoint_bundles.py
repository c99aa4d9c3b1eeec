"""Checkpoints through the artifact store (bundles, manifest last) behave as on a local disk: saved,
retained, verified, and a save cut off before its manifest is never used."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
from torch import nn

from tas.core.checkpoint import (
    STATE,
    WEIGHTS,
    CheckpointManager,
    Resumable,
    restore_training,
    save_training,
)
from tas.core.objstore import BundleWriter, ObjectStore, list_bundles, open_bundle, write_bundle
from tas.core.objstore.base import Sink

PREFIX = "jobs/7/checkpoints"


def save(m: CheckpointManager, epoch: int, acc: float | None, step: int = 0) -> Any:
    weights = {"w": torch.full((3,), float(epoch)), "b": torch.zeros(2)}
    metrics = None if acc is None else {"val_accuracy": acc}
    return m.save(weights, {"epoch": epoch}, epoch=epoch, step=step, metrics=metrics)


def manager(store: ObjectStore, keep_last: int = 2) -> CheckpointManager:
    return CheckpointManager(PREFIX, keep_last, "val_accuracy", "max", store=store)


def names(store: ObjectStore) -> list[str]:
    return [b.name for b in list_bundles(store, PREFIX, newest_first=False)]


def test_save_load_and_retention(store: ObjectStore) -> None:
    m = manager(store)
    first = save(m, 1, 0.5)
    assert first.path == store.describe(f"{PREFIX}/ckpt-e000001-s0000000")
    assert first.is_best and first.kept_paths == (first.path,)
    best = save(m, 2, 0.9)
    for epoch, acc in [(3, 0.6), (4, 0.7)]:
        last = save(m, epoch, acc)
    assert names(store) == [
        "ckpt-e000002-s0000000",
        "ckpt-e000003-s0000000",
        "ckpt-e000004-s0000000",
    ]
    assert set(last.kept_paths) == {best.path, *(r.path for r in m.records())}
    assert store.list_objects(f"{PREFIX}/ckpt-e000001-s0000000") == []  # retention deleted it
    loaded = m.load_latest_valid()
    assert loaded is not None and loaded.record.path == last.path
    assert torch.equal(loaded.weights["w"], torch.full((3,), 4.0))
    assert loaded.state == {"epoch": 4}
    assert loaded.manifest["epoch"] == 4 and loaded.manifest["files"][WEIGHTS] == last.sha256
    on_best = m.load_best_weights()
    assert on_best is not None and on_best[0].path == best.path
    assert torch.equal(on_best[1]["w"], torch.full((3,), 2.0))


def test_a_save_cut_off_before_its_manifest_is_skipped(store: ObjectStore) -> None:
    m = manager(store)
    good = save(m, 1, 0.5)
    torn = write_bundle(store, f"{PREFIX}/ckpt-e000002-s0000000")  # killed after its objects
    torn.put_bytes(WEIGHTS, b"half")
    torn.put_bytes(STATE, b"of a checkpoint")
    assert [r.path for r in m.records()] == [good.path]
    loaded = m.load_latest_valid()
    assert loaded is not None and loaded.record.path == good.path


def test_a_corrupt_object_falls_back_to_the_previous(store: ObjectStore) -> None:
    m = manager(store, keep_last=3)
    save(m, 1, 0.5)
    second = save(m, 2, 0.6)
    latest = save(m, 3, 0.7)
    bundle = open_bundle(store, f"{PREFIX}/ckpt-e000003-s0000000")
    data = bytearray(bundle.read_bytes(WEIGHTS))
    data[-1] ^= 0x01  # same size, one bit
    store.put_bytes(bundle.key(WEIGHTS), bytes(data))
    assert not m.verify(latest.path) and m.verify(second.path)
    found = m.latest_valid()
    assert found is not None and found.path == second.path


def test_a_failed_upload_keeps_the_previous_checkpoint(store: ObjectStore) -> None:
    m = manager(store)
    good = save(m, 1, 0.5)
    real_sink = store._sink

    def failing_sink(key: str) -> Sink:
        if key.endswith(STATE):
            raise ConnectionError("the store went away mid-save")
        return real_sink(key)

    store._sink = failing_sink  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        save(m, 2, 0.9)
    store._sink = real_sink  # type: ignore[method-assign]
    assert [r.path for r in m.records()] == [good.path]
    assert store.list_objects(f"{PREFIX}/ckpt-e000002-s0000000") == []  # its weights deleted
    assert m.latest_valid() == m.records()[0]


def test_resave_at_the_same_position_replaces_it(store: ObjectStore) -> None:
    m = manager(store)
    save(m, 1, None)
    first = save(m, 2, None, step=5)
    again = save(m, 2, None, step=5)
    assert again.path == first.path and m.verify(again.path)
    assert len(store.list_objects(f"{PREFIX}/ckpt-e000002-s0000005")) == 3  # one generation


def test_a_training_run_resumes_from_the_store(store: ObjectStore) -> None:
    """save_training on one manager, restore_training through another (another machine): the
    model, the optimizer and the random generators continue exactly."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    save_training(
        manager(store),
        Resumable(model, opt),
        {"epoch": 1, "step": 0},
        metrics={"val_accuracy": 0.5},
        seed=0,
        batch_size=8,
        spec_sha256="spec",
        job="j",
    )
    expected_draw = torch.rand(3)
    other = nn.Linear(4, 2)
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    loaded = manager(store).load_latest_valid()
    assert loaded is not None
    loop = restore_training(loaded, Resumable(other, other_opt), spec_sha256="spec")
    assert loop == {"epoch": 1, "step": 0}
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True)
    )
    assert torch.equal(
        opt.state_dict()["state"][0]["momentum_buffer"],
        other_opt.state_dict()["state"][0]["momentum_buffer"],
    )
    assert torch.equal(torch.rand(3), expected_draw)


def test_a_new_manager_sweeps_old_abandoned_saves(store: ObjectStore) -> None:
    good = save(manager(store), 1, 0.5)
    old = f"g{time.time_ns() - 3600 * 10**9:x}-deadbeef"
    BundleWriter(store, f"{PREFIX}/ckpt-e000001-s0000040", generation=old).put_bytes(WEIGHTS, b"x")
    m = manager(store)  # the next attempt's
    assert store.list_objects(f"{PREFIX}/ckpt-e000001-s0000040") == []
    assert [r.path for r in m.records()] == [good.path]
