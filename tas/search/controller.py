"""The search controller: `Controller.advance(search_id)`, one step of a search, safe to repeat
and to interrupt anywhere.

A search's state is in two stores, and each step reconciles them rather than remembering
anything: Optuna's study (its trials, their parameters, intermediate values and states) and
tas's rows (the search, a `SearchTrial` per trial, and the trial's job with its epoch metric
rows). One step:

1. Reads the search's trials and their jobs, and each live trial's epoch rows.
2. For each live trial, reports the epochs Optuna has not seen (`trial.report`) and, while its
   job runs, asks the pruner after each (`should_prune`): a pruned trial is told PRUNED, then its
   job is cancelled. A job that ended is told: succeeded → COMPLETE with its best epoch's
   objective; failed, cancelled or deleted → FAIL (Optuna's heartbeat does not cover ask and
   tell, so tas tells it). Tells come before the rows that record them, so a crash in between
   only repeats the row update; a pruned trial whose job still runs is cancelled on every step
   until it stops.
3. Starts trials while fewer than `max_trials` exist and fewer than `max_concurrent` run (and the
   tenant is below its job limit: otherwise the search waits). A trial is asked of Optuna, its
   parameters set into the base spec, and the spec submitted through the job service (the same
   checks and quota as POST /jobs) in one transaction with its `SearchTrial` row; the job is
   published after the commit.
4. Once `max_trials` trials exist and every one has been told and its job has stopped, picks the
   best, registers its model under `model_name`, and settles the search.

Crash between ask and commit. Optuna's ask is its own transaction, so a crash (or a refused
submit) after it leaves a RUNNING trial with no job: an orphan. The next step finds it (a RUNNING
trial whose number no `SearchTrial` row has) and gives it its job before asking anything new, with
the parameters Optuna already holds (any that the crash kept it from drawing are drawn now, by
the same per-draw seeding). A trial's job and row commit together and `(search_id,
trial_number)` is unique on jobs, so a trial is never two jobs; the count of trials is the count of
rows, so exactly `max_trials` run. An orphan found when the count is already reached (two
controllers raced past an expired lease) is told FAIL and marked discarded: it never ran.

Every tas write is fenced by the search's lease (`hold_lease` in the same transaction): a
controller whose lease expired and was taken over writes nothing more."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RDBStorage
from optuna.study import Study
from optuna.trial import FrozenTrial, Trial, TrialState
from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tas.core.spec import JobSpec, TrainingSpec
from tas.errors import ArtifactStoreError, InvalidInput, JobFinished, TooManyRequests
from tas.search import space as space_mod
from tas.search import study as study_mod
from tas.store import jobs as job_store
from tas.store import searches as store
from tas.store.orm import Job, JobStatus, ModelVersion, Search, SearchStatus, SearchTrial, utcnow
from tas.store.searches import LeaseLost
from tas.store.unit_of_work import after_commit, unit_of_work

log = logging.getLogger(__name__)

#: (session, spec, tenant) -> the job, added and checked as POST /jobs does, not committed.
Submit = Callable[[Session, JobSpec, str], Job]
#: (job id, queue): sends the job's message, after its row is committed.
Publish = Callable[[str, str], object]

#: Optuna system attribute of a trial asked but never run (see the module's doc).
DISCARDED = "tas:discarded"
#: Completed trials before parameter importances are computed (fANOVA on fewer says little).
MIN_IMPORTANCE_TRIALS = 4
#: Studies a controller keeps open between steps (one per search it drives).
MAX_KEPT_STUDIES = 256
#: Tries at the next version number of `model_name` when another registration takes it first.
VERSION_TRIES = 5

_STATES = {
    TrialState.RUNNING: "running",
    TrialState.WAITING: "running",
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
}


@dataclass(frozen=True)
class _Search:
    """The search row's values, read once per step."""

    id: str
    tenant: str
    name: str
    status: str
    spec: dict[str, Any]
    space: space_mod.Space
    metric: str
    objective: dict[str, Any]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    max_trials: int
    max_concurrent: int
    model_name: str | None
    study_name: str
    seed: int

    @classmethod
    def of(cls, row: Search) -> _Search:
        return cls(
            id=row.id,
            tenant=row.tenant,
            name=row.name,
            status=row.status,
            spec=dict(row.spec),
            space=space_mod.parse(row.space),
            metric=str(row.objective["metric"]),
            objective=dict(row.objective),
            sampler=dict(row.sampler),
            pruner=dict(row.pruner),
            max_trials=row.max_trials,
            max_concurrent=row.max_concurrent,
            model_name=row.model_name,
            study_name=row.study_name,
            seed=row.seed,
        )

    @property
    def maximize(self) -> bool:
        return self.objective.get("direction") == "maximize"


