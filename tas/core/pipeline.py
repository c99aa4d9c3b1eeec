"""One training job, as a batch training pipeline: collect → preprocess → train →
evaluate → register, each stage reported through the hooks with its JSON-able outputs.

A job directory holds its checkpoints (`checkpoints/`) and, at the end, its model (`model/`). If a
valid checkpoint is there, the run resumes from it: the split is re-derived (it is seeded), the
model, optimizer, scheduler, RNG and loop state are restored, and training continues at the exact
step where it stopped, so a resumed CPU run ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tas.core import predictions
from tas.core.artifact import ModelCard, count_parameters, save_model
from tas.core.augment import build_augment
from tas.core.checkpoint import CheckpointManager, CheckpointRecord
from tas.core.data.cache import PreprocessCache, PrepSpec, cache_key
from tas.core.data.dataset import DatasetInfo, LoadContext, Loaded
from tas.core.data.prepare import Prepared, TargetScaler, prepare
from tas.core.device import resolve_device, resolve_precision
from tas.core.errors import (
    CheckpointMismatch,
    DeviceUnavailable,
    Stopped,
    TrainingError,
    as_training_error,
)
from tas.core.hooks import Hooks
from tas.core.loop import EarlyStopping, LoopConfig, LoopState, TrainData, Trainer
from tas.core.losses import LOSSES, Loss
from tas.core.metrics import output_metrics, predict
from tas.core.models import build_model
from tas.core.optim import OPTIMIZERS, SCHEDULERS, param_groups
from tas.core.spec import (
    JobSpec,
    metric_mode,
    resolved_loss,
    resolved_monitor,
    resolved_target_scaling,
    spec_problems,
)
from tas.core.state import capture_rng, restore_rng, seed_everything
from tas.core.transfer import (
    Transfer,
    prepare_transfer,
    pretrained_card,
    pretrained_normalization,
)

STAGES = ("collect", "preprocess", "train", "evaluate", "register")


@dataclass
class RunContext:
    """Where and how this attempt runs (the worker fills it; a test builds one by hand)."""

    job_dir: Path
    datasets_dir: Path
    allow_download: bool = False
    device: str = "auto"
    #: `time.monotonic()` when this attempt started: max_minutes counts from here (plus the
    #: training time of earlier attempts, carried in the checkpoint).
    started_monotonic: float = field(default_factory=time.monotonic)
    #: An outer limit (e.g. the worker's soft time limit), a `time.monotonic()` instant.
    deadline: float | None = None
    #: Where preprocessed tensors are cached (None: no cache), and the dataset's content identity
    #: (an upload's sha256, a built-in's name and version) that, with the preprocessing spec, keys it.
    cache_dir: Path | None = None
    data_fingerprint: str | None = None
    #: torchvision's pretrained weight files (`model.pretrained`), under torchvision's file names.
    weights_dir: Path | None = None
    #: `model.init_from`, resolved by the caller to a safetensors file of weights.
    init_weights: Path | None = None

    @property
    def checkpoints_dir(self) -> Path:
        return Path(self.job_dir) / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return Path(self.job_dir) / "model"


@dataclass
class PipelineResult:
    status: Literal["succeeded", "cancelled", "preempted"]
    epochs_run: int
    stop_reason: str | None = None  # "completed" | "early_stopped" | the Stopped reason
    stopped_early: bool = False
    best: dict[str, Any] | None = None  # {"metric", "value", "epoch"} by the checkpoint monitor
    best_metrics: dict[str, Any] = field(default_factory=dict)  # that epoch's row
    final_metrics: dict[str, Any] = field(default_factory=dict)  # the last epoch's row
    evaluation: dict[str, Any] | None = None  # {"split", "samples", "metrics"}
    model_dir: str | None = None
    model_sha256: str | None = None
    trainable_params: int = 0
    total_params: int = 0
    resumed_from: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: CheckpointRecord | None = None  # cancelled/preempted: the mid-epoch checkpoint
    #: Which epoch's weights were evaluated and registered: {"keep", "epoch", "metric", "value"},
    #: plus "requested" and "reason" when "best" could not be honoured.
    weights: dict[str, Any] | None = None
    #: Samples per held-out split whose per-sample predictions were written (`tas.core.predictions`).
    predictions: dict[str, int] = field(default_factory=dict)

    @property
    def model_metrics(self) -> dict[str, Any]:
        """The epoch row of the registered weights."""
        epoch = (self.weights or {}).get("epoch")
        row = next((r for r in self.history if r.get("epoch") == epoch), None)
        return dict(row) if row is not None else self.final_metrics

    @property
    def parameters(self) -> dict[str, int]:
        return {"trainable": self.trainable_params, "total": self.total_params}


def spec_fingerprint(spec: JobSpec) -> str:
    """What a checkpoint must match to be resumed: the spec minus fields that don't change results."""
    d = spec.model_dump(mode="json")
    d.pop("name", None)
    d["training"].pop("max_minutes", None)
    d["training"].pop("log_every_steps", None)
    d["training"].pop("keep", None)  # which weights are registered, not how they are trained
    d.pop("tags", None)  # labels a user may change (PATCH) while a job is interrupted
    blob = repr(sorted(_flatten(d)))
    return hashlib.sha256(blob.encode()).hexdigest()


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(d, dict):
        return [kv for k, v in d.items() for kv in _flatten(v, f"{prefix}.{k}")]
    return [(prefix, repr(d))]


