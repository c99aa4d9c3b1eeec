"""One training job, as a batch training pipeline: collect → preprocess → train →
evaluate → register, each stage reported through the hooks with its JSON-able outputs.

A job directory holds its checkpoints (`checkpoints/`) and, at the end, its model (`model/`). If a
valid checkpoint is there, the run resumes from it: the split is re-derived (it is seeded), the
model, optimizer, scheduler, RNG and loop state are restored, and training continues at the exact
step where it stopped, so a resumed CPU run ends with the same weights as an uninterrupted one.

Given an artifact store (`RunContext.store`, e.g. S3), the job's prefix in it takes the directory's
place for what must outlive this machine: checkpoints are bundles under `<prefix>/checkpoints`
(a worker elsewhere resumes from the last committed one), and the model and the predictions are
written to the local job directory (scratch) as before, then pushed as the bundles `<prefix>/model`
(the registered `model_dir` is then that key) and `<prefix>/predictions` (`<split>.npz` objects),
each complete only once its manifest is written."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tas.core import predictions
from tas.core.acceleration import accelerate
from tas.core.artifact import ModelCard, count_parameters, save_model
from tas.core.augment import BatchAugment, build_augment
from tas.core.batches import data_bytes, fits_on_device
from tas.core.checkpoint import (
    CheckpointManager,
    CheckpointRecord,
    LoadedCheckpoint,
    Resumable,
    restore_training,
    save_training,
)
from tas.core.data.cache import PreprocessCache, PrepSpec, cache_key
from tas.core.data.dataset import DatasetInfo, LoadContext, Loaded
from tas.core.data.prepare import Prepared, TargetScaler, prepare
from tas.core.device import Precision, resolve_device, resolve_precision
from tas.core.distributed import SOLO, DataParallel, Solo
from tas.core.errors import DeviceUnavailable, Stopped, TrainingError, as_training_error
from tas.core.hooks import Hooks
from tas.core.loop import (
    CheckpointFn,
    EarlyStopping,
    LoopConfig,
    LoopState,
    TrainData,
    Trainer,
    best_row,
)
from tas.core.losses import LOSSES, Loss
from tas.core.metrics import output_metrics, predict
from tas.core.models import build_model
from tas.core.objstore import ObjectStore, write_bundle
from tas.core.optim import OPTIMIZERS, SCHEDULERS, param_groups
from tas.core.spec import (
    JobSpec,
    available_metric,
    check_spec,
    metric_mode,
    resolved_loss,
    resolved_monitor,
    resolved_target_scaling,
)
from tas.core.state import capture_rng, restore_rng, seed_everything
from tas.core.transfer import (
    Transfer,
    prepare_transfer,
    pretrained_card,
    pretrained_normalization,
)

STAGES = ("collect", "preprocess", "train", "evaluate", "register")

log = logging.getLogger(__name__)


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
    #: The most training data (MiB) kept on the device whole; past it the loop streams batches from
    #: host memory. None: as much as fits (`tas.core.batches.fits_on_device`).
    device_data_mb: int | None = None
    #: The artifact store shared with other machines, and the job's prefix (key) in it. None: the
    #: job directory is the artifact (a local artifact directory every process shares). Given a
    #: store, `job_dir` is only this machine's scratch: what outlives the attempt goes to the store.
    store: ObjectStore | None = None
    store_prefix: str | None = None
    #: This process's place in a data-parallel job (`tas.core.distributed`): the first process
    #: reports, checkpoints, evaluates and registers; the others only train their share.
    parallel: Solo = SOLO

    def __post_init__(self) -> None:
        if (self.store is None) != (self.store_prefix is None):
            raise ValueError("RunContext: store and store_prefix are given together or not at all")

    @property
    def checkpoints_dir(self) -> Path:
        return Path(self.job_dir) / "checkpoints"

    @property
    def checkpoints_prefix(self) -> str | None:
        """The checkpoints' prefix in the store (None without one)."""
        return f"{self.store_prefix}/checkpoints" if self.store_prefix is not None else None

    @property
    def model_dir(self) -> Path:
        return Path(self.job_dir) / "model"

    @property
    def model_key(self) -> str | None:
        """The model bundle's key in the store (None without one)."""
        return f"{self.store_prefix}/model" if self.store_prefix is not None else None

    @property
    def predictions_key(self) -> str | None:
        """The predictions bundle's key in the store (None without one)."""
        return (
            f"{self.store_prefix}/{predictions.DIRNAME}" if self.store_prefix is not None else None
        )

    @property
    def registered_model_dir(self) -> str:
        """What the registry keeps as the model's place: the bundle's key given a store, else the
        local directory's path."""
        return self.model_key if self.model_key is not None else str(self.model_dir)


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
    #: Where the registry finds the model: the local directory, or its bundle's key in the store.
    model_dir: str | None = None
    #: The model's files on this machine (the same directory without a store; scratch with one).
    model_local_dir: str | None = None
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
    # Fields added later count only when set: a checkpoint written before they existed (their
    # defaults) still resumes.
    for section, key, default in _LATER_FIELDS:
        if d.get(section, {}).get(key) == default:
            d[section].pop(key)
    blob = repr(sorted(_flatten(d)))
    return hashlib.sha256(blob.encode()).hexdigest()