@dataclass
class Step:
    """What one `advance` did (for logs and tests)."""

    started: list[int] = field(default_factory=list)
    told: dict[int, str] = field(default_factory=dict)
    cancelled_jobs: list[str] = field(default_factory=list)
    discarded: list[int] = field(default_factory=list)
    waiting_for: str | None = None
    finished: str | None = None


@dataclass
class Controller:
    sessions: sessionmaker[Session]
    storage: RDBStorage
    submit: Submit
    publish: Publish
    #: Who holds the leases this controller writes under (`tas.store.searches.take_lease`).
    owner: str
    lease_s: float
    #: TAS_MAX_ACTIVE_JOBS_PER_TENANT: at it, the search waits instead of asking for a trial.
    max_active_jobs: int
    #: Each search's study, kept between steps: its storage wrapper caches finished trials
    #: (which never change), so a step reads only the trials still running.
    _studies: dict[str, Study] = field(default_factory=dict, repr=False)

    def advance(self, search_id: str) -> Step:
        """One step of the search (see the module's doc). The caller holds its lease."""
        with unit_of_work(self.sessions) as s:
            row = s.get(Search, search_id)
            if row is None or row.settled:
                self._studies.pop(search_id, None)
                return Step()
            search = _Search.of(row)
            jobs = store.trial_jobs(s, search_id)
            rows = {t.number: t for t in store.trials(s, search_id)}
            live = [
                n
                for n, tj in jobs.items()
                if rows[n].state == "running" or tj.status in job_store.ACTIVE
            ]
            job_ids = [job_id for n in live if (job_id := jobs[n].job_id) is not None]
            epochs = store.epoch_values(s, job_ids, search.metric)
        study = self._study(search)
        frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
        step = Step()
        missing = [n for n in jobs if n not in frozen]
        if missing:
            self._fail(
                search,
                "StudyLost",
                f"the search's Optuna study {search.study_name!r} has no trial {missing[0]}:"
                " was TAS_SEARCH_STORAGE_URL changed while it ran? Its trials' jobs stay as"
                " they are",
            )
            step.finished = SearchStatus.failed.value
            return step
        states = {n: t.state for n, t in frozen.items()}
        if search.status == SearchStatus.cancelled.value:
            self._settle_cancelled(search, study, frozen, jobs, epochs, step)
            return step
        params = {n: dict(t.params) for n, t in rows.items()}
        updates, to_cancel, completed = self._observe(
            search, study, frozen, jobs, live, epochs, params, states, step
        )
        importances = self._importances(study) if completed else None
        self._record(search, updates, to_cancel, importances, step)
        self._start_trials(search, study, frozen, jobs, states, step)
        if step.finished is None and len(jobs) + len(step.started) >= search.max_trials:
            self._maybe_finish(search, study, states, step)
        if step.finished is not None:
            self._studies.pop(search_id, None)
        return step

    # -- Optuna -------------------------------------------------------------------------------

    def _study(self, search: _Search) -> Study:
        study = self._studies.get(search.id)
        if study is None:
            if len(self._studies) >= MAX_KEPT_STUDIES:
                self._studies.clear()
            study = self._studies[search.id] = study_mod.open_study(
                self.storage,
                study_name=search.study_name,
                objective=search.objective,
                sampler=study_mod.make_sampler(search.sampler, search.seed, search.space),
                pruner=study_mod.make_pruner(search.pruner),
            )
        return study

    def _observe(
        self,
        search: _Search,
        study: Study,
        frozen: dict[int, FrozenTrial],
        jobs: dict[int, store.TrialJob],
        live: list[int],
        epochs: dict[str, store.EpochValues],
        params: dict[int, dict[str, Any]],
        states: dict[int, TrialState],
        step: Step,
    ) -> tuple[dict[int, dict[str, Any]], list[str], bool]:
        """Report, prune and tell each live trial; the `SearchTrial` updates that follow, the
        jobs to cancel, and whether a trial completed."""
        pruning = search.pruner.get("type", "none") != "none"
        updates: dict[int, dict[str, Any]] = {}
        to_cancel: list[str] = []
        completed = False
        for n in sorted(live):
            tj, ft = jobs[n], frozen[n]
            ev = epochs.get(tj.job_id or "", store.EpochValues(0, {}))
            active = tj.status in job_store.ACTIVE
            state, value = ft.state, ft.value
            if state == TrialState.RUNNING:
                trial: Trial | None = None
                last = _epochs(search.spec, params[n])
                for epoch in sorted(e for e in ev.values if e not in ft.intermediate_values):
                    trial = trial or Trial(study, ft._trial_id)
                    trial.report(ev.values[epoch], epoch)
                    # A trial seen only once its training is over is left to complete: stopping
                    # it would save nothing.
                    if active and pruning and epoch < last and trial.should_prune():
                        told = study.tell(n, state=TrialState.PRUNED)
                        state, value = told.state, told.value
                        step.told[n] = "pruned"
                        break
                if state == TrialState.RUNNING and not active:
                    if tj.status == JobStatus.succeeded.value and ev.values:
                        best = (max if search.maximize else min)(ev.values.values())
                        told = study.tell(n, best, state=TrialState.COMPLETE)
                        completed = True
                    else:
                        told = study.tell(n, state=TrialState.FAIL)
                    state, value = told.state, told.value
                    step.told[n] = _STATES[state]
            if state == TrialState.PRUNED and active and not tj.cancel_requested and tj.job_id:
                to_cancel.append(tj.job_id)
            states[n] = state
            updates[n] = {
                "state": _STATES.get(state, "running"),
                "value": value,
                "intermediate": {str(e): v for e, v in sorted(ev.values.items())},
                "epochs": ev.epochs,
            }
        return updates, to_cancel, completed

    def _importances(self, study: Study) -> dict[str, float] | None:
        """Each parameter's share of the objective's variance (fANOVA, seeded), once enough trials
        have completed; None before, or when Optuna cannot tell (e.g. nothing varied)."""
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(complete) < MIN_IMPORTANCE_TRIALS:
            return None
        from optuna.importance import FanovaImportanceEvaluator, get_param_importances

        try:
            found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
        except Exception:
            log.warning("parameter importances of study %s failed", study.study_name, exc_info=True)
            return None
        return {path: round(float(v), 6) for path, v in found.items()}

    def _draw(self, trial: Trial, space: space_mod.Space) -> dict[str, Any]:
        """The trial's value for every parameter: drawn now, or the one it already holds."""
        params: dict[str, Any] = {}
        for path, p in space.items():
            dist = space_mod.distribution(p)
            if isinstance(dist, FloatDistribution):
                raw: Any = trial.suggest_float(path, dist.low, dist.high, log=dist.log)
            elif isinstance(dist, IntDistribution):
                raw = trial.suggest_int(path, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                assert isinstance(dist, CategoricalDistribution)
                raw = trial.suggest_categorical(path, dist.choices)
            params[path] = space_mod.decode(p, raw)
        return params

    # -- tas ----------------------------------------------------------------------------------

    def _fenced(self, s: Session, search_id: str) -> None:
        if not store.hold_lease(s, search_id, self.owner, self.lease_s):
            raise LeaseLost(search_id)

    def _record(
        self,
        search: _Search,
        updates: dict[int, dict[str, Any]],
        to_cancel: list[str],
        importances: dict[str, float] | None,
        step: Step,
    ) -> None:
        if not updates and not to_cancel and importances is None:
            return
        with unit_of_work(self.sessions) as s:
            self._fenced(s, search.id)
            _write_trials(s, search.id, updates)
            for job_id in to_cancel:
                job = s.get(Job, job_id)
                if job is None:
                    continue
                try:
                    job_store.request_cancel(s, job)
                    step.cancelled_jobs.append(job_id)
                except JobFinished:
                    pass
            if importances is not None:
                s.execute(
                    update(Search).where(Search.id == search.id).values(importances=importances)
                )

    def _start_trials(
        self,
        search: _Search,
        study: Study,
        frozen: dict[int, FrozenTrial],
        jobs: dict[int, store.TrialJob],
        states: dict[int, TrialState],
        step: Step,
    ) -> None:
        orphans = sorted(
            n
            for n, t in frozen.items()
            if t.state == TrialState.RUNNING and n not in jobs and DISCARDED not in t.system_attrs
        )
        counted = len(jobs)
        with unit_of_work(self.sessions) as s:
            active = store.active_trial_jobs(s, search.id)
            tenant_active = job_store.active_jobs(s, search.tenant)
        waiting: str | None = None
        while counted < search.max_trials and active < search.max_concurrent:
            if tenant_active >= self.max_active_jobs:
                waiting = (
                    f"tenant {search.tenant!r} has {tenant_active} queued or running jobs, its"
                    f" limit (TAS_MAX_ACTIVE_JOBS_PER_TENANT); the next trial starts once one"
                    " ends"
                )
                break
            if orphans:
                number = orphans.pop(0)
                trial = Trial(study, frozen[number]._trial_id)
            else:
                trial = study.ask()
                number = trial.number
            params = self._draw(trial, search.space)
            outcome = self._start(search, number, params)
            if outcome == "started":
                step.started.append(number)
                states[number] = TrialState.RUNNING
                counted += 1
                active += 1
                tenant_active += 1
            elif outcome == "failed":
                step.finished = SearchStatus.failed.value
                return
            else:  # refused for now (quota, store), or another process made it: next step
                waiting = outcome if outcome != "raced" else None
                break
        if counted >= search.max_trials:
            for number in orphans:
                study._storage.set_trial_system_attr(frozen[number]._trial_id, DISCARDED, True)
                study.tell(number, state=TrialState.FAIL)
                step.discarded.append(number)
        self._set_waiting(search, waiting, step)

    def _start(self, search: _Search, number: int, params: dict[str, Any]) -> str:
        """Submit trial `number`'s job: "started", "failed" (its spec is refused: the search
        fails), "raced" (another process made it), or why it must wait."""
        name = space_mod.trial_name(search.name, number)
        raw = space_mod.trial_job_spec(search.spec, params, name=name, metric=search.metric)
        try:
            spec = JobSpec.model_validate(raw)
        except ValidationError as exc:
            self._refused(search, number, params, str(exc))
            return "failed"
        try:
            with unit_of_work(self.sessions) as s:
                self._fenced(s, search.id)
                job = self.submit(s, spec, search.tenant)
                job.search_id = search.id
                job.trial_number = number
                s.add(
                    SearchTrial(
                        search_id=search.id,
                        number=number,
                        job_id=job.id,
                        params=params,
                        state="running",
                        intermediate={},
                        epochs=0,
                    )
                )
                now = utcnow()
                s.execute(
                    update(Search)
                    .where(Search.id == search.id)
                    .values(
                        status=SearchStatus.running.value,
                        started_at=func.coalesce(Search.started_at, now),
                        waiting_for=None,
                        updated_at=now,
                    )
                )
                s.flush()
                after_commit(s, self.publish, job.id, job.queue)
        except (TooManyRequests, ArtifactStoreError) as exc:
            return exc.message
        except InvalidInput as exc:
            self._refused(search, number, params, exc.message)
            return "failed"
        except IntegrityError:
            log.info("trial %d of search %s was started by another process", number, search.id)
            return "raced"
        log.info("search %s: trial %d started as job %s %s", search.id, number, job.id, params)
        return "started"

    def _refused(self, search: _Search, number: int, params: dict[str, Any], why: str) -> None:
        """A trial spec the job service refuses now (the space was checked at creation, so the
        world changed: a dataset deleted, a limit lowered): the search fails saying so."""
        self._fail(
            search,
            "InvalidTrialSpec",
            f"trial {number} ({params}) makes a job spec that is refused now: {why}",
        )

    def _fail(self, search: _Search, kind: str, message: str) -> None:
        with unit_of_work(self.sessions) as s:
            self._fenced(s, search.id)
            store.finish(
                s, search.id, SearchStatus.failed, error={"type": kind, "message": message}
            )
        log.warning("search %s failed: %s", search.id, message)

    def _set_waiting(self, search: _Search, waiting: str | None, step: Step) -> None:
        step.waiting_for = waiting
        with unit_of_work(self.sessions) as s:
            current = s.scalar(select(Search.waiting_for).where(Search.id == search.id))
            if current == waiting:
                return
            self._fenced(s, search.id)
            s.execute(update(Search).where(Search.id == search.id).values(waiting_for=waiting))

    def _maybe_finish(
        self, search: _Search, study: Study, states: dict[int, TrialState], step: Step
    ) -> None:
        """Settle the search once every trial is told and no trial job still runs."""
        with unit_of_work(self.sessions) as s:
            numbers = [t.number for t in store.trials(s, search.id)]
            active = store.active_trial_jobs(s, search.id)
        if active or len(numbers) < search.max_trials:
            return
        if any(not states.get(n, TrialState.RUNNING).is_finished() for n in numbers):
            return
        complete = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.number in set(numbers)
        ]
        if not complete:
            counts = {
                k: sum(1 for n in numbers if _STATES[states[n]] == k) for k in ("pruned", "failed")
            }
            with unit_of_work(self.sessions) as s:
                self._fenced(s, search.id)
                store.finish(
                    s,
                    search.id,
                    SearchStatus.failed,
                    error={
                        "type": "NoTrialCompleted",
                        "message": f"none of the {len(numbers)} trials completed"
                        f" ({counts['failed']} failed, {counts['pruned']} pruned); the trials'"
                        " jobs say why (GET /jobs?search_id=...)",
                    },
                )
            step.finished = SearchStatus.failed.value
            return
        best = _best(complete, maximize=search.maximize)
        importances = self._importances(study)
        with unit_of_work(self.sessions) as s:
            self._fenced(s, search.id)
            model = None
            if search.model_name:
                model = register_best(s, search, best.number)
            store.finish(
                s,
                search.id,
                SearchStatus.succeeded,
                best_trial=best.number,
                model=model,
                importances=importances,
            )
        step.finished = SearchStatus.succeeded.value
        log.info("search %s succeeded: best trial %d (%s)", search.id, best.number, best.value)

    def _settle_cancelled(
        self,
        search: _Search,
        study: Study,
        frozen: dict[int, FrozenTrial],
        jobs: dict[int, store.TrialJob],
        epochs: dict[str, store.EpochValues],
        step: Step,
    ) -> None:
        """A cancelled search: its trials still RUNNING in the study are told FAIL (they were
        stopped, not finished), their rows say so, and it settles."""
        updates: dict[int, dict[str, Any]] = {}
        for n, t in sorted(frozen.items()):
            state: TrialState = t.state
            if state == TrialState.RUNNING:
                state = study.tell(n, state=TrialState.FAIL).state
                step.told[n] = "failed"
            if n in jobs:
                tj = jobs[n]
                ev = epochs.get(tj.job_id or "", store.EpochValues(0, {}))
                values: dict[str, Any] = {"state": _STATES[state]}
                if ev.epochs:
                    values["intermediate"] = {str(e): v for e, v in sorted(ev.values.items())}
                    values["epochs"] = ev.epochs
                updates[n] = values
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        best = _best(complete, maximize=search.maximize) if complete else None
        with unit_of_work(self.sessions) as s:
            self._fenced(s, search.id)
            _write_trials(s, search.id, updates)
            store.finish(
                s,
                search.id,
                SearchStatus.cancelled,
                best_trial=best.number if best is not None else None,
            )
        step.finished = SearchStatus.cancelled.value


