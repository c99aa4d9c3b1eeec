"""The client's typed results: plain dataclasses read from the API's JSON (no pydantic needed, so
the client installs with httpx alone). Each keeps the answer it was read from in `raw`, so a field
the API adds later is still reachable before the client names it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tas.client.client import JobsApi, SearchesApi
    from tas.client.sse import Event

#: The statuses a job never leaves.
FINISHED = frozenset({"succeeded", "failed", "cancelled"})


def _dt(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


@dataclass(frozen=True)
class JobError:
    """Why a job failed: `type` (e.g. NonFiniteLoss), `message`, a `hint` and the `stage`."""

    type: str
    message: str
    hint: str | None = None
    stage: str | None = None

    @classmethod
    def of(cls, d: dict[str, Any] | None) -> JobError | None:
        if not d:
            return None
        return cls(str(d.get("type", "")), str(d.get("message", "")), d.get("hint"), d.get("stage"))


@dataclass(frozen=True)
class Progress:
    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int
    fraction: float
    samples_per_second: float | None = None
    eta_seconds: float | None = None

    @classmethod
    def of(cls, d: dict[str, Any] | None) -> Progress | None:
        if not d:
            return None
        return cls(
            epoch=int(d.get("epoch", 0)),
            epochs=int(d.get("epochs", 0)),
            step=int(d.get("step", 0)),
            steps_per_epoch=int(d.get("steps_per_epoch", 0)),
            fraction=float(d.get("fraction", 0.0)),
            samples_per_second=d.get("samples_per_second"),
            eta_seconds=d.get("eta_seconds"),
        )


@dataclass(frozen=True)
class Stage:
    name: str
    attempt: int
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    outputs: dict[str, Any] | None

    @classmethod
    def of(cls, d: dict[str, Any]) -> Stage:
        return cls(
            name=str(d.get("name")),
            attempt=int(d.get("attempt", 0)),
            status=str(d.get("status")),
            started_at=_dt(d.get("started_at")),
            finished_at=_dt(d.get("finished_at")),
            outputs=d.get("outputs"),
        )


@dataclass
class Job:
    """A job as `GET /jobs/{id}` shows it, with what can be done to it. `events()`, `wait()` and
    `refresh()` update it in place, so `job.status` in a notebook is the latest seen."""

    id: str
    name: str
    status: str
    stage: str | None
    queue: str
    progress: Progress | None
    latest_metrics: dict[str, Any] | None
    best_metrics: dict[str, Any] | None
    result: dict[str, Any] | None
    error: JobError | None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime | None
    spec: dict[str, Any]
    stages: list[Stage]
    tags: dict[str, str]
    warnings: list[str]
    raw: dict[str, Any] = field(repr=False)
    _api: JobsApi | None = field(default=None, repr=False, compare=False)
    #: The search this job is a trial of, and its number there (None for a job of its own).
    search_id: str | None = None
    trial_number: int | None = None

    @classmethod
    def of(cls, d: dict[str, Any], api: JobsApi | None = None) -> Job:
        return cls(**cls._fields(d), _api=api)

    @staticmethod
    def _fields(d: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": str(d["id"]),
            "name": str(d.get("name", "")),
            "status": str(d.get("status", "")),
            "stage": d.get("stage"),
            "queue": str(d.get("queue", "")),
            "progress": Progress.of(d.get("progress")),
            "latest_metrics": d.get("latest_metrics"),
            "best_metrics": d.get("best_metrics"),
            "result": d.get("result"),
            "error": JobError.of(d.get("error")),
            "attempts": int(d.get("attempts", 0)),
            "max_attempts": int(d.get("max_attempts", 0)),
            "cancel_requested": bool(d.get("cancel_requested", False)),
            "created_at": _dt(d.get("created_at")),
            "started_at": _dt(d.get("started_at")),
            "finished_at": _dt(d.get("finished_at")),
            "updated_at": _dt(d.get("updated_at")),
            "spec": d.get("spec") or {},
            "stages": [Stage.of(s) for s in d.get("stages") or []],
            "tags": d.get("tags") or {},
            "warnings": list(d.get("warnings") or []),
            "raw": d,
            "search_id": d.get("search_id"),
            "trial_number": d.get("trial_number"),
        }

    def update(self, d: dict[str, Any]) -> None:
        """Take a newer answer for this job (an event's, a refresh's)."""
        for key, value in self._fields(d).items():
            setattr(self, key, value)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def model(self) -> tuple[str, int] | None:
        """The registered model version (name, version) of a succeeded job."""
        m = (self.result or {}).get("model")
        return (str(m["name"]), int(m["version"])) if isinstance(m, dict) else None

    @property
    def monitor(self) -> str:
        """The metric the job's checkpoints are chosen by (the spec's checkpoint.monitor)."""
        return str((self.spec.get("checkpoint") or {}).get("monitor") or "val_loss")

    # -- what can be done to it (through the client it came from) --

    def _client(self) -> JobsApi:
        if self._api is None:
            raise RuntimeError("this Job was not read through a Client")
        return self._api

    def refresh(self) -> Job:
        self.update(self._client().get_raw(self.id))
        return self

    def wait(self, timeout: float | None = None, poll_s: float = 1.0) -> Job:
        """Until the job finishes: itself when it succeeded, else JobFailed / JobCancelled (with
        the job's error); WaitTimeout after `timeout` seconds (the job keeps running)."""
        return self._client().wait(self, timeout=timeout, poll_s=poll_s)

    def events(self) -> Iterator[Event]:
        """The job's Server-Sent Events until it finishes, reconnecting (with Last-Event-ID)
        whenever the connection drops; `event: job` events also update this object."""
        return self._client().events(self)

    def metrics(
        self, keys: list[str] | None = None, max_points: int | None = None, kind: str | None = None
    ) -> list[dict[str, Any]]:
        return self._client().metrics(self.id, keys=keys, max_points=max_points, kind=kind)

    def logs(self, after: int | None = None, limit: int | None = None) -> LogPage:
        return self._client().logs(self.id, after=after, limit=limit)

    def cancel(self) -> Job:
        self.update(self._client().cancel_raw(self.id))
        return self


@dataclass(frozen=True)
class LogLine:
    """One line of a job's log: `id` (its cursor: `logs(after=id)` reads what follows), when,
    which run (`attempt`; 0 is the API) and `worker` wrote it, `level` (info | warning | error),
    `source` (stage | train | worker | api | reaper) and the `message`."""

    id: int | None
    message: str
    time: datetime | None
    level: str | None
    source: str | None
    attempt: int | None
    worker: str | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, d: dict[str, Any]) -> LogLine:
        ident, attempt = d.get("id"), d.get("attempt")
        return cls(
            id=int(ident) if isinstance(ident, int | str) and str(ident).isdigit() else None,
            message=str(d.get("message", "")),
            time=_dt(d.get("created_at")),
            level=d.get("level"),
            source=d.get("source"),
            attempt=attempt if isinstance(attempt, int) else None,
            worker=d.get("worker"),
            raw=d,
        )


