"""Uploaded weights files (`model.init_from: "weights:<id>"`), the id being the sha256's first 16 hex."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tas.errors import WeightsInUse
from tas.settings import Settings
from tas.store import files as file_store
from tas.store.orm import Job, JobStatus, WeightsFile
from tas.store.unit_of_work import insert_or_get

# ---------------------------------------------------------------------------------------------
# Weights files (`model.init_from: "weights:<id>"`), the id being the sha256's first 16 hex.

WEIGHTS_ID = re.compile(r"^[0-9a-f]{16}$")


def weights_path(settings: Settings, sha256: str, *, tenant: str) -> Path:
    """Where the tenant's weights file with this hash is stored (found by hash: the row keeps no
    path), under the tenant's prefix in the uploads directory."""
    return settings.resolved_uploads_dir / weights_relative(sha256, tenant=tenant)


def weights_relative(sha256: str, *, tenant: str) -> str:
    """The weights file's path relative to the uploads directory (`file_store.upload_key` maps
    it to its object in an artifact store)."""
    return f"{file_store.tenant_prefix(tenant)}weights/{sha256}.safetensors"


def weights_file(settings: Settings, row: WeightsFile, *, hold: ExitStack | None = None) -> Path:
    """A local path to the weights' bytes: the stored file itself, or with an artifact store this
    machine's verified cached copy, held from eviction on `hold` until it closes (without `hold`,
    not held: `file_store.cached_copy`). StoredFileMissing when they are gone."""
    relative = weights_relative(row.sha256, tenant=row.tenant)
    if hold is None:
        return file_store.cached_copy(settings, relative, size=row.size_bytes, sha256=row.sha256)
    return hold.enter_context(
        file_store.fetch(settings, relative, size=row.size_bytes, sha256=row.sha256)
    )


def find_weights(session: Session, weights_id: str, *, tenant: str) -> WeightsFile | None:
    if not WEIGHTS_ID.match(weights_id):
        return None
    return session.scalar(
        select(WeightsFile)
        .where(WeightsFile.tenant == tenant, WeightsFile.sha256.startswith(weights_id))
        .limit(1)
    )


def add_weights(
    session: Session,
    settings: Settings,
    *,
    tenant: str,
    name: str,
    spool: file_store.Spool,
    tensors: Mapping[str, Sequence[int]],
) -> tuple[WeightsFile, bool]:
    """As `add_dataset`, for a checked safetensors file: the race on the unique (tenant, sha256)
    key is lost inside a SAVEPOINT. The caller's unit of work commits."""
    relative = weights_relative(spool.sha256, tenant=tenant)
    existing = _weights_by_sha(session, tenant, spool.sha256)
    if existing is None:
        new = WeightsFile(
            tenant=tenant,
            sha256=spool.sha256,
            name=name,
            size_bytes=spool.size,
            tensors={k: list(v) for k, v in tensors.items()},
        )
        row, created = insert_or_get(
            session, new, lambda: _weights_by_sha(session, tenant, spool.sha256)
        )
        if created:
            file_store.store_upload(settings, spool, relative)
            return row, True
        existing = row
    if not file_store.upload_present(settings, relative):
        file_store.store_upload(settings, spool, relative)
    return existing, False


def _weights_by_sha(session: Session, tenant: str, sha256: str) -> WeightsFile | None:
    return session.scalar(
        select(WeightsFile).where(WeightsFile.tenant == tenant, WeightsFile.sha256 == sha256)
    )


def jobs_using(session: Session, row: WeightsFile) -> list[str]:
    """Queued or running jobs of the tenant that start from these weights: named by
    `init_from: "weights:<id>"`, or pinned to their sha256 when they were submitted."""
    jobs = session.execute(
        select(Job.id, Job.spec, Job.result).where(
            Job.tenant == row.tenant,
            Job.status.in_([JobStatus.queued.value, JobStatus.running.value]),
        )
    )
    using = []
    for job_id, spec, result in jobs:
        ref = str(((spec or {}).get("model") or {}).get("init_from") or "").strip()
        pinned = (result or {}).get("init_from") or {}
        named = ref.startswith("weights:") and row.sha256.startswith(ref.partition(":")[2] or "-")
        if named or (pinned.get("kind") == "weights" and pinned.get("sha256") == row.sha256):
            using.append(job_id)
    return using


def delete_weights(session: Session, row: WeightsFile) -> str:
    """Drop the row (409 while a queued or running job starts from it); the file's path relative
    to the uploads directory, to remove once the caller has committed (`file_store.remove_upload`:
    its file, or with an artifact store its object). One row per tenant and hash, so nothing else
    uses the file."""
    using = jobs_using(session, row)
    if using:
        raise WeightsInUse(row.public_id, using)
    session.execute(delete(WeightsFile).where(WeightsFile.id == row.id))
    return weights_relative(row.sha256, tenant=row.tenant)
