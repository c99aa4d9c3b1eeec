"""The worker's side of the core's hooks: it writes a running job's progress to the database.

The training loop only sets attributes and appends to a list; a heartbeat thread writes them in one
transaction every `heartbeat_seconds`, renewing the lease in the same UPDATE and reading back the
cancel flag. So the loop never waits on the database, writes are bounded by time (not by steps),
and a lost lease or a cancel reaches the loop within one interval. The job's log lines (each stage's
start and end, a line per epoch, what `worker.joblog` captures) go in the same transaction. A
`watchdog` (`worker.overrun`), when given, hears of each cancel or lost lease the heartbeat reads
and of the loop taking it, and ends the run itself if the loop does not take it in time.

A checkpoint's `path` is where the job's checkpoint lives: a local directory's path with a local
artifact directory; with a remote store (S3), its key in the store (`jobs/<id>/checkpoints/ckpt-…`),
never the store's URL, which names the bucket and the endpoint: the database, the job's stage
outputs (`resumed_from`) and the API then hold keys relative to TAS_ARTIFACT_URL, as a remote
model version's `model_dir` does."""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from tas.core.hooks import EpochRow, NullHooks, Progress
from tas.store import leases as lease_store
from tas.store import logs as log_store
from tas.store.leases import Lease
from worker.joblog import JobLogBuffer
from worker.overrun import StopWatchdog

log = logging.getLogger(__name__)


