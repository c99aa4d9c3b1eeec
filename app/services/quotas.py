"""Per-tenant quotas, checked before the work they bound is started: queued and running jobs
(`TAS_MAX_ACTIVE_JOBS_PER_TENANT`) and stored bytes (`TAS_MAX_STORED_MB_PER_TENANT`). Each refusal
names the tenant, the figure, the limit and the setting, and says how to make room."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from tas.errors import InvalidUpload, TooManyRequests, body_error
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store import usage as usage_store

#: A full job quota frees a slot when one of the tenant's jobs finishes: a guess at how soon.
JOBS_RETRY_AFTER_S = 30
#: A full storage quota frees room only when the tenant deletes something; retrying sooner than
#: this only repeats the walk of its job directories (or the listing of its jobs in the store).
STORAGE_RETRY_AFTER_S = 300


def size_text(n: int) -> str:
    """Bytes the way the limits are set (binary units): `9.8 GiB`, `512 MiB`, `12 KiB`."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def admit_job(session: Session, settings: Settings, tenant: str) -> None:
    """Refuse (429, Retry-After) a job that would put the tenant beyond its queued + running jobs,
    or that is submitted while the tenant already stores more than its quota. Called first by
    every path that puts a job in `queued` (submit, clone, resume), before any other work.

    The count is exact under concurrency: `lock_admissions` holds the tenant's admissions one at a
    time until this request commits (on SQLite writers are serialised already), so two requests
    racing at the limit admit one job. The cost is that one tenant's submits queue behind each
    other for the length of a submit (milliseconds); other tenants' never wait. The storage check
    needs no lock (a submit adds no bytes), so it comes first and its walk of the tenant's job
    directories (or listing of its jobs in the store) is never done while the lock is held; a
    store that does not answer it is a 503 (`usage_store.artifact_bytes`)."""
    quota = stored_limit(settings)
    if quota is not None:
        used = usage_store.stored_bytes(session, settings, tenant).total
        if used >= quota:
            raise TooManyRequests(
                f"{_stores(tenant, used, quota)}; a job adds checkpoints and a model to that:"
                " delete finished jobs (DELETE /jobs/{id}), model versions or datasets to make"
                " room",
                retry_after_s=STORAGE_RETRY_AFTER_S,
            )
    job_store.lock_admissions(session, tenant)
    limit = settings.max_active_jobs_per_tenant
    active = job_store.active_jobs(session, tenant)
    if active >= limit:
        raise TooManyRequests(
            f"tenant {tenant!r} has {active} queued or running jobs, the most it may have is"
            f" {limit} (TAS_MAX_ACTIVE_JOBS_PER_TENANT); retry once some have finished, or cancel"
            f" some (POST /jobs/{{id}}/cancel)",
            retry_after_s=JOBS_RETRY_AFTER_S,
        )


def stored_limit(settings: Settings) -> int | None:
    mb = settings.max_stored_mb_per_tenant
    return None if mb is None else mb * 2**20


@dataclass(frozen=True)
class UploadBound:
    """How many bytes an upload may send: TAS_MAX_UPLOAD_MB, or less when the tenant's storage
    quota has less room left; `refusal` is then the 413 naming the quota (see `Spool`)."""

    max_bytes: int
    refusal: Callable[[], InvalidUpload] | None = None


def upload_bound(session: Session, settings: Settings, tenant: str) -> UploadBound:
    """The bound on one upload of the tenant's; a 413 at once when its quota has no room left (no
    byte of the body is read). Blocking (it walks the tenant's job directories): call it from a
    worker thread. Two uploads at once may each fit the room left and together pass it by at most
    one upload's size: the quota bounds what a tenant can take, not to the byte."""
    per_upload = settings.max_upload_mb * 2**20
    quota = stored_limit(settings)
    if quota is None:
        return UploadBound(per_upload)
    used = usage_store.stored_bytes(session, settings, tenant).total
    room = quota - used
    if room <= 0:
        raise body_error("file", f"{_stores(tenant, used, quota)}; {_MAKE_ROOM}", 413)
    if room >= per_upload:
        return UploadBound(per_upload)

    def refusal() -> InvalidUpload:
        return body_error(
            "file",
            f"{_stores(tenant, used, quota)}: this upload does not fit in the {size_text(room)}"
            f" left; {_MAKE_ROOM}",
            413,
        )

    return UploadBound(room, refusal)


_MAKE_ROOM = (
    "delete datasets (DELETE /datasets/{id}), finished jobs (DELETE /jobs/{id}) or model"
    " versions to make room"
)


def _stores(tenant: str, used: int, quota: int) -> str:
    return (
        f"tenant {tenant!r} stores {size_text(used)} of its {size_text(quota)}"
        " (TAS_MAX_STORED_MB_PER_TENANT)"
    )
