"""Downloads: safetensors with the card embedded, and ONNX whose outputs match PyTorch's (checked
with onnxruntime). Both are used here the way the README shows, without tas."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.numpy import load as load_numpy
from safetensors.torch import load as load_torch

from tests.helpers.registry import IMAGE_SHAPE, Registry


def card_of_safetensors(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return dict(json.loads(header["__metadata__"]["tas.card"]))


def numpy_forward(weights: dict[str, np.ndarray], card: dict, x: np.ndarray) -> np.ndarray:
    """The MLP in numpy alone, from the card: flatten, normalise, Linear/ReLU..., softmax."""
    norm = card["preprocessing"]["normalization"]
    mean = np.array(norm["mean"], np.float32).reshape(norm["shape"])
    std = np.array(norm["std"], np.float32).reshape(norm["shape"])
    h = ((x - mean) / std).reshape(len(x), -1)
    layers = sorted({int(k.split(".")[0]) for k in weights})
    for i, idx in enumerate(layers):
        h = h @ weights[f"{idx}.weight"].T + weights[f"{idx}.bias"]
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    e = np.exp(h - h.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def test_safetensors_round_trip(client: TestClient, registry: Registry) -> None:
    m = registry.add("m", hidden=(16, 8))
    r = client.get("/models/m/versions/1/download?format=safetensors")
    assert r.status_code == 200
    assert "m-v1.safetensors" in r.headers["content-disposition"]
    card = card_of_safetensors(r.content)
    assert card["input_shape"] == list(IMAGE_SHAPE) and card["class_names"] == ["c0", "c1", "c2"]
    assert card["arch"]["hidden"] == [16, 8] and card["metrics"] == {"val_accuracy": 0.5}
    assert card["preprocessing"]["normalization"]["formula"] == "(x - mean) / std"
    # the same card at GET .../card
    served = client.get("/models/m/versions/1/card").json()
    assert served["preprocessing"] == card["preprocessing"] and served["job_id"] == m.job_id
    # the weights are the model's, bit for bit
    tensors = load_torch(r.content)
    for k, v in m.model.state_dict().items():
        assert torch.equal(tensors[k], v)
    # numpy alone reproduces /predict
    x = np.random.default_rng(0).random((4, *IMAGE_SHAPE), dtype=np.float32)
    expected = client.post("/predict", json={"model": "m", "inputs": x.tolist()}).json()
    got = numpy_forward(load_numpy(r.content), card, x)
    np.testing.assert_allclose(
        got, [p["probabilities"] for p in expected["predictions"]], atol=1e-5
    )


@pytest.mark.slow
def test_onnx_round_trip(client: TestClient, registry: Registry) -> None:
    m = registry.add("m", hidden=(16, 8), out_dim=4)
    r = client.get("/models/m/versions/1/download", params={"format": "onnx"})
    assert r.status_code == 200, r.text
    proto = onnx.load_from_string(r.content)
    card = json.loads({p.key: p.value for p in proto.metadata_props}["tas.card"])
    assert card["out_dim"] == 4
    session = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])
    norm = card["preprocessing"]["normalization"]
    mean = np.array(norm["mean"], np.float32).reshape(norm["shape"])
    std = np.array(norm["std"], np.float32).reshape(norm["shape"])
    for n in (1, 3, 17):  # the batch axis is dynamic
        x = np.random.default_rng(n).random((n, *IMAGE_SHAPE), dtype=np.float32)
        (out,) = session.run(["output"], {"input": (x - mean) / std})
        np.testing.assert_allclose(out, m.reference(x).numpy(), atol=1e-5, rtol=0)


def test_download_rejections(client: TestClient, registry: Registry) -> None:
    registry.add("m")
    assert client.get("/models/m/versions/1/download?format=pickle").status_code == 422
    assert client.get("/models/m/versions/2/download").status_code == 404
    assert client.get("/models/nope/versions/1/download").status_code == 404
    assert client.get("/models/m/versions/0/card").status_code == 422