#: (section, field, default) of spec fields added after checkpoints already existed.
_LATER_FIELDS = (
    ("resources", "processes", 1),
    ("training", "channels_last", "auto"),
    ("training", "compile", False),
)


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(d, dict):
        return [kv for k, v in d.items() for kv in _flatten(v, f"{prefix}.{k}")]
    return [(prefix, repr(d))]


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
        _in_group(exc, ctx.parallel)  # in place
        raise  # with the cause it was raised from: the worker's log shows it to the operators
    except Exception as exc:
        raise _in_group(as_training_error(exc, stage.current), ctx.parallel) from exc


def _in_group(exc: TrainingError, parallel: Solo) -> TrainingError:
    """A data-parallel run's error says which process failed; a collective that timed out says
    what that means (a peer that hung or vanished) and what happens next."""
    if parallel.world == 1:
        return exc
    exc.message = f"process {parallel.rank} of {parallel.world}: {exc.message}"
    if "Timed out" in exc.message or "Connection closed by peer" in exc.message:
        exc.hint = (
            "another process of the job stopped answering (hung, or killed) for longer than"
            " TAS_DISTRIBUTED_TIMEOUT_S; the job runs again from its last checkpoint if it has"
            " attempts left"
        )
    return exc


def _run(
    spec: JobSpec,
    info: DatasetInfo,
    ctx: RunContext,
    hooks: Hooks,
    load: Callable[[LoadContext], Loaded],
    stage: _Stages,
) -> PipelineResult:
    """The job, one named step after another: check the spec against the dataset, collect and
    preprocess the data, train (model, optimizer, a resume from the latest checkpoint), evaluate
    the kept weights, register them as the job's model."""
    check_spec(spec, info)
    loss_name = resolved_loss(spec, info)
    loss = LOSSES[loss_name]

    data = _DataSteps(spec, info, ctx, load)
    # With several processes the first prepares the data (and fills the preprocessing cache)
    # while the others wait, then read what it prepared.
    ctx.parallel.wait_for_main()
    with stage("collect") as out:
        out.update(data.collect())
    with stage("preprocess") as out:
        prepared = data.preprocess(out)
    ctx.parallel.main_done()
    target_scaler = _target_scaler(spec, info, loss, prepared)

    with stage("train") as out:
        trained = _train(spec, info, ctx, hooks, prepared, loss, target_scaler)
        out.update(_train_outputs(trained, target_scaler))
    if not ctx.parallel.is_main:  # evaluating and registering are the first process's
        return PipelineResult(
            status="succeeded", epochs_run=trained.state.epoch, history=trained.state.history
        )

    with stage("evaluate") as out:
        evaluation, written_predictions = _evaluate(
            ctx, info, prepared, trained, loss, target_scaler, spec.training.batch_size
        )
        out.update({**evaluation, "weights": trained.weights, "predictions": written_predictions})

    with stage("register") as out:
        card = _model_card(spec, info, prepared, trained, evaluation, loss_name, target_scaler)
        sha256 = save_model(ctx.model_dir, trained.model, card).weights_sha256
        _push(ctx, ctx.model_key, ctx.model_dir)
        out.update(
            {
                "path": ctx.registered_model_dir,
                "sha256": sha256,
                "files": ["model.safetensors", "card.json"],
            }
        )

    return _succeeded(ctx, trained, evaluation, written_predictions, sha256)


