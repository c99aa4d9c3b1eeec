"""Request and response schemas for searches (POST /searches, GET /searches[/{id}])."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tas.core.spec import SEED_MAX
from tas.search.space import MAX_PARAMS, Param

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ObjectiveIn(_In):
    metric: str = Field(
        ...,
        max_length=64,
        description="An epoch metric of the dataset's task: val_accuracy, val_loss, train_loss"
        " (classification); val_loss, val_mae, val_rmse, val_r2, train_loss (regression).",
        examples=["val_accuracy"],
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="null: maximize for accuracy and r2, minimize otherwise."
    )


class TpeSamplerIn(_In):
    type: Literal["tpe"]
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    startup_trials: int = Field(
        10, ge=1, le=1000, description="Random trials before TPE models the results."
    )


class RandomSamplerIn(_In):
    type: Literal["random"]
    seed: int | None = Field(None, ge=0, le=SEED_MAX)


class GridSamplerIn(_In):
    type: Literal["grid"]
    seed: int | None = Field(
        None, ge=0, le=SEED_MAX, description="Shuffles the order the combinations run in."
    )


SamplerIn = Annotated[TpeSamplerIn | RandomSamplerIn | GridSamplerIn, Field(discriminator="type")]


class NoPrunerIn(_In):
    type: Literal["none"]


class MedianPrunerIn(_In):
    """Stop a trial whose objective at an epoch is worse than the median of the completed
    trials' at that epoch."""

    type: Literal["median"]
    startup_trials: int = Field(
        5, ge=0, le=1000, description="Completed trials before any trial is pruned."
    )
    warmup_epochs: int = Field(0, ge=0, le=100_000, description="Epochs never pruned.")


class AshaPrunerIn(_In):
    """Asynchronous successive halving: at epochs min_epochs × reduction_factor^k, a trial goes
    on only if it is in the best 1/reduction_factor of the trials that reached that epoch."""

    type: Literal["asha"]
    min_epochs: int = Field(1, ge=1, le=100_000)
    reduction_factor: int = Field(3, ge=2, le=100)
    min_early_stopping_rate: int = Field(0, ge=0, le=100)


PrunerIn = Annotated[NoPrunerIn | MedianPrunerIn | AshaPrunerIn, Field(discriminator="type")]


class SearchIn(_In):
    """`POST /searches`: a base job spec and the space of spec paths to search over."""

    name: str = Field(..., pattern=NAME_PATTERN, examples=["digits-lr"])
    spec: dict[str, Any] = Field(
        ...,
        description="A job spec (as POST /jobs takes) every trial starts from; its name is the"
        " search's (each trial's job is `<name>-t<number>`).",
    )
    space: dict[Annotated[str, Field(min_length=1, max_length=200)], Param] = Field(
        ...,
        min_length=1,
        max_length=MAX_PARAMS,
        description="Spec path -> the values it takes: {type: float, low, high, log},"
        " {type: int, low, high, step, log} or {type: categorical, choices: [any JSON]}.",
        examples=[
            {
                "training.lr": {"type": "float", "low": 0.0001, "high": 0.1, "log": True},
                "model.hidden": {"type": "categorical", "choices": [[128], [256, 256]]},
            }
        ],
    )
    objective: ObjectiveIn
    sampler: SamplerIn = Field(default_factory=lambda: TpeSamplerIn(type="tpe"))
    pruner: PrunerIn = Field(default_factory=lambda: NoPrunerIn(type="none"))
    max_trials: int | None = Field(
        None, ge=1, le=1000, description="Trials to run; a grid search's default: its size."
    )
    max_concurrent: int = Field(1, ge=1, le=64, description="Trials running at once, at most.")
    model_name: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="Register the best trial's model under this name (its next version);"
        " null: the base spec's model_name, or none.",
    )


class TrialOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int
    job_id: str | None = Field(description="The trial's job (GET /jobs/{id}).")
    params: dict[str, Any] = Field(description="Spec path -> the value the trial ran with.")
    state: str = Field(description="running | complete | pruned | failed")
    value: float | None = Field(
        description="The objective: a complete trial's best epoch's, a pruned trial's last"
        " reported one."
    )
    epochs: int = Field(description="Epochs the trial's job trained.")
    intermediate: dict[str, float] = Field(
        description='The objective after each epoch: {"1": 0.81, "2": 0.9, ...}.'
    )


class ModelRefOut(BaseModel):
    name: str
    version: int


class SearchErrorOut(BaseModel):
    type: str
    message: str


class SearchSummaryOut(BaseModel):
    """A search without its trials (GET /searches' items)."""

    id: str
    name: str
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    objective: dict[str, Any]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    space: dict[str, Any]
    max_trials: int
    max_concurrent: int
    model_name: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    best: TrialOut | None = Field(description="The best complete trial so far.")
    importances: dict[str, float] | None = Field(
        description="Spec path -> share of the objective's variance it explains (Optuna's"
        " fANOVA), once at least 4 trials have completed."
    )
    model: ModelRefOut | None = Field(
        description="Where the best trial's model was registered (model_name), once finished."
    )
    counts: dict[str, int] = Field(description="Trials by state.")
    trial_count: int
    error: SearchErrorOut | None = None
    waiting_for: str | None = Field(
        None, description="Why no trial is being started now (e.g. the tenant's job limit)."
    )
    spec: dict[str, Any] = Field(description="The base job spec.")


class SearchOut(SearchSummaryOut):
    trials: list[TrialOut]


class SearchPage(BaseModel):
    items: list[SearchSummaryOut]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last."
    )
