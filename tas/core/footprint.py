"""What a job's model and its training cost, estimated from the spec before anything is allocated.

The model is built on the meta device (`tas.core.models.build_on_meta`): its layers and shapes
exist, no weight does, so a spec asking for billions of parameters is counted in milliseconds and
refused without a byte of them ever being allocated. The limits are passed in (the service reads
them from its settings): this module knows nothing of the service.

The same walk counts the multiply-accumulates of one forward pass, so the work of one training step
is bounded too. The parameter count alone does not bound it: a convolution's work grows with the
image (a 2,048-channel 3×3 convolution on 32×32 images is 38 million parameters but 39 billion
multiply-accumulates a sample), and a step is what a cancel, a preemption and the lease's renewal
wait on when the loop checks them between steps."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from tas.core.models import ARCHS, NetworkSpec, build_on_meta

#: Bytes per number: parameters, gradients, optimizer state and activations are kept in fp32 (with
#: mixed precision the weights, gradients and optimizer state stay fp32; activations may be half,
#: which this estimate ignores, erring on the large side).
BYTES_PER_VALUE = 4


class TrainingSettings(Protocol):
    """The spec's `training` fields the estimate reads (`tas.core.spec.TrainingSpec` has them)."""

    @property
    def optimizer(self) -> str: ...

    @property
    def momentum(self) -> float | None: ...

    @property
    def batch_size(self) -> int: ...


class ResourceSettings(Protocol):
    """The spec's `resources` fields the estimate reads (`tas.core.spec.ResourcesSpec`)."""

    @property
    def processes(self) -> int: ...


#: Optimizer name → how many tensors of state it keeps per parameter (torch's optimizers: SGD's
#: momentum buffer, Adam's two moments, Adagrad's sum of squares). An optimizer missing here is
#: counted as 2, the most any of torch's built-in ones keeps.
OPTIMIZER_STATE: dict[str, Callable[[TrainingSettings], int]] = {
    "sgd": lambda t: 1 if t.momentum else 0,
    "momentum": lambda t: 0 if t.momentum == 0 else 1,
    "adam": lambda t: 2,
    "adamw": lambda t: 2,
    "adagrad": lambda t: 1,
}


def optimizer_state_copies(training: TrainingSettings) -> int:
    rule = OPTIMIZER_STATE.get(training.optimizer)
    return 2 if rule is None else rule(training)