@dataclass(frozen=True)
class LogPage:
    """A page of a job's log, and the cursor to read on from (the request's own `after` when no
    line was new)."""

    items: list[LogLine]
    next_after: int | None


@dataclass(frozen=True)
class Dataset:
    id: str
    name: str
    builtin: bool
    format: str
    sha256: str | None
    size_bytes: int | None
    created_at: datetime | None
    schema: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, d: dict[str, Any]) -> Dataset:
        return cls(
            id=str(d["id"]),
            name=str(d.get("name", "")),
            builtin=bool(d.get("builtin", False)),
            format=str(d.get("format", "")),
            sha256=d.get("sha256"),
            size_bytes=d.get("size_bytes"),
            created_at=_dt(d.get("created_at")),
            schema=d.get("schema") or {},
            raw=d,
        )


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    job_id: str
    metrics: dict[str, Any] | None
    created_at: datetime | None
    aliases: list[str]
    card: dict[str, Any]

    @classmethod
    def of(cls, d: dict[str, Any]) -> ModelVersion:
        return cls(
            name=str(d["name"]),
            version=int(d["version"]),
            job_id=str(d.get("job_id", "")),
            metrics=d.get("metrics"),
            created_at=_dt(d.get("created_at")),
            aliases=list(d.get("aliases") or []),
            card=d.get("card") or {},
        )


@dataclass(frozen=True)
class Model:
    name: str
    latest_version: int
    aliases: dict[str, int]
    versions: list[ModelVersion]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, d: dict[str, Any]) -> Model:
        return cls(
            name=str(d["name"]),
            latest_version=int(d.get("latest_version", 0)),
            aliases={str(k): int(v) for k, v in (d.get("aliases") or {}).items()},
            versions=[ModelVersion.of(v) for v in d.get("versions") or []],
            raw=d,
        )


@dataclass(frozen=True)
class Alias:
    name: str
    alias: str
    version: int
    updated_at: datetime | None

    @classmethod
    def of(cls, d: dict[str, Any]) -> Alias:
        return cls(
            name=str(d["name"]),
            alias=str(d["alias"]),
            version=int(d["version"]),
            updated_at=_dt(d.get("updated_at")),
        )


@dataclass(frozen=True)
class Prediction:
    label: int | None
    class_name: str | None
    probabilities: list[float] | None
    top_k: list[dict[str, Any]] | None
    value: float | list[float] | None

    @classmethod
    def of(cls, d: dict[str, Any]) -> Prediction:
        return cls(
            label=d.get("label"),
            class_name=d.get("class_name"),
            probabilities=d.get("probabilities"),
            top_k=d.get("top_k"),
            value=d.get("value"),
        )


@dataclass(frozen=True)
class Predictions:
    """`POST /predict`'s answer: which model version answered, and one prediction per input."""

    model: str
    version: int
    job_id: str
    predictions: list[Prediction]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, d: dict[str, Any]) -> Predictions:
        m = d.get("model") or {}
        return cls(
            model=str(m.get("name", "")),
            version=int(m.get("version", 0)),
            job_id=str(m.get("job_id", "")),
            predictions=[Prediction.of(p) for p in d.get("predictions") or []],
            raw=d,
        )


