"""The `model.init_from` file with an artifact store is this machine's cached copy, and the cache
evicts whatever is not held: a resolved source is held from eviction for as long as its reader
keeps its ExitStack open (the API while it reads the header, the worker for the whole run), so an
eviction between resolving and reading cannot remove it. Each test runs on a `file://` store and
on moto's S3 server."""

from __future__ import annotations

import hashlib
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from sqlalchemy.orm import Session, sessionmaker

from tas.core.errors import TrainingError
from tas.core.objstore import LocalCache, ObjectStore, write_bundle
from tas.core.pipeline import RunContext
from tas.core.spec import JobSpec
from tas.settings import Settings
from tas.store import files as file_store
from tas.store import jobs as job_store
from tas.store import sources
from tas.store import weights as weights_store
from tas.store.artifacts import open_artifacts
from tas.store.orm import Job, WeightsFile
from tests.helpers.api import migrated_settings
from worker import claim, runner

DATA = safetensors.torch.save({"w": torch.arange(6.0)})
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def settings(tmp_path: Path, remote_store_url: str) -> Settings:
    return migrated_settings(
        tmp_path / "worker",
        artifact_url=remote_store_url,
        local_cache_dir=tmp_path / "cache",
        device="cpu",
    )


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    return open_artifacts(settings).store


@pytest.fixture
def cache(settings: Settings) -> LocalCache:
    return open_artifacts(settings).cache


@pytest.fixture
def weights(store: ObjectStore, sessions: sessionmaker[Session]) -> dict[str, Any]:
    """An uploaded weights file, as POST /weights leaves it: its row and its object."""
    store.put_bytes(
        file_store.upload_key(weights_store.weights_relative(SHA, tenant="default")), DATA
    )
    with sessions() as s:
        s.add(WeightsFile(tenant="default", sha256=SHA, name="w", size_bytes=len(DATA), tensors={}))
        s.commit()
    return {"ref": f"weights:{SHA[:16]}", "kind": "weights", "id": SHA[:16], "sha256": SHA}


def test_a_held_model_weights_file_outlives_an_eviction(
    settings: Settings, store: ObjectStore, cache: LocalCache
) -> None:
    with write_bundle(store, "jobs/j1/model") as bundle:
        bundle.put_bytes("model.safetensors", DATA)
        bundle.put_bytes("card.json", b"{}")
        bundle.commit()
    with ExitStack() as hold:
        path = sources.model_weights(settings, "jobs/j1/model", hold=hold)
        assert path is not None and path.is_relative_to(settings.object_cache_dir)
        assert cache.evict(0) == []
        assert path.read_bytes() == DATA
    assert cache.evict(0) != []  # released with the stack: evictable again
    assert not path.exists()
    # Without a hold the path is only good for seeing that the source exists.
    unheld = sources.model_weights(settings, "jobs/j1/model")
    assert unheld is not None
    cache.evict(0)
    assert not unheld.exists()


def test_held_uploaded_weights_outlive_an_eviction(
    settings: Settings,
    sessions: sessionmaker[Session],
    cache: LocalCache,
    weights: dict[str, Any],
) -> None:
    with sessions() as s, ExitStack() as hold:
        found = sources.resolve_init_source(s, "default", weights["ref"], settings, hold=hold)
        pinned = sources.resolve_pinned(s, "default", found.pinned, settings, hold=hold)
        assert pinned == found.path
        assert cache.evict(0) == []
        assert found.path.read_bytes() == DATA
    assert cache.evict(0) != []
    assert not found.path.exists()


def test_the_worker_holds_the_init_from_file_for_the_whole_run(
    settings: Settings,
    sessions: sessionmaker[Session],
    cache: LocalCache,
    weights: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An eviction on this machine while the job runs (another job's fetch past the cache's
    bound) leaves the file the pipeline is about to open; it is released when the run ends."""
    read: list[bytes] = []

    def pipeline(spec: JobSpec, info: Any, ctx: RunContext, *args: Any, **kw: Any) -> None:
        assert ctx.init_weights is not None
        cache.evict(0)
        read.append(ctx.init_weights.read_bytes())
        raise TrainingError("stopped here by the test", stage="train")

    monkeypatch.setattr(runner, "run_pipeline", pipeline)
    body = {
        "name": "ft",
        "dataset": {"name": "iris"},
        "model": {"arch": "mlp", "hidden": [8], "init_from": weights["ref"]},
    }
    with sessions() as s:
        job = job_store.create_job(s, body, tenant="default", max_attempts=1)
        job.result = {"init_from": weights}
        s.commit()
        job_id = job.id
    assert claim.run_job(job_id, settings=settings, sessions=sessions, owner="t").status == (
        "failed"
    )
    assert read == [DATA]
    with sessions() as s:
        failed = s.get(Job, job_id)
        assert failed is not None and failed.error is not None
        assert "stopped here by the test" in failed.error["message"]
    assert cache.evict(0) != []  # the run ended: nothing holds it any more
