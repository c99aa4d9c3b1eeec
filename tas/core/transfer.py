"""Transfer learning: start from earlier weights, freeze the backbone, train a new head.

- `load_pretrained`: torchvision's ImageNet weights for any of its classification models, read
  from a local directory under torchvision's own file names; when the file is not there and
  downloads are allowed, fetched into that directory once, with torchvision's hash check. A grey
  or multi-channel input gets its first conv initialised from the RGB one. The head is always new.
- `apply_init`: `model.init_from` weights (a safetensors file: a job's or a registered model's
  `model.safetensors`, or an upload). Every tensor outside the head must be in the source with the
  same shape; the head loads when its shapes match (same number of classes), else it stays new.
  `init_problems` checks the same thing from the file's header alone, fast enough for a submit.
- `apply_freeze`: `model.freeze` ("none", "backbone" = everything but the head, or module names);
  BatchNorm layers in a frozen part keep their running statistics (they run in eval mode even
  while the rest of the model trains). `Frozen.release` unfreezes everything (`unfreeze_after`).
- `prepare_transfer`: the pipeline's one call, in that order, with a JSON-able report.

Frozen parameters stay in the optimizer (see `tas.core.optim.param_groups`): without a gradient the
optimizer skips them, so unfreezing needs no new optimizer and checkpoints stay resumable."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from tas.core.artifact import CARD, WEIGHTS, count_parameters
from tas.core.errors import TrainingError
from tas.core.models import ARCHS, build_on_meta, head_name

Shapes = dict[str, tuple[int, ...]]

#: How many names or shape messages a problem lists before it says "and N more".
_SHOW = 5


class PretrainedWeightsMissing(TrainingError):
    """`model.pretrained` is set but torchvision's weights file is not in TAS_WEIGHTS_DIR."""

    default_hint = (
        "put torchvision's weights file in TAS_WEIGHTS_DIR (nothing is downloaded), or set"
        " model.pretrained to false"
    )


class WeightsMismatch(TrainingError):
    """The source weights (`init_from`, or a pretrained file) do not fit the model being built."""

    default_hint = (
        "init_from needs weights of the same arch and layer sizes (only the head may differ);"
        " use the source's model settings, or drop model.init_from"
    )


class UnknownLayer(TrainingError):
    """`model.freeze` names a layer the model does not have (or freezes everything)."""

    default_hint = "model.freeze takes 'none', 'backbone' or the model's layer names"


# --- shapes -------------------------------------------------------------------------------------


