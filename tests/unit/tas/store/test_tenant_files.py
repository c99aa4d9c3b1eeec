"""Where a tenant's files live (its prefix under the artifact and uploads directories) and what it
stores (the figure its storage quota is checked against)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tas.settings import Settings
from tas.store import datasets as dataset_store
from tas.store import files as file_store
from tas.store import jobs as job_store
from tas.store import usage as usage_store
from tas.store import weights as weights_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.orm import Dataset
from tests.helpers.api import migrated_settings

CSV = b"x,y\n1,2\n3,4\n"
OPTIONS = {"target": "y"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(tmp_path)


@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    return make_sessionmaker(make_engine(settings.resolved_database_url))


def spooled(settings: Settings, data: bytes) -> file_store.Spool:
    sp = file_store.Spool(file_store.tmp_dir(settings), 1 << 20)
    sp.write(data)
    sp.finish()
    return sp


def add(sessions: sessionmaker[Session], settings: Settings, tenant: str, **schema: str) -> Dataset:
    options = {**OPTIONS, **schema}
    with spooled(settings, CSV) as sp, sessions() as s:
        row, created = dataset_store.add_dataset(
            s,
            settings,
            tenant=tenant,
            name="d",
            file_name="d.csv",
            spool=sp,
            schema={"format": "csv", "options": options},
        )
        s.commit()
        assert created
        return row


def test_the_default_tenant_keeps_the_layout_from_before_tenants(settings: Settings) -> None:
    root = settings.resolved_artifact_dir
    assert file_store.tenant_prefix("default") == ""
    assert job_store.job_dir(root, "j1", tenant="default") == root / "jobs" / "j1"
    assert weights_store.weights_path(settings, "ab", tenant="default") == (
        settings.resolved_uploads_dir / "weights" / "ab.safetensors"
    )


def test_another_tenant_lives_under_its_prefix(settings: Settings) -> None:
    root = settings.resolved_artifact_dir
    assert file_store.tenant_prefix("team-b") == "tenants/team-b/"
    assert job_store.job_dir(root, "j1", tenant="team-b") == root / "tenants/team-b/jobs/j1"
    assert weights_store.weights_path(settings, "ab", tenant="team-b") == (
        settings.resolved_uploads_dir / "tenants/team-b/weights/ab.safetensors"
    )


@pytest.mark.parametrize("tenant", ["..", "../x", "a/b", "a\\b", "", ".hidden", "x" * 65])
def test_a_tenant_that_is_not_one_path_component_names_no_directory(tenant: str) -> None:
    with pytest.raises(ValueError, match="cannot name a directory"):
        file_store.tenant_prefix(tenant)


def test_two_tenants_uploading_the_same_bytes_get_a_file_each(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    a = add(sessions, settings, "default")
    b = add(sessions, settings, "team-b")
    assert a.path == f"datasets/{a.sha256}/d.csv"
    assert b.path == f"tenants/team-b/datasets/{b.sha256}/d.csv"
    path_a = dataset_store.dataset_path(settings, a)
    path_b = dataset_store.dataset_path(settings, b)
    assert path_a != path_b and path_a.read_bytes() == path_b.read_bytes() == CSV

    # Deleting one tenant's dataset frees its file and leaves the other's.
    with sessions() as s:
        row = dataset_store.get_dataset(s, b.id, tenant="team-b")
        assert dataset_store.delete_dataset(s, settings, row) == path_b
        s.commit()
    assert path_a.exists()


def test_a_file_two_rows_of_one_tenant_share_is_kept_until_the_last_goes(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    first = add(sessions, settings, "team-b")
    second = add(sessions, settings, "team-b", task="regression")  # same bytes, other options
    assert first.path == second.path
    with sessions() as s:
        row = dataset_store.get_dataset(s, first.id, tenant="team-b")
        assert dataset_store.delete_dataset(s, settings, row) is None
        row = dataset_store.get_dataset(s, second.id, tenant="team-b")
        assert dataset_store.delete_dataset(s, settings, row) == dataset_store.dataset_path(
            settings, second
        )
        s.commit()


def test_weights_of_two_tenants_are_two_files(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    for tenant in ("default", "team-b"):
        with spooled(settings, b"not checked here") as sp, sessions() as s:
            row, created = weights_store.add_weights(
                s, settings, tenant=tenant, name="w", spool=sp, tensors={"w": [2, 2]}
            )
            s.commit()
            assert created
            assert weights_store.weights_path(settings, row.sha256, tenant=tenant).is_file()
    assert len(list(settings.resolved_uploads_dir.rglob("*.safetensors"))) == 2


def test_stored_bytes_count_uploads_once_per_file_and_the_tenants_job_files(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    add(sessions, settings, "team-b")
    add(sessions, settings, "team-b", task="regression")  # shares the first one's file
    add(sessions, settings, "team-c")
    ckpt = job_store.job_dir(settings.resolved_artifact_dir, "j1", tenant="team-b") / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "epoch-1.safetensors").write_bytes(b"\0" * 1000)
    (ckpt / "nested").mkdir()
    (ckpt / "nested" / "x").write_bytes(b"\0" * 24)
    other = job_store.job_dir(settings.resolved_artifact_dir, "j2", tenant="default")
    other.mkdir(parents=True)
    (other / "big").write_bytes(b"\0" * 5000)
    with sessions() as s:
        used = usage_store.stored_bytes(s, settings, "team-b")
        assert used == usage_store.StoredBytes(uploads=len(CSV), artifacts=1024)
        assert used.total == len(CSV) + 1024
        assert usage_store.stored_bytes(s, settings, "default").artifacts == 5000
        assert usage_store.stored_bytes(s, settings, "nobody").total == 0


def test_tree_bytes_follows_no_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"\0" * 4096)
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(b"\0" * 10)
    os.symlink(outside, root / "dir-link")
    os.symlink(outside / "big", root / "file-link")
    assert file_store.tree_bytes(root) == 10
    assert file_store.tree_bytes(tmp_path / "missing") == 0


def test_a_walk_is_reused_for_a_few_seconds_and_forgotten_on_removal(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = job_store.jobs_root(settings.resolved_artifact_dir, "team-b")
    (root / "j1").mkdir(parents=True)
    (root / "j1" / "a").write_bytes(b"\0" * 100)
    assert usage_store.artifact_bytes(settings, "team-b") == 100
    (root / "j1" / "b").write_bytes(b"\0" * 50)
    assert usage_store.artifact_bytes(settings, "team-b") == 100  # within WALK_TTL_S
    usage_store.forget_walk(root)
    assert usage_store.artifact_bytes(settings, "team-b") == 150
    (root / "j1" / "c").write_bytes(b"\0" * 7)
    monkeypatch.setattr(usage_store, "WALK_TTL_S", 0.0)
    assert usage_store.artifact_bytes(settings, "team-b") == 157
