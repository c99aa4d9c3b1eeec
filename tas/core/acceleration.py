"""Speed options of the training step: channels_last memory for CNNs and `torch.compile` of the
training forward (the precision, bf16 or fp16 autocast, is `tas.core.device.resolve_precision`'s).

Both are layout and code-generation choices: they change how the same model is computed, not
what it is, so the plain module stays the job's model throughout. Its state_dict, checkpoints,
`keep: best` copies, evaluation and the saved model are as they would be without them.

- **channels_last** (`training.channels_last`): the convolution weights and the input batches are
  stored N×H×W×C, the layout tensor cores convolve without transposing. "auto" turns it on for a
  model that convolves C×H×W images on a GPU, where it pays; "on" is honoured on any device for such
  a model. For a model that flattens its input (mlp, linear) it would only cost a copy per batch:
  the spec refuses "on" there (`tas.core.spec.spec_problems`) and `use_channels_last` answers False.
  A layout changes the order of a convolution's sums, so the weights differ from a contiguous run's
  by rounding; a run and its resume use the same layout, which keeps a resume exact.
- **compile** (`training.compile`): the training forward goes through `torch.compile` (inductor:
  C++ on the CPU, Triton on CUDA). `torch.compile` returns a wrapper whose state_dict keys carry an
  `_orig_mod.` prefix, so the caller keeps the plain module for everything but the training forward.
  Compilation needs a working C compiler (and, on CUDA, Triton). A worker without them still trains
  the job, eagerly: the request is a speed option that changes no result a user relies on, so a
  compile that fails falls back to the plain forward with a logged warning, and `Accelerated.outputs`
  records that it did and why, rather than failing a job that would otherwise succeed. Only the
  forward is guarded: the backward graph is compiled by the same compiler at the first backward, so a
  compiler that built the forward builds it too.

Usage (the pipeline's train step, after `model.to(device)` and before the checkpoint is loaded, the
optimizer is built, or the model is wrapped for data-parallel training)::

    acc = accelerate(model, t.channels_last, t.compile, info.input_shape, device)
    forward = acc.training_forward(ddp_model or model)  # after any DDP wrapping
    # the loop: pred = forward(xb), with xb from acc.inputs(transform) then acc.batches(augment);
    # the train stage's outputs: out.update(acc.outputs())
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec

import torch
from torch import nn

log = logging.getLogger(__name__)

P = ParamSpec("P")
#: A batch → the model's inputs (`tas.core.loop.InputFn`'s shape).
InputFn = Callable[[torch.Tensor], torch.Tensor]
ChannelsLastSetting = Literal["auto", "on", "off"]

#: The modules whose weights channels_last lays out: 2-D convolutions.
_CONV2D = (nn.Conv2d, nn.ConvTranspose2d)


def convolves_images(model: nn.Module, input_shape: Sequence[int]) -> bool:
    """Whether `model` takes C×H×W samples into a 2-D convolution (tas's cnn, torchvision's image
    models), the models whose speed depends on the memory layout."""
    return len(input_shape) == 3 and any(isinstance(m, _CONV2D) for m in model.modules())


def use_channels_last(
    setting: str, model: nn.Module, input_shape: Sequence[int], device: torch.device
) -> bool:
    """What `training.channels_last` resolves to for this model on this device.

    "auto": on for a model that convolves images, on a CUDA device (on the CPU the gain is uneven
    across ops and machines, so it is left to an explicit "on"); "on": for such a model on any
    device; "off": never. A model that does not convolve images never gets it (False for "on" too:
    the spec refuses that combination before a job is queued, and a flattening model gains nothing
    from it)."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"unknown channels_last setting {setting!r}; allowed: auto, on, off")
    if setting == "off" or not convolves_images(model, input_shape):
        return False
    return setting == "on" or device.type == "cuda"


def to_channels_last(model: nn.Module) -> nn.Module:
    """`model` with its 4-D parameters and buffers (convolution weights) laid out channels_last, in
    place (the parameters stay the same objects, so an optimizer built before still holds them)."""
    return model.to(memory_format=torch.channels_last)