@dataclass(frozen=True)
class Download:
    path: Path
    size_bytes: int


@dataclass(frozen=True)
class Trial:
    """One trial of a search: an ordinary job (`job_id`) run with `params` (keyed by spec path,
    e.g. `training.lr`). `state` is running, complete, pruned or failed; `value` the objective it
    ended with (None until then); `intermediate` the objective after each epoch, as the pruner saw
    it."""

    number: int
    job_id: str | None
    params: dict[str, Any]
    state: str
    value: float | None
    epochs: int
    intermediate: dict[int, float]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, d: dict[str, Any]) -> Trial:
        value = d.get("value")
        steps: dict[int, float] = {}
        for k, v in (d.get("intermediate") or {}).items():
            # JSON keys are strings; the epochs are numbers (a key that is not one is skipped).
            if str(k).isdigit() and isinstance(v, int | float):
                steps[int(k)] = float(v)
        return cls(
            number=int(d.get("number", 0)),
            job_id=d.get("job_id"),
            params=d.get("params") or {},
            state=str(d.get("state", "")),
            value=float(value) if isinstance(value, int | float) else None,
            epochs=int(d.get("epochs") or 0),
            intermediate=dict(sorted(steps.items())),
            raw=d,
        )

    @property
    def last_value(self) -> float | None:
        """The objective it ended with, else its last reported epoch's (a pruned trial's)."""
        if self.value is not None:
            return self.value
        return self.intermediate[max(self.intermediate)] if self.intermediate else None


@dataclass
class Search:
    """A search as `GET /searches/{id}` shows it. An item of `searches.list()` has no `trials`
    (the list leaves them out; `refresh()` reads them). `refresh()`, `wait()` and `watch()`
    update it in place."""

    id: str
    name: str
    status: str
    objective: dict[str, Any]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    space: dict[str, Any]
    max_trials: int
    max_concurrent: int
    model_name: str | None
    created_at: datetime | None
    finished_at: datetime | None
    trials: list[Trial]
    best: Trial | None
    importances: dict[str, float] | None
    counts: dict[str, int]
    #: Why it failed ({type, message}), and why no trial starts now (e.g. the tenant's job limit).
    error: dict[str, Any] | None
    waiting_for: str | None
    raw: dict[str, Any] = field(repr=False)
    _api: SearchesApi | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, d: dict[str, Any], api: SearchesApi | None = None) -> Search:
        return cls(**cls._fields(d), _api=api)

    @staticmethod
    def _fields(d: dict[str, Any]) -> dict[str, Any]:
        best = d.get("best")
        return {
            "id": str(d["id"]),
            "name": str(d.get("name", "")),
            "status": str(d.get("status", "")),
            "objective": d.get("objective") or {},
            "sampler": d.get("sampler") or {},
            "pruner": d.get("pruner") or {},
            "space": d.get("space") or {},
            "max_trials": int(d.get("max_trials") or 0),
            "max_concurrent": int(d.get("max_concurrent") or 0),
            "model_name": d.get("model_name"),
            "created_at": _dt(d.get("created_at")),
            "finished_at": _dt(d.get("finished_at")),
            "trials": [Trial.of(t) for t in d.get("trials") or []],
            "best": Trial.of(best) if isinstance(best, dict) else None,
            "importances": d.get("importances"),
            "counts": {str(k): int(v) for k, v in (d.get("counts") or {}).items()},
            "error": d.get("error") if isinstance(d.get("error"), dict) else None,
            "waiting_for": d.get("waiting_for"),
            "raw": d,
        }

    def update(self, d: dict[str, Any]) -> None:
        for key, value in self._fields(d).items():
            setattr(self, key, value)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def metric(self) -> str:
        return str(self.objective.get("metric", ""))

    @property
    def direction(self) -> str:
        return str(self.objective.get("direction", ""))

    @property
    def model(self) -> tuple[str, int] | None:
        """The best trial's model as registered under `model_name`: (name, version)."""
        m = self.raw.get("model")
        return (str(m["name"]), int(m["version"])) if isinstance(m, dict) else None

    def _client(self) -> SearchesApi:
        if self._api is None:
            raise RuntimeError("this Search was not read through a Client")
        return self._api

    def refresh(self) -> Search:
        self.update(self._client().get_raw(self.id))
        return self

    def watch(self, poll_s: float = 2.0) -> Iterator[Search]:
        """Itself each time the API's answer changes (a trial starts, reports, ends), until the
        search finishes."""
        return self._client().watch(self, poll_s=poll_s)

    def wait(self, timeout: float | None = None, poll_s: float = 2.0) -> Search:
        """Until the search finishes: itself when it succeeded, else SearchFailed /
        SearchCancelled; WaitTimeout after `timeout` seconds (the search keeps running)."""
        return self._client().wait(self, timeout=timeout, poll_s=poll_s)

    def cancel(self) -> Search:
        """Stop it: no new trials, its running trials cancelled."""
        self.update(self._client().cancel_raw(self.id))
        return self