def _write_trials(s: Session, search_id: str, updates: dict[int, dict[str, Any]]) -> None:
    """Each trial's changed row values (state, value, epochs, intermediate), by trial number."""
    for n, values in updates.items():
        s.execute(
            update(SearchTrial)
            .where(SearchTrial.search_id == search_id, SearchTrial.number == n)
            .values(**values, updated_at=utcnow())
        )


def _epochs(base: dict[str, Any], params: dict[str, Any]) -> int:
    """The epochs a trial's job trains for (its spec's training.epochs, searched or not)."""
    if "training.epochs" in params:
        return int(params["training.epochs"])
    training = params.get("training") or base.get("training") or {}
    epochs = training.get("epochs") if isinstance(training, dict) else None
    return int(epochs) if isinstance(epochs, int) else int(TrainingSpec().epochs)


def _best(trials: list[FrozenTrial], *, maximize: bool) -> FrozenTrial:
    """The best complete trial; the lowest number among equals (so a rerun picks the same)."""

    def key(t: FrozenTrial) -> tuple[float, int]:
        value = float(t.value if t.value is not None else float("nan"))
        return (-value if maximize else value, t.number)

    return min(trials, key=key)


def register_best(s: Session, search: _Search, number: int) -> dict[str, Any] | None:
    """Register the best trial's model under the search's `model_name`: its version (registered
    under the trial's own name when its job succeeded) moves to the next version number of
    `model_name`, and the job's result says so. One row, one model bundle: nothing is copied, and
    deleting the version or the job works as for any model. Repeating it changes nothing."""
    assert search.model_name is not None
    job = s.scalar(select(Job).where(Job.search_id == search.id, Job.trial_number == number))
    if job is None:
        return None
    mv = s.scalar(select(ModelVersion).where(ModelVersion.job_id == job.id))
    if mv is None:
        return None
    if mv.name != search.model_name:
        for attempt in range(VERSION_TRIES):
            last = s.scalar(
                select(func.max(ModelVersion.version)).where(
                    ModelVersion.tenant == mv.tenant, ModelVersion.name == search.model_name
                )
            )
            try:
                with s.begin_nested():
                    mv.name = search.model_name
                    mv.version = (last or 0) + 1
                    s.flush()
                break
            except IntegrityError:  # the number went to another registration: the next one
                s.refresh(mv)
                if attempt == VERSION_TRIES - 1:
                    raise
        job.result = {**(job.result or {}), "model": {"name": mv.name, "version": mv.version}}
    return {"name": mv.name, "version": mv.version}