def _succeeded(
    ctx: RunContext,
    trained: _Trained,
    evaluation: dict[str, Any],
    written_predictions: dict[str, int],
    model_sha256: str | None,
) -> PipelineResult:
    state = trained.state
    return PipelineResult(
        status="succeeded",
        epochs_run=state.epoch,
        stop_reason=state.stop_reason,
        stopped_early=state.stop_reason == "early_stopped",
        best=trained.best,
        best_metrics=_best_row(state, trained.best),
        final_metrics=_final_row(state),
        evaluation=evaluation,
        model_dir=ctx.registered_model_dir,
        model_local_dir=str(ctx.model_dir),
        model_sha256=model_sha256,
        trainable_params=trained.parameters["trainable"],
        total_params=trained.parameters["total"],
        resumed_from=trained.resumed_from,
        history=state.history,
        weights=trained.weights,
        predictions=written_predictions,
    )


# --- collect, preprocess ---------------------------------------------------------------------


class _DataSteps:
    """The collect and preprocess stages, through the preprocessing cache when the context has
    one: a cached entry of the preprocessed tensors skips the load (decode) and the preprocessing.
    What collect read is kept for preprocess (and for the cache entry it writes)."""

    def __init__(
        self,
        spec: JobSpec,
        info: DatasetInfo,
        ctx: RunContext,
        load: Callable[[LoadContext], Loaded],
    ) -> None:
        self.spec, self.info, self.ctx, self.load = spec, info, ctx, load
        self.load_ctx = LoadContext(Path(ctx.datasets_dir), ctx.allow_download)
        self.cache = (
            PreprocessCache(ctx.cache_dir) if ctx.cache_dir and ctx.data_fingerprint else None
        )
        # Pretrained torchvision weights expect their own normalisation (ImageNet's mean/std).
        self.norm_stats = (
            pretrained_normalization(spec.model, info.input_shape[0])
            if info.kind == "image"
            else None
        )
        self.prep = PrepSpec.of(spec.dataset, info, self.norm_stats)
        self.key = _cache_key(ctx, info, self.prep) if self.cache is not None else None
        self.entry: dict[str, Any] | None = None  # the cache entry's description, when found
        self.loaded: Loaded | None = None
        self.collected: dict[str, Any] = {}

    def collect(self) -> dict[str, Any]:
        """The collect stage's outputs. A cache entry knows the source: nothing is read then."""
        if self.cache is not None and self.key is not None:
            self.entry = self.cache.lookup(self.key)
        if self.entry is not None:
            return {**self.entry.get("collect", {}), "cached": True}
        self._load()
        return {**self.collected, "cached": False}

    def _load(self) -> None:
        self.loaded = self.load(self.load_ctx)
        self.collected = _collect_outputs(self.info, self.loaded)

    def preprocess(self, out: dict[str, Any]) -> Prepared:
        """The split, normalised tensors (from the cache entry, or prepared and then stored in
        the cache); the stage's outputs go into `out`."""
        cache, key = self.cache, self.key
        hit = cache.load(key) if cache is not None and key is not None and self.entry else None
        cache_out: dict[str, Any] | None = None
        if hit is not None:
            prepared = hit.prepared
            cache_out = {"hit": True, "key": key, "seconds": round(hit.seconds, 3)}
        else:
            if self.loaded is None:  # the entry went bad after collect looked at it: decode now
                self._load()
            assert self.loaded is not None
            d = self.spec.dataset
            prepared = prepare(
                self.loaded,
                self.info,
                d.val_fraction,
                d.test_fraction,
                d.split_seed,
                d.stratify,
                d.normalize,
                self.norm_stats,
                scratch_dir=self._scratch_dir(),
            )
            self.loaded = None  # the raw arrays are not needed any more: free them
            if cache is not None:
                cache_out = _cache_store(
                    cache, self.ctx, self.info, self.prep, prepared, self.collected
                )
        out.update(prepared.outputs())
        if cache_out is not None:
            out["cache"] = cache_out
        return prepared

    def _scratch_dir(self) -> Path | None:
        """Where a split too large for memory is written: beside the preprocessing cache (a local
        disk, where its entry is written next), else the system's temp folder."""
        if self.cache is None:
            return None
        try:
            self.cache.root.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        return self.cache.root


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


