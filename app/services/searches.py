"""Searches: creation (every trial spec the space can make is checked before anything runs), the
view the API answers, cancel, and the wiring of the controller loop into the API process.

A space is accepted only when the specs it can produce pass the checks a POST /jobs body does
(`tas.search.space.probes`: each parameter's bounds, every choice, short int ranges whole, the
corners, a small grid whole), each checked exactly as `app.services.jobs.submit` checks a job.
A spec refused there is a 422 naming the space's path and the value that breaks it, e.g.
`loc: ["body", "space", "training.batch_size"]`."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.schemas.searches import SearchIn
from app.services import jobs as job_service
from tas.core.data.dataset import DatasetInfo
from tas.core.spec import JobSpec, metric_mode, metric_names, spec_problems
from tas.errors import InvalidInput
from tas.queue import Publisher
from tas.search import space as space_mod
from tas.search.loop import SearchLoop, new_owner
from tas.settings import Settings
from tas.store import searches as search_store
from tas.store.orm import Job, Search, SearchStatus, SearchTrial, new_id

if TYPE_CHECKING:
    from tas.search.controller import Controller

log = logging.getLogger(__name__)

Problems = list[tuple[tuple[str | int, ...], str]]

#: Problems one refused search reports at most (a space of many bad values says so briefly).
MAX_PROBLEMS = 10


def create(session: Session, body: SearchIn, *, tenant: str, settings: Settings) -> Search:
    """Check the base spec, the objective and the space (see the module's doc), then add the
    search; its controller starts the trials."""
    raw = {**body.spec, "name": body.name}
    model_name = body.model_name or _str(body.spec.get("model_name"))
    raw.pop("model_name", None)
    try:
        base = JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", "spec", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from exc
    info = _at_spec(lambda: job_service.dataset_info(session, base, tenant, settings))
    objective = _objective(body, base, info)
    space = dict(body.space)
    sampler = body.sampler.model_dump()
    max_trials = _max_trials(body, space)
    stored = base.model_dump(mode="json", exclude_unset=True)
    checker = _Checker(session, tenant, settings, stored, str(objective["metric"]))
    problems = [(("body", "spec", *loc[1:]), msg) for loc, msg in checker.problems({})]
    if problems:
        raise InvalidInput(problems)
    size = space_mod.grid_size(space)
    whole = size is not None and size <= space_mod.CHECK_WHOLE_GRID
    _check_space(checker, space, whole_grid=whole and body.sampler.type == "grid")
    search_id = new_id()
    seed = body.sampler.seed if body.sampler.seed is not None else secrets.randbelow(2**31)
    return search_store.create_search(
        session,
        id=search_id,
        tenant=tenant,
        name=body.name,
        spec=stored,
        space={path: p.model_dump() for path, p in space.items()},
        objective=objective,
        sampler=sampler,
        pruner=body.pruner.model_dump(),
        max_trials=max_trials,
        max_concurrent=body.max_concurrent,
        model_name=model_name,
        study_name=f"tas-search-{search_id}",
        seed=seed,
        settled=False,
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _at_spec(fn: Callable[[], DatasetInfo]) -> DatasetInfo:
    """The job service's check, its problems located under the search's `spec`."""
    try:
        return fn()
    except InvalidInput as exc:
        raise InvalidInput(
            [(("body", "spec", *loc[1:]), msg) for loc, msg in exc.problems]
        ) from exc


def _objective(body: SearchIn, base: JobSpec, info: DatasetInfo) -> dict[str, Any]:
    metric = body.objective.metric
    known = metric_names(info.task)
    if metric not in known:
        raise InvalidInput(
            [
                (
                    ("body", "objective", "metric"),
                    f"unknown metric {metric!r} for dataset {info.name!r}, a {info.task} dataset;"
                    f" allowed: {', '.join(known)}",
                )
            ]
        )
    if metric.startswith("val_") and base.dataset.val_fraction <= 0:
        raise InvalidInput(
            [
                (
                    ("body", "objective", "metric"),
                    f"{metric} needs a validation split, and the base spec's"
                    " dataset.val_fraction is 0: set it above 0, or search on train_loss",
                )
            ]
        )
    direction = body.objective.direction
    if direction is None:
        direction = "maximize" if metric_mode(metric) == "max" else "minimize"
    return {"metric": metric, "direction": direction}


def _max_trials(body: SearchIn, space: space_mod.Space) -> int:
    """Checks each path, then what the sampler needs: a grid search's parameters must have a
    finite set of values, and it runs at most each combination once (more is a 422, not a cap:
    the client said how many trials it wants, and the grid cannot give them)."""
    problems: Problems = []
    for path in space:
        problem = space_mod.path_problem(path)
        if problem:
            problems.append((("body", "space", path), problem))
    overlap = space_mod.overlap_problem(list(space))
    if overlap:
        problems.append((("body", "space", overlap[0]), overlap[1]))
    if problems:
        raise InvalidInput(problems)
    if body.sampler.type == "grid":
        size = space_mod.grid_size(space)
        if size is None:
            floats = [p for p, v in space.items() if isinstance(v, space_mod.FloatParam)]
            raise InvalidInput(
                [
                    (
                        ("body", "space", path),
                        "a grid search needs a finite set of values: a float range has none;"
                        " use categorical choices or an int range with a step",
                    )
                    for path in floats
                ]
            )
        if size > space_mod.MAX_GRID:
            raise InvalidInput(
                [
                    (
                        ("body", "space"),
                        f"the grid has {size} combinations; at most {space_mod.MAX_GRID}",
                    )
                ]
            )
        if body.max_trials is None:
            return size
        if body.max_trials > size:
            raise InvalidInput(
                [
                    (
                        ("body", "max_trials"),
                        f"the grid has {size} combinations and a grid search runs each at most"
                        f" once; max_trials {body.max_trials} is more: give at most {size}"
                        " (or leave it out for the whole grid)",
                    )
                ]
            )
        return body.max_trials
    if body.max_trials is None:
        raise InvalidInput(
            [(("body", "max_trials"), f"required for a {body.sampler.type} search (1 to 1000)")]
        )
    return body.max_trials


class _Checker:
    """A trial's job spec checked as `app.services.jobs.submit` checks one: its fields, the time
    limit, the dataset's schema, the size, `init_from`. Results are kept by spec, so the probes
    that make the same spec cost one check."""

    def __init__(
        self, session: Session, tenant: str, settings: Settings, base: dict[str, Any], metric: str
    ) -> None:
        self.session, self.tenant, self.settings = session, tenant, settings
        self.base, self.metric = base, metric
        self._done: dict[str, Problems] = {}
        self._infos: dict[str, DatasetInfo] = {}

    def problems(self, params: dict[str, Any]) -> Problems:
        """The trial spec's problems, located as a POST /jobs body's (`("body", field...)`)."""
        raw = space_mod.trial_job_spec(self.base, params, name="trial", metric=self.metric)
        key = json.dumps(raw, sort_keys=True, default=str)
        if key not in self._done:
            self._done[key] = self._check(raw)
        return self._done[key]

    def _check(self, raw: dict[str, Any]) -> Problems:
        try:
            spec = JobSpec.model_validate(raw)
        except ValidationError as exc:
            return [(("body", *e["loc"]), e["msg"]) for e in exc.errors(include_url=False)]
        try:
            spec = job_service.with_time_limit(spec, self.settings)
            info = self._info(spec)
        except InvalidInput as exc:
            return list(exc.problems)
        problems: Problems = [(("body", *loc), msg) for loc, msg in spec_problems(spec, info)]
        if problems:
            return problems
        problems = job_service.size_problems(self.session, spec, info, self.settings)
        if problems or (spec.model.init_from is None and spec.model.freeze == "none"):
            return problems
        found, _ = job_service.transfer_problems(
            self.session, spec, info, self.tenant, self.settings
        )
        return found

    def _info(self, spec: JobSpec) -> DatasetInfo:
        key = spec.dataset.model_dump_json()
        if key not in self._infos:
            self._infos[key] = job_service.dataset_info(
                self.session, spec, self.tenant, self.settings
            )
        return self._infos[key]


def _check_space(checker: _Checker, space: space_mod.Space, *, whole_grid: bool) -> None:
    """Every probe's spec checked; the first problem of each blamed path reported (422)."""
    problems: Problems = []
    blamed: set[str | None] = set()
    for probe in space_mod.probes(space, whole_grid=whole_grid):
        if probe.blame in blamed or (probe.blame is None and problems):
            # One problem per path; a corner only when no single value explains it.
            continue
        found = checker.problems(probe.params)
        if not found:
            continue
        loc, msg = found[0]
        field = ".".join(str(part) for part in loc[1:]) or "the spec"
        if probe.blame is not None:
            value = probe.params[probe.blame]
            problems.append(
                (
                    ("body", "space", probe.blame),
                    f"{probe.blame} = {json.dumps(value)} makes a job spec that is refused at"
                    f" {field}: {msg}",
                )
            )
        else:
            where = ", ".join(f"{p} = {json.dumps(v)}" for p, v in probe.params.items())
            problems.append(
                (
                    ("body", "space"),
                    f"the trial with {where} makes a job spec that is refused at {field}: {msg}",
                )
            )
        blamed.add(probe.blame)
        if len(problems) >= MAX_PROBLEMS:
            break
    if problems:
        raise InvalidInput(problems)


# -- reading --------------------------------------------------------------------------------


def _trial(t: SearchTrial) -> dict[str, Any]:
    return {
        "number": t.number,
        "job_id": t.job_id,
        "params": t.params,
        "state": t.state,
        "value": t.value,
        "epochs": t.epochs,
        "intermediate": t.intermediate or {},
    }


def _best(search: Search, trials: list[SearchTrial]) -> SearchTrial | None:
    """The trial the search settled on; while it runs, the best complete one so far (the lowest
    number among equals, as the controller picks)."""
    if search.best_trial is not None:
        chosen = [t for t in trials if t.number == search.best_trial]
        if chosen:
            return chosen[0]
    complete = [t for t in trials if t.state == "complete" and t.value is not None]
    if not complete:
        return None
    sign = -1.0 if search.objective.get("direction") == "maximize" else 1.0
    return min(complete, key=lambda t: (sign * float(t.value or 0.0), t.number))


def _summary(search: Search, counts: dict[str, int], best: SearchTrial | None) -> dict[str, Any]:
    return {
        "id": search.id,
        "name": search.name,
        "status": search.status,
        "objective": search.objective,
        "sampler": search.sampler,
        "pruner": search.pruner,
        "space": search.space,
        "max_trials": search.max_trials,
        "max_concurrent": search.max_concurrent,
        "model_name": search.model_name,
        "created_at": search.created_at,
        "started_at": search.started_at,
        "finished_at": search.finished_at,
        "updated_at": search.updated_at,
        "best": _trial(best) if best is not None else None,
        "importances": search.importances,
        "model": search.model,
        "counts": counts,
        "trial_count": sum(counts.values()),
        "error": search.error,
        "waiting_for": search.waiting_for,
        "spec": search.spec,
    }


def view(session: Session, search: Search) -> dict[str, Any]:
    """GET /searches/{id}'s answer, from tas's rows alone."""
    trials = search_store.trials(session, search.id)
    counts = dict.fromkeys(search_store.TRIAL_STATES, 0)
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    return {
        **_summary(search, counts, _best(search, trials)),
        "trials": [_trial(t) for t in trials],
    }


def page(
    session: Session, *, tenant: str, limit: int, cursor: str | None, status: list[str] | None
) -> dict[str, Any]:
    statuses = [s.strip() for raw in status or [] for s in raw.split(",") if s.strip()]
    allowed = [s.value for s in SearchStatus]
    bad = [s for s in statuses if s not in allowed]
    if bad:
        raise InvalidInput(
            [(("query", "status"), f"unknown status {bad[0]!r}; allowed: {', '.join(allowed)}")]
        )
    found = search_store.list_searches(
        session, tenant=tenant, limit=limit, cursor=cursor, statuses=statuses
    )
    ids = [s.id for s in found.items]
    counts = search_store.trial_counts(session, ids)
    complete: dict[str, list[SearchTrial]] = {sid: [] for sid in ids}
    if ids:
        rows = session.scalars(
            select(SearchTrial).where(
                SearchTrial.search_id.in_(ids), SearchTrial.state == "complete"
            )
        )
        for t in rows:
            complete[t.search_id].append(t)
    return {
        "items": [_summary(s, counts[s.id], _best(s, complete[s.id])) for s in found.items],
        "next_cursor": found.next_cursor,
    }


def cancel(session: Session, search: Search) -> dict[str, Any]:
    search_store.request_cancel(session, search)
    return view(session, search)


# -- the controller in the API process -------------------------------------------------------


def submitter(settings: Settings) -> Callable[[Session, JobSpec, str], Job]:
    """How the controller adds a trial's job: POST /jobs' own submit (checks, quotas)."""

    def submit(session: Session, spec: JobSpec, tenant: str) -> Job:
        return job_service.submit(
            session, spec, tenant=tenant, max_attempts=settings.max_attempts, settings=settings
        )

    return submit


def make_loop(
    settings: Settings, sessions: sessionmaker[Session], publisher: Publisher
) -> SearchLoop:
    """The thread that drives this process's share of the searches (`tas.search.loop`)."""
    owner = new_owner()

    def controller() -> Controller:
        # Imported on the first search this process drives: Optuna (and the libraries its
        # importances need) stay out of an API process that never drives one.
        from tas.search import study as study_mod
        from tas.search.controller import Controller

        return Controller(
            sessions=sessions,
            storage=study_mod.open_storage(study_mod.storage_url(settings)),
            submit=submitter(settings),
            publish=partial(_publish, publisher),
            owner=owner,
            lease_s=settings.search_lease_s,
            max_active_jobs=settings.max_active_jobs_per_tenant,
        )

    return SearchLoop(
        sessions,
        controller,
        owner=owner,
        interval_s=settings.search_interval_s,
        lease_s=settings.search_lease_s,
    )


def _publish(publisher: Publisher, job_id: str, queue: str) -> None:
    publisher.publish(job_id, queue)
