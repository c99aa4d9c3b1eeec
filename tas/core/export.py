"""Exports of a model directory that need nothing from tas to use.

- safetensors with the model card embedded as the header's `__metadata__["tas.card"]` (a JSON
  string): one file holds the weights and everything needed to rebuild and feed the model.
- ONNX (the dynamo exporter, a dynamic batch axis) with the same card in the model's
  `metadata_props`. The graph is the model alone — it takes *normalised* input, exactly like the
  PyTorch module — so its outputs match PyTorch's to float rounding; the card's `preprocessing`
  says how to normalise (the README shows it in numpy).

`export_card` is the card a user needs outside tas: which model it is (name, version, job id, given
by the registry), architecture, input shape, classes, how to read the outputs, the preprocessing,
the metrics — only the fields that apply to this model (see `tas.core.artifact.card_arch`)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from tas.core.artifact import ModelCard, card_arch, load_model

CARD_KEY = "tas.card"


def export_card(card: ModelCard, about: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`about` (the registry's name, version and job id) first, then the stored card without the
    fields that do not apply (nulls: no class names for a regression; the architecture's unused
    options and unused transfer settings), plus a `preprocessing` block that spells out what tas
    does to a sample."""
    stored = card.model_dump(mode="json")
    out = dict(about or {})
    out.update({k: v for k, v in stored.items() if v is not None and k not in out})
    out["arch"] = card_arch(card.arch)
    norm = card.normalization
    out["preprocessing"] = {
        "input_dtype": "float32",
        "input_shape": ["N", *card.input_shape],
        "images": "decoded to the input's channels (L or RGB) as 8-bit pixels, resized to H×W"
        " (bilinear, antialiased, rounded back to whole pixel values), scaled to [0, 1]"
        " (pixel / 255), laid out C×H×W",
        "normalization": None
        if norm is None
        else {
            "formula": "(x - mean) / std",
            "kind": norm["kind"],
            "shape": norm["shape"],
            "mean": norm["mean"],
            "std": norm["std"],
        },
        "outputs": {
            "softmax": "logits; probabilities = softmax(logits, axis=1); label = argmax",
            "sigmoid": "one logit; p(class 1) = sigmoid(logit); label = logit > 0",
            "identity": "regression values",
        }[card.output],
    }
    return out


def safetensors_with_card(directory: Path | str, about: Mapping[str, Any] | None = None) -> bytes:
    """The verified weights re-serialised with the card (and `about`: name, version, job id) in
    the safetensors header."""
    model, card = load_model(directory)
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "pt", CARD_KEY: json.dumps(export_card(card, about), separators=(",", ":"))}
    return safetensors.torch.save(weights, metadata=meta)


def onnx_bytes(directory: Path | str, about: Mapping[str, Any] | None = None) -> bytes:
    """An ONNX model with a dynamic batch axis (input `input`, output `output`) and the card in
    `metadata_props`. Slow (seconds: the exporter traces the model), so callers run it off the
    event loop."""
    model, card = load_model(directory)
    example = torch.zeros((2, *card.input_shape), dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
            verbose=False,
        )
    assert program is not None
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = CARD_KEY, json.dumps(export_card(card, about), separators=(",", ":"))
    return bytes(proto.SerializeToString())
