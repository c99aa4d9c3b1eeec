"""The trained model as a self-describing directory: `model.safetensors` + `card.json`.

The card holds everything needed to rebuild and use the model without the job spec or the dataset:
the architecture (a ModelSpec dump), the sample shape, how to read the outputs (softmax / sigmoid /
identity), the class names and the input normalisation. Weights are safetensors (loading runs no
code) and the card records their sha256, checked on every load. Saved atomically like checkpoints."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from tas.core import fsio
from tas.core.models import ARCHS, NETWORK_OPTIONS, build_model
from tas.core.spec import ModelSpec

WEIGHTS = "model.safetensors"
CARD = "card.json"
CARD_FORMAT = 1


class ArtifactError(RuntimeError):
    """The model directory is missing, incomplete or does not match its card."""


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")

    format_version: int = CARD_FORMAT
    arch: dict[str, Any] = Field(description="The ModelSpec the weights were built from.")
    input_shape: list[int]
    task: Literal["classification", "regression"]
    output: Literal["softmax", "sigmoid", "identity"]
    out_dim: int
    num_classes: int | None = None
    class_names: list[str] | None = None
    feature_names: list[str] | None = Field(
        None, description="Tabular models: the input columns in order (`/predict` rows by name)."
    )
    target_dim: int = 1
    normalization: dict[str, Any] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    dataset: str | None = None
    loss: str | None = None
    parameters: dict[str, int] = Field(default_factory=dict)
    torch_version: str = Field(default_factory=lambda: torch.__version__)
    created_at: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    weights_sha256: str | None = None
    weights: dict[str, Any] | None = Field(
        None,
        description="Which epoch's weights these are: keep (best | last), epoch, and for the best"
        " the monitored metric and its value; requested and reason when best was not possible.",
    )
    target_scaling: dict[str, Any] | None = Field(
        None,
        description="Regression trained on standardised targets: the model's outputs are"
        " output * std + mean in the data's units (the predictor applies it).",
    )
    pretrained: dict[str, Any] | None = Field(
        None,
        description="Fine-tuned from torchvision's ImageNet weights: which (enum entry, address)"
        " and the transforms they were trained with (resize/crop size, mean/std); `normalization`"
        " holds the mean/std actually applied, `input_shape` the size the model takes.",
    )


def card_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """The card's `arch` as a reader needs it: the architecture, the options its network is built
    from (its registry entry's `options`: no `hidden` for a cnn, no `channels` for an mlp), and any
    other setting only where it was used (`init_from`, `freeze`, `pretrained`, … at their defaults
    say nothing). Rebuilding from this gives the same network: a dropped field is one the
    builder never reads, and the rest take their defaults."""
    name = arch.get("arch")
    entry = ARCHS.get(name) if isinstance(name, str) else None
    options = entry.options if entry is not None else None
    defaults = ModelSpec().model_dump(mode="json")
    out: dict[str, Any] = {"arch": name}
    for key, value in arch.items():
        if key == "arch":
            continue
        if options is None:
            keep = value is not None
        elif key in NETWORK_OPTIONS:
            keep = key in options
        else:
            keep = value != defaults.get(key)
        if keep:
            out[key] = value
    return out


def count_parameters(model: nn.Module) -> dict[str, int]:
    params = list(model.parameters())
    return {
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "total": sum(p.numel() for p in params),
    }


def save_model(directory: Path | str, model: nn.Module, card: ModelCard) -> ModelCard:
    """Write weights and card into a temp directory, fsync, then move it to `directory` in one
    rename. Returns the card as written (with the weights' sha256)."""
    directory = Path(directory)
    weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = safetensors.torch.save(weights, metadata={"format": "pt"})
    tmp = fsio.new_tmp_dir(directory.parent)
    try:
        sha = fsio.write_durable(tmp / WEIGHTS, data)
        card = card.model_copy(update={"weights_sha256": sha})
        fsio.write_durable(tmp / CARD, card.model_dump_json(indent=1).encode())
        fsio.publish_dir(tmp, directory)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return card


def read_card(directory: Path | str) -> ModelCard:
    path = Path(directory) / CARD
    try:
        return ModelCard.model_validate(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise ArtifactError(f"no model card at {path}") from exc
    except ValueError as exc:
        raise ArtifactError(f"unreadable model card at {path}: {exc}") from exc


def load_card(directory: Path | str) -> dict[str, Any]:
    """The card as a JSON-able dict (what the model registry stores)."""
    return read_card(directory).model_dump(mode="json")


def load_model(
    directory: Path | str, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model from its card alone (no job spec) and load its verified weights."""
    directory = Path(directory)
    card = read_card(directory)
    try:
        data = (directory / WEIGHTS).read_bytes()
    except FileNotFoundError as exc:
        raise ArtifactError(f"no weights at {directory / WEIGHTS}") from exc
    if card.weights_sha256 is not None and fsio.sha256_bytes(data) != card.weights_sha256:
        raise ArtifactError(f"{directory / WEIGHTS} does not match the sha256 in its card")
    model = build_model(ModelSpec.model_validate(card.arch), tuple(card.input_shape), card.out_dim)
    model.load_state_dict(safetensors.torch.load(data), strict=True)
    return model.to(map_location).eval(), card