@dataclass(frozen=True)
class Footprint:
    """An estimate of what training a model takes, in bytes, counting:

    - the parameters, every one of them (a frozen backbone may be unfrozen later, `unfreeze_after`);
    - their gradients (one per parameter);
    - the optimizer's state (`OPTIMIZER_STATE` copies per parameter);
    - the activations of one batch: `batch_size` × the sum of every leaf layer's output size per
      sample (what autograd keeps for the backward pass, roughly), plus the input batch.

    Not counted: the dataset in memory, the data loader's buffers, the framework itself and the
    allocator's slack; so it is a lower bound of what a run needs: a job over a worker's memory
    by this estimate cannot run there at all. `activations_per_sample` is None when it was not
    computed (the parameter count was already over its limit)."""

    parameters: int
    #: The largest parameter tensor: its name in the model's state_dict and its shape.
    largest: tuple[str, tuple[int, ...]]
    optimizer_copies: int
    batch_size: int
    activations_per_sample: int | None = None
    #: Data-parallel processes (resources.processes): each holds the weights, their gradients
    #: and the optimizer's state, and the activations of its share of the batch.
    processes: int = 1
    #: Multiply-accumulates of one forward pass of one sample (linear, convolution and attention
    #: layers; the element-wise ones are noise beside them). None when not computed, as above.
    macs_per_sample: int | None = None

    @property
    def step_flops(self) -> int:
        """Floating-point operations of one training step of one process: a multiply-accumulate
        is 2 operations, and the backward pass costs about twice the forward (a gradient for the
        input and one for the weights), so 6 × the forward's multiply-accumulates × the
        process's share of the batch."""
        share = -(-self.batch_size // self.processes)
        return 6 * (self.macs_per_sample or 0) * share

    @property
    def weight_bytes(self) -> int:
        """Parameters + gradients + optimizer state."""
        return self.parameters * (2 + self.optimizer_copies) * BYTES_PER_VALUE

    @property
    def activation_bytes(self) -> int:
        return self.batch_size * (self.activations_per_sample or 0) * BYTES_PER_VALUE

    @property
    def training_bytes(self) -> int:
        """What one memory shared by every process holds (a machine's, for processes on its
        CPU): each process's weights, and the activations of the whole batch between them."""
        return self.processes * self.weight_bytes + self.activation_bytes

    @property
    def process_bytes(self) -> int:
        """What one process's own memory holds (a GPU each): the weights and its share of the
        batch's activations."""
        return self.weight_bytes + -(-self.activation_bytes // self.processes)


def parameter_count(model: nn.Module) -> tuple[int, tuple[str, tuple[int, ...]]]:
    """The number of parameters of a (meta) model and its largest parameter tensor."""
    total, best = 0, -1
    largest: tuple[str, tuple[int, ...]] = ("", ())
    for name, p in model.named_parameters():
        n = p.numel()
        total += n
        if n > best:
            best, largest = n, (name, tuple(p.shape))
    return total, largest


# --- activations ---------------------------------------------------------------------------------
# tas's own archs are `nn.Sequential`s of a few layer kinds: their output shapes follow from each
# layer's settings, with no forward pass at all. Anything else (torchvision's models) runs one
# forward of a single sample on the meta device, which costs shapes only, but whose first call in
# a process loads torch's meta kernels (seconds): the spec check of those archs pays that already.

Shape = tuple[int, ...]


def _conv_out(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _conv2d(m: nn.Module, s: Shape) -> Shape | None:
    assert isinstance(m, nn.Conv2d)
    if len(s) != 3 or isinstance(m.padding, str):
        return None
    k, st, p, d = (_pair(v) for v in (m.kernel_size, m.stride, m.padding, m.dilation))
    h = _conv_out(s[1], k[0], st[0], p[0], d[0])
    w = _conv_out(s[2], k[1], st[1], p[1], d[1])
    return (m.out_channels, h, w)


def _maxpool2d(m: nn.Module, s: Shape) -> Shape | None:
    assert isinstance(m, nn.MaxPool2d)
    if len(s) != 3 or m.ceil_mode:
        return None
    k, st, p, d = (
        _pair(v) for v in (m.kernel_size, m.stride or m.kernel_size, m.padding, m.dilation)
    )
    return (
        s[0],
        _conv_out(s[1], k[0], st[0], p[0], d[0]),
        _conv_out(s[2], k[1], st[1], p[1], d[1]),
    )


def _linear(m: nn.Module, s: Shape) -> Shape | None:
    assert isinstance(m, nn.Linear)
    return (*s[:-1], m.out_features) if s and s[-1] == m.in_features else None


def _flatten(m: nn.Module, s: Shape) -> Shape | None:
    assert isinstance(m, nn.Flatten)
    # per sample: a Flatten from the first dimension after the batch to the last
    return (math.prod(s),) if (m.start_dim, m.end_dim) == (1, -1) else None


def _same(m: nn.Module, s: Shape) -> Shape:
    return s


#: Layer type → (the layer, its input shape per sample) → its output shape, or None when this rule
#: does not cover that layer's settings (a forward pass on the meta device sizes it instead).
SHAPE_RULES: dict[type[nn.Module], Callable[[nn.Module, Shape], Shape | None]] = {
    nn.Linear: _linear,
    nn.Conv2d: _conv2d,
    nn.MaxPool2d: _maxpool2d,
    nn.Flatten: _flatten,
    nn.Dropout: _same,
    nn.ReLU: _same,
    nn.Tanh: _same,
    nn.GELU: _same,
    nn.Sigmoid: _same,
}


def _linear_macs(m: nn.Module, out: Shape) -> int:
    assert isinstance(m, nn.Linear)
    return math.prod(out) * m.in_features


def _conv2d_macs(m: nn.Module, out: Shape) -> int:
    assert isinstance(m, nn.Conv2d)
    return math.prod(out) * (m.in_channels // m.groups) * math.prod(m.kernel_size)


def _attention_macs(m: nn.Module, out: Shape) -> int:
    """The input projections (queries, keys, values) and the two products of the attention
    itself; its output projection is a Linear child, counted as one. `out` is one sample's
    (sequence, embedding) output."""
    assert isinstance(m, nn.MultiheadAttention)
    length, dim = (out[-2], out[-1]) if len(out) >= 2 else (1, out[-1])
    return 3 * length * dim * dim + 2 * length * length * dim


#: Layer type → (the layer, its output shape per sample) → multiply-accumulates of its forward for
#: one sample. The layers missing here (activations, norms, pooling) do a few operations per value
#: they output: noise beside these.
MAC_RULES: dict[type[nn.Module], Callable[[nn.Module, Shape], int]] = {
    nn.Linear: _linear_macs,
    nn.Conv2d: _conv2d_macs,
    nn.MultiheadAttention: _attention_macs,
}


def _macs(m: nn.Module, out: Shape) -> int:
    for kind, rule in MAC_RULES.items():
        if isinstance(m, kind):
            return rule(m, out)
    return 0


#: What one layer costs for one sample: the size of its output (kept for the backward pass) and
#: the multiply-accumulates of its forward.
LayerCost = tuple[int, int]


def _sequential_outputs(model: nn.Module, input_shape: Shape) -> list[LayerCost] | None:
    """Each layer's cost per sample, from `SHAPE_RULES` alone; None when the model is not a
    Sequential of layers those rules cover."""
    if not isinstance(model, nn.Sequential):
        return None
    costs: list[LayerCost] = []
    shape: Shape | None = tuple(input_shape)
    for layer in model:
        rule = SHAPE_RULES.get(type(layer))
        shape = None if rule is None or shape is None else rule(layer, shape)
        if shape is None:
            return None
        costs.append((math.prod(shape), _macs(layer, shape)))
    return costs


def _forward_outputs(model: nn.Module, input_shape: Shape) -> list[LayerCost]:
    """Each leaf module's cost per sample, from one forward of one sample on the meta device
    (eval mode: BatchNorm takes a single sample then; the output shapes are the same). Attention
    modules are not leaves (their output projection is a child) but do work of their own: they
    are counted for their work only."""
    costs: list[LayerCost] = []

    def record(m: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            out = output[0]  # MultiheadAttention: (output, weights)
            costs.append((0, _macs(m, tuple(out.shape[1:]))))
        elif isinstance(output, torch.Tensor):
            costs.append((output.numel(), _macs(m, tuple(output.shape[1:]))))

    hooked = [
        m
        for m in model.modules()
        if next(m.children(), None) is None or isinstance(m, nn.MultiheadAttention)
    ]
    handles = [m.register_forward_hook(record) for m in hooked]
    was_training = model.training
    try:
        model.eval()
        with torch.device("meta"), torch.no_grad():
            model(torch.empty(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return costs


def layer_costs(model: nn.Module, input_shape: Shape) -> tuple[int, int]:
    """For one sample: the values autograd keeps for the backward (every layer's output, plus
    the sample itself) and the multiply-accumulates of the forward."""
    costs = _sequential_outputs(model, input_shape)
    if costs is None:
        costs = _forward_outputs(model, input_shape)
    values = math.prod(input_shape) + sum(size for size, _ in costs)
    return values, sum(macs for _, macs in costs)


# --- the check -----------------------------------------------------------------------------------


class JobShape(Protocol):
    """The spec's sections the estimate reads (`tas.core.spec.JobSpec` has them)."""

    @property
    def model(self) -> NetworkSpec: ...

    @property
    def training(self) -> TrainingSettings: ...

    @property
    def resources(self) -> ResourceSettings: ...


@dataclass(frozen=True)
class Limit:
    """A bound and how a message names where it comes from, e.g. `(100_000_000,
    "TAS_MAX_PARAMETERS")` or `(16_000, "worker w1's memory")`."""

    value: float
    source: str
    #: A memory each process of a data-parallel job has to itself (a GPU each), not one all of
    #: them share (the machine's).
    per_process: bool = False


#: A problem with a spec: the field to blame (its path in the spec) and what is wrong.
Problem = tuple[tuple[str, ...], str]


def estimate(
    spec: JobShape, input_shape: Shape, out_dim: int, *, max_parameters: int | None = None
) -> Footprint:
    """The footprint of training `spec`'s model on samples of `input_shape` with `out_dim`
    outputs. The activations are left out (None) when the parameters already exceed
    `max_parameters`: that answer is enough, and it needs no forward pass."""
    model = build_on_meta(spec.model, tuple(input_shape), out_dim)
    count, largest = parameter_count(model)
    processes = spec.resources.processes
    fp = Footprint(
        count,
        largest,
        optimizer_state_copies(spec.training),
        spec.training.batch_size,
        processes=processes,
    )
    if max_parameters is not None and count > max_parameters:
        return fp
    values, macs = layer_costs(model, tuple(input_shape))
    return dataclasses.replace(fp, activations_per_sample=values, macs_per_sample=macs)


def model_field(spec: NetworkSpec) -> tuple[tuple[str, ...], str]:
    """The spec field that sizes the model, and how a message shows it: `model.hidden [512, 512]`
    for an mlp, `model.channels [...]` for a cnn, `model.arch 'resnet18'` for the others."""
    options = ARCHS[spec.arch].options or ()
    for name in ("hidden", "channels"):
        if name in options:
            return ("model", name), f"model.{name} {list(getattr(spec, name))}"
    return ("model", "arch"), f"model.arch {spec.arch!r}"


def size_problems(
    spec: JobShape,
    input_shape: Shape,
    out_dim: int,
    *,
    max_parameters: Limit,
    max_memory_mb: Limit | None,
    max_step_tflop: Limit | None = None,
) -> list[Problem]:
    """Why this job's model is too big to train here: more parameters than `max_parameters`, a
    training footprint (see `Footprint`) above `max_memory_mb`, or a training step of more work
    than `max_step_tflop` (None: not checked). Each problem names the layer sizes and the limit.
    Costs milliseconds at any size: nothing is allocated."""
    fp = estimate(spec, input_shape, out_dim, max_parameters=int(max_parameters.value))
    where, shown = model_field(spec.model)
    name, shape = fp.largest
    layer = f"largest layer {name!r}: {'×'.join(str(d) for d in shape)}" if name else "no layers"
    if fp.parameters > max_parameters.value:
        return [
            (
                where,
                f"{shown}: {human_count(fp.parameters)} parameters ({layer}); at most"
                f" {int(max_parameters.value):,} ({max_parameters.source})",
            )
        ]
    found = _step_problems(fp, where, shown, max_step_tflop)
    if max_memory_mb is None:
        return found
    n, per_process = fp.processes, max_memory_mb.per_process
    needed = fp.process_bytes if per_process else fp.training_bytes
    if needed <= max_memory_mb.value * 2**20:
        return found
    batch = fp.batch_size
    blame = ("training", "batch_size") if fp.activation_bytes > fp.weight_bytes else where
    weights = f"{human_count(fp.parameters)} parameters with their gradients and optimizer state"
    if n == 1:
        parts = f"{weights}: {_mb(fp.weight_bytes)}; activations of a batch of {batch}"
        parts += f": {_mb(fp.activation_bytes)}"
        fix = "use a smaller model or training.batch_size"
    elif per_process:
        parts = f"each of {n} processes: {weights}: {_mb(fp.weight_bytes)}; activations of its"
        parts += f" share of the batch of {batch}: {_mb(fp.process_bytes - fp.weight_bytes)}"
        fix = "use a smaller model or training.batch_size"
    else:
        parts = f"{n} processes × {weights}: {_mb(n * fp.weight_bytes)}; activations of the"
        parts += f" batch of {batch}: {_mb(fp.activation_bytes)}"
        fix = "use a smaller model, training.batch_size or resources.processes"
    return [
        *found,
        (
            blame,
            f"{shown} with training.batch_size {batch}: training needs about {_mb(needed)}"
            f"{' a process' if per_process and n > 1 else ''} ({parts}); at most"
            f" {max_memory_mb.value:,.0f} MB ({max_memory_mb.source}): {fix}",
        ),
    ]


def _step_problems(
    fp: Footprint, where: tuple[str, ...], shown: str, limit: Limit | None
) -> list[Problem]:
    """A training step of more work than `limit` (TFLOP). The batch size is blamed when one
    sample a process would fit: the model is not too big, its batch is."""
    if limit is None or fp.step_flops <= limit.value * 1e12:
        return []
    n, batch = fp.processes, fp.batch_size
    share = -(-batch // n)
    macs = fp.macs_per_sample or 0
    blame = ("training", "batch_size") if 6 * macs <= limit.value * 1e12 else where
    per = f"{share} samples a process of {n}" if n > 1 else f"{share} samples"
    return [
        (
            blame,
            f"{shown} with training.batch_size {batch}: one training step is about"
            f" {_flop(fp.step_flops)} ({human_count(macs)} multiply-accumulates a sample forward,"
            f" × 6 for the forward and backward, × {per}); at most {limit.value:g} TFLOP a step"
            f" ({limit.source}): a cancel or a preemption waits for the step in progress, so use"
            " a smaller model, smaller inputs or a smaller training.batch_size",
        )
    ]


def human_count(n: int) -> str:
    """`8.6 billion`, `11.2 million`, `4,096`."""
    for size, word in ((10**12, "trillion"), (10**9, "billion"), (10**6, "million")):
        if n >= size:
            return f"{n / size:.1f} {word}"
    return f"{n:,}"


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def _flop(n: int) -> str:
    """`7.4 TFLOP`, `350 GFLOP`."""
    return f"{n / 1e12:,.1f} TFLOP" if n >= 1e12 else f"{n / 1e9:,.0f} GFLOP"