def _pick_device(spec: JobSpec, ctx: RunContext) -> torch.device:
    wanted = spec.resources.device
    if wanted == "auto":
        return resolve_device(ctx.device)
    if ctx.device not in ("auto", wanted):
        raise DeviceUnavailable(
            f"resources.device is {wanted!r} but this worker runs on {ctx.device!r}"
        )
    return resolve_device(wanted)


def _targets(y: torch.Tensor, loss: Loss) -> torch.Tensor:
    """Labels in the form the loss takes: int64 indices, a float 0/1 column (bce), float values."""
    if loss.target == "index":
        return y.long()
    if loss.target == "binary":
        return y.to(torch.float32).reshape(-1, 1)
    return y.to(torch.float32).reshape(y.shape[0], -1)


class _Stages:
    """Reports each stage's start and end; an exception inside a stage leaves with the stage's name.
    A stop request is also honoured between stages (a cancel during a long dataset load need not
    wait for the first training step); nothing is checkpointed there: before training there is
    nothing to save, after it the final checkpoint exists."""

    def __init__(self, hooks: Hooks) -> None:
        self.hooks = hooks
        self.current: str | None = None

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[dict[str, Any]]:
        reason = self.hooks.should_stop()
        if reason is not None:
            raise Stopped(reason)
        self.current = name
        self.hooks.stage_started(name)
        outputs: dict[str, Any] = {}
        started = time.monotonic()
        yield outputs
        outputs.setdefault("seconds", round(time.monotonic() - started, 3))
        self.hooks.stage_finished(name, outputs)


def run_pipeline(
    spec: JobSpec,
    info: DatasetInfo,
    ctx: RunContext,
    hooks: Hooks,
    load: Callable[[LoadContext], Loaded],
) -> PipelineResult:
    """Run (or resume) one job. Returns on success, cancel and preemption; raises `TrainingError`
    (with `.stage` set) on failure, and `Stopped("lease_lost")` when another worker owns the job."""
    stage = _Stages(hooks)
    try:
        return _run(spec, info, ctx, hooks, load, stage)
    except Stopped as stop:
        if stop.reason == "lease_lost":
            raise
        return PipelineResult(
            status="cancelled" if stop.reason == "cancelled" else "preempted",
            epochs_run=stop.checkpoint.epoch if stop.checkpoint else 0,
            stop_reason=stop.reason,
            checkpoint=stop.checkpoint,
        )
    except TrainingError as exc:
        exc.stage = exc.stage or stage.current
        raise
    except Exception as exc:
        raise as_training_error(exc, stage.current) from exc