def _target_scaler(
    spec: JobSpec, info: DatasetInfo, loss: Loss, prepared: Prepared
) -> TargetScaler | None:
    """Regression targets standardised with the training split's statistics (predictions and
    metrics go back to the data's units); fitted again on a resume: the split is the same."""
    if loss.target == "value" and resolved_target_scaling(spec, info) == "standard":
        return TargetScaler.fit(prepared.train.y)
    return None


def _targets(y: torch.Tensor, loss: Loss) -> torch.Tensor:
    """Labels in the form the loss takes: int64 indices, a float 0/1 column (bce), float values."""
    if loss.target == "index":
        return y.long()
    if loss.target == "binary":
        return y.to(torch.float32).reshape(-1, 1)
    return y.to(torch.float32).reshape(y.shape[0], -1)


def _scaled(y: torch.Tensor, scaler: TargetScaler | None) -> torch.Tensor:
    return scaler(y) if scaler is not None else y


# --- train -----------------------------------------------------------------------------------


@dataclass
class _Optimization:
    """What updates the weights: the optimizer, its schedule and the fp16 gradient scaler (all of
    which a checkpoint carries), and the precision the forward pass runs in."""

    live: Resumable
    precision: Precision
    scheduler_interval: Literal["step", "epoch"] | None


@dataclass
class _Trained:
    model: nn.Module
    device: torch.device
    state: LoopState
    best: dict[str, Any] | None  # {"metric", "value", "epoch"} by the checkpoint monitor
    precision: str
    resumed_from: dict[str, Any] | None
    transfer: Transfer
    augment: BatchAugment | None
    weights: dict[str, Any]
    parameters: dict[str, int]
    #: How the training data were fed: {"streamed": bool, "bytes": compact bytes, "dtype"}.
    data: dict[str, Any]
    #: Data-parallel runs: {"processes", "backend", "weights_sha256", "identical_weights"}.
    distributed: dict[str, Any] | None = None
    #: {"channels_last": bool, "compile": bool or why it fell back}.
    acceleration: dict[str, Any] = field(default_factory=dict)