def state_shapes(model: nn.Module) -> Shapes:
    """Every state_dict entry's shape (parameters and buffers), as `save_model` would write it."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def source_label(source: Path | str, label: str | None) -> str:
    """How an error names a weights file: the caller's `label` (the `init_from` reference a user
    wrote: `weights:<id>`, `digits-mlp:2`, a job id), else the file's own name; never its
    directory, which is the server's (a job's error is shown to whoever submitted it)."""
    return label if label else Path(source).name


def _scrubbed(exc: BaseException, path: Path | str, label: str) -> str:
    """A library's error text with the file's server path replaced by `label` (an OSError or a
    loader's message may quote the path it was given)."""
    text = str(exc) or type(exc).__name__
    for form in {str(path), str(Path(path).resolve())}:
        text = text.replace(form, label)
    return text


def safetensors_shapes(path: Path | str, label: str | None = None) -> Shapes:
    """The tensor shapes of a safetensors file, from its header only (no tensor is read, nothing
    is unpickled). Errors name it by `source_label(path, label)`."""
    name = source_label(path, label)
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except FileNotFoundError as exc:
        raise WeightsMismatch(
            f"the weights of {name} are gone (no file)", type="InitWeightsUnreadable"
        ) from exc
    except Exception as exc:  # safetensors raises its own SafetensorError on a bad header
        raise WeightsMismatch(
            f"{name} is not a readable safetensors file: {_scrubbed(exc, path, name)}",
            hint="init_from takes safetensors weights (a job's or model's model.safetensors)",
            type="InitWeightsUnreadable",
        ) from exc


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _names(names: list[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:_SHOW])
    return shown + (f" and {len(names) - _SHOW} more" if len(names) > _SHOW else "")


def compare_shapes(target: Shapes, source: Shapes, head: str) -> tuple[list[str], bool]:
    """(problems, whether the head loads). Every tensor outside `head` must be in the source with
    the same shape, and the source must hold nothing else outside the head's top-level module; the
    head loads when all its tensors are in the source with the same shapes."""
    head_top = head.split(".", 1)[0]
    body = [k for k in target if not _under(k, head)]
    missing = [k for k in body if k not in source]
    unexpected = [k for k in source if k not in target and not _under(k, head_top)]
    if body and len(missing) == len(body):
        return [
            "the source's layers do not match this model's at all (a different arch?):"
            f" this model has {_names(list(target))}; the source has {_names(list(source))}"
        ], False
    problems = [
        f"layer '{k}': this model has {list(target[k])}, the source has {list(source[k])}"
        for k in body
        if k in source and source[k] != target[k]
    ]
    if len(problems) > _SHOW:
        problems = [*problems[:_SHOW], f"and {len(problems) - _SHOW} more layers differ in shape"]
    if missing:
        problems.append(f"the source has no layer {_names(missing)}")
    if unexpected:
        problems.append(f"the source has layers this model lacks: {_names(unexpected)}")
    head_keys = [k for k in target if _under(k, head)]
    head_loads = all(k in source and source[k] == target[k] for k in head_keys)
    return problems, head_loads


def meta_model(spec: Any, info: Any, out_dim: int) -> nn.Module:
    """The job's model on the meta device: its structure and shapes, no memory, no weights."""
    return build_on_meta(spec.model, tuple(info.input_shape), out_dim)


def init_problems(
    spec: Any, info: Any, out_dim: int, source: Path | str, label: str | None = None
) -> list[str]:
    """Why `source` (a safetensors file) cannot initialise this job's model; [] when it can. Reads
    the file's header only and builds the model on the meta device: fast, touches no weights.
    The file is named by `label`, by default the spec's `model.init_from`."""
    model = meta_model(spec, info, out_dim)
    try:
        shapes = safetensors_shapes(source, label or getattr(spec.model, "init_from", None))
    except WeightsMismatch as exc:
        return [exc.message]
    problems, _ = compare_shapes(state_shapes(model), shapes, head_name(spec.model, model))
    return problems


def source_class_names(source: Path | str) -> list[str] | None:
    """The class names of the model whose weights `source` is, when it is a model directory's
    `model.safetensors` with its `card.json` beside it (a job's or a registered model's); None for
    a bare weights file (an upload) or an unreadable card."""
    path = Path(source)
    if path.name != WEIGHTS:
        return None
    try:
        names = json.loads((path.parent / CARD).read_text()).get("class_names")
    except (OSError, ValueError, AttributeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def apply_init(
    model: nn.Module,
    source: Path | str,
    head: str,
    class_names: list[str] | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Load `source` (safetensors) into `model`: everything outside `head`, and the head when it
    predicts the same classes: same shapes, and the same class names where both are known (the
    job's `class_names`, the source's from its model card). Digits 0-4 and digits 5-9 have the
    same number of classes, but a head trained on one is no start for the other: it is new then.
    Raises `WeightsMismatch` when the source does not fit (nothing is loaded then). The source is
    named by `label` (the `init_from` reference), never by its server path, in errors and in the
    report alike."""
    path = Path(source)
    name = source_label(path, label)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise WeightsMismatch(
            f"the init_from weights of {name} are gone (no file)", type="InitWeightsUnreadable"
        ) from exc
    except OSError as exc:  # its text quotes the path: the strerror alone (the cause keeps it)
        raise WeightsMismatch(
            f"the init_from weights of {name} cannot be read: {exc.strerror or type(exc).__name__}",
            type="InitWeightsUnreadable",
        ) from exc
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:
        raise WeightsMismatch(
            f"{name} is not a readable safetensors file: {_scrubbed(exc, path, name)}",
            type="InitWeightsUnreadable",
        ) from exc
    problems, head_fits = compare_shapes(
        state_shapes(model), {k: tuple(v.shape) for k, v in tensors.items()}, head
    )
    if problems:
        raise WeightsMismatch(f"init_from {name} does not fit: " + "; ".join(problems))
    theirs = source_class_names(path)
    if not head_fits:
        head_loads, why = False, "the source's head has other shapes (another number of outputs)"
    elif class_names is not None and theirs is not None and list(class_names) != theirs:
        head_loads, why = False, f"the source predicts other classes ({_names(theirs)})"
    else:
        head_loads, why = True, "the source's head has the same shapes and classes"
    own = model.state_dict()
    keep = {k: v for k, v in tensors.items() if k in own and (head_loads or not _under(k, head))}
    model.load_state_dict(keep, strict=False)
    return {
        "source": name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "loaded_tensors": len(keep),
        "head": "loaded" if head_loads else "new",
        "head_reason": why,
    }


# --- torchvision's pretrained weights ------------------------------------------------------------


def _pretrained_entry(arch: str) -> Any:
    entry = ARCHS[arch]
    if not entry.weights:
        raise TrainingError(
            f"arch {arch!r} has no pretrained weights; torchvision's image models have them",
            hint="set model.pretrained to false",
            type="InvalidSpec",
        )
    return entry


def pretrained_file(
    arch: str, weights_dir: Path | str | None, allow_download: bool = False
) -> Path:
    """The arch's torchvision weights file in `weights_dir`: torchvision's DEFAULT weights, or
    another entry of its weights enum that fits the same model, under torchvision's file name.
    When none is there and `allow_download`, the DEFAULT one is fetched there first (once; see
    `download_weights`). Otherwise raises `PretrainedWeightsMissing` naming the directory, the
    file and its address."""
    entry = _pretrained_entry(arch)
    name, url = entry.weight_files[0], entry.weight_urls[0]
    if weights_dir is None:
        raise PretrainedWeightsMissing(
            f"model.pretrained needs torchvision's {arch} weights, {name}, but no weights"
            f" directory is configured (TAS_WEIGHTS_DIR); get the file from {url} and put it there"
        )
    for candidate in entry.weight_files:
        path = Path(weights_dir) / str(candidate)
        if path.is_file():
            return path
    if allow_download:
        return download_weights(url, Path(weights_dir))
    raise PretrainedWeightsMissing(
        f"model.pretrained needs torchvision's {arch} weights: no {name} in {weights_dir}"
        f" (TAS_WEIGHTS_DIR) and downloads are off (TAS_ALLOW_DOWNLOAD); get it from {url} and"
        " put it there, under that name"
    )


def download_weights(url: str, weights_dir: Path) -> Path:
    """`url`'s file into `weights_dir` under its own name, with torchvision's hash check: the name's
    `-<hex>.` part must begin the file's sha256 (`torch.hub.download_url_to_file`). torch.hub
    writes a `<name>.<uuid>.partial` file beside the target and renames it into place only after
    the check, so two workers fetching at once each rename a whole, checked file, and a reader
    never sees half of one; a failed or refused download leaves nothing behind."""
    from torch.hub import HASH_REGEX, download_url_to_file

    name = url.rsplit("/", 1)[-1]
    found = HASH_REGEX.search(name)
    dest = weights_dir / name
    try:
        weights_dir.mkdir(parents=True, exist_ok=True)
        download_url_to_file(url, str(dest), found.group(1) if found else None, progress=False)
    except Exception as exc:
        if "invalid hash value" in str(exc):
            raise WeightsMismatch(
                f"the weights downloaded from {url} fail torchvision's hash check"
                f" ({_scrubbed(exc, weights_dir, 'TAS_WEIGHTS_DIR')});"
                " nothing was kept",
                hint="a proxy or mirror may have altered the file; retry, or put the file in"
                " TAS_WEIGHTS_DIR by hand",
                type="PretrainedWeightsUnreadable",
            ) from exc
        raise PretrainedWeightsMissing(
            f"model.pretrained: downloading {url} into TAS_WEIGHTS_DIR failed:"
            f" {type(exc).__name__}: {_scrubbed(exc, weights_dir, 'TAS_WEIGHTS_DIR')}",
            hint="check that this worker reaches download.pytorch.org, or put the file in"
            " TAS_WEIGHTS_DIR by hand under that name",
        ) from exc
    return dest


def pretrained_problems(
    spec: Any, weights_dir: Path | str | None, allow_download: bool = False
) -> list[str]:
    """Why `model.pretrained` cannot be honoured here ([] when it can, or is not asked for, or
    the file will be downloaded). Never downloads."""
    if not spec.model.pretrained:
        return []
    if allow_download and weights_dir is not None and ARCHS[spec.model.arch].weights:
        return []
    try:
        pretrained_file(spec.model.arch, weights_dir)
    except TrainingError as exc:
        return [exc.message]
    return []


def pretrained_normalization(model_spec: Any, channels: int) -> dict[str, list[float]] | None:
    """The per-channel mean/std the arch's torchvision weights were trained with, for `channels`
    input channels (None unless `model.pretrained`): pretrained features expect ImageNet's
    normalisation, not the dataset's own. A grey image is fed to the RGB kernels summed, i.e. as
    R=G=B, so it gets the three channels' mean mean and std; other counts repeat R, G, B."""
    if not model_spec.pretrained:
        return None
    arch = ARCHS[model_spec.arch]
    if not arch.weights:
        return None
    w = arch.weights[0]
    if channels == 1:
        return {"mean": [sum(w.mean) / 3], "std": [sum(w.std) / 3]}
    reps = math.ceil(channels / 3)
    return {"mean": list(w.mean * reps)[:channels], "std": list(w.std * reps)[:channels]}


def pretrained_card(model_spec: Any, report: dict[str, Any]) -> dict[str, Any] | None:
    """The card's record of the pretrained start: the weights used (from the train stage's
    report; torchvision's DEFAULT when this attempt resumed from a checkpoint and did not load
    them itself) and their transforms."""
    if not model_spec.pretrained or not ARCHS[model_spec.arch].weights:
        return None
    weights = ARCHS[model_spec.arch].weights
    loaded = report.get("pretrained") or {}
    used = next((w for w in weights if w.name == loaded.get("weights")), weights[0])
    return {"weights": used.name, "url": used.url, "transforms": used.transforms()}


def _adapt_input_conv(w: torch.Tensor, channels: int) -> torch.Tensor:
    """An RGB conv kernel (O, 3, kh, kw) for `channels` inputs: grey sums the three (a grey image
    seen as R=G=B gives the same response), others repeat the RGB kernels scaled by 3/channels."""
    if channels == 1:
        return w.sum(dim=1, keepdim=True)
    reps = math.ceil(channels / w.shape[1])
    return w.repeat(1, reps, 1, 1)[:, :channels] * (w.shape[1] / channels)


def load_pretrained(
    model: nn.Module,
    arch: str,
    weights_dir: Path | str | None,
    head: str,
    allow_download: bool = False,
) -> dict[str, Any]:
    """torchvision's ImageNet weights into `model` (all but the head, which stays new), read with
    `torch.load(weights_only=True)`; fetched first when missing and `allow_download`. A first conv
    that takes other than 3 channels is initialised from the RGB one."""
    path = pretrained_file(arch, weights_dir, allow_download)
    # Named by its file name in TAS_WEIGHTS_DIR: the job's error is shown to its submitter.
    name = f"{path.name} (in TAS_WEIGHTS_DIR)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsMismatch(
            f"{name} is not a readable torchvision weights file: {_scrubbed(exc, path, name)}",
            hint="download the file again from torchvision's address",
            type="PretrainedWeightsUnreadable",
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsMismatch(
            f"{name} does not hold a state_dict of tensors", type="PretrainedWeightsUnreadable"
        )
    own = model.state_dict()
    keep: dict[str, torch.Tensor] = {}
    adapted: list[str] = []
    wrong: list[str] = []
    for k, t in own.items():
        if _under(k, head):
            continue
        src = state.get(k)
        if src is None:
            wrong.append(f"no layer '{k}'")
        elif src.shape == t.shape:
            keep[k] = src
        elif src.dim() == 4 and t.dim() == 4 and src.shape[1] == 3 and _same_but_in(src, t):
            keep[k] = _adapt_input_conv(src, t.shape[1])
            adapted.append(k)
        else:
            wrong.append(f"layer '{k}': the model has {list(t.shape)}, the file {list(src.shape)}")
    if wrong:
        raise WeightsMismatch(
            f"{name} does not hold torchvision's {arch} weights: {'; '.join(wrong[:_SHOW])}",
            hint="download the file again from torchvision's address",
            type="PretrainedWeightsUnreadable",
        )
    model.load_state_dict(keep, strict=False)
    used = next(w for w in ARCHS[arch].weights if w.file == path.name)
    return {
        "file": path.name,
        "weights": used.name,
        "url": used.url,
        "loaded_tensors": len(keep),
        "adapted_input_conv": adapted[0] if adapted else None,
        "head": "new",
    }


def _same_but_in(src: torch.Tensor, t: torch.Tensor) -> bool:
    return src.shape[0] == t.shape[0] and src.shape[2:] == t.shape[2:]


# --- freezing -----------------------------------------------------------------------------------


def _freeze_plan(model: nn.Module, freeze: Any, head: str) -> tuple[list[str], list[str]]:
    """(the name prefixes to freeze, problems). "backbone": every parameter outside the head; a
    list: module or parameter names, each of which must exist and hold parameters. Freezing all of
    the model is a problem too: nothing would train."""
    if freeze == "none":
        return [], []
    modules = dict(model.named_modules())
    params = [n for n, _ in model.named_parameters()]
    if freeze == "backbone":
        prefixes = [n for n in params if not _under(n, head)]
    else:
        top = [n for n, _ in model.named_children()]
        prefixes, problems = [], []
        for name in freeze:
            if name not in modules and name not in params:
                problems.append(
                    f"model.freeze: the model has no layer {name!r}; its layers: {', '.join(top)}"
                    " (nested ones by dotted names, e.g. 'layer1.0')"
                )
            elif not any(_under(p, name) for p in params):
                problems.append(f"model.freeze: layer {name!r} has no parameters to freeze")
            else:
                prefixes.append(name)
        if problems:
            return [], problems
    if params and all(any(_under(p, f) for f in prefixes) for p in params):
        return [], [
            "model.freeze freezes every parameter, so nothing would train; leave the head out"
        ]
    return prefixes, []


def freeze_problems(spec: Any, info: Any, out_dim: int) -> list[str]:
    """Why `model.freeze` does not fit this job's model ([] when it does); builds on meta only."""
    if spec.model.freeze == "none":
        return []
    model = meta_model(spec, info, out_dim)
    return _freeze_plan(model, spec.model.freeze, head_name(spec.model, model))[1]


def _eval_mode(module: nn.Module, args: Any) -> None:
    """A forward pre-hook: the module runs in eval mode whatever `model.train()` set."""
    module.training = False


def _coarsest(model: nn.Module, frozen: set[str]) -> list[str]:
    """The fewest module (or parameter) names covering exactly the frozen parameters."""
    params = [n for n, _ in model.named_parameters()]
    out: list[str] = []
    for name, _ in model.named_modules():
        if not name or any(_under(name, o) for o in out):
            continue
        mine = [p for p in params if _under(p, name)]
        if mine and all(p in frozen for p in mine):
            out.append(name)
    covered = {p for p in params if any(_under(p, o) for o in out)}
    return out + [p for p in params if p in frozen and p not in covered]


@dataclass
class Frozen:
    """What `apply_freeze` froze, and the means to undo it."""

    model: nn.Module
    layers: list[str]  # the frozen layers, coarsest names (the report's "frozen")
    params: list[str]  # the frozen parameters' names
    handles: list[RemovableHandle] = field(default_factory=list)
    released: bool = False

    def release(self) -> bool:
        """Everything trainable again, BatchNorm back to following `model.train()`. Returns whether
        this call unfroze anything (False when nothing was frozen, or on a second call)."""
        if self.released or not self.params:
            return False
        names = set(self.params)
        for n, p in self.model.named_parameters():
            if n in names:
                p.requires_grad_(True)
        for h in self.handles:
            h.remove()
        self.handles, self.released = [], True
        return True


def apply_freeze(model: nn.Module, freeze: Any, head: str) -> Frozen:
    """Freeze what `freeze` says ("none", "backbone" or a list of layer names): requires_grad off,
    and frozen BatchNorm layers in eval mode (a pre-forward hook, so `model.train()` does not undo
    it). Raises `UnknownLayer` for a name the model lacks, listing its top-level layers."""
    prefixes, problems = _freeze_plan(model, freeze, head)
    if problems:
        raise UnknownLayer("; ".join(problems))
    if not prefixes:
        return Frozen(model, [], [])
    frozen = [n for n, _ in model.named_parameters() if any(_under(n, f) for f in prefixes)]
    names = set(frozen)
    for n, p in model.named_parameters():
        if n in names:
            p.requires_grad_(False)
    handles = []
    for name, m in model.named_modules():
        own = [f"{name}.{n}" for n, _ in m.named_parameters()]
        if isinstance(m, _BatchNorm) and own and all(p in names for p in own):
            m.eval()
            handles.append(m.register_forward_pre_hook(_eval_mode))
    return Frozen(model, _coarsest(model, names), frozen, handles)


# --- the pipeline's entry ------------------------------------------------------------------------


@dataclass
class Transfer:
    """The model's start (checkpoint, init_from, pretrained or random), what is frozen, and the
    train stage's report (`outputs()`; parameter counts as the freeze left them, the pipeline's
    `parameters` count after training)."""

    head: str
    frozen: Frozen
    unfreeze_after: int | None
    report: dict[str, Any]

    def at_epoch(self, epochs_done: int) -> None:
        """Called as each epoch starts (and when a resumed run starts): from `unfreeze_after`
        completed epochs on, everything trains. Derived from the epoch count, not from an event,
        so a run resumed after that epoch is unfrozen too."""
        n = self.unfreeze_after
        if n is not None and epochs_done >= n and self.frozen.release():
            self.report["unfrozen_after_epoch"] = n

    def outputs(self) -> dict[str, Any]:
        return dict(self.report)


def prepare_transfer(
    model_spec: Any,
    model: nn.Module,
    weights_dir: Path | None,
    init_weights: Path | None,
    resuming: bool,
    class_names: list[str] | None = None,
    allow_download: bool = False,
) -> Transfer:
    """Pretrained weights, then `init_from` weights (both skipped when resuming: the checkpoint
    holds the run's own weights), then the freeze. Call before the optimizer is built.
    `class_names`: the job's classes (an init_from head loads only for the same classes);
    `allow_download`: fetch torchvision's weights file when it is not in `weights_dir`."""
    head = head_name(model_spec, model)
    report: dict[str, Any] = {"head": head, "start": "random"}
    if resuming:
        report["start"] = "checkpoint"
    else:
        if model_spec.pretrained:
            report["pretrained"] = load_pretrained(
                model, model_spec.arch, weights_dir, head, allow_download
            )
            report["start"] = "pretrained"
        if init_weights is not None:
            report["init"] = apply_init(
                model, init_weights, head, class_names, label=model_spec.init_from
            )
            report["start"] = "init_from"
    frozen = apply_freeze(model, model_spec.freeze, head)
    params = count_parameters(model)
    report.update(
        {
            "freeze": model_spec.freeze,
            "frozen": frozen.layers,
            "unfreeze_after": model_spec.unfreeze_after,
            "backbone_lr": model_spec.backbone_lr,
            # As the freeze leaves them (before any unfreeze_after).
            "trainable_params": params["trainable"],
            "total_params": params["total"],
        }
    )
    return Transfer(head, frozen, model_spec.unfreeze_after, report)
