"""The training loop: the textbook PyTorch loop (forward, loss, backward, step), with the
service's concerns beside it as small hooks.

What differs from a plain `DataLoader` loop, and why:
- Each epoch draws a permutation from a generator seeded by (seed, epoch), and a batch is
  `X[order[i*bs:(i+1)*bs]]`: no per-sample `__getitem__`, no collate, and the data order is a pure
  function of (seed, epoch), so a run resumes mid-epoch at the exact batch where it stopped. Where
  the batch comes from is a small object beside the loop (`tas.core.batches`): whole tensors on the
  device when the data fit, else a reader thread streaming each batch from host memory (a memory
  map) one batch ahead; the same batches either way.
- The data are compact (uint8 images); a batch is decoded and normalised on the device
  (`TrainData.transform`) before the augmentation, so only a batch is ever float32.
- Each step's loss goes into a preallocated tensor (`step_losses[step] = loss.detach()`); nothing is
  read back (synced) until a log interval or the epoch ends. That one read gives the mean loss and,
  if a loss went NaN/inf, the first step where it did: no per-step `.item()`.
- `hooks.should_stop()` is read at every step boundary (a flag read); on a cancel or preemption the
  loop saves a mid-epoch checkpoint and raises `Stopped`. A time limit does the same, then raises
  `TimeLimitExceeded`.
- Data-parallel (N processes): the same loop on every rank, with the few points where the ranks
  must agree (their share of each batch, the stop decision, the reported losses, the evaluated
  row, the buffers) delegated to `parallel` (`tas.core.distributed`); in one process each of those
  is the identity.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from tas.core.augment import step_generator
from tas.core.batches import batch_source
from tas.core.checkpoint import CheckpointRecord
from tas.core.distributed import SOLO, TIME_LIMIT, Solo
from tas.core.errors import NonFiniteLoss, OutOfMemory, Stopped, TimeLimitExceeded
from tas.core.hooks import EpochRow, Hooks, NullHooks, Progress
from tas.core.metrics import predict, summary_metrics

Target = Literal["index", "binary", "value"]
AutocastFactory = Callable[[], contextlib.AbstractContextManager[Any]]
#: Saves a checkpoint of the loop state; gets the epoch's metrics (None mid-epoch).
CheckpointFn = Callable[["LoopState", "dict[str, float] | None"], "CheckpointRecord | None"]
#: Batch augmentation: (a training batch, a generator seeded by (seed, epoch, step)) → the batch.
AugmentFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
#: A batch of compact inputs on the device → the model's inputs (decoded, normalised).
InputFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EarlyStopping:
    monitor: str
    mode: Literal["min", "max"]
    patience: int
    min_delta: float = 0.0

    def improved(self, value: float, best: float | None) -> bool:
        if best is None:
            return math.isfinite(value)
        if self.mode == "max":
            return value > best + self.min_delta
        return value < best - self.min_delta


@dataclass
class LoopConfig:
    epochs: int
    batch_size: int
    seed: int = 0
    target: Target = "index"
    log_every_steps: int = 50
    grad_clip: float | None = None
    scheduler_interval: Literal["step", "epoch"] | None = None
    checkpoint_every: int = 1
    early_stopping: EarlyStopping | None = None
    #: A `time.monotonic()` instant; past it the loop checkpoints and raises TimeLimitExceeded.
    deadline: float | None = None
    max_minutes: float | None = None
    progress_interval_s: float = 0.5
    eval_batch_size: int | None = None
    #: The checkpoint's monitored metric and its direction: the epoch that improves it most is
    #: the run's best (strictly better than every earlier epoch; the first of equals wins), and
    #: its row reaches `Hooks.epoch_end` with `is_best` set.
    monitor: str | None = None
    monitor_mode: Literal["min", "max"] = "min"
    #: Keep the best epoch's weights: a copy in memory, and a checkpoint of that epoch even off
    #: the `checkpoint_every` cadence (the checkpoint manager never deletes the best), so the best
    #: weights survive the later epochs and a resume.
    keep_best: bool = False


@dataclass
class TrainData:
    """The training (and validation) data, targets already in the loss's form.

    In memory (`stream` False): every tensor is already on the training device. Streamed: X and
    y stay where they are (host memory, a memory map) and each batch is copied to `device` as it
    is needed; `val_X` may stay there too (evaluated a batch at a time), `val_y` is on the device."""

    X: torch.Tensor
    y: torch.Tensor
    val_X: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    #: Scaled regression targets back to their units (for the val metrics; the loss stays scaled).
    target_inverse: Callable[[torch.Tensor], torch.Tensor] | None = None
    #: Compact batch → the model's inputs, on the device (None: X is the model's input as it is).
    transform: InputFn | None = None
    #: The training device (None: X's).
    device: torch.device | None = None
    stream: bool = False

    @property
    def train_device(self) -> torch.device:
        return self.device if self.device is not None else self.X.device


@dataclass
class LoopState:
    """Everything the loop needs to continue exactly where it stopped (saved in each checkpoint)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # steps done in the epoch being trained
    global_step: int = 0
    step_losses: torch.Tensor | None = None  # this epoch's per-step losses, so far
    logged_upto: int = 0  # in-epoch step up to which step rows were emitted
    epoch_seconds: float = 0.0  # training time already spent in this epoch (before a resume)
    elapsed_seconds: float = 0.0  # training time over all attempts (for max_minutes)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float | None = None  # early stopping
    best_epoch: int | None = None
    bad_epochs: int = 0
    finished: bool = False
    stop_reason: str | None = None  # "completed" | "early_stopped"

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["step_losses"] = None if self.step_losses is None else self.step_losses.detach().cpu()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], device: torch.device | str = "cpu") -> LoopState:
        s = cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        if s.step_losses is not None:
            s.step_losses = s.step_losses.to(device)
        return s


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for (run seed, epoch): neighbouring epochs get unrelated orders."""
    state = np.random.SeedSequence([seed % (1 << 63), epoch]).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


def epoch_order(
    seed: int, epoch: int, n: int, device: torch.device, used: int | None = None
) -> torch.Tensor:
    """The epoch's sample order, the same in every run with this seed (CPU generator, then moved):
    a permutation of all `n` samples, of which the first `used` are trained on (the others, a
    different few each epoch, wait for a later one)."""
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(n, generator=g)
    if used is not None and used < n:
        order = order[:used]
    return order.to(device, non_blocking=True)


def samples_per_epoch(model: nn.Module, n: int, batch_size: int, processes: int = 1) -> int:
    """How many of the epoch's shuffled samples are trained on: all, except a last batch too
    small to share: a lone sample when the model has BatchNorm, which cannot normalise a batch of
    one in training mode; with N processes, a last batch that would leave a process with no
    sample (or, with BatchNorm, fewer than two). A different few each epoch: the order is
    reshuffled."""
    batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    last = n % batch_size
    least = processes * (2 if batchnorm else 1) if processes > 1 else (2 if batchnorm else 1)
    if n > last and 0 < last < least:
        return n - last
    return n


def evaluate(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    loss_fn: nn.Module,
    target: Target,
    batch_size: int = 1024,
    autocast: AutocastFactory = contextlib.nullcontext,
    inverse: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    transform: InputFn | None = None,
    device: torch.device | None = None,
) -> dict[str, float]:
    """A split's mean loss and accuracy (classes) or MAE/RMSE/R² (values): the numbers an epoch row
    carries as val_*, by the same computation as the evaluate stage (`tas.core.metrics`), so the
    two never disagree. The model is left in eval mode. `inverse` maps scaled regression targets
    and outputs back to their units: the loss is the training criterion (scaled, comparable with
    train_loss), MAE/RMSE/R² are in the data's units. X may be compact and elsewhere: each batch
    is moved to `device` and made the model's input by `transform`."""
    out = predict(model, X, batch_size, autocast, transform=transform, device=device)
    return summary_metrics(out, y, loss_fn, target, batch_size=batch_size, inverse=inverse)