def _run(
    spec: JobSpec,
    info: DatasetInfo,
    ctx: RunContext,
    hooks: Hooks,
    load: Callable[[LoadContext], Loaded],
    stage: _Stages,
) -> PipelineResult:
    problems = spec_problems(spec, info)
    if problems:
        raise TrainingError(
            "; ".join(f"{'.'.join(loc)}: {msg}" for loc, msg in problems),
            hint="fix the job spec",
            stage="collect",
            type="InvalidSpec",
        )
    loss_name = resolved_loss(spec, info)
    loss_entry = LOSSES[loss_name]
    t = spec.training

    # A cached entry of the preprocessed tensors skips the load (decode) and the preprocessing.
    d = spec.dataset
    load_ctx = LoadContext(Path(ctx.datasets_dir), ctx.allow_download)
    cache = PreprocessCache(ctx.cache_dir) if ctx.cache_dir and ctx.data_fingerprint else None
    # Pretrained torchvision weights expect their own normalisation (ImageNet's mean/std).
    norm_stats = (
        pretrained_normalization(spec.model, info.input_shape[0]) if info.kind == "image" else None
    )
    prep = PrepSpec.of(d, info, norm_stats)
    key = _cache_key(ctx, info, prep) if cache is not None else None
    with stage("collect") as out:
        cached = cache.lookup(key) if cache is not None and key is not None else None
        loaded: Loaded | None = None
        collected: dict[str, Any] = {}
        if cached is not None:  # the source is known from the entry: nothing is read
            out.update({**cached.get("collect", {}), "cached": True})
        else:
            loaded = load(load_ctx)
            collected = _collect_outputs(info, loaded)
            out.update({**collected, "cached": False})

    with stage("preprocess") as out:
        hit = cache.load(key) if cache is not None and key is not None and cached else None
        if hit is not None:
            prepared = hit.prepared
            cache_out: dict[str, Any] | None = {
                "hit": True,
                "key": key,
                "seconds": round(hit.seconds, 3),
            }
        else:
            if loaded is None:  # the entry went bad after collect looked at it: decode after all
                loaded = load(load_ctx)
                collected = _collect_outputs(info, loaded)
            prepared = prepare(
                loaded,
                info,
                d.val_fraction,
                d.test_fraction,
                d.split_seed,
                d.stratify,
                d.normalize,
                norm_stats,
            )
            del loaded
            cache_out = None
            if cache is not None:
                cache_out = _cache_store(cache, ctx, info, prep, prepared, collected)
        out.update(prepared.outputs())
        if cache_out is not None:
            out["cache"] = cache_out

    # Regression targets standardised with the training split's statistics (predictions and
    # metrics go back to the data's units); fitted again on a resume: the split is the same.
    scaler = None
    if loss_entry.target == "value" and resolved_target_scaling(spec, info) == "standard":
        scaler = TargetScaler.fit(prepared.train.y)

    with stage("train") as out:
        device = _pick_device(spec, ctx)
        trained = _train(spec, info, ctx, hooks, prepared, loss_entry, device, scaler)
        model, state = trained.model, trained.state
        params = count_parameters(model)
        best = _best(state, trained.monitor)
        out.update(
            {
                "device": str(device),
                "precision": trained.precision,
                "epochs_run": state.epoch,
                "stop_reason": state.stop_reason,
                "resumed_from": trained.resumed_from,
                "best": best,
                "final": _final_row(state),
                "parameters": params,
                "transfer": trained.transfer.outputs(),
                "augment": aug.describe() if (aug := build_augment(d.augment)) else None,
                "weights": trained.weights,
                "target_scaling": scaler.to_dict() if scaler is not None else None,
            }
        )

    with stage("evaluate") as out:
        # One forward pass per held-out split gives both the metrics of the evaluated split and
        # the per-sample predictions, so they come from the very weights that are registered.
        split, part = _eval_split(prepared)
        eval_bs = max(t.batch_size, 1024)
        inverse = scaler.inverse if scaler is not None else None
        outputs: dict[str, torch.Tensor] = {}
        for name in (*predictions.SPLITS, split):
            held: Any = getattr(prepared, name)
            if held is not None and name not in outputs:
                outputs[name] = predict(model, held.X.to(device), eval_bs)
        metrics = output_metrics(
            outputs[split],
            _scaled(_targets(part.y, loss_entry), scaler).to(device),
            loss_entry.build(),
            loss_entry.target,
            batch_size=eval_bs,
            num_classes=info.num_classes,
            class_names=info.class_names,
            inverse=inverse,
        )
        evaluation = {"split": split, "samples": len(part), "metrics": metrics}
        written_predictions = predictions.write_all(
            ctx.job_dir,
            {
                name: predictions.per_sample(
                    prepared.indices.get(name, torch.arange(len(held))),
                    outputs[name],
                    held.y,
                    loss_entry.target,
                    info.class_names,
                    inverse,
                )
                for name in predictions.SPLITS
                if (held := getattr(prepared, name)) is not None
            },
        )
        out.update({**evaluation, "weights": trained.weights, "predictions": written_predictions})

    with stage("register") as out:
        card = ModelCard(
            arch=spec.model.model_dump(mode="json"),
            input_shape=list(info.input_shape),
            task=info.task,
            output=loss_entry.output,
            out_dim=loss_entry.out_dim(info.num_classes, info.target_dim),
            num_classes=info.num_classes,
            class_names=info.class_names,
            feature_names=info.feature_names,
            target_dim=info.target_dim,
            normalization=prepared.normalizer.to_dict() if prepared.normalizer else None,
            metrics={f"{split}_{k}": v for k, v in metrics.items()}
            | {"best": best, "final": _final_row(state)},
            dataset=info.name,
            loss=loss_name,
            parameters=params,
            weights=trained.weights,
            target_scaling=scaler.to_dict() if scaler is not None else None,
            pretrained=pretrained_card(spec.model, trained.transfer.report),
        )
        written = save_model(ctx.model_dir, model, card)
        out.update(
            {
                "path": str(ctx.model_dir),
                "sha256": written.weights_sha256,
                "files": ["model.safetensors", "card.json"],
            }
        )

    return PipelineResult(
        status="succeeded",
        epochs_run=state.epoch,
        stop_reason=state.stop_reason,
        stopped_early=state.stop_reason == "early_stopped",
        best=best,
        best_metrics=_best_row(state, best),
        final_metrics=_final_row(state),
        evaluation=evaluation,
        model_dir=str(ctx.model_dir),
        model_sha256=written.weights_sha256,
        trainable_params=params["trainable"],
        total_params=params["total"],
        resumed_from=trained.resumed_from,
        history=state.history,
        weights=trained.weights,
        predictions=written_predictions,
    )


