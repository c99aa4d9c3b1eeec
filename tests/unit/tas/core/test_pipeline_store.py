"""The pipeline with an artifact store (RunContext.store): checkpoints are bundles in the store, the
model and the predictions are pushed there from scratch, and a run stopped on one machine resumes
on another (another scratch directory, the same store) to the weights of an uninterrupted run; a
checkpoint whose manifest is missing (cut off mid-upload) is skipped for the one before."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load, load_file

from tas.core import predictions
from tas.core.objstore import MANIFEST, LocalStore, ObjectStore, list_bundles, open_bundle
from tas.core.pipeline import RunContext
from tests.helpers.pipeline import RecordingHooks, RunJob, job_runner

PREFIX = "jobs/j1"


def spec() -> dict[str, Any]:
    return {
        "dataset": {"name": "digits", "val_fraction": 0.15, "test_fraction": 0.1},
        "model": {"arch": "mlp", "hidden": [32], "dropout": 0.2},
        "training": {
            "optimizer": "adam",
            "lr": 3e-3,
            "epochs": 4,
            "batch_size": 32,
            "scheduler": "step",
            "step_size": 1,
            "seed": 3,
        },
        "checkpoint": {"every_epochs": 1, "keep_last": 3},
    }


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    return LocalStore(tmp_path / "store")


def machine(tmp_path: Path, name: str) -> RunJob:
    """A runner whose job directories (scratch) are this machine's own."""
    return job_runner(tmp_path / name)


def stored_weights(store: ObjectStore, key: str) -> dict[str, torch.Tensor]:
    return load(open_bundle(store, key).read_bytes("model.safetensors"))


def test_the_context_takes_a_store_with_its_prefix(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="together"):
        RunContext(job_dir=tmp_path, datasets_dir=tmp_path, store=store)
    ctx = RunContext(job_dir=tmp_path, datasets_dir=tmp_path, store=store, store_prefix=PREFIX)
    assert ctx.checkpoints_prefix == f"{PREFIX}/checkpoints"
    assert ctx.registered_model_dir == f"{PREFIX}/model"
    local = RunContext(job_dir=tmp_path, datasets_dir=tmp_path)
    assert local.checkpoints_prefix is None and local.registered_model_dir == str(
        tmp_path / "model"
    )


def test_a_run_stopped_on_one_machine_resumes_on_another_from_the_store(
    store: ObjectStore, tmp_path: Path
) -> None:
    reference = machine(tmp_path, "ref")(spec(), job="reference")

    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")
    hooks = RecordingHooks(stop_at=(100, "preempted"))  # in epoch 3
    stopped = a(spec(), job="j1", hooks=hooks, store=store, store_prefix=PREFIX)
    assert stopped.status == "preempted" and stopped.checkpoint is not None
    # Every checkpoint is a bundle in the store; machine A's scratch holds none.
    assert stopped.checkpoint.path == store.describe(
        f"{PREFIX}/checkpoints/ckpt-e{stopped.checkpoint.epoch:06d}-s{stopped.checkpoint.step:07d}"
    )
    assert not (tmp_path / "a" / "j1" / "checkpoints").exists()
    names = [bb.name for bb in list_bundles(store, f"{PREFIX}/checkpoints", newest_first=False)]
    assert names[-1] == Path(stopped.checkpoint.path).name and len(names) >= 2

    resumed = b(spec(), job="j1", store=store, store_prefix=PREFIX)
    assert resumed.status == "succeeded"
    assert resumed.resumed_from is not None
    assert (resumed.resumed_from["epoch"], resumed.resumed_from["step"]) == (
        stopped.checkpoint.epoch,
        stopped.checkpoint.step,
    )
    # The model is registered as its bundle's key, the same weights as the uninterrupted run's.
    assert resumed.model_dir == f"{PREFIX}/model"
    assert resumed.model_local_dir == str(tmp_path / "b" / "j1" / "model")
    assert reference.model_dir is not None
    ref_weights = load_file(str(Path(reference.model_dir) / "model.safetensors"))
    assert same(ref_weights, stored_weights(store, f"{PREFIX}/model"))
    assert resumed.model_sha256 == reference.model_sha256
    model = open_bundle(store, f"{PREFIX}/model")
    assert model.names() == ["card.json", "model.safetensors"]

    # The predictions: one bundle, a file per held-out split, the same as the local run's.
    bundle = open_bundle(store, f"{PREFIX}/{predictions.DIRNAME}")
    assert bundle.names() == ["test.npz", "val.npz"]
    for split in ("val", "test"):
        with np.load(io.BytesIO(bundle.read_bytes(f"{split}.npz")), allow_pickle=False) as got:
            want = predictions.read(predictions.path_for(tmp_path / "ref" / "reference", split))
            assert sorted(got.files) == sorted(want) and all(
                np.array_equal(got[k], want[k]) for k in want
            )


def test_a_checkpoint_cut_off_before_its_manifest_is_skipped_for_the_one_before(
    store: ObjectStore, tmp_path: Path
) -> None:
    reference = machine(tmp_path, "ref")(spec(), job="reference")
    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")
    stopped = a(
        spec(),
        job="j1",
        hooks=RecordingHooks(stop_at=(100, "preempted")),
        store=store,
        store_prefix=PREFIX,
    )
    assert stopped.status == "preempted"
    committed = list_bundles(store, f"{PREFIX}/checkpoints")  # newest first
    newest, previous = committed[0], committed[1]
    # As a writer killed after its objects and before its manifest leaves it.
    store.delete(f"{newest.prefix}/{MANIFEST}")
    assert store.list_objects(newest.prefix)

    hooks = RecordingHooks()
    resumed = b(spec(), job="j1", hooks=hooks, store=store, store_prefix=PREFIX)
    assert resumed.status == "succeeded" and resumed.resumed_from is not None
    epoch, step = (int(p[1:]) for p in previous.name.removeprefix("ckpt-").split("-"))
    assert (resumed.resumed_from["epoch"], resumed.resumed_from["step"]) == (epoch, step)
    assert resumed.resumed_from["path"] == previous.describe()
    assert reference.model_dir is not None
    ref_weights = load_file(str(Path(reference.model_dir) / "model.safetensors"))
    assert same(ref_weights, stored_weights(store, f"{PREFIX}/model"))
