"""What a tenant stores: the bytes its quota (`TAS_MAX_STORED_MB_PER_TENANT`) is checked against.

Uploads are counted from their rows (`size_bytes`, recorded when the file was received), in both
set-ups: an upload is stored once under its row's key, in the uploads directory or the store. Job
files (checkpoints, the registered model, predictions) have no size in the database: the worker
writes and prunes them as it trains, so any recorded figure would lag the disk. They are counted
where they are kept, by listing the tenant's jobs:

- locally (no TAS_ARTIFACT_URL), by walking the tenant's job directories: exact, including a
  deleted job's leftovers, at the cost of one `stat` per file (a job keeps a bounded number of
  checkpoints, so about ten files each; a thousand jobs take about a quarter of a second);
- with an artifact store, by listing the objects under the tenant's jobs prefix in the store
  (`<tenant prefix>jobs/`, never the whole bucket: other tenants and the uploads lie elsewhere),
  sizes included in the listing, so one request per thousand objects on S3. A remote process has
  no job files on its own disk to walk: the worker writes its run's scratch on its own machine
  and pushes what outlives the run to the store. Listing rather than recording sizes in rows
  (checkpoint rows, model versions) because the listing is exact where rows cannot be: it sees
  a pruned checkpoint go, the predictions (which have no row), a resumed run's objects, and the
  leftovers of a job whose rows are gone but whose objects a failed delete left behind.

Either figure is only taken where a quota is checked (an upload, a job admission), and is reused
for WALK_TTL_S, so a burst of submits walks or lists once; deleting a job through this process
forgets it at once. A store that does not answer while it is listed is ArtifactStoreUnavailable
(a 503 to retry), never a 500 and never a figure of 0 that would let the tenant past its quota."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tas.errors import ArtifactStoreUnavailable
from tas.settings import Settings
from tas.store import files as file_store
from tas.store import jobs as job_store
from tas.store.artifacts import open_artifacts, store_unreachable
from tas.store.orm import Dataset, WeightsFile

log = logging.getLogger(__name__)


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


#: How long one walk of a tenant's job directories (or one listing of its jobs in the store) is
#: reused. A quota is a bound on what a tenant can take, not an exact ledger: a few seconds' lag
#: costs at most the bytes its jobs write meanwhile, and keeps a tenant with many jobs from paying
#: a walk (or a listing) on every submit.
WALK_TTL_S = 5.0

#: Keyed by (the store's URL, or None for the local walk; the tenant's local jobs root). The local
#: root names the tenant in both set-ups, so `forget_walk(jobs_root)` after a delete drops either.
_walks: dict[tuple[str | None, Path], tuple[float, int]] = {}
_walks_lock = threading.Lock()


def artifact_bytes(settings: Settings, tenant: str) -> int:
    """The tenant's job files: its job directories on disk, or with an artifact store its objects
    under its jobs prefix; measured at most once per WALK_TTL_S (blocking I/O: call it off the
    event loop). ArtifactStoreUnavailable when the store does not answer."""
    root = job_store.jobs_root(settings.resolved_artifact_dir, tenant)
    remote = settings.remote_artifacts
    key = (settings.resolved_artifact_url if remote else None, root)
    now = time.monotonic()
    with _walks_lock:
        hit = _walks.get(key)
    if hit is not None and now - hit[0] < WALK_TTL_S:
        return hit[1]
    total = _listed_bytes(settings, tenant) if remote else file_store.tree_bytes(root)
    with _walks_lock:
        _walks[key] = (now, total)
    return total


def _listed_bytes(settings: Settings, tenant: str) -> int:
    """The sizes of the objects under the tenant's jobs prefix in the artifact store."""
    artifacts = open_artifacts(settings)
    prefix = f"{file_store.tenant_prefix(tenant)}jobs"
    try:
        return sum(o.size for o in artifacts.store.list_objects(prefix))
    except store_unreachable() as exc:
        log.warning("the artifact store did not answer listing %s", prefix, exc_info=True)
        raise ArtifactStoreUnavailable(
            "the artifact store did not answer while the tenant's stored bytes"
            " (TAS_MAX_STORED_MB_PER_TENANT) were measured; try again"
        ) from exc


def forget_walk(jobs_root: Path) -> None:
    """Drop the reused figure of a tenant's job files (`jobs_root`: its local jobs directory,
    which names it in both set-ups), after this process deleted one of its jobs: a tenant that
    deletes jobs to make room sees the room at once."""
    with _walks_lock:
        for key in [k for k in _walks if k[1] == jobs_root]:
            _walks.pop(key, None)


def stored_bytes(session: Session, settings: Settings, tenant: str) -> StoredBytes:
    return StoredBytes(upload_bytes(session, tenant), artifact_bytes(settings, tenant))