def jsonable(value: Any) -> Any:
    """NaN and inf are not JSON; the API shows them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


class DbReporter(NullHooks):
    def __init__(
        self,
        sessions: sessionmaker[Session],
        lease: Lease,
        *,
        lease_seconds: float,
        interval: float,
        preempted: threading.Event | None = None,
        logbook: JobLogBuffer | None = None,
        log_limits: log_store.LogLimits | None = None,
        store_root: str | None = None,
        watchdog: StopWatchdog | None = None,
    ) -> None:
        self.sessions = sessions
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.interval = interval
        self._preempted = preempted or threading.Event()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._rows: list[dict[str, Any]] = []
        self._checkpoints: list[tuple[dict[str, Any], list[str]]] = []
        self._changes: dict[str, Any] = {}
        self._stop_reason: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat_loop, name="tas-heartbeat", daemon=True)
        self.stage: str | None = None
        self.logbook = logbook if logbook is not None else JobLogBuffer(lease.attempt, lease.owner)
        self.log_limits = log_limits or log_store.LogLimits()
        self._epochs: int | None = None
        #: The remote store's URL with a trailing slash (`store.describe("")`): stripped from
        #: what the core reports, which names checkpoints by their URL.
        self.store_root = store_root
        self.watchdog = watchdog

    def relative(self, value: Any) -> Any:
        """`value` with every string under the store's URL made its key (recursively)."""
        root = self.store_root
        if root is None:
            return value
        if isinstance(value, str):
            return value[len(root) :] if value.startswith(root) else value
        if isinstance(value, dict):
            return {k: self.relative(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.relative(v) for v in value]
        return value

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.loop_ended()
        self._done.set()
        self._thread.join(timeout=self.interval * 5 + 5)

    def _beat_loop(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.flush()
            except Exception:  # a DB hiccup must not kill the job; the next beat retries
                log.exception("heartbeat for job %s failed", self.lease.job_id)

    def flush(self) -> bool:
        """Write everything pending and renew the lease. False when the lease is lost. Flushes are
        serialised: one that returns has seen every earlier one committed."""
        with self._flush_lock:
            return self._flush()

    def _flush(self) -> bool:
        with self._lock:
            rows, self._rows = self._rows, []
            checkpoints, self._checkpoints = self._checkpoints, []
            changes, self._changes = self._changes, {}
        lines = self.logbook.drain()
        try:
            with self.sessions() as s:
                beat = lease_store.renew(s, self.lease, self.lease_seconds, jsonable(changes))
                if beat is None:  # another run owns the job: this one's lines are not its log
                    s.rollback()
                    self._stop_reason = "lease_lost"
                    self._watch("lease_lost")
                    return False
                lease_store.upsert_metrics(s, self.lease.job_id, jsonable(rows))
                for record, kept in checkpoints:
                    lease_store.record_checkpoint(s, self.lease, jsonable(record), kept)
                still_open = self.write_logs(s, lines)
                s.commit()
        except Exception:
            self.logbook.restore(lines)  # the next flush writes them
            raise
        self.logbook.written(still_open)
        if beat.cancel_requested and self._stop_reason is None:
            self._stop_reason = "cancelled"
            self._watch("cancelled")
        return True

    def _watch(self, reason: str) -> None:
        if self.watchdog is not None:
            self.watchdog.arm(reason)

    def loop_ended(self) -> None:
        """The pipeline has returned or raised: whatever stop is pending is not the loop's to take
        any more (the run's own ending settles the job)."""
        if self.watchdog is not None:
            self.watchdog.honoured()

    def write_logs(self, session: Session, lines: list[log_store.LogLine]) -> bool:
        """Add `lines` to the job's log in the caller's transaction; False once it is full."""
        return log_store.append_logs(
            session,
            self.lease.job_id,
            lines,
            max_lines=self.log_limits.max_lines,
            max_line_bytes=self.log_limits.max_line_bytes,
        )

    # -- hooks called by the core --------------------------------------------------------------
    def should_stop(self) -> str | None:
        if self._stop_reason is None and self._preempted.is_set():
            self._stop_reason = "preempted"
        reason = self._stop_reason
        if reason is not None and self.watchdog is not None:
            self.watchdog.honoured()  # the loop stops by itself from here (a checkpoint, Stopped)
        return reason

    def stage_started(self, stage: str) -> None:
        self.stage = stage
        with self._lock:
            self._changes["stage"] = stage
        self.logbook.add(f"stage {stage} started", source="stage")
        self.flush()
        with self.sessions() as s:
            lease_store.start_stage(s, self.lease, stage)
            s.commit()

    def stage_finished(self, stage: str, outputs: dict[str, Any]) -> None:
        self.logbook.add(stage_summary(stage, outputs), source="stage")
        self.flush()
        with self.sessions() as s:
            lease_store.finish_stage(s, self.lease, stage, jsonable(self.relative(outputs)))
            s.commit()

    def progress(self, progress: Progress) -> None:
        self._epochs = progress.epochs
        with self._lock:
            self._changes["progress"] = dataclasses.asdict(progress)

    def epoch_end(self, row: EpochRow) -> None:
        """The epoch's row, and the job's best metrics when the loop says this epoch is the best
        so far by the checkpoint's monitored metric."""
        with self._lock:
            self._rows.append(dict(row, step=-1))
            self._changes["latest_metrics"] = dict(row)
            if row.is_best:
                self._changes["best_metrics"] = dict(row)
        self.logbook.add(epoch_summary(row, self._epochs), source="train")
        # Written now, before the loop saves this epoch's checkpoint: a run killed after that save
        # resumes past this epoch, so its row must already be in the database, not in a buffer.
        try:
            self.flush()
        except Exception:  # a DB hiccup must not kill the job; the next beat retries
            log.exception("epoch row of job %s not written yet", self.lease.job_id)

    def step_logged(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._rows.append(row)

    def checkpoint_saved(self, record: Any) -> None:
        rec = record.to_dict() if hasattr(record, "to_dict") else dict(record)
        kept = [self.relative(str(p)) for p in rec.pop("kept_paths", [])]
        rec["path"] = self.relative(str(rec["path"]))
        kept = kept or [rec["path"]]
        with self._lock:
            self._checkpoints.append((rec, kept))


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


#: Stage outputs that name the server's files: not for the job's log.
_PRIVATE_OUTPUTS = ("path", "dir", "file")


def stage_summary(stage: str, outputs: dict[str, Any]) -> str:
    """`stage train finished in 12.3 s (device cpu, epochs_run 5, ...)`: the stage's scalar
    outputs, those naming server files left out."""
    seconds = outputs.get("seconds")
    took = f" in {seconds:.2f} s" if isinstance(seconds, int | float) else ""
    details = [
        f"{key} {_number(value)}"
        for key, value in outputs.items()
        if key != "seconds"
        and isinstance(value, int | float | str | bool)
        and not any(word in key for word in _PRIVATE_OUTPUTS)
    ]
    return f"stage {stage} finished{took}" + (f" ({', '.join(details)})" if details else "")


def epoch_summary(row: dict[str, Any], epochs: int | None) -> str:
    """`epoch 3/10: train_loss 0.4123, val_loss 0.3981, val_accuracy 0.9126, lr 0.001 in 1.52 s
    (best so far)`."""
    epoch = row.get("epoch")
    head = f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}"
    skip = ("epoch", "step", "epoch_seconds", "samples_per_second")
    values = [f"{k} {_number(v)}" for k, v in row.items() if k not in skip and v is not None]
    text = f"{head}: {', '.join(values)}"
    seconds = row.get("epoch_seconds")
    if isinstance(seconds, int | float):
        text += f" in {seconds:.2f} s"
    if getattr(row, "is_best", False):
        text += " (best so far)"
    return text