def best_row(
    history: list[dict[str, Any]], name: str | None, mode: Literal["min", "max"]
) -> dict[str, Any] | None:
    """The epoch row with the best finite `name` (the first of equals), None when no row has one:
    the run's best epoch by the checkpoint's monitored metric."""
    if name is None:
        return None
    finite = [r for r in history if isinstance(r.get(name), float | int) and math.isfinite(r[name])]
    if not finite:
        return None
    pick = max if mode == "max" else min
    return pick(finite, key=lambda r: r[name])


class Trainer:
    """Trains one model: `fit(data, state)` runs epochs from `state` (fresh or restored) to the end."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: nn.Module,
        cfg: LoopConfig,
        hooks: Hooks | None = None,
        *,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        scaler: torch.amp.GradScaler | None = None,
        autocast: AutocastFactory = contextlib.nullcontext,
        on_checkpoint: CheckpointFn | None = None,
        augment: AugmentFn | None = None,
        on_epoch_start: Callable[[int], None] | None = None,
        parallel: Solo = SOLO,
        net: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        #: What the training step calls: the model, or a wrapper of it (DDP, torch.compile) whose
        #: parameters are the model's; checkpoints, evaluation and best weights use `model`.
        self.net: Callable[[torch.Tensor], torch.Tensor] = net if net is not None else model
        self.parallel = parallel
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.cfg = cfg
        self.hooks: Hooks = hooks if hooks is not None else NullHooks()
        self.scheduler = scheduler
        self.scaler = scaler
        self.autocast = autocast
        self.on_checkpoint = on_checkpoint
        self.augment = augment
        #: Called with the completed-epoch count before each epoch (transfer's unfreeze_after).
        self.on_epoch_start = on_epoch_start
        # All of them, frozen ones too: clipping skips a parameter without a gradient, and one
        # unfrozen later (unfreeze_after) must be clipped from then on.
        self.params = list(model.parameters())
        #: With `cfg.keep_best`: a copy of the best epoch's weights seen in this run (an earlier
        #: attempt's best is in its checkpoint) and that epoch (1-based).
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.best_epoch: int | None = None

    # --- the loop ----------------------------------------------------------------------------

    def fit(self, data: TrainData, state: LoopState | None = None) -> LoopState:
        state = state if state is not None else LoopState()
        cfg, model, optimizer, loss_fn = self.cfg, self.model, self.optimizer, self.loss_fn
        device, inputs = data.train_device, data.transform
        bs, parallel = cfg.batch_size, self.parallel
        total = int(data.X.shape[0])
        # `bs` is the global batch: each of the N processes steps on its 1/N share of it.
        batches = batch_source(data.X, data.y, bs // parallel.world, device, data.stream)
        n = samples_per_epoch(model, total, bs, parallel.world)
        self._n = n
        steps = math.ceil(n / bs)
        # Batch sizes per step (the last batch may be short): weights of the epoch's mean loss,
        # this process's share and the whole batch's.
        self._batch_sizes = torch.full((steps,), float(bs), device=device)
        self._batch_sizes[-1] = float(n - bs * (steps - 1))
        self._weights = self._share(self._batch_sizes)
        # The last batch's shares may differ by one sample: its loss is weighted so that the
        # averaged gradient is still the batch's mean (1 for every other step).
        grad_scale = (self._weights * parallel.world / self._batch_sizes).tolist()
        self._clock = _Clock(state, cfg, steps, n)
        step_every = cfg.scheduler_interval == "step" and self.scheduler is not None

        try:
            for epoch in range(state.epoch, cfg.epochs):
                if state.finished:
                    break
                if self.on_epoch_start is not None:
                    self.on_epoch_start(epoch)
                model.train()
                order = parallel.shard(
                    epoch_order(cfg.seed, epoch, total, batches.order_device, n), bs
                )
                if state.step_losses is None:
                    state.step_losses = torch.zeros(steps, device=device)
                losses = state.step_losses
                self._clock.start_epoch(state)

                with batches.epoch(order, state.step, steps) as epoch_batches:
                    for step, (xb, yb) in epoch_batches:
                        self._step_boundary(state, epoch, step)
                        if inputs is not None:  # decoded and normalised here, on the device
                            xb = inputs(xb)
                        if self.augment is not None:  # training batches only; seeded per step
                            xb = self.augment(xb, step_generator(cfg.seed, epoch, step))

                        with self.autocast():
                            pred = self.net(xb)  # forward
                            loss = loss_fn(pred, yb)  # loss
                        losses[step] = loss.detach()
                        if grad_scale[step] != 1.0:
                            loss = loss * grad_scale[step]
                        optimizer.zero_grad(set_to_none=True)
                        if self.scaler is None:
                            loss.backward()  # backward
                            if cfg.grad_clip is not None:
                                nn.utils.clip_grad_norm_(self.params, cfg.grad_clip, foreach=True)
                            optimizer.step()  # update
                        else:
                            self._scaled_step(loss)
                        if step_every:
                            self.scheduler.step()  # type: ignore[union-attr]

                        state.global_step += 1
                        if state.global_step % cfg.log_every_steps == 0:
                            self._log_steps(state, epoch, step + 1)

                self._end_epoch(state, data, epoch, steps)
        except torch.OutOfMemoryError as exc:
            raise OutOfMemory(
                bs, str(device), str(exc).splitlines()[0] if str(exc) else ""
            ) from exc
        if not state.finished:
            state.finished, state.stop_reason = True, state.stop_reason or "completed"
        self._clock.finish(state, self.hooks)
        return state

    def _share(self, sizes: torch.Tensor) -> torch.Tensor:
        """This process's samples of each step's batch (`Solo`: the whole batch): the strided
        share of `tas.core.distributed.DataParallel.shard`, ceil((size - rank) / N)."""
        world, rank = self.parallel.world, self.parallel.rank
        if world == 1:
            return sizes
        return torch.div(sizes - rank - 1, world, rounding_mode="floor") + 1

    def _scaled_step(self, loss: torch.Tensor) -> None:
        """fp16: scale the loss so small gradients survive, unscale before clipping."""
        assert self.scaler is not None
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip, foreach=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    # --- hooks beside the loop ---------------------------------------------------------------

    def _step_boundary(self, state: LoopState, epoch: int, step: int) -> None:
        """Between two steps: a stop request, the time limit, progress. Cheap: a flag read and a clock."""
        reason = self.hooks.should_stop()
        now = self._clock.tick(state, epoch, step, self.hooks)
        if reason is None and self.cfg.deadline is not None and now >= self.cfg.deadline:
            reason = TIME_LIMIT
        reason = self.parallel.agree(reason)  # the first process decides for all of them
        if reason is None:
            return
        state.step = step
        self._clock.pause(state)
        if reason != "lease_lost":
            self.parallel.sync_buffers(self.model)  # saved: the first process's
        if reason == TIME_LIMIT:
            self._checkpoint(state, None)
            raise TimeLimitExceeded(self.cfg.max_minutes or 0.0, epoch + 1, step)
        # A lost lease means another worker owns this job's directory now: write nothing.
        record = None if reason == "lease_lost" else self._checkpoint(state, None)
        raise Stopped(reason, record)

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _mean_loss(self, state: LoopState, epoch: int, lo: int, hi: int) -> float:
        """The mean training loss of steps lo..hi-1 over every process's share of their batches
        (one read-back; with N processes, one sum across them). A NaN/inf raises NonFiniteLoss
        naming the first step where it appeared."""
        assert state.step_losses is not None
        sums = self.parallel.sum(state.step_losses[lo:hi] * self._weights[lo:hi])
        batches = self._batch_sizes[lo:hi]
        value = float(sums.sum() / batches.sum())
        if not math.isfinite(value):
            bad = torch.nonzero(~torch.isfinite(sums)).flatten()
            at = int(bad[0]) if bad.numel() else hi - lo - 1
            raise NonFiniteLoss(epoch + 1, lo + at + 1, float(sums[at] / batches[at]))
        return value

    def _log_steps(self, state: LoopState, epoch: int, upto: int) -> None:
        """A step row: the mean loss since the last row in this epoch."""
        lo = state.logged_upto
        value = self._mean_loss(state, epoch, lo, upto)
        state.logged_upto = upto
        self.hooks.step_logged(
            {"epoch": epoch + 1, "step": state.global_step, "train_loss": value, "lr": self._lr()}
        )

    def _end_epoch(self, state: LoopState, data: TrainData, epoch: int, steps: int) -> None:
        cfg = self.cfg
        assert state.step_losses is not None
        train_seconds = self._clock.pause(state)
        n = self._n
        train_loss = self._mean_loss(state, epoch, 0, steps)
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss}
        self.parallel.sync_buffers(self.model)  # evaluated and saved: the first process's
        val_X, val_y = data.val_X, data.val_y
        if val_X is not None and val_y is not None:
            val = self.parallel.from_main(
                lambda: evaluate(
                    self.model,
                    val_X,
                    val_y,
                    self.loss_fn,
                    cfg.target,
                    cfg.eval_batch_size or max(cfg.batch_size, 1024),
                    self.autocast,
                    data.target_inverse,
                    transform=data.transform,
                    device=data.train_device,
                )
            )
            row.update({f"val_{k}": v for k, v in val.items()})
        row["lr"] = self._lr()
        row["epoch_seconds"] = train_seconds + self._clock.since_pause()
        row["samples_per_second"] = n / train_seconds if train_seconds > 0 else None

        state.history.append(row)
        state.epoch, state.step, state.step_losses, state.logged_upto = epoch + 1, 0, None, 0
        state.epoch_seconds = 0.0
        es = cfg.early_stopping
        if es is not None and es.monitor in row:
            if es.improved(row[es.monitor], state.best_value):
                state.best_value, state.best_epoch, state.bad_epochs = row[es.monitor], epoch + 1, 0
            else:
                state.bad_epochs += 1
                if state.bad_epochs >= es.patience:
                    state.finished, state.stop_reason = True, "early_stopped"
        if self.scheduler is not None and cfg.scheduler_interval == "epoch":
            self.scheduler.step()
        if state.epoch >= cfg.epochs:
            state.finished, state.stop_reason = True, state.stop_reason or "completed"

        is_best = best_row(state.history, cfg.monitor, cfg.monitor_mode) is row
        best = cfg.keep_best and is_best
        if best:
            self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best_epoch = epoch + 1

        self.hooks.epoch_end(EpochRow(row, is_best=is_best))
        if state.finished or state.epoch % cfg.checkpoint_every == 0 or best:
            metrics = {k: float(v) for k, v in row.items() if isinstance(v, int | float)}
            self._checkpoint(state, metrics)
        self._clock.resume()

    def _checkpoint(
        self, state: LoopState, metrics: dict[str, float] | None
    ) -> CheckpointRecord | None:
        if self.on_checkpoint is None:
            return None
        return self.on_checkpoint(state, metrics)


class _Clock:
    """Wall-time bookkeeping: progress every `progress_interval_s`, per-epoch seconds, total elapsed
    (carried across attempts for the time limit). One `time.monotonic()` per step."""

    def __init__(self, state: LoopState, cfg: LoopConfig, steps: int, n: int) -> None:
        self.cfg, self.steps, self.n = cfg, steps, n
        now = time.monotonic()
        self.attempt_start = now
        self.attempt_samples_start = state.global_step
        self.elapsed_base = state.elapsed_seconds
        self.epoch_start = now
        self.epoch_base = state.epoch_seconds
        self.paused_at = now
        self.next_progress = now

    def start_epoch(self, state: LoopState) -> None:
        self.epoch_start = time.monotonic()
        self.epoch_base = state.epoch_seconds

    def tick(self, state: LoopState, epoch: int, step: int, hooks: Hooks) -> float:
        now = time.monotonic()
        if now >= self.next_progress:
            self.next_progress = now + self.cfg.progress_interval_s
            done_steps = state.global_step - self.attempt_samples_start
            secs = now - self.attempt_start
            rate = done_steps * self.cfg.batch_size / secs if secs > 0 and done_steps else 0.0
            total = self.cfg.epochs * self.steps
            position = epoch * self.steps + step
            remaining = max(0, total - position) * self.cfg.batch_size
            hooks.progress(
                Progress(
                    epoch=epoch + 1,
                    epochs=self.cfg.epochs,
                    step=step,
                    steps_per_epoch=self.steps,
                    fraction=position / total if total else 1.0,
                    samples_per_second=rate,
                    eta_seconds=remaining / rate if rate > 0 else None,
                )
            )
        return now

    def finish(self, state: LoopState, hooks: Hooks) -> None:
        """A last progress report at the end of training: all done, at the throughput measured
        over this attempt (a short run may have had a single report, at its first step, before
        anything was measured). Nothing when this attempt trained no step."""
        done_steps = state.global_step - self.attempt_samples_start
        secs = time.monotonic() - self.attempt_start
        if done_steps <= 0 or secs <= 0:
            return
        hooks.progress(
            Progress(
                epoch=state.epoch,
                epochs=self.cfg.epochs,
                step=self.steps,
                steps_per_epoch=self.steps,
                fraction=1.0,
                samples_per_second=done_steps * self.cfg.batch_size / secs,
                eta_seconds=0.0,
            )
        )

    def pause(self, state: LoopState) -> float:
        """Stop the epoch's clock; record time in the state (for a checkpoint); return epoch seconds."""
        now = time.monotonic()
        self.paused_at = now
        state.epoch_seconds = self.epoch_base + (now - self.epoch_start)
        state.elapsed_seconds = self.elapsed_base + (now - self.attempt_start)
        return state.epoch_seconds

    def since_pause(self) -> float:
        return time.monotonic() - self.paused_at

    def resume(self) -> None:
        self.epoch_start = time.monotonic()
