"""How the core talks to whoever runs it (the worker, a test, the CLI), without knowing who that is.

The training loop calls these between steps, so each must be cheap: `should_stop` is read at every step
boundary and must be a flag read (the worker's heartbeat thread sets the flag; the loop never waits on a
database), `progress` is called at most every ~0.5 s, the row hooks once per log interval or epoch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from tas.core.checkpoint import CheckpointRecord


@dataclass(frozen=True)
class Progress:
    epoch: int  # 1-based epoch being trained
    epochs: int
    step: int  # steps done in this epoch
    steps_per_epoch: int
    fraction: float  # of the whole run, 0..1
    samples_per_second: float
    eta_seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EpochRow(dict[str, Any]):
    """An epoch's metrics row as `Hooks.epoch_end` gets it: the row itself (what is stored and
    shown) and `is_best`, whether this epoch is the run's best so far by the checkpoint's monitored
    metric (the loop decides it once, so a live "best" never needs computing again). The flag is
    an attribute, not a key: the row's keys stay the epoch's metrics."""

    def __init__(self, row: dict[str, Any], *, is_best: bool = False) -> None:
        super().__init__(row)
        self.is_best = is_best


@runtime_checkable
class Hooks(Protocol):
    def stage_started(self, name: str) -> None: ...

    def stage_finished(self, name: str, outputs: dict[str, Any]) -> None: ...

    def progress(self, progress: Progress) -> None: ...

    def epoch_end(self, row: EpochRow) -> None: ...

    def step_logged(self, row: dict[str, Any]) -> None: ...

    def checkpoint_saved(self, record: CheckpointRecord) -> None: ...

    def should_stop(self) -> str | None: ...


class NullHooks:
    """Does nothing; subclass it and override what you need."""

    def stage_started(self, name: str) -> None:
        pass

    def stage_finished(self, name: str, outputs: dict[str, Any]) -> None:
        pass

    def progress(self, progress: Progress) -> None:
        pass

    def epoch_end(self, row: EpochRow) -> None:
        pass

    def step_logged(self, row: dict[str, Any]) -> None:
        pass

    def checkpoint_saved(self, record: CheckpointRecord) -> None:
        pass

    def should_stop(self) -> str | None:
        return None