def _train(
    spec: JobSpec,
    info: DatasetInfo,
    ctx: RunContext,
    hooks: Hooks,
    prepared: Prepared,
    loss: Loss,
    target_scaler: TargetScaler | None,
) -> _Trained:
    """nanoGPT's set-up, step by step: the device, the monitored metric and the checkpoints, the
    model, the optimizer, a resume from the latest valid checkpoint, the loop; then the weights
    to keep are loaded into the model."""
    t = spec.training
    device = _pick_device(spec, ctx)
    has_val = prepared.val is not None
    # Resolved once: the checkpoints' best, the loop's `is_best` rows and `keep: best` all use it.
    monitor = resolved_monitor(spec, info, has_val)
    checkpoints = CheckpointManager(
        ctx.checkpoints_prefix or ctx.checkpoints_dir,
        spec.checkpoint.keep_last,
        *monitor,
        store=ctx.store,
    )
    latest = checkpoints.load_latest_valid(map_location=device)
    model, transfer = _build_model(spec, info, ctx, loss, device, resuming=latest is not None)
    # The layout is final before the optimizer, the checkpoint and DDP see the parameters.
    acc = accelerate(model, t.channels_last, t.compile, info.input_shape, device)
    opt = _build_optimization(spec, model, transfer, len(prepared.train), device)
    fingerprint = spec_fingerprint(spec)
    parallel = ctx.parallel
    state, resumed_from = _resume(latest, opt.live, fingerprint, device, parallel)
    transfer.at_epoch(state.epoch)  # resumed after unfreeze_after epochs: everything trains

    augment = build_augment(spec.dataset.augment)

    # Wrapped after the resume: every process starts from the checkpoint's weights.
    def forward_of(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return acc.training_forward(parallel.wrap(model))

    if parallel.world > 1 and parallel.is_main:
        log.info(
            "training in %d processes on %s (%s), pids %s",
            parallel.world,
            device.type,
            parallel.backend,
            (parallel.describe() or {}).get("pids"),
        )
    trainer = Trainer(
        model,
        opt.live.optimizer,
        loss.build(),
        _loop_config(spec, ctx, state, loss, monitor, has_val, opt.scheduler_interval),
        hooks,
        scheduler=opt.live.scheduler,
        scaler=opt.live.scaler,
        autocast=opt.precision.autocast(device),
        on_checkpoint=_checkpointer(spec, fingerprint, checkpoints, opt.live, hooks, parallel),
        augment=acc.batches(augment),
        on_epoch_start=transfer.at_epoch,
        parallel=parallel,
        net=forward_of(model),
    )
    if parallel.world > 1:
        trainer.on_epoch_start = _unfreezer(transfer, trainer, forward_of)
    data = _train_data(prepared, loss, target_scaler, device, ctx.device_data_mb)
    data.transform = acc.inputs(data.transform)
    state = trainer.fit(data, state)
    replicas = _replicas(parallel, model)
    weights = _keep_weights(t.keep, has_val, model, trainer, checkpoints, state, monitor, device)
    model.eval()
    return _Trained(
        model=model,
        device=device,
        state=state,
        best=_best(state, monitor),
        precision=opt.precision.name,
        resumed_from=resumed_from,
        transfer=transfer,
        augment=augment,
        weights=weights,
        parameters=count_parameters(model),
        data={
            "streamed": data.stream,
            "bytes": data_bytes(data.X, data.y, data.val_X, data.val_y),
            "dtype": str(data.X.dtype).removeprefix("torch."),
        },
        distributed=replicas,
        acceleration=acc.outputs(),
    )


def _unfreezer(
    transfer: Transfer,
    trainer: Trainer,
    forward_of: Callable[[nn.Module], Callable[[torch.Tensor], torch.Tensor]],
) -> Callable[[int], None]:
    """A data-parallel run's `on_epoch_start`: the transfer's unfreezing, then the model wrapped
    again when more of it trains from now on (DDP synchronises the gradients of the parameters
    that trained when it wrapped the model; every process does this at the same epoch)."""

    def at_epoch(epochs_done: int) -> None:
        model = trainer.model
        before = [p.requires_grad for p in model.parameters()]
        transfer.at_epoch(epochs_done)
        if [p.requires_grad for p in model.parameters()] != before:
            trainer.net = forward_of(model)

    return at_epoch


def _replicas(parallel: Solo, model: nn.Module) -> dict[str, Any] | None:
    """With several processes: how many, the backend, and each process's digest of its trained
    weights (DDP keeps the replicas identical; a difference is logged, never hidden)."""
    if parallel.world == 1:
        return None
    digests = parallel.weights_digests(model)
    identical = len(set(digests)) == 1
    if parallel.is_main and not identical:
        log.warning("the processes' final weights differ: %s", digests)
    return {
        **(parallel.describe() or {}),
        "weights_sha256": digests,
        "identical_weights": identical,
    }


def _pick_device(spec: JobSpec, ctx: RunContext) -> torch.device:
    if isinstance(ctx.parallel, DataParallel):  # each process got its device as the group formed
        return ctx.parallel.device
    wanted = spec.resources.device
    if wanted == "auto":
        return resolve_device(ctx.device)
    if ctx.device not in ("auto", wanted):
        raise DeviceUnavailable(
            f"resources.device is {wanted!r} but this worker runs on {ctx.device!r}"
        )
    return resolve_device(wanted)


def _build_model(
    spec: JobSpec,
    info: DatasetInfo,
    ctx: RunContext,
    loss: Loss,
    device: torch.device,
    *,
    resuming: bool,
) -> tuple[nn.Module, Transfer]:
    """The seeded model, with pretrained / init_from weights (not when resuming: the checkpoint
    holds the run's own) and the freeze, on the device."""
    seed_everything(spec.training.seed)
    model = build_model(
        spec.model, info.input_shape, loss.out_dim(info.num_classes, info.target_dim)
    )
    transfer = prepare_transfer(
        spec.model,
        model,
        ctx.weights_dir,
        ctx.init_weights,
        resuming=resuming,
        class_names=info.class_names,
        allow_download=ctx.allow_download,
    )
    model.to(device)
    return model, transfer


def _build_optimization(
    spec: JobSpec, model: nn.Module, transfer: Transfer, train_samples: int, device: torch.device
) -> _Optimization:
    """The optimizer over the head and the backbone as groups (model.backbone_lr), the schedule
    over the run's steps, and the precision (fp16 brings its gradient scaler)."""
    t = spec.training
    optimizer = OPTIMIZERS[t.optimizer](
        param_groups(model, transfer.head, t.lr, spec.model.backbone_lr), t
    )
    steps = -(-train_samples // t.batch_size)
    sched_entry = SCHEDULERS[t.scheduler] if t.scheduler else None
    scheduler = sched_entry.build(optimizer, t, steps) if sched_entry else None
    precision = resolve_precision(t.precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision.needs_scaler else None
    return _Optimization(
        Resumable(model, optimizer, scheduler, scaler),
        precision,
        sched_entry.interval if sched_entry else None,
    )


def _resume(
    latest: LoadedCheckpoint | None,
    live: Resumable,
    fingerprint: str,
    device: torch.device,
    parallel: Solo = SOLO,
) -> tuple[LoopState, dict[str, Any] | None]:
    """A fresh loop state, or the latest checkpoint's with everything else it holds restored
    (and where the run resumed from). Each process of a data-parallel run gets its own random
    generators back (its dropout masks continue where they stopped)."""
    if latest is None:
        return LoopState(), None
    loop = restore_training(latest, live, spec_sha256=fingerprint)
    ranks = latest.state.get("rank_rng")
    if parallel.world > 1 and isinstance(ranks, list) and len(ranks) == parallel.world:
        restore_rng(ranks[parallel.rank])
    record = latest.record
    resumed_from = {"epoch": record.epoch, "step": record.step, "path": record.path}
    # The job's log line of a resumed run (a worker captures the core's loggers while it runs).
    log.info(
        "resumed from the checkpoint after epoch %d%s",
        record.epoch,
        f", {record.step} steps into epoch {record.epoch + 1}" if record.step else "",
    )
    return LoopState.from_dict(loop, device), resumed_from


def _loop_config(
    spec: JobSpec,
    ctx: RunContext,
    state: LoopState,
    loss: Loss,
    monitor: tuple[str, Literal["min", "max"]],
    has_val: bool,
    scheduler_interval: Literal["step", "epoch"] | None,
) -> LoopConfig:
    t = spec.training
    # max_minutes counts this attempt and the training time of the earlier ones.
    deadline = ctx.started_monotonic + t.max_minutes * 60.0 - state.elapsed_seconds
    if ctx.deadline is not None:
        deadline = min(deadline, ctx.deadline)
    return LoopConfig(
        epochs=t.epochs,
        batch_size=t.batch_size,
        seed=t.seed,
        target=loss.target,
        log_every_steps=t.log_every_steps,
        grad_clip=t.grad_clip,
        scheduler_interval=scheduler_interval,
        checkpoint_every=spec.checkpoint.every_epochs,
        early_stopping=_early_stopping(spec, has_val),
        deadline=deadline,
        max_minutes=t.max_minutes,
        monitor=monitor[0],
        monitor_mode=monitor[1],
        keep_best=t.keep == "best" and has_val,
    )


def _early_stopping(spec: JobSpec, has_val: bool) -> EarlyStopping | None:
    es = spec.training.early_stopping
    if es is None:
        return None
    name = available_metric(es.monitor, has_val)
    return EarlyStopping(name, metric_mode(name), es.patience, es.min_delta)


def _checkpointer(
    spec: JobSpec,
    fingerprint: str,
    checkpoints: CheckpointManager,
    live: Resumable,
    hooks: Hooks,
    parallel: Solo = SOLO,
) -> CheckpointFn:
    """The loop's `on_checkpoint`: one checkpoint of the run (`save_training`), told to the hooks.
    With several processes every one of them calls it at the same step; the first writes the
    checkpoint, with each process's random generators in it."""

    def save(state: LoopState, metrics: dict[str, float] | None) -> CheckpointRecord | None:
        ranks = parallel.gather(capture_rng()) if parallel.world > 1 else None
        if not parallel.is_main:
            parallel.barrier()  # while the first process writes it
            return None
        record = save_training(
            checkpoints,
            live,
            state.to_dict(),
            metrics=metrics,
            seed=spec.training.seed,
            batch_size=spec.training.batch_size,
            spec_sha256=fingerprint,
            job=spec.name,
            rank_rng=ranks,
        )
        parallel.barrier()
        hooks.checkpoint_saved(record)
        return record

    return save


def _train_data(
    prepared: Prepared,
    loss: Loss,
    target_scaler: TargetScaler | None,
    device: torch.device,
    budget_mb: int | None,
) -> TrainData:
    """The training and validation data, compact, targets in the loss's form (scaled): on the
    device when they fit its budget, else left in host memory (the cache's memory map) for the
    loop to stream a batch at a time. Either way a batch is decoded and normalised on the device."""

    def targets(y: torch.Tensor) -> torch.Tensor:
        return _scaled(_targets(y, loss), target_scaler)

    train, val = prepared.train, prepared.val
    y = targets(train.y)
    val_y = targets(val.y).to(device) if val is not None else None
    val_X = val.X if val is not None else None
    stream = not fits_on_device(data_bytes(train.X, y, val_X, val_y), device, budget_mb)

    def place(t: torch.Tensor) -> torch.Tensor:
        """Streamed: left where it is (host memory, a memory map); else moved to the device."""
        return t if stream else t.to(device)

    return TrainData(
        place(train.X),
        place(y),
        place(val_X) if val_X is not None else None,
        val_y,
        target_inverse=target_scaler.inverse if target_scaler is not None else None,
        transform=prepared.inputs.to(device),
        device=device,
        stream=stream,
    )


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


def _best(state: LoopState, monitor: tuple[str, str]) -> dict[str, Any] | None:
    """The best epoch by the monitored metric (the loop's `best_row`), as the job reports it."""
    name, mode = monitor
    row = best_row(state.history, name, "max" if mode == "max" else "min")
    return None if row is None else {"metric": name, "value": row[name], "epoch": row["epoch"]}


def _final_row(state: LoopState) -> dict[str, Any]:
    return dict(state.history[-1]) if state.history else {}


def _best_row(state: LoopState, best: dict[str, Any] | None) -> dict[str, Any]:
    if best is None:
        return {}
    return dict(next(r for r in state.history if r["epoch"] == best["epoch"]))


def _train_outputs(trained: _Trained, target_scaler: TargetScaler | None) -> dict[str, Any]:
    state = trained.state
    return {
        "device": str(trained.device),
        "precision": trained.precision,
        "epochs_run": state.epoch,
        "stop_reason": state.stop_reason,
        "resumed_from": trained.resumed_from,
        "best": trained.best,
        "final": _final_row(state),
        "parameters": trained.parameters,
        "transfer": trained.transfer.outputs(),
        "augment": trained.augment.describe() if trained.augment is not None else None,
        "data": trained.data,
        "distributed": trained.distributed,
        **trained.acceleration,
        "weights": trained.weights,
        "target_scaling": target_scaler.to_dict() if target_scaler is not None else None,
    }


# --- evaluate, register ----------------------------------------------------------------------


def _evaluate(
    ctx: RunContext,
    info: DatasetInfo,
    prepared: Prepared,
    trained: _Trained,
    loss: Loss,
    target_scaler: TargetScaler | None,
    batch_size: int,
) -> tuple[dict[str, Any], dict[str, int]]:
    """The evaluated split's metrics and the per-sample predictions of every held-out split. One
    forward pass per split gives both, so they come from the very weights that are registered."""
    model, device = trained.model, trained.device
    split, part = _eval_split(prepared)
    eval_bs = max(batch_size, 1024)
    inverse = target_scaler.inverse if target_scaler is not None else None
    outputs: dict[str, torch.Tensor] = {}
    for name in (*predictions.SPLITS, split):
        held: Any = getattr(prepared, name)
        if held is not None and name not in outputs:
            outputs[name] = predict(
                model, held.X, eval_bs, transform=prepared.inputs.to(device), device=device
            )
    metrics = output_metrics(
        outputs[split],
        _scaled(_targets(part.y, loss), target_scaler).to(device),
        loss.build(),
        loss.target,
        batch_size=eval_bs,
        num_classes=info.num_classes,
        class_names=info.class_names,
        inverse=inverse,
    )
    written = predictions.write_all(
        ctx.job_dir,
        {
            name: predictions.per_sample(
                prepared.indices.get(name, torch.arange(len(held))),
                outputs[name],
                held.y,
                loss.target,
                info.class_names,
                inverse,
            )
            for name in predictions.SPLITS
            if (held := getattr(prepared, name)) is not None
        },
    )
    _push(ctx, ctx.predictions_key, Path(ctx.job_dir) / predictions.DIRNAME)
    return {"split": split, "samples": len(part), "metrics": metrics}, written


def _push(ctx: RunContext, key: str | None, directory: Path) -> None:
    """Copy every file of a local directory to the store as one bundle at `key` (its manifest
    written last: a reader elsewhere sees all of the files or none); nothing without a store."""
    if ctx.store is None or key is None:
        return
    with write_bundle(ctx.store, key) as bundle:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            bundle.put_file(path.relative_to(directory).as_posix(), path)
        bundle.commit()


def _eval_split(p: Prepared) -> tuple[str, Any]:
    if p.test is not None:
        return "test", p.test
    if p.val is not None:
        return "val", p.val
    return "train", p.train


def _model_card(
    spec: JobSpec,
    info: DatasetInfo,
    prepared: Prepared,
    trained: _Trained,
    evaluation: dict[str, Any],
    loss_name: str,
    target_scaler: TargetScaler | None,
) -> ModelCard:
    """What the registered model says about itself: the architecture, the data it takes, how its
    outputs read, and the metrics it was registered with."""
    loss = LOSSES[loss_name]
    split, metrics = evaluation["split"], evaluation["metrics"]
    return ModelCard(
        arch=spec.model.model_dump(mode="json"),
        input_shape=list(info.input_shape),
        task=info.task,
        output=loss.output,
        out_dim=loss.out_dim(info.num_classes, info.target_dim),
        num_classes=info.num_classes,
        class_names=info.class_names,
        feature_names=info.feature_names,
        target_dim=info.target_dim,
        normalization=prepared.normalizer.to_dict() if prepared.normalizer else None,
        metrics={f"{split}_{k}": v for k, v in metrics.items()}
        | {"best": trained.best, "final": _final_row(trained.state)},
        dataset=info.name,
        loss=loss_name,
        parameters=trained.parameters,
        weights=trained.weights,
        target_scaling=target_scaler.to_dict() if target_scaler is not None else None,
        pretrained=pretrained_card(spec.model, trained.transfer.report),
    )
