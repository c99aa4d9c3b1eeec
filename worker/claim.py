"""Claim a job and run it: in this process, or as a torchrun process group.

What a run needs before its claim is decided here: its GPUs (`worker.devices`: a job is never
placed on a device another job holds, and a job whose GPUs stay busy is handed back unclaimed),
and then which runner takes it: `worker.runner.run_claimed` in this process for one process, or
`worker.group` for a data-parallel job (resources.processes > 1), whose ranks run the same
`worker.runner` code (`worker.ranks`)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tas.core.spec import JobSpec
from tas.settings import Settings
from tas.store import leases as lease_store
from tas.store import logs as log_store
from tas.store.orm import Job
from worker import devices, group
from worker.gate import PREEMPT
from worker.joblog import JobLogBuffer, capture
from worker.runner import (
    Outcome,
    Settle,
    drop_earlier_scratch,
    drop_scratch,
    failed,
    public_error,
    run_claimed,
    run_started,
    stopped,
)

log = logging.getLogger(__name__)


def run_job(
    job_id: str, *, settings: Settings, sessions: sessionmaker[Session], owner: str
) -> Outcome:
    outcome = _run_job(job_id, settings=settings, sessions=sessions, owner=owner)
    log.info("settled job %s as %s (owner %s)", job_id, outcome.status, owner)
    return outcome


def _run_job(
    job_id: str, *, settings: Settings, sessions: sessionmaker[Session], owner: str
) -> Outcome:
    with sessions() as s:
        row = s.execute(select(Job.spec, Job.queue).where(Job.id == job_id)).first()
    resources = dict((row[0] or {}).get("resources") or {}) if row is not None else {}
    with contextlib.ExitStack() as gpus:
        try:
            slots = gpus.enter_context(
                devices.job_slots(settings, resources, label=job_id, stop=PREEMPT.is_set)
            )
        except devices.DevicesBusy as exc:  # not claimed: the job stays queued, for later
            log.info("job %s handed back unclaimed: %s", job_id, exc)
            return Outcome(job_id, "busy", row[1] if row is not None else None)
        return _claim_and_run(job_id, settings, sessions, owner, slots)


def _claim_and_run(
    job_id: str,
    settings: Settings,
    sessions: sessionmaker[Session],
    owner: str,
    slots: devices.Slots,
) -> Outcome:
    with sessions() as s:
        lease = lease_store.claim(s, job_id, owner, settings.lease_seconds)
        if lease is None:
            settled = lease_store.fail_unclaimable(s, job_id, log_store.LogLimits.of(settings))
            s.commit()
            log.info(
                "job %s not claimed (%s)", job_id, settled.status if settled else "busy or done"
            )
            return Outcome(job_id, "skipped")
        s.commit()
        job = s.get(Job, job_id)
        assert job is not None
        raw_spec, tenant = job.spec, job.tenant
        pinned = (job.result or {}).get("init_from")
        logbook = JobLogBuffer(lease.attempt, owner)
        logbook.add(run_started(job, lease))
    log.info("claimed job %s attempt %d as %s", job_id, lease.attempt, owner)
    drop_earlier_scratch(settings, job_id, tenant, lease.attempt)
    # `held`: what the run reads from this machine's object cache, kept from eviction until
    # the run has ended.
    with capture(logbook), contextlib.ExitStack() as held:
        try:
            if _processes(raw_spec) > 1:
                return _run_group(
                    job_id, raw_spec, tenant, pinned, lease, logbook, settings, sessions, slots
                )
            if slots.indices or _has_gpus():
                # This process sees only the GPUs it holds (none: the CPU). A fresh pool child
                # has not touched CUDA yet, so the setting takes effect.
                os.environ.update(slots.env)
            return run_claimed(
                job_id,
                raw_spec,
                tenant,
                pinned,
                lease,
                logbook,
                settings,
                sessions,
                held,
                cancel_grace_s=settings.cancel_grace_s,
            )
        finally:
            drop_scratch(settings, job_id, tenant, lease.attempt)


def _has_gpus() -> bool:
    return bool(devices.cuda_devices_here())


def _processes(raw_spec: dict[str, Any]) -> int:
    """The job's processes (a spec that does not validate runs in one, and fails there)."""
    try:
        return int(JobSpec.model_validate(raw_spec).resources.processes)
    except Exception:
        return 1


def _run_group(
    job_id: str,
    raw_spec: dict[str, Any],
    tenant: str,
    pinned: dict[str, Any] | None,
    lease: lease_store.Lease,
    logbook: JobLogBuffer,
    settings: Settings,
    sessions: sessionmaker[Session],
    slots: devices.Slots,
) -> Outcome:
    """A data-parallel job: its processes run as a torchrun group (`worker.group`) on the GPUs it
    holds (none: the CPU, with gloo); rank 0 runs `run_first_rank`, the others `run_replica`. This process settles only what rank 0 could not:
    a failed process, a lost lease, a cancel the group did not honour in time."""
    spec = JobSpec.model_validate(raw_spec)
    limits = log_store.LogLimits.of(settings)
    settle = Settle(sessions, lease, logbook, limits)

    def launched(pid: int) -> None:  # the run's first lines, before the ranks write theirs
        with sessions() as s:
            settle.write_logs(
                s,
                f"started {spec.resources.processes} data-parallel processes through torchrun"
                f" (pid {pid})",
            )
            s.commit()

    run = {
        "job_id": job_id,
        "tenant": tenant,
        "spec": raw_spec,
        "pinned": pinned,
        "lease": {"job_id": lease.job_id, "owner": lease.owner, "attempt": lease.attempt},
        "settings": settings_payload(settings),
    }
    ended = group.run_group(
        run,
        processes=spec.resources.processes,
        settings=settings,
        sessions=sessions,
        lease=lease,
        preempt=PREEMPT,
        devices=slots.cuda_visible_devices.split(",") if slots.indices else [],
        pass_fds=slots.fds,
        on_launch=launched,
    )
    if ended.kind == "outcome":
        return Outcome(job_id, str(ended.outcome.get("status")), ended.outcome.get("queue"))
    if ended.kind == "lease_lost":
        return Outcome(job_id, "skipped")
    if ended.kind == "cancelled":
        return stopped(settle, None, "cancelled")
    error = public_error(ended.error, settings)
    where = f" in stage {error['stage']}" if error.get("stage") else ""
    tb = public_error({"message": ended.traceback}, settings)["message"]
    logbook.add(
        f"failed{where}: {error.get('type')}: {error.get('message')}\n{tb}".rstrip(),
        level="error",
    )
    return failed(settle, None, error)


def settings_payload(settings: Settings) -> dict[str, Any]:
    """The settings as every rank of a group rebuilds them (`Settings(**payload)`): the values
    this worker runs with, secrets included (the run file is readable by this user only)."""
    out: dict[str, Any] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        elif isinstance(value, Path):
            value = str(value)
        out[name] = value
    return out