def _scaled(y: torch.Tensor, scaler: TargetScaler | None) -> torch.Tensor:
    return scaler(y) if scaler is not None else y


def _collect_outputs(info: DatasetInfo, loaded: Loaded) -> dict[str, Any]:
    return {
        "dataset": info.name,
        "train_samples": len(loaded.train),
        "test_samples": len(loaded.test) if loaded.test is not None else 0,
        "input_shape": list(loaded.train.X.shape[1:]),
        "notes": {k: v for k, v in loaded.notes.items() if isinstance(v, str | int | float | bool)},
    }


def _cache_key(ctx: RunContext, info: DatasetInfo, prep: PrepSpec) -> str:
    assert ctx.data_fingerprint is not None
    return cache_key(ctx.data_fingerprint, info, prep, Path(ctx.datasets_dir))


def _cache_store(
    cache: PreprocessCache,
    ctx: RunContext,
    info: DatasetInfo,
    prep: PrepSpec,
    prepared: Prepared,
    collected: dict[str, Any],
) -> dict[str, Any]:
    """Write the entry; a failure to write (a full disk) costs the next job a miss, not this job.
    The key is taken again after the load: a built-in's files may have just been downloaded."""
    key = _cache_key(ctx, info, prep)
    started = time.monotonic()
    try:
        written = cache.store(
            key,
            prepared,
            {"collect": collected, "fingerprint": ctx.data_fingerprint, "prep": asdict(prep)},
        )
    except Exception as exc:
        return {"hit": False, "key": key, "stored": False, "error": f"{type(exc).__name__}: {exc}"}
    return {
        "hit": False,
        "key": key,
        "stored": written["stored"],
        "bytes": written["bytes"],
        "seconds": round(time.monotonic() - started, 3),
    }


def _final_row(state: LoopState) -> dict[str, Any]:
    return dict(state.history[-1]) if state.history else {}


