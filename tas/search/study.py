"""Optuna's side of a search: its storage, kept apart from tas's tables, and the sampler and
pruner a search names.

Storage. Optuna creates its tables itself and migrates them with its own Alembic version table,
so they never share a schema with tas's (whose `alembic_version` is tas's migrations'): by default
a SQLite file `optuna.db` in the data dir beside tas's SQLite database, or, on PostgreSQL, the
same database with `search_path` set to a schema of its own (`optuna`, created on first use).
TAS_SEARCH_STORAGE_URL names any other place.

Reproducible draws. Optuna's samplers keep their random state in memory, so a controller that
restarts would draw its first values again. Here each value is drawn by a sampler seeded from
(the search's seed, the trial's number, the parameter's path): a trial's random draws depend on
nothing else, neither restarts nor which trials ran side by side nor timing. So:

- `random`: trial n's parameters are a function of (seed, n): the same in every run.
- `grid`: the grid is shuffled once by the seed and trial n takes combination n.
- `tpe`: its first `startup_trials` (10) trials are random draws as above; after those, TPE
  models the trials finished so far, so a trial's parameters also depend on which trials had
  finished when it was asked: with `max_concurrent` 1 (and seeded training, which is
  deterministic on the CPU) a TPE search is reproducible too; with more trials side by side it is
  not, by nature."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.pruners import BasePruner, MedianPruner, NopPruner, SuccessiveHalvingPruner
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.storages import RDBStorage
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tas.search import space as space_mod
from tas.settings import Settings

log = logging.getLogger(__name__)

#: The PostgreSQL schema Optuna's tables go to by default.
OPTUNA_SCHEMA = "optuna"


def storage_url(settings: Settings) -> str:
    """TAS_SEARCH_STORAGE_URL, or the default beside tas's database (see the module's doc)."""
    if settings.search_storage_url:
        return settings.search_storage_url
    db = settings.resolved_database_url
    if db.startswith("postgresql"):
        url = make_url(db)
        options = url.query.get("options")
        extra = f"-csearch_path={OPTUNA_SCHEMA}"
        joined = f"{options} {extra}" if isinstance(options, str) and options else extra
        return url.update_query_dict({"options": joined}).render_as_string(hide_password=False)
    return f"sqlite:///{(settings.data_dir / 'optuna.db').resolve()}"


def _schema_of(url: str) -> str | None:
    """The schema a PostgreSQL URL's `options=-csearch_path=...` puts Optuna's tables in."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("postgresql"):
        return None
    options = parsed.query.get("options")
    if not isinstance(options, str):
        return None
    for part in options.split():
        if part.startswith("-csearch_path="):
            return part.split("=", 1)[1].split(",")[0].strip('"') or None
    return None


_storages: dict[str, RDBStorage] = {}
_lock = threading.Lock()


def open_storage(url: str) -> RDBStorage:
    """Optuna's storage at `url`, opened once per process (an engine and its pool). Its schema
    (PostgreSQL) is created first; Optuna then creates or upgrades its tables there. Two API
    processes opening it at once race on the CREATE TABLEs: the loser tries again."""
    with _lock:
        found = _storages.get(url)
        if found is not None:
            return found
        schema = _schema_of(url)
        if schema is not None:
            _create_schema(url, schema)
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        for attempt in range(3):
            try:
                storage = RDBStorage(url, engine_kwargs=kwargs)
                break
            except Exception:
                if attempt == 2:
                    raise
                log.warning("opening Optuna's storage failed; trying again", exc_info=True)
                time.sleep(0.5 + attempt)
        _storages[url] = storage
        return storage


def _create_schema(url: str, schema: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            quoted = conn.dialect.identifier_preparer.quote_identifier(schema)
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
    finally:
        engine.dispose()


def trial_seed(seed: int, number: int, path: str) -> int:
    """The seed of one draw: a function of the search's seed, the trial and the parameter."""
    digest = hashlib.sha256(f"{seed}/{number}/{path}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


class PerDrawSampler(BaseSampler):
    """Draws each parameter with `make(trial_seed(seed, trial, path))`, a sampler built for that
    one draw (see the module's doc): independent sampling only, which is what random and
    (non-multivariate) TPE do."""

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self._make = make
        self._seed = seed

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        inner = self._make(trial_seed(self._seed, trial.number, param_name))
        value = inner.sample_independent(study, trial, param_name, param_distribution)
        return clipped(value, param_distribution)


def clipped(value: Any, distribution: BaseDistribution) -> Any:
    """A float draw held inside its range: TPE samples a log range in log space, and the way back
    can land a few floats past `high` (1e100..1e100·(1+1e-12) gave 1.0000000000010057e+100), which
    the trial's spec would then refuse (a bound such as weight_decay's 1 is the spec's own)."""
    if isinstance(distribution, FloatDistribution) and isinstance(value, float):
        return min(max(value, distribution.low), distribution.high)
    return value


class SearchGrid(GridSampler):
    """Optuna's grid, without its stop: when the grid is done GridSampler stops the study's
    `optimize` loop, which outside one (a tell) raises. tas counts a search's trials itself."""

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        return None


def make_sampler(sampler: Mapping[str, Any], seed: int, space: space_mod.Space) -> BaseSampler:
    kind = sampler.get("type", "tpe")
    if kind == "grid":
        return SearchGrid(space_mod.grid(space), seed=seed)
    if kind == "random":
        return PerDrawSampler(lambda s: RandomSampler(seed=s), seed)
    startup = int(sampler.get("startup_trials") or 10)
    return PerDrawSampler(lambda s: TPESampler(seed=s, n_startup_trials=startup), seed)


def make_pruner(pruner: Mapping[str, Any]) -> BasePruner:
    kind = pruner.get("type", "none")
    if kind == "median":
        return MedianPruner(
            n_startup_trials=int(pruner.get("startup_trials", 5)),
            n_warmup_steps=int(pruner.get("warmup_epochs", 0)),
            interval_steps=1,
        )
    if kind == "asha":
        return SuccessiveHalvingPruner(
            min_resource=int(pruner.get("min_epochs", 1)),
            reduction_factor=int(pruner.get("reduction_factor", 3)),
            min_early_stopping_rate=int(pruner.get("min_early_stopping_rate", 0)),
        )
    return NopPruner()


def direction(objective: Mapping[str, Any]) -> StudyDirection:
    return (
        StudyDirection.MAXIMIZE
        if objective.get("direction") == "maximize"
        else StudyDirection.MINIMIZE
    )


def open_study(
    storage: RDBStorage,
    *,
    study_name: str,
    objective: Mapping[str, Any],
    sampler: BaseSampler,
    pruner: BasePruner,
) -> Study:
    """The search's study, created on its first use (the same name and direction every time, so
    a controller that restarts, here or in another process, resumes it)."""
    try:
        return Study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:  # no such study yet
        pass
    optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction=direction(objective),
        load_if_exists=True,
    )
    return Study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
