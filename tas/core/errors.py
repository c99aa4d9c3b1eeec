"""Errors the core raises, each carrying what a user needs to act on it.

A failed job shows `{"type", "message", "hint", "stage"}` (`to_error_dict`). The worker does not parse
messages: the type says what happened, the hint says what to change in the spec, the stage says where.
`Stopped` is not an error: a cancel, a preemption or a lost lease ends training on purpose."""

from __future__ import annotations

from typing import Any, Literal

StopReason = Literal["cancelled", "preempted", "lease_lost"]
STOP_REASONS: tuple[str, ...] = ("cancelled", "preempted", "lease_lost")


class TrainingError(Exception):
    """Base of every failure the core reports to a user. `type` defaults to the class name."""

    default_hint: str | None = None

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        stage: str | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.stage = stage
        self.type = type or self.__class__.__name__

    def to_error_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "hint": self.hint, "stage": self.stage}

    def __str__(self) -> str:
        return self.message


class NonFiniteLoss(TrainingError):
    """The training loss became NaN or infinite; `epoch` is 1-based, `step` is the step in that epoch."""

    default_hint = (
        "lower training.lr (e.g. by 10x), set training.grad_clip (e.g. 1.0), or check the inputs for"
        " NaN/inf values; a dataset without normalisation (dataset.normalize) can also diverge"
    )

    def __init__(self, epoch: int, step: int, value: float, stage: str | None = "train") -> None:
        super().__init__(
            f"the training loss became {value} at epoch {epoch} step {step}", stage=stage
        )
        self.epoch = epoch
        self.step = step
        self.value = value


class TimeLimitExceeded(TrainingError):
    default_hint = (
        "raise training.max_minutes, or lower training.epochs; the job resumes from its checkpoint"
    )

    def __init__(self, minutes: float, epoch: int, step: int, stage: str | None = "train") -> None:
        super().__init__(
            f"training ran past its time limit of {minutes:g} minutes (at epoch {epoch} step {step});"
            " a checkpoint was saved",
            stage=stage,
        )
        self.minutes = minutes


class OutOfMemory(TrainingError):
    """Wraps `torch.OutOfMemoryError` with the batch size that caused it (None when not training)."""

    def __init__(
        self, batch_size: int | None, device: str, detail: str = "", stage: str | None = "train"
    ) -> None:
        where = f"out of memory on {device}" + (
            f" with batch size {batch_size}" if batch_size else ""
        )
        smaller = f" (e.g. {max(1, batch_size // 2)})" if batch_size else ""
        super().__init__(
            where + (f": {detail}" if detail else ""),
            hint=f"lower training.batch_size{smaller} or use a smaller model (model.hidden)",
            stage=stage,
        )
        self.batch_size = batch_size


class DataError(TrainingError):
    """The dataset cannot be used as given (missing files, wrong shapes, NaN values)."""


class DeviceUnavailable(TrainingError):
    default_hint = 'set resources.device to "auto" or "cpu"'


class CheckpointMismatch(TrainingError):
    default_hint = "the job directory holds checkpoints of a different spec; use a fresh job"


class Stopped(Exception):
    """Training stopped on request. `checkpoint` is the mid-epoch checkpoint saved on the way out
    (None for a lost lease: another worker owns the job directory now, so nothing is written)."""

    def __init__(self, reason: str, checkpoint: Any = None) -> None:
        if reason not in STOP_REASONS:
            raise ValueError(f"unknown stop reason {reason!r}; allowed: {', '.join(STOP_REASONS)}")
        super().__init__(reason)
        self.reason = reason
        self.checkpoint = checkpoint


class PredictInputError(ValueError):
    """Base of the predictor's input errors: the HTTP layer answers 422 with the message."""


class InputShapeError(PredictInputError):
    pass


class InputValueError(PredictInputError):
    pass


def as_training_error(exc: BaseException, stage: str | None = None) -> TrainingError:
    """Map any exception a stage raised to a `TrainingError` (the worker records `to_error_dict()`).

    Known library errors get a precise type and hint; anything else keeps its class name and message
    so that a bug is visible as itself, not as a vague "training failed"."""
    from tas.core.data.dataset import DatasetUnavailable

    if isinstance(exc, TrainingError):
        if exc.stage is None:
            exc.stage = stage
        return exc
    if isinstance(exc, DatasetUnavailable):
        return TrainingError(
            str(exc),
            hint="put the files where the message says, or allow downloads (TAS_ALLOW_DOWNLOAD=true)",
            stage=stage,
            type="DatasetUnavailable",
        )
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            detail = str(exc).splitlines()[0] if str(exc) else ""
            return OutOfMemory(None, "the training device", detail, stage=stage)
    except ImportError:  # pragma: no cover - torch is a hard dependency of core
        pass
    return TrainingError(
        str(exc) or exc.__class__.__name__, stage=stage, type=exc.__class__.__name__
    )
