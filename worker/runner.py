"""Run one job: claim it, run the core pipeline with the database reporter, settle it.

Idempotent: a second delivery of a job that is running under a live lease, or already finished,
claims nothing and returns. Every outcome (success, failure, cancel, preemption) ends in a fenced
write, so a job is never left `running` by a worker that is still alive."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from tas.core.data.cache import PreprocessCache
from tas.core.distributed import SOLO, Solo
from tas.core.errors import Stopped, TrainingError
from tas.core.hooks import NullHooks
from tas.core.pipeline import PipelineResult, RunContext, run_pipeline
from tas.core.spec import JobSpec
from tas.errors import DatasetNotFound
from tas.settings import Settings
from tas.store import datasets as dataset_store
from tas.store import jobs as job_store
from tas.store import leases as lease_store
from tas.store import logs as log_store
from tas.store import registry as registry_store
from tas.store import sources
from tas.store.artifacts import open_artifacts
from tas.store.orm import Job, JobStatus
from worker.gate import PREEMPT
from worker.joblog import JobLogBuffer, capture
from worker.overrun import Overrun, StopWatchdog, hard_exit
from worker.reporter import DbReporter, jsonable

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    job_id: str
    status: str  # "skipped" | a JobStatus | "requeued"
    queue: str | None = None


@dataclass
class JobData:
    """What a job trains on (its dataset's source) and starts from (the `init_from` file)."""

    source: dataset_store.DataSource
    init_weights: Path | None = None


def job_data(
    sessions: sessionmaker[Session],
    spec: JobSpec,
    tenant: str,
    pinned: dict[str, Any] | None,
    settings: Settings,
    hold: contextlib.ExitStack | None = None,
) -> JobData:
    """Everything the job reads, resolved from the database; TrainingError (stage collect) when
    something it was submitted with is gone. With an artifact store the init_from file is this
    machine's cached copy, held from eviction on `hold` (the run keeps it open until it ends):
    another job's fetch on this machine may evict anything not held, and the pipeline opens the
    file only once it has built the model."""
    with sessions() as s:
        source = _data_source(s, spec, tenant, settings)
        init = None
        if spec.model.init_from is not None:
            try:
                if pinned:
                    init = sources.resolve_pinned(s, tenant, pinned, settings, hold=hold)
                else:
                    init = sources.resolve_init_source(
                        s, tenant, spec.model.init_from, settings, hold=hold
                    ).path
            except sources.InitSourceError as exc:
                raise TrainingError(
                    exc.message,
                    hint="submit the job again with a model.init_from that exists",
                    type="InitSourceNotFound",
                    stage="collect",
                ) from exc
    return JobData(source, init)


def _data_source(
    session: Session, spec: JobSpec, tenant: str, settings: Settings
) -> dataset_store.DataSource:
    """The dataset's source; an upload deleted (or whose file vanished) since submit fails the
    job in collect, saying what to do. The upload is named as its submitter knows it (by id, and
    by its name while its row is there), never by where its file is stored."""
    try:
        source = dataset_store.data_source(session, spec.dataset, tenant=tenant, settings=settings)
    except DatasetNotFound as exc:
        raise TrainingError(
            f"uploaded dataset {spec.dataset.id!r} no longer exists (deleted after the job was"
            " submitted)",
            hint="upload the data again (POST /datasets) and submit the job with the new id",
            type="DatasetNotFound",
            stage="collect",
        ) from exc
    if source.path is not None and not source.path.is_file():
        assert spec.dataset.id is not None
        raise dataset_store.unreadable(
            source.info.name,
            spec.dataset.id,
            "its file is missing from the uploads directory",
            type="DatasetNotFound",
            stage="collect",
        )
    return source


_RUN_DIR = re.compile(r"^run-(\d+)$")


def scratch_dir(settings: Settings, job_id: str, tenant: str, run: int | None = None) -> Path:
    """This machine's working directory for a job when the artifact store is shared instead of a
    directory: under TAS_CACHE_DIR (never the artifact store, which other machines read), at the
    job's key (two tenants' jobs never meet), one folder per run (`run-<claims>`, the lease's
    fencing token): a run that lost its lease never writes into the files of the run that took
    the job over on the same machine. Without `run`: the job's folder of runs."""
    job = settings.resolved_local_cache_dir / "scratch" / job_store.job_key(job_id, tenant=tenant)
    return job if run is None else job / f"run-{run}"


def job_workdir(settings: Settings, job_id: str, tenant: str, run: int) -> Path:
    """Where a run writes its files: the job's directory in the shared artifact directory, or,
    with a remote store, this run's scratch on this machine (what must outlive the run is pushed
    to the store by the pipeline)."""
    if settings.remote_artifacts:
        return scratch_dir(settings, job_id, tenant, run)
    return job_store.job_dir(settings.resolved_artifact_dir, job_id, tenant=tenant)


def drop_scratch(settings: Settings, job_id: str, tenant: str, run: int) -> None:
    """A run's scratch goes when it ends, however it ended: checkpoints, the model and the
    predictions are in the store, and a resume may happen on another machine anyway."""
    if not settings.remote_artifacts:
        return
    shutil.rmtree(scratch_dir(settings, job_id, tenant, run), ignore_errors=True)
    with contextlib.suppress(OSError):  # another run's folder is still there: keep the job's
        scratch_dir(settings, job_id, tenant).rmdir()


def drop_earlier_scratch(settings: Settings, job_id: str, tenant: str, run: int) -> None:
    """What earlier runs of the job left on this machine (a run killed with its process, or one
    fenced out by this one, whose files no longer count)."""
    if not settings.remote_artifacts:
        return
    with contextlib.suppress(OSError):
        for entry in scratch_dir(settings, job_id, tenant).iterdir():
            m = _RUN_DIR.match(entry.name)
            if m is not None and int(m.group(1)) < run:
                shutil.rmtree(entry, ignore_errors=True)


def run_started(job: Job, lease: lease_store.Lease) -> str:
    """The job log's first line of a run: which run, where, and how the one before it ended."""
    earlier = [e for e in job.attempt_log or [] if e.get("run") != lease.attempt]
    text = (
        f"run {lease.attempt} started on worker {lease.owner}"
        f" (attempt {job.attempts} of {job.max_attempts})"
    )
    if earlier:
        text += f"; before it, {lease_store.describe_run(earlier[-1])}"
    return text


def run_first_rank(
    run: dict[str, Any],
    settings: Settings,
    sessions: sessionmaker[Session],
    parallel: Solo,
    preempted: Any,
) -> Outcome:
    """Rank 0 of a group: the job's run as one process runs it (reporter, pipeline, settling),
    with its place in the group. Its log lines are the run's, after the launcher's."""
    lease = lease_store.Lease(**run["lease"])
    logbook = JobLogBuffer(lease.attempt, lease.owner)
    with capture(logbook), contextlib.ExitStack() as held:
        return run_claimed(
            run["job_id"],
            run["spec"],
            run["tenant"],
            run["pinned"],
            lease,
            logbook,
            settings,
            sessions,
            held,
            parallel=parallel,
            preempted=preempted,
        )


def run_replica(
    run: dict[str, Any], settings: Settings, sessions: sessionmaker[Session], parallel: Solo
) -> None:
    """Another rank of a group: the same pipeline, training its share; it reports nothing
    (rank 0 speaks for the job). Raises what fails it."""
    spec = JobSpec.model_validate(run["spec"])
    job_id, tenant = run["job_id"], run["tenant"]
    with contextlib.ExitStack() as held:
        data = job_data(sessions, spec, tenant, run["pinned"], settings, held)
        ctx = _run_context(settings, spec, job_id, tenant, run["lease"]["attempt"], data, parallel)
        try:
            run_pipeline(spec, data.source.info, ctx, NullHooks(), load=data.source.load)
        except Stopped:  # the lease was lost: rank 0 writes nothing, and neither does this one
            return


def _run_context(
    settings: Settings,
    spec: JobSpec,
    job_id: str,
    tenant: str,
    attempt: int,
    data: JobData,
    parallel: Solo = SOLO,
) -> RunContext:
    return RunContext(
        job_dir=job_workdir(settings, job_id, tenant, attempt),
        datasets_dir=settings.resolved_datasets_dir,
        allow_download=settings.allow_download,
        device=settings.device if spec.resources.device == "auto" else spec.resources.device,
        cache_dir=settings.cache_dir,
        data_fingerprint=data.source.fingerprint,
        weights_dir=settings.resolved_weights_dir,
        init_weights=data.init_weights,
        device_data_mb=settings.device_data_mb,
        parallel=parallel,
        **_store_context(settings, job_id, tenant),
    )


def run_claimed(
    job_id: str,
    raw_spec: dict[str, Any],
    tenant: str,
    pinned: dict[str, Any] | None,
    lease: lease_store.Lease,
    logbook: JobLogBuffer,
    settings: Settings,
    sessions: sessionmaker[Session],
    held: contextlib.ExitStack,
    *,
    parallel: Solo = SOLO,
    preempted: Any = PREEMPT,
    cancel_grace_s: float | None = None,
) -> Outcome:
    """Run the claimed job to its end and settle it. With `cancel_grace_s`, a cancel or a lost
    lease the loop has not taken within that many seconds ends the run from outside the step
    (`worker.overrun`): only for a run that is its process's only one."""
    spec = JobSpec.model_validate(raw_spec)
    reporter: DbReporter | None = None
    limits = log_store.LogLimits.of(settings)
    settle = Settle(sessions, lease, logbook, limits)
    watchdog = None
    if cancel_grace_s is not None:
        watchdog = StopWatchdog(
            cancel_grace_s,
            Overrun(
                job_id,
                cancel_grace_s,
                logbook,
                cancel=lambda: stopped(settle, reporter, "cancelled").status,
                cleanup=lambda: drop_scratch(settings, job_id, tenant, lease.attempt),
                exit=hard_exit(),
            ),
        )
    try:
        data = job_data(sessions, spec, tenant, pinned, settings, held)
        info = data.source.info
        # The spec is checked against this dataset by the pipeline (`check_spec`), and the
        # reporter's best metrics follow the loop's own verdict on each epoch row.
        reporter = DbReporter(
            sessions,
            lease,
            lease_seconds=settings.lease_seconds,
            interval=settings.heartbeat_seconds,
            preempted=preempted,
            logbook=logbook,
            log_limits=limits,
            store_root=_store_root(settings),
            watchdog=watchdog,
        )
        reporter.start()
        ctx = _run_context(settings, spec, job_id, tenant, lease.attempt, data, parallel)
        try:
            result = run_pipeline(spec, info, ctx, reporter, load=data.source.load)
        finally:
            reporter.loop_ended()  # this run's own ending settles it from here
        _trim_cache(settings)
    except Stopped as stop:
        return stopped(settle, reporter, stop.reason)
    except TrainingError as exc:
        # The whole chain, for the operators: the job's log leaves out what a deliberate error
        # was raised from (`job_traceback`).
        log.info("job %s failed in stage %s", job_id, exc.stage, exc_info=True)
        error = public_error(exc.to_error_dict(), settings)
        logbook.add(failure_line(error, settings), level="error")
        return failed(settle, reporter, error)
    except Exception as exc:
        stage = reporter.stage if reporter else None
        log.exception("job %s failed in stage %s", job_id, stage)
        # The error stays short and path-free; the full traceback goes in the job's log.
        error = public_error(
            {
                "type": type(exc).__name__,
                "message": f"{stage or 'setup'} stage failed: {exc}",
                "hint": "this looks like a bug in tas or the environment; the traceback is in"
                f" the job's log (GET /jobs/{job_id}/logs) and the worker log",
                "stage": stage,
            },
            settings,
        )
        logbook.add(failure_line(error, settings), level="error")
        return failed(settle, reporter, error)
    finally:
        if reporter is not None:
            reporter.close()
    if result.status != "succeeded":
        return stopped(settle, reporter, result.status, result)
    return _succeeded(settle, reporter, result)


def _store_context(settings: Settings, job_id: str, tenant: str) -> dict[str, Any]:
    """RunContext's store and the job's prefix in it, with a remote store only (a local artifact
    directory is the job directory itself, as before there was a store). The store is opened
    here, in the process that runs the job (a pool child, after the fork), once per process."""
    if not settings.remote_artifacts:
        return {}
    return {
        "store": open_artifacts(settings).store,
        "store_prefix": job_store.job_key(job_id, tenant=tenant),
    }


def _store_root(settings: Settings) -> str | None:
    """The remote store's URL as checkpoint paths start with it (None with a local directory)."""
    return open_artifacts(settings).store.describe("") if settings.remote_artifacts else None


def failure_line(error: dict[str, Any], settings: Settings) -> str:
    """The failure as the job's log shows it: the error, then the traceback being handled as
    `job_traceback` writes it (the server's directories named by their settings, as in the
    error)."""
    where = f" in stage {error['stage']}" if error.get("stage") else ""
    exc = sys.exc_info()[1]
    tb = public_error({"message": job_traceback(exc) if exc else ""}, settings)["message"]
    return f"failed{where}: {error.get('type')}: {error.get('message')}\n{tb}".rstrip()


_FRAME_FILE = re.compile(r'^(  File ")([^"]+)(")', re.MULTILINE)


def job_traceback(exc: BaseException) -> str:
    """`exc`'s traceback as a job's log shows it, to whoever submitted the job: each frame's file
    named from its import root (`torch/nn/modules/module.py`, `tas/core/pipeline.py`), not where
    the server installed it; and an error the core raised on purpose (a TrainingError subclass,
    whose message and hint say what to change) without the exceptions it was raised from, which
    may name where a file is stored. The worker's own log keeps the whole chain. A plain
    TrainingError keeps its causes: that is an unexpected error wrapped (`as_training_error`),
    and its frames are the ones a bug report needs."""
    chain = not (isinstance(exc, TrainingError) and type(exc) is not TrainingError)
    text = "".join(traceback.format_exception(exc, chain=chain))
    # sys.path's entries, and the directory holding tas, app and worker (an editable install
    # finds them by an import hook, not by a sys.path entry).
    entries = [*sys.path, str(Path(__file__).resolve().parents[1])]
    roots = sorted(
        {r for r in (os.path.abspath(e).rstrip(os.sep) for e in entries) if len(r) > 1},
        key=len,
        reverse=True,
    )

    def relative(m: re.Match[str]) -> str:
        path = m.group(2)
        root = next((r for r in roots if path.startswith(r + os.sep)), None)
        return m.group(0) if root is None else m.group(1) + path[len(root) + 1 :] + m.group(3)

    return _FRAME_FILE.sub(relative, text)


@dataclass
class Settle:
    """What ending a run writes with: its lease, and its log's last lines, written in the same
    transaction as the job's new status (a client that sees it failed finds why in the log)."""

    sessions: sessionmaker[Session]
    lease: lease_store.Lease
    logbook: JobLogBuffer
    limits: log_store.LogLimits

    def write_logs(self, session: Session, message: str, level: log_store.Level = "info") -> None:
        """The run's last line and whatever is still buffered, in the caller's transaction (in
        a savepoint: the job's end matters more than its log, which must never fail it)."""
        self.logbook.add(message, level=level)
        lines = self.logbook.drain()
        try:
            with session.begin_nested():
                log_store.append_logs(
                    session,
                    self.lease.job_id,
                    lines,
                    max_lines=self.limits.max_lines,
                    max_line_bytes=self.limits.max_line_bytes,
                )
        except Exception:
            log.exception("last log lines of job %s not written", self.lease.job_id)


def public_error(error: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A job's error as its submitter sees it: the server's directories in its text (an OSError
    quoting the file it failed on, a library's message) replaced by the setting that names each
    one, e.g. `TAS_UPLOADS_DIR/…`; the innermost directory first (uploads live in artifacts)."""
    roots = {
        str(settings.resolved_uploads_dir): "TAS_UPLOADS_DIR",
        str(settings.cache_dir): "TAS_ARTIFACT_DIR/cache",
        str(settings.resolved_artifact_dir): "TAS_ARTIFACT_DIR",
        str(settings.resolved_datasets_dir): "TAS_DATASETS_DIR",
        str(settings.resolved_weights_dir): "TAS_WEIGHTS_DIR",
        str(settings.data_dir.resolve()): "TAS_DATA_DIR",
        str(settings.resolved_local_cache_dir): "TAS_CACHE_DIR",
    }
    if settings.artifact_url is not None:  # a bucket's name and prefix are the server's own
        roots[settings.artifact_url.rstrip("/")] = "TAS_ARTIFACT_URL"
    ordered = sorted(roots.items(), key=lambda kv: len(kv[0]), reverse=True)
    out = dict(error)
    for key in ("message", "hint"):
        text = out.get(key)
        if isinstance(text, str):
            for root, name in ordered:
                if len(root) > 1:  # never "/" itself; a root matches whole names only
                    text = re.sub(re.escape(root) + r"(?![\w.-])", name, text)
            out[key] = text
    return out


def _trim_cache(settings: Settings) -> None:
    """Keep the preprocess cache within its bound; a job that just stored an entry is the one
    that can have pushed it over. Never fails the job."""
    try:
        removed = PreprocessCache(settings.cache_dir).evict(settings.cache_max_mb << 20)
    except OSError:
        log.exception("preprocess cache eviction failed")
        return
    if removed:
        log.info("evicted %d preprocess cache entries", len(removed))


def _final_flush(reporter: DbReporter | None) -> None:
    if reporter is not None:
        try:
            reporter.flush()
        except Exception:
            log.exception("final flush failed")


def _succeeded(settle: Settle, reporter: DbReporter | None, result: PipelineResult) -> Outcome:
    _final_flush(reporter)
    from tas.core.artifact import load_card

    lease = settle.lease
    with settle.sessions() as s:
        job = s.get(Job, lease.job_id)
        assert job is not None
        assert result.model_dir is not None, "a succeeded pipeline always registers a model"
        card = load_card(result.model_local_dir or result.model_dir)
        # What init_from resolved to at submit (kept in the result from then on).
        pins = {k: v for k, v in (job.result or {}).items() if k == "init_from"}
        mv = registry_store.register_model(
            s, job, str(result.model_dir), card, result.model_metrics
        )
        progress = _completed(job.progress, result.epochs_run, result.final_metrics)
        ok = lease_store.finish(
            s,
            lease,
            JobStatus.succeeded,
            stage=None,
            result=_result_dict(result, model={"name": mv.name, "version": mv.version}, **pins),
            progress=progress,
            best_metrics=result.best_metrics or None,
            latest_metrics=result.final_metrics or None,
        )
        if not ok:  # lost the lease while finishing: another attempt owns the job now
            s.rollback()
            return Outcome(lease.job_id, "skipped")
        settle.write_logs(
            s, f"succeeded after {result.epochs_run} epochs: model {mv.name} version {mv.version}"
        )
        s.commit()
    return Outcome(lease.job_id, JobStatus.succeeded.value)


def _completed(
    progress: dict[str, Any] | None, epochs_run: int, last_epoch: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Progress is written at most every heartbeat; a finished job shows all of it done, at the
    last throughput measured (a report taken before any step was timed says 0: the last epoch's
    own rate stands in for it)."""
    if not progress:
        return progress
    rate = progress.get("samples_per_second")
    if not rate:
        rate = (last_epoch or {}).get("samples_per_second") or rate
    return {
        **progress,
        "epoch": epochs_run,
        "step": progress.get("steps_per_epoch", progress.get("step")),
        "fraction": 1.0,
        "eta_seconds": 0.0,
        "samples_per_second": rate,
    }


def _result_dict(result: PipelineResult, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = jsonable(
        {
            "evaluation": result.evaluation,
            "parameters": {"trainable": result.trainable_params, "total": result.total_params},
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "weights": result.weights,
            "predictions": result.predictions,
            **extra,
        }
    )
    return out


def failed(settle: Settle, reporter: DbReporter | None, error: dict[str, Any]) -> Outcome:
    _final_flush(reporter)
    lease = settle.lease
    with settle.sessions() as s:
        ok = lease_store.finish(s, lease, JobStatus.failed, error=error)
        if ok:
            settle.write_logs(s, f"run {lease.attempt} failed", "error")
        s.commit()
    return Outcome(lease.job_id, JobStatus.failed.value if ok else "skipped")


def stopped(
    settle: Settle,
    reporter: DbReporter | None,
    reason: str,
    result: PipelineResult | None = None,
) -> Outcome:
    _final_flush(reporter)
    lease = settle.lease
    queue = None
    checkpoint = result.checkpoint if result is not None else None
    at = f" after epoch {checkpoint.epoch}" if checkpoint else ""
    if checkpoint and checkpoint.step:
        at += f", {checkpoint.step} steps into epoch {checkpoint.epoch + 1}"
    with settle.sessions() as s:
        if reason == "cancelled":
            ok = lease_store.finish(s, lease, JobStatus.cancelled, stage=None)
            status = JobStatus.cancelled.value
            line = f"cancelled: run {lease.attempt} stopped{at}"
        elif reason == "preempted":
            ok = lease_store.release(s, lease)
            status = "requeued"
            job = s.get(Job, lease.job_id)
            queue = job.queue if job else None
            line = (
                f"preempted: worker {lease.owner} is stopping; run {lease.attempt} stopped{at}"
                " and handed the job back to the queue, to resume from its last checkpoint"
            )
        else:  # lease lost: someone else owns the job; write nothing
            ok, status, line = False, "skipped", ""
        if ok:
            settle.write_logs(s, line)
        s.commit()
    return Outcome(lease.job_id, status if ok else "skipped", queue)
