"""The model artifact and the predictor: shapes, normalisation, output reading, integrity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tas.core.artifact import ArtifactError, ModelCard, load_card, load_model, save_model
from tas.core.data.prepare import Normalizer
from tas.core.models import build_model
from tas.core.predictor import InputShapeError, InputValueError, Predictor
from tas.core.spec import ModelSpec


def make(
    tmp_path: Path,
    input_shape: tuple[int, ...],
    output: str,
    out_dim: int,
    normalization: dict | None = None,
    names: list[str] | None = None,
) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    spec = ModelSpec(arch="mlp", hidden=[8])
    model = build_model(spec, input_shape, out_dim)
    card = ModelCard(
        arch=spec.model_dump(mode="json"),
        input_shape=list(input_shape),
        task="regression" if output == "identity" else "classification",
        output=output,
        out_dim=out_dim,
        num_classes=None if output == "identity" else max(out_dim, 2),
        class_names=names,
        normalization=normalization,
    )
    save_model(tmp_path / "model", model, card)
    return model.eval(), tmp_path / "model"


def image_norm() -> Normalizer:
    return Normalizer(
        torch.tensor([0.5]).view(1, 1, 1), torch.tensor([0.25]).view(1, 1, 1), "per_channel"
    )


def test_roundtrip_without_the_job_spec(tmp_path: Path) -> None:
    model, d = make(tmp_path, (4,), "softmax", 3, names=["a", "b", "c"])
    loaded, card = load_model(d)
    assert card.class_names == ["a", "b", "c"] and card.weights_sha256
    for (k, v), (k2, v2) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)
    assert load_card(d)["output"] == "softmax"
    assert sorted(p.name for p in d.iterdir()) == ["card.json", "model.safetensors"]


def test_normalisation_is_applied(tmp_path: Path) -> None:
    norm = image_norm()
    model, d = make(tmp_path, (1, 8, 8), "softmax", 10, normalization=norm.to_dict())
    raw = torch.rand(5, 1, 8, 8)
    out = Predictor.from_dir(d).predict(raw.numpy())
    expected = torch.softmax(model(norm(raw)), dim=1)
    got = torch.tensor([o["probabilities"] for o in out])
    assert torch.allclose(got, expected, atol=1e-6)
    assert [o["label"] for o in out] == expected.argmax(dim=1).tolist()
    assert all(o["class_name"] is None for o in out)


def test_single_channel_images_may_omit_the_channel(tmp_path: Path) -> None:
    _, d = make(tmp_path, (1, 8, 8), "softmax", 10, names=[str(i) for i in range(10)])
    p = Predictor.from_dir(d)
    x = np.random.rand(3, 8, 8).astype(np.float32)
    assert p.predict(x) == p.predict(x[:, None])
    assert p.check_batch(x).shape == (3, 1, 8, 8)
    assert p.predict(x)[0]["class_name"] == str(p.predict(x)[0]["label"])


@pytest.mark.parametrize("shape", [(3, 1, 8, 9), (8, 8), (3, 2, 8, 8), (1, 8, 8, 1), (3, 64)])
def test_wrong_shapes_state_expected_and_received(tmp_path: Path, shape: tuple[int, ...]) -> None:
    _, d = make(tmp_path, (1, 8, 8), "softmax", 10)
    with pytest.raises(InputShapeError) as info:
        Predictor.from_dir(d).predict(np.zeros(shape, dtype=np.float32))
    msg = str(info.value)
    assert "(N, 1, 8, 8) or (N, 8, 8)" in msg and f"received {shape}" in msg


def test_non_finite_and_non_numeric_inputs(tmp_path: Path) -> None:
    _, d = make(tmp_path, (4,), "softmax", 3)
    p = Predictor.from_dir(d)
    x = np.zeros((3, 4), dtype=np.float32)
    x[2, 1] = np.nan
    with pytest.raises(InputValueError, match="sample 2 of 3"):
        p.predict(x)
    with pytest.raises(InputValueError, match="numbers"):
        p.predict(np.array([["a", "b", "c", "d"]]))
    assert p.predict(np.zeros((0, 4), dtype=np.float32)) == []


def test_sigmoid_and_identity_outputs(tmp_path: Path) -> None:
    model, d = make(tmp_path / "b", (2,), "sigmoid", 1, names=["no", "yes"])
    x = torch.tensor([[0.0, 1.0], [5.0, -3.0]])
    out = Predictor.from_dir(d).predict(x)
    p = torch.sigmoid(model(x)[:, 0])
    for o, pi in zip(out, p.tolist(), strict=True):
        assert o["probabilities"] == pytest.approx([1 - pi, pi])
        assert o["label"] == int(pi > 0.5) and o["class_name"] == ["no", "yes"][o["label"]]
    reg, d2 = make(tmp_path / "r", (3,), "identity", 1)
    values = Predictor.from_dir(d2).predict(np.ones((2, 3)))
    assert values[0]["value"] == pytest.approx(float(reg(torch.ones(1, 3)).detach()))
    _, d3 = make(tmp_path / "m", (3,), "identity", 2)
    assert len(Predictor.from_dir(d3).predict(np.ones((1, 3)))[0]["value"]) == 2


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    _, d = make(tmp_path, (4,), "softmax", 3)
    w = d / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_model(d)


def test_save_replaces_atomically(tmp_path: Path) -> None:
    _, d = make(tmp_path, (4,), "softmax", 3)
    first = json.loads((d / "card.json").read_text())["weights_sha256"]
    _, d = make(tmp_path, (4,), "softmax", 5)  # a re-registered model at the same place
    assert load_model(d)[1].out_dim == 5 and load_model(d)[1].weights_sha256 != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or trash left
