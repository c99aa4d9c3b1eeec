"""What a tenant stores: the bytes its quota (`TAS_MAX_STORED_MB_PER_TENANT`) is checked against.

Uploads are counted from their rows (`size_bytes`, recorded when the file was received). Job files
(checkpoints, the registered model, predictions) have no size in the database: the worker writes
and prunes them as it trains, so any recorded figure would lag the disk. They are counted on disk,
by walking the tenant's job directories: exact, including a deleted job's leftovers, at the cost
of one `stat` per file (a job keeps a bounded number of checkpoints, so about ten files each).
The walk is only done where a quota is checked (an upload, a job admission), never per read."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tas.settings import Settings
from tas.store import files as file_store
from tas.store import jobs as job_store
from tas.store.orm import Dataset, WeightsFile


@dataclass(frozen=True)
class StoredBytes:
    """A tenant's stored bytes: its uploads (datasets and weights) and its jobs' files."""

    uploads: int
    artifacts: int

    @property
    def total(self) -> int:
        return self.uploads + self.artifacts


def upload_bytes(session: Session, tenant: str) -> int:
    """The tenant's datasets and weights files, from their rows. Datasets sharing a file (the same
    bytes read with other options) count it once."""
    per_file = (
        select(func.max(Dataset.size_bytes).label("size"))
        .where(Dataset.tenant == tenant)
        .group_by(Dataset.path)
        .subquery()
    )
    datasets = session.scalar(select(func.coalesce(func.sum(per_file.c.size), 0))) or 0
    weights = (
        session.scalar(
            select(func.coalesce(func.sum(WeightsFile.size_bytes), 0)).where(
                WeightsFile.tenant == tenant
            )
        )
        or 0
    )
    return int(datasets) + int(weights)


def artifact_bytes(settings: Settings, tenant: str) -> int:
    """The tenant's job directories on disk (blocking I/O: call it off the event loop)."""
    return file_store.tree_bytes(job_store.jobs_root(settings.resolved_artifact_dir, tenant))


def stored_bytes(session: Session, settings: Settings, tenant: str) -> StoredBytes:
    return StoredBytes(upload_bytes(session, tenant), artifact_bytes(settings, tenant))
