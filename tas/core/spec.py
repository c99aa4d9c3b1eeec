"""The job spec: the training contract between a client and the core.

Names (datasets, archs, optimizers, losses, schedulers) are checked against the registries, so adding
one is one registry entry and the API's 422 lists it at once. The spec is plain pydantic: the HTTP
layer validates it, the worker re-reads it from the database, the core trains from it."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

import annotated_types
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from tas.core.data.dataset import DatasetInfo
from tas.core.data.registry import BUILTIN_DATASETS
from tas.core.errors import TrainingError
from tas.core.losses import LOSSES
from tas.core.models import ARCHS, input_problems
from tas.core.optim import OPTIMIZERS, SCHEDULERS

#: Seeds are stored in JSON and handed to torch and numpy, which take at most 64 bits.
SEED_MAX = 2**63 - 1
#: The longest time limit a spec can state (a year, in minutes); a deployment sets a lower one
#: (TAS_MAX_JOB_MINUTES), checked at submit.
MAX_MINUTES = 525_600


class StrictModel(BaseModel):
    """The spec is typed and closed, so a mistake is a 422 naming the field, never a silently
    different job:

    - unknown keys are errors, with the nearest known field at that level suggested (a typo must not
      silently train the default);
    - strict types: `"lr": "0.01"`, `"epochs": "10"` or `"stratify": "true"` are refused rather than
      guessed at (a JSON integer still fills a float field);
    - the choices of a `Literal` field (precision, device, activation, freeze, …) are matched
      case-insensitively and stored in their canonical spelling, so `"FP16"` trains as `"fp16"`."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    #: field name → {lower-case spelling → canonical spelling}, for the fields with `Literal` choices.
    _spellings: ClassVar[dict[str, dict[str, str]]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._spellings = {
            name: spellings
            for name, field in cls.model_fields.items()
            if (spellings := _literal_spellings(field.annotation))
        }

    @model_validator(mode="before")
    @classmethod
    def _canonical_spellings(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not cls._spellings:
            return data
        fixed: dict[str, Any] | None = None
        for name, spellings in cls._spellings.items():
            value = data.get(name)
            canonical = spellings.get(value.lower()) if isinstance(value, str) else None
            if canonical is not None and canonical != value:
                fixed = fixed if fixed is not None else dict(data)
                fixed[name] = canonical
        return data if fixed is None else fixed

    @model_validator(mode="wrap")
    @classmethod
    def _explain_errors(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """An unknown key's error names the field it was probably meant to be, and a number or
        boolean sent as a string says to send it unquoted. Errors of nested models arrive already
        explained by their own class and pass through unchanged."""
        try:
            return handler(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            messages = [_explained(e, cls) for e in errors]
            if all(m is None for m in messages):
                raise
            details: list[InitErrorDetails] = [
                # No context: the message is used as written, never re-formatted.
                {
                    "type": PydanticCustomError(e["type"], m if m is not None else e["msg"]),
                    "loc": e["loc"],
                    "input": e["input"],
                }
                for e, m in zip(errors, messages, strict=True)
            ]
            raise ValidationError.from_exception_data(exc.title, details) from None


_SCALAR_TYPES = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false"}
#: pydantic's error types for a number or a list outside its field's bounds.
_BOUND_ERRORS = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_long", "too_short"}
)


def _explained(error: Any, model: type[BaseModel]) -> str | None:
    """A clearer message for `error` raised while validating `model`, or None to keep pydantic's."""
    kind, loc, value = error["type"], error["loc"], error.get("input")
    if kind == "extra_forbidden" and len(loc) == 1:
        return unknown_field_message(str(loc[0]), list(model.model_fields))
    if kind in _SCALAR_TYPES and isinstance(value, str) and "unquoted" not in error["msg"]:
        return (
            f"expected {_SCALAR_TYPES[kind]}, got the string {value!r}: the spec is typed, send"
            " the value unquoted"
        )
    if kind in _BOUND_ERRORS and "allowed:" not in error["msg"]:
        allowed = _allowed_range(model, loc, lengths=kind in ("too_long", "too_short"))
        if allowed:
            return f"{error['msg']}; allowed: {allowed}"
    return None


def _allowed_range(model: type[BaseModel], loc: tuple[Any, ...], *, lengths: bool) -> str | None:
    """The whole range of the field at `loc` (a field of `model`, or an item of its list field),
    e.g. `1 to 65536` or `at most 32 items`, so a 422 says what is allowed, not only which bound
    was crossed; None when the field declares no bounds there."""
    field = model.model_fields.get(str(loc[0])) if loc else None
    if field is None or len(loc) > 2:
        return None
    metadata: list[Any] = list(field.metadata)
    if len(loc) == 2:  # an item of a list: its bounds are on the item type
        if not isinstance(loc[1], int) or lengths:
            return None
        items = get_args(field.annotation)
        if not items or get_origin(items[0]) is not Annotated:
            return None
        metadata = [m for info in get_args(items[0])[1:] for m in getattr(info, "metadata", [])]
    if lengths:
        low = next((m.min_length for m in metadata if isinstance(m, annotated_types.MinLen)), 0)
        high = next((m.max_length for m in metadata if isinstance(m, annotated_types.MaxLen)), None)
        if high is None:
            return f"at least {low} items" if low else None
        return f"{low} to {high} items" if low else f"at most {high} items"
    ge = next((m.ge for m in metadata if isinstance(m, annotated_types.Ge)), None)
    gt = next((m.gt for m in metadata if isinstance(m, annotated_types.Gt)), None)
    le = next((m.le for m in metadata if isinstance(m, annotated_types.Le)), None)
    lt = next((m.lt for m in metadata if isinstance(m, annotated_types.Lt)), None)
    if ge is not None and le is not None:
        return f"{_num(ge)} to {_num(le)}"
    if ge is not None and le is None and lt is None:
        return f"{_num(ge)} or more"
    parts = [
        f"from {_num(ge)}" if ge is not None else f"above {_num(gt)}" if gt is not None else ""
    ]
    parts.append(
        f"at most {_num(le)}" if le is not None else f"below {_num(lt)}" if lt is not None else ""
    )
    return ", ".join(p for p in parts if p) or None


def _num(v: Any) -> str:
    """`100,000`, `0.5`, `10` (a float bound that is whole reads as an integer)."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


def unknown_field_message(key: str, fields: list[str]) -> str:
    """`unknown field 'epcohs' (did you mean 'epochs'?); fields here: …`"""
    close = difflib.get_close_matches(key, fields, n=1) or difflib.get_close_matches(
        key.lower(), fields, n=1
    )
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field {key!r}{hint}; fields here: {', '.join(fields)}"


def _literal_spellings(annotation: Any) -> dict[str, str]:
    """{lower-case → canonical} for every string choice of a `Literal` inside `annotation` (through
    `X | None`, unions and `Annotated`)."""
    out: dict[str, str] = {}
    stack = [annotation]
    while stack:
        a = stack.pop()
        if get_origin(a) is Literal:
            out.update({v.lower(): v for v in get_args(a) if isinstance(v, str)})
        else:
            stack.extend(get_args(a))
    return out


def _one_of(kind: str, value: str, allowed: Mapping[str, Any]) -> str:
    """`value` as the registry spells it (matched case-insensitively: `"Adam"` is `"adam"`), or a
    ValueError listing what is allowed and suggesting the nearest name."""
    if value in allowed:
        return value
    by_lower = {name.lower(): name for name in allowed}
    if value.lower() in by_lower:
        return by_lower[value.lower()]
    close = difflib.get_close_matches(value.lower(), list(by_lower), n=1)
    hint = f" (did you mean {by_lower[close[0]]!r}?)" if close else ""
    raise ValueError(f"unknown {kind} {value!r}{hint}; allowed: {', '.join(sorted(allowed))}")


class AugmentSpec(StrictModel):
    """Image augmentation, drawn per batch on the training device (never on validation or test)."""

    crop_padding: int = Field(
        0,
        ge=0,
        le=64,
        description="Random crop of the original size after zero-padding by this many pixels; 0: off.",
    )
    hflip: bool = Field(False, description="Flip each image left-right with probability 1/2.")


class DatasetSpec(StrictModel):
    name: str | None = Field(None, description="A built-in dataset.", examples=["digits"])
    id: str | None = Field(None, description="An uploaded dataset's id.")
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="Uploads only: held out for evaluate."
    )
    split_seed: int = Field(42, ge=0, le=SEED_MAX)
    stratify: bool = True
    normalize: bool | None = Field(
        None,
        description="Standardise inputs with training-split statistics; null: the dataset's default.",
    )
    augment: AugmentSpec | None = Field(None, description="Image datasets only.")
    target_scaling: Literal["standard", "none"] | None = Field(
        None,
        description="Regression only: train on targets standardised with the training split's"
        " mean/std (predictions and metrics stay in the original units); null: 'standard', or"
        " 'none' where the inputs are used raw (dataset.normalize false or the dataset's default).",
    )

    @field_validator("name")
    @classmethod
    def _known_name(cls, v: str | None) -> str | None:
        return None if v is None else _one_of("dataset", v, BUILTIN_DATASETS)

    @model_validator(mode="after")
    def _name_or_id(self) -> DatasetSpec:
        if (self.name is None) == (self.id is None):
            raise ValueError(
                "give exactly one of dataset.name (a built-in) or dataset.id (an upload)"
            )
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1")
        return self


class ModelSpec(StrictModel):
    arch: str = Field("mlp", description="Architecture.", examples=["mlp"])
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [512, 512], max_length=32, description="mlp: hidden layer widths."
    )
    activation: Literal["relu", "tanh", "gelu", "sigmoid"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [32, 64], max_length=8, description="cnn: conv channels per block."
    )
    pretrained: bool = Field(
        False,
        description="torchvision's models (resnet18, vit_b_16, ...): start from torchvision's"
        " ImageNet weights (its DEFAULT), read from TAS_WEIGHTS_DIR under torchvision's file name,"
        " or downloaded there once (hash-checked) when TAS_ALLOW_DOWNLOAD is on; the images are"
        " then normalised with the weights' own mean/std.",
    )
    init_from: str | None = Field(
        None,
        description="Start from earlier weights: a job id, a model 'name' or 'name:version', or"
        " 'weights:<id>' (an upload to POST /weights). The head is replaced when the classes differ.",
        examples=["digits-0-4:1"],
        max_length=200,
    )
    freeze: Literal["none", "backbone"] | list[Annotated[str, Field(min_length=1)]] = Field(
        "none",
        description="'backbone' (everything but the head), 'none', or a list of layer names"
        " (module prefixes, e.g. ['0', '2'] or ['layer1', 'conv1']).",
    )
    unfreeze_after: int | None = Field(
        None, ge=1, description="Unfreeze everything after this many epochs."
    )
    backbone_lr: float | None = Field(
        None,
        gt=0.0,
        le=10.0,
        description="Learning rate of the non-head parameters (while trainable); null: training.lr.",
    )

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        return _one_of("arch", v, ARCHS)


class EarlyStoppingSpec(StrictModel):
    monitor: str = "val_loss"
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


class TrainingSpec(StrictModel):
    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1, le=1_000_000)
    optimizer: str = "sgd"
    lr: float = Field(0.001, gt=0.0, le=10.0)
    momentum: float | None = Field(
        None, ge=0.0, lt=1.0, description="null: 0 for sgd, 0.9 for momentum."
    )
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    loss: str | None = Field(
        None, description="null: cross_entropy for classes, mse for regression."
    )
    scheduler: str | None = None
    step_size: int = Field(10, ge=1, description="step scheduler: epochs between decays.")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step scheduler: decay factor.")
    seed: int = Field(0, ge=0, le=SEED_MAX)
    early_stopping: EarlyStoppingSpec | None = None
    max_minutes: float = Field(
        60.0,
        gt=0.0,
        le=MAX_MINUTES,
        description="Training time limit over all runs of the job (minutes); not given: the"
        " deployment's default (TAS_DEFAULT_JOB_MINUTES), at most TAS_MAX_JOB_MINUTES.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: fp32 on CPU; on a GPU, bf16 autocast where it is supported, else fp16"
        " autocast with a gradient scaler.",
    )
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Train a CNN with channels_last memory (faster convolutions on tensor"
        " cores). auto: on for image models on a GPU, off elsewhere.",
    )
    compile: bool = Field(
        False,
        description="torch.compile the training forward pass (a one-off compile, faster"
        " steps after it).",
    )
    grad_clip: float | None = Field(
        None, gt=0.0, description="Clip the gradient norm to this value."
    )
    log_every_steps: int = Field(50, ge=1, description="A step metric row every N steps.")
    keep: Literal["best", "last"] = Field(
        "best",
        description="Which epoch's weights are evaluated and registered: the best by"
        " checkpoint.monitor (needs a validation split; without one, the last) or the last.",
    )

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, v: str) -> str:
        return _one_of("optimizer", v, OPTIMIZERS)

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, v: str | None) -> str | None:
        return None if v is None else _one_of("loss", v, LOSSES)

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, v: str | None) -> str | None:
        return None if v is None else _one_of("scheduler", v, SCHEDULERS)


class CheckpointSpec(StrictModel):
    every_epochs: int = Field(1, ge=1)
    keep_last: int = Field(2, ge=1, le=100)
    monitor: str | None = Field(
        None,
        description="null: val_accuracy for classes, val_loss for regression (train_loss without a validation split).",
    )


#: The most data-parallel processes one job can ask for (a deployment's workers offer fewer: the
#: API checks a job against the live workers of its queue).
MAX_PROCESSES = 64


class ResourcesSpec(StrictModel):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    processes: int = Field(
        1,
        ge=1,
        le=MAX_PROCESSES,
        description="Data-parallel training processes (DDP launched by torchrun: gloo on CPU,"
        " NCCL on CUDA, one GPU per process). training.batch_size stays the global batch, split"
        " evenly across the processes, so the learning rate needs no change.",
    )


#: Tags are labels for people and filters (`GET /jobs?tag=team:vision`), never training input.
#: A key is a safe identifier (no `:`, which separates key and value in the filter).
TAG_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$"
MAX_TAGS = 32
TagKey = Annotated[str, Field(pattern=TAG_KEY_PATTERN)]
TagValue = Annotated[str, Field(max_length=256)]


def tag_count_problem(tags: dict[str, Any]) -> str | None:
    """The one limit a dict of valid tags can still break (checked again after a PATCH merge)."""
    if len(tags) > MAX_TAGS:
        return f"at most {MAX_TAGS} tags per job; this would make {len(tags)}"
    return None


class JobSpec(StrictModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", examples=["digits-mlp"])
    model_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Register the trained model under this name; null: the job's name.",
    )
    dataset: DatasetSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    tags: dict[TagKey, TagValue] = Field(
        default_factory=dict,
        description=f'Free labels, e.g. {{"team": "vision"}}: up to {MAX_TAGS}, keys of up to 64'
        " letters, digits and . _ / - (not starting with a symbol), values up to 256 characters."
        " Kept on the job (PATCH /jobs/{id} changes them), not part of what is trained.",
        examples=[{"team": "vision"}],
    )

    @field_validator("tags")
    @classmethod
    def _few_tags(cls, v: dict[str, str]) -> dict[str, str]:
        problem = tag_count_problem(v)
        if problem:
            raise ValueError(problem)
        return v


#: A problem with a spec: the field to blame (its path in the spec) and what is wrong with it.
SpecProblem = tuple[tuple[str, ...], str]


def resource_problems(spec: JobSpec) -> list[SpecProblem]:
    """What the processes of a data-parallel job need from the rest of the spec: the global batch
    splits into equal per-process batches (every process steps the same number of times on the
    same share, which keeps the averaged gradient the full batch's)."""
    n, bs = spec.resources.processes, spec.training.batch_size
    if n > 1 and bs % n:
        lower, upper = bs - bs % n, bs + n - bs % n
        fits = f"{lower} or {upper}" if lower else f"{upper}"
        return [
            (
                ("training", "batch_size"),
                f"with resources.processes {n}, training.batch_size (the global batch, split"
                f" evenly across the processes) must be a multiple of {n}; {bs} is not: use"
                f" {fits}",
            )
        ]
    return []


def spec_problems(spec: JobSpec, info: DatasetInfo) -> list[SpecProblem]:
    """What stops this spec from training on a dataset with this `DatasetInfo`, each with the field
    to blame. The API answers them as a 422 before a job is queued; a job that runs checks them
    once more with `check_spec` (the dataset it reads then is the one that counts)."""
    problems: list[SpecProblem] = []
    loss_name = resolved_loss(spec, info)
    loss = LOSSES[loss_name]
    fitting = ", ".join(
        n
        for n, entry in LOSSES.items()
        if info.task in entry.tasks and (entry.max_classes or 1 << 30) >= (info.num_classes or 0)
    )
    if info.task not in loss.tasks:
        target = f"{info.num_classes} classes" if info.num_classes else "continuous values"
        problems.append(
            (
                ("training", "loss"),
                f"loss {loss_name!r} does not fit dataset {info.name!r}, a {info.task} target"
                f" ({target}); allowed for {info.task}: {fitting}",
            )
        )
    elif loss.max_classes is not None and (info.num_classes or 0) > loss.max_classes:
        problems.append(
            (
                ("training", "loss"),
                f"loss {loss_name!r} needs at most {loss.max_classes} classes; dataset {info.name!r} has"
                f" {info.num_classes}; allowed: {fitting}",
            )
        )
    arch = ARCHS[spec.model.arch]
    if arch.needs == "image" and len(info.input_shape) != 3:
        problems.append(
            (
                ("model", "arch"),
                f"arch {spec.model.arch!r} needs image samples (C×H×W); dataset {info.name!r} has samples"
                f" of shape {list(info.input_shape)}; use mlp or linear",
            )
        )
    elif arch.needs == "image":
        problems += [
            (("model", "arch"), msg) for msg in input_problems(spec.model, info.input_shape)
        ]
    if spec.dataset.augment is not None and info.kind != "image":
        problems.append(
            (
                ("dataset", "augment"),
                f"augmentation needs image samples (C×H×W); dataset {info.name!r} is {info.kind}",
            )
        )
    if spec.training.channels_last == "on" and arch.needs != "image":
        problems.append(
            (
                ("training", "channels_last"),
                f"channels_last lays out the weights and batches of image convolutions; arch"
                f" {spec.model.arch!r} flattens its input, so it would only cost a copy per batch:"
                " use 'auto' or 'off', or an image arch (cnn, resnet18, ...)",
            )
        )
    problems += resource_problems(spec)
    if spec.dataset.target_scaling == "standard" and info.task != "regression":
        problems.append(
            (
                ("dataset", "target_scaling"),
                f"target scaling applies to regression targets; dataset {info.name!r} is"
                f" {info.task}: leave it null or 'none'",
            )
        )
    m = spec.model
    if m.unfreeze_after is not None and m.freeze == "none":
        problems.append(
            (
                ("model", "unfreeze_after"),
                "unfreeze_after needs something frozen: set model.freeze to 'backbone' or layer names",
            )
        )
    if m.pretrained and not arch.pretrained:
        problems.append(
            (
                ("model", "pretrained"),
                f"arch {m.arch!r} has no pretrained weights; torchvision's image models have them"
                " (resnet18, resnet50, mobilenet_v2, efficientnet_b0, convnext_tiny, vit_b_16, ...:"
                " every name of torchvision.models.list_models())",
            )
        )
    known = metric_names(info.task)
    monitors: list[tuple[tuple[str, ...], str | None]] = [
        (("checkpoint", "monitor"), spec.checkpoint.monitor)
    ]
    if spec.training.early_stopping is not None:
        monitors.append(
            (("training", "early_stopping", "monitor"), spec.training.early_stopping.monitor)
        )
    for where, name in monitors:
        if name is not None and name not in known:
            problems.append(
                (
                    where,
                    f"unknown metric {name!r} for a {info.task} dataset; allowed: {', '.join(known)}",
                )
            )
    return problems


def check_spec(spec: JobSpec, info: DatasetInfo) -> None:
    """Refuse to run a spec with `spec_problems` on the dataset the job actually reads, as the
    job's collect-stage error (a job queued before its dataset or the service changed can have
    passed the API's check and still not fit)."""
    problems = spec_problems(spec, info)
    if problems:
        raise TrainingError(
            "; ".join(message for _, message in problems),
            hint="fix the spec and submit it again",
            type="InvalidSpec",
            stage="collect",
        )


def metric_names(task: str) -> list[str]:
    """The metrics an epoch row carries for this task (val_* only when there is a validation split)."""
    if task == "classification":
        return ["train_loss", "val_loss", "val_accuracy"]
    return ["train_loss", "val_loss", "val_mae", "val_rmse", "val_r2"]


def metric_mode(name: str) -> Literal["min", "max"]:
    return "max" if name.endswith(("accuracy", "r2")) else "min"


def resolved_loss(spec: JobSpec, info: DatasetInfo) -> str:
    if spec.training.loss is not None:
        return spec.training.loss
    return "cross_entropy" if info.task == "classification" else "mse"


def resolved_target_scaling(spec: JobSpec, info: DatasetInfo) -> Literal["standard", "none"]:
    """Standardised regression targets unless asked otherwise; a spec that keeps its inputs raw
    (a recipe tuned in the data's own units) keeps its targets raw too, unless it asks for both."""
    if info.task != "regression":
        return "none"
    if spec.dataset.target_scaling is not None:
        return spec.dataset.target_scaling
    normalize = info.default_normalize if spec.dataset.normalize is None else spec.dataset.normalize
    return "standard" if normalize else "none"


def resolved_monitor(
    spec: JobSpec, info: DatasetInfo, has_val: bool
) -> tuple[str, Literal["min", "max"]]:
    """The checkpoint's monitored metric and its direction."""
    name = spec.checkpoint.monitor
    if name is None:
        name = "val_accuracy" if info.task == "classification" else "val_loss"
    name = available_metric(name, has_val)
    return name, metric_mode(name)


def available_metric(name: str, has_val: bool) -> str:
    """`name`, or `train_loss` when it is a validation metric and there is no validation split
    (the epoch rows carry no val_* then)."""
    return "train_loss" if not has_val and name.startswith("val_") else name