def channels_last_batch(x: torch.Tensor) -> torch.Tensor:
    """A 4-D batch laid out channels_last (a copy unless it already is); other tensors as they are."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def channels_last_inputs(fn: InputFn | None) -> InputFn:
    """An input function (compact batch → model inputs; None: the batch as it is) whose 4-D outputs
    are channels_last. Used for training, validation and prediction batches alike."""

    def inputs(x: torch.Tensor) -> torch.Tensor:
        return channels_last_batch(fn(x) if fn is not None else x)

    return inputs


def channels_last_output(fn: Callable[P, torch.Tensor]) -> Callable[P, torch.Tensor]:
    """Any batch function (the augmentation, which writes a fresh N×C×H×W tensor) whose 4-D output
    is channels_last: the last function before the forward decides the layout the model gets."""

    def wrapped(*args: P.args, **kwargs: P.kwargs) -> torch.Tensor:
        return channels_last_batch(fn(*args, **kwargs))

    return wrapped


# --- torch.compile ---------------------------------------------------------------------------


class CompiledForward:
    """The training forward through `torch.compile`, falling back to the plain module's forward
    for good when compilation fails (the failure logged and kept in `fallback`).

    Dynamo traces on fake tensors and the backend compiles before anything runs, so a failed
    compile has changed no state (BatchNorm statistics included) and the same batch is then run
    eagerly. An error of the model itself propagates as it would without compile (the plain
    forward raises it again), and leaves compile on."""

    def __init__(self, net: nn.Module, compiled: Callable[..., Any] | None, fallback: str | None):
        self.net = net
        self._compiled = compiled
        #: Why the plain forward is used although compile was asked for (None: it is not).
        self.fallback = fallback

    @property
    def active(self) -> bool:
        return self._compiled is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is None:
            return self.net(x)  # type: ignore[no-any-return]
        try:
            return self._compiled(x)  # type: ignore[no-any-return]
        except Exception as exc:
            from torch._dynamo.exc import TorchDynamoException

            if not isinstance(exc, TorchDynamoException):
                raise
            reason = _first_line(exc)
        # Outside the handler: an error of the model's own (a shape mismatch Dynamo met first on
        # its fake tensors) is raised by the plain forward as it would be without compile.
        out = self.net(x)
        self._fall_back(reason)
        return out  # type: ignore[no-any-return]

    def _fall_back(self, reason: str) -> None:
        self._compiled = None
        self.fallback = reason
        log.warning("torch.compile failed, training with the plain forward instead: %s", reason)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def compiled(net: nn.Module, enabled: bool) -> CompiledForward:
    """The training forward of `net`: through `torch.compile` when `enabled`, else the module's own.

    Call the result for training steps only; `net` stays the module for state_dict, eval and
    checkpoints (the compiled wrapper shares its parameters, its keys would carry `_orig_mod.`).
    `dynamic=False`: an epoch has at most two batch shapes (the full batch and a short last one),
    each compiled once to static-shape kernels. Where `torch.compile` refuses at once (a Python
    version Dynamo does not support), the plain forward is used and the reason kept, as for a
    compile that fails at the first step."""
    if not enabled:
        return CompiledForward(net, None, None)
    try:
        fn = torch.compile(net, dynamic=False)
    except Exception as exc:  # unsupported platform: the job trains, only slower
        forward = CompiledForward(net, None, None)
        forward._fall_back(_first_line(exc))
        return forward
    return CompiledForward(net, fn, None)


# --- all of it, for the pipeline -------------------------------------------------------------


@dataclass
class Accelerated:
    """A model set up for fast training: the plain module (already converted when `channels_last`),
    wrappers for the batch functions before the forward, and (`training_forward`) the forward the
    training steps call."""

    model: nn.Module
    channels_last: bool
    compile_requested: bool = False
    forward: CompiledForward | None = None

    def training_forward(self, net: nn.Module | None = None) -> CompiledForward:
        """The forward the training steps call: `net` (default: the model; a data-parallel job
        passes its DDP wrapper, which must be what is compiled so that its gradient hooks run)
        compiled when `training.compile` asks for it."""
        self.forward = compiled(net if net is not None else self.model, self.compile_requested)
        return self.forward

    def inputs(self, fn: InputFn | None) -> InputFn | None:
        """The input function the loop, the validation and the evaluation use (None stays None
        without channels_last)."""
        return channels_last_inputs(fn) if self.channels_last else fn

    def batches(self, fn: Callable[P, torch.Tensor] | None) -> Callable[P, torch.Tensor] | None:
        """A batch function run after the input function (the augmentation), made to hand the
        forward channels_last batches too."""
        if fn is None or not self.channels_last:
            return fn
        return channels_last_output(fn)

    def outputs(self) -> dict[str, Any]:
        """For the train stage's outputs: what was used, read after training (a compile falls
        back at the first step, if at all)."""
        used: bool | str = self.forward is not None and self.forward.active
        if self.compile_requested and not used:
            why = self.forward.fallback if self.forward is not None else "never called"
            used = f"fell back to the plain forward: {why}"
        return {"channels_last": self.channels_last, "compile": used}


def accelerate(
    model: nn.Module,
    channels_last: str,
    compile: bool,
    input_shape: Sequence[int],
    device: torch.device,
) -> Accelerated:
    """Resolve `training.channels_last` and `training.compile` for `model` (on `device` already)
    and lay it out channels_last when that is used. Call it before loading a checkpoint into the
    model, building its optimizer or wrapping it for data-parallel training, which then all see
    the final layout; then `training_forward` (after any wrapping) gives the forward to train with."""
    cl = use_channels_last(channels_last, model, input_shape, device)
    if cl:
        to_channels_last(model)
    return Accelerated(model, cl, compile_requested=compile)