def _best_row(state: LoopState, best: dict[str, Any] | None) -> dict[str, Any]:
    if best is None:
        return {}
    return dict(next(r for r in state.history if r["epoch"] == best["epoch"]))


def _eval_split(p: Prepared) -> tuple[str, Any]:
    if p.test is not None:
        return "test", p.test
    if p.val is not None:
        return "val", p.val
    return "train", p.train


def _best(state: LoopState, monitor: tuple[str, str]) -> dict[str, Any] | None:
    name, mode = monitor
    rows = [r for r in state.history if isinstance(r.get(name), float | int)]
    finite = [r for r in rows if math.isfinite(r[name])]
    if not finite:
        return None
    pick = max if mode == "max" else min
    row = pick(finite, key=lambda r: r[name])  # the first of equals, as the loop's best
    return {"metric": name, "value": row[name], "epoch": row["epoch"]}


@dataclass
class _Trained:
    model: nn.Module
    state: LoopState
    monitor: tuple[str, str]
    precision: str
    resumed_from: dict[str, Any] | None
    transfer: Transfer
    weights: dict[str, Any]


def _train(
    spec: JobSpec,
    info: DatasetInfo,
    ctx: RunContext,
    hooks: Hooks,
    prepared: Prepared,
    loss_entry: Loss,
    device: torch.device,
    target_scaler: TargetScaler | None = None,
) -> _Trained:
    t = spec.training
    seed_everything(t.seed)
    model = build_model(
        spec.model, info.input_shape, loss_entry.out_dim(info.num_classes, info.target_dim)
    )
    has_val = prepared.val is not None
    monitor = resolved_monitor(spec, info, has_val)
    manager = CheckpointManager(ctx.checkpoints_dir, spec.checkpoint.keep_last, *monitor)
    fingerprint = spec_fingerprint(spec)
    ckpt = manager.load_latest_valid(map_location=device)
    # Pretrained / init_from weights (not when resuming: the checkpoint holds the run's own), then
    # the freeze; the optimizer gets the head and the backbone as groups (model.backbone_lr).
    transfer = prepare_transfer(
        spec.model,
        model,
        ctx.weights_dir,
        ctx.init_weights,
        resuming=ckpt is not None,
        class_names=info.class_names,
        allow_download=ctx.allow_download,
    )
    model.to(device)
    loss_fn = loss_entry.build()
    optimizer = OPTIMIZERS[t.optimizer](
        param_groups(model, transfer.head, t.lr, spec.model.backbone_lr), t
    )
    n = len(prepared.train)
    steps = -(-n // t.batch_size)
    sched_entry = SCHEDULERS[t.scheduler] if t.scheduler else None
    scheduler = sched_entry.build(optimizer, t, steps) if sched_entry else None
    precision = resolve_precision(t.precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision.needs_scaler else None

    state = LoopState()
    resumed_from = None
    if ckpt is not None:
        if ckpt.manifest.get("extra", {}).get("spec_sha256") != fingerprint:
            raise CheckpointMismatch(
                f"the checkpoint at {ckpt.record.path} was written for another spec"
            )
        model.load_state_dict(ckpt.weights)
        optimizer.load_state_dict(ckpt.state["optimizer"])
        if scheduler is not None and ckpt.state.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt.state["scheduler"])
        if scaler is not None and ckpt.state.get("scaler") is not None:
            scaler.load_state_dict(ckpt.state["scaler"])
        state = LoopState.from_dict(ckpt.state["loop"], device)
        restore_rng(ckpt.state["rng"])
        resumed_from = {
            "epoch": ckpt.record.epoch,
            "step": ckpt.record.step,
            "path": ckpt.record.path,
        }
    transfer.at_epoch(state.epoch)  # resumed after unfreeze_after epochs: everything trains

    es = None
    if t.early_stopping is not None:
        es_name = t.early_stopping.monitor
        if not has_val and es_name.startswith("val_"):
            es_name = "train_loss"
        es = EarlyStopping(
            es_name, metric_mode(es_name), t.early_stopping.patience, t.early_stopping.min_delta
        )
    deadline = ctx.started_monotonic + t.max_minutes * 60.0 - state.elapsed_seconds
    if ctx.deadline is not None:
        deadline = min(deadline, ctx.deadline)
    cfg = LoopConfig(
        epochs=t.epochs,
        batch_size=t.batch_size,
        seed=t.seed,
        target=loss_entry.target,
        log_every_steps=t.log_every_steps,
        grad_clip=t.grad_clip,
        scheduler_interval=sched_entry.interval if sched_entry else None,
        checkpoint_every=spec.checkpoint.every_epochs,
        early_stopping=es,
        deadline=deadline,
        max_minutes=t.max_minutes,
        monitor=monitor[0],
        monitor_mode=monitor[1],
        keep_best=t.keep == "best" and has_val,
    )

    def save_checkpoint(s: LoopState, metrics: dict[str, float] | None) -> CheckpointRecord:
        train_state = {
            "format": 1,
            "loop": s.to_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": capture_rng(),
            "data_order": {
                "seed": t.seed,
                "epoch": s.epoch,
                "step": s.step,
                "batch_size": t.batch_size,
            },
        }
        record = manager.save(
            model.state_dict(),
            train_state,
            epoch=s.epoch,
            step=s.step,
            metrics=metrics,
            extra={"spec_sha256": fingerprint, "job": spec.name},
        )
        hooks.checkpoint_saved(record)
        return record

    data = TrainData(
        prepared.train.X.to(device),
        _scaled(_targets(prepared.train.y, loss_entry), target_scaler).to(device),
        prepared.val.X.to(device) if prepared.val is not None else None,
        _scaled(_targets(prepared.val.y, loss_entry), target_scaler).to(device)
        if prepared.val is not None
        else None,
        target_inverse=target_scaler.inverse if target_scaler is not None else None,
    )
    trainer = Trainer(
        model,
        optimizer,
        loss_fn,
        cfg,
        hooks,
        scheduler=scheduler,
        scaler=scaler,
        autocast=precision.autocast(device),
        on_checkpoint=save_checkpoint,
        augment=build_augment(spec.dataset.augment),
        on_epoch_start=transfer.at_epoch,
    )
    state = trainer.fit(data, state)
    weights = _keep_weights(t.keep, has_val, model, trainer, manager, state, monitor, device)
    model.eval()
    return _Trained(model, state, monitor, precision.name, resumed_from, transfer, weights)


def _keep_weights(
    keep: str,
    has_val: bool,
    model: nn.Module,
    trainer: Trainer,
    manager: CheckpointManager,
    state: LoopState,
    monitor: tuple[str, str],
    device: torch.device,
) -> dict[str, Any]:
    """Load the weights to evaluate and register into `model`, and say which epoch they are from.

    "best": the best epoch by the checkpoint's monitored metric, from this run's copy in memory or,
    when that epoch was trained by an earlier attempt, from its checkpoint (which retention never
    deletes), verified by checksum. Without a validation split, or when the best epoch's weights
    are gone (a checkpoint corrupted on disk), the last epoch's weights are kept and the record
    says why."""
    last = {"keep": "last", "epoch": state.epoch}
    if keep == "last":
        return last
    if not has_val:
        return last | {
            "requested": "best",
            "reason": "no validation split (dataset.val_fraction is 0): the last epoch's weights",
        }
    best = _best(state, monitor)
    if best is None:
        return last | {
            "requested": "best",
            "reason": f"no finite {monitor[0]} in any epoch: the last epoch's weights",
        }
    found = {
        "keep": "best",
        "epoch": best["epoch"],
        "metric": best["metric"],
        "value": best["value"],
    }
    if best["epoch"] == state.epoch:
        return found  # the model holds them already
    if trainer.best_weights is not None and trainer.best_epoch == best["epoch"]:
        model.load_state_dict(trainer.best_weights)
        return found
    on_disk = manager.load_best_weights(map_location=device)
    if on_disk is not None and (on_disk[0].epoch, on_disk[0].step) == (best["epoch"], 0):
        model.load_state_dict(on_disk[1])
        return found
    return last | {
        "requested": "best",
        "reason": f"the checkpoint of the best epoch ({best['epoch']}) is missing or corrupt:"
        " the last epoch's weights",
    }
