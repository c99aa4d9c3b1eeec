"""What a tenant stores: the bytes its quota (`TAS_MAX_STORED_MB_PER_TENANT`) is checked against.

Uploads are counted from their rows (`size_bytes`, recorded when the file was received). Job files
(checkpoints, the registered model, predictions) have no size in the database: the worker writes
and prunes them as it trains, so any recorded figure would lag the disk. They are counted on disk,
by walking the tenant's job directories: exact, including a deleted job's leftovers, at the cost
of one `stat` per file (a job keeps a bounded number of checkpoints, so about ten files each;
a thousand jobs take about a quarter of a second). The walk is only done where a quota is checked
(an upload, a job admission), and its figure is reused for WALK_TTL_S, so a burst of submits
walks once; removing a job's directory through this process forgets it at once."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

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


#: How long one walk of a tenant's job directories is reused. A quota is a bound on what a
#: tenant can take, not an exact ledger: a few seconds' lag costs at most the bytes its jobs
#: write meanwhile, and keeps a tenant with many jobs from paying a walk on every submit.
WALK_TTL_S = 5.0

_walks: dict[Path, tuple[float, int]] = {}
_walks_lock = threading.Lock()


def artifact_bytes(settings: Settings, tenant: str) -> int:
    """The tenant's job directories on disk, walked at most once per WALK_TTL_S (blocking I/O:
    call it off the event loop)."""
    root = job_store.jobs_root(settings.resolved_artifact_dir, tenant)
    now = time.monotonic()
    with _walks_lock:
        hit = _walks.get(root)
    if hit is not None and now - hit[0] < WALK_TTL_S:
        return hit[1]
    total = file_store.tree_bytes(root)
    with _walks_lock:
        _walks[root] = (now, total)
    return total


def forget_walk(jobs_root: Path) -> None:
    """Drop the reused figure of a tenant's job directories (`jobs_root`), after this process
    removed one of them: a tenant that deletes jobs to make room sees the room at once."""
    with _walks_lock:
        _walks.pop(jobs_root, None)


def stored_bytes(session: Session, settings: Settings, tenant: str) -> StoredBytes:
    return StoredBytes(upload_bytes(session, tenant), artifact_bytes(settings, tenant))
