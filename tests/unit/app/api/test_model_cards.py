"""Cards and downloads by `name@alias` (and `name:version`, `name`), each naming the model it is,
and holding only the fields that apply to its architecture."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load as load_torch

from tas.core.artifact import card_arch
from tas.core.models import build_model
from tas.core.spec import ModelSpec
from tests.helpers.registry import IMAGE_SHAPE, Registry


def card_of_safetensors(data: bytes) -> dict[str, Any]:
    n = int.from_bytes(data[:8], "little")
    return dict(json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["tas.card"]))


def test_card_and_download_by_alias_follow_the_alias(
    client: TestClient, registry: Registry
) -> None:
    v1 = registry.add("m", seed=1)
    v2 = registry.add("m", seed=2)
    assert client.put("/models/m/aliases/prod", json={"version": 1}).status_code == 200
    card = client.get("/models/m@prod/card")
    assert card.status_code == 200, card.text
    assert {k: card.json()[k] for k in ("name", "version", "job_id")} == {
        "name": "m",
        "version": 1,
        "job_id": v1.job_id,
    }
    r = client.get("/models/m@prod/download")
    assert r.status_code == 200, r.text
    assert 'filename="m-v1.safetensors"' in r.headers["content-disposition"]
    for k, v in v1.model.state_dict().items():
        assert torch.equal(load_torch(r.content)[k], v)
    # the alias moves: so do its card and download
    client.put("/models/m/aliases/prod", json={"version": 2})
    assert client.get("/models/m@prod/card").json()["job_id"] == v2.job_id
    moved = client.get("/models/m@prod/download")
    assert 'filename="m-v2.safetensors"' in moved.headers["content-disposition"]
    # name:version and name (the latest) work the same way
    assert client.get("/models/m:1/card").json()["version"] == 1
    assert client.get("/models/m/card").json()["version"] == 2


def test_the_downloaded_card_names_the_model(client: TestClient, registry: Registry) -> None:
    m = registry.add("m")
    for path in ("/models/m/versions/1/download", "/models/m@x/download"):
        if "@" in path:
            client.put("/models/m/aliases/x", json={"version": 1})
        card = card_of_safetensors(client.get(path).content)
        assert (card["name"], card["version"], card["job_id"]) == ("m", 1, m.job_id)
        assert card == client.get("/models/m/versions/1/card").json()


def test_unknown_references_are_404_and_bad_ones_422(
    client: TestClient, registry: Registry
) -> None:
    registry.add("m")
    for path in ("/models/m@nope/card", "/models/m:7/download", "/models/other@prod/download"):
        r = client.get(path)
        assert r.status_code == 404, (path, r.text)
        assert "not found" in r.text
    for path in ("/models/m@/card", "/models/m@a@b/card", "/models/m:x/download"):
        assert client.get(path).status_code == 422, path
    assert client.get("/models/m/download?format=pickle").status_code == 422


def test_a_cnn_card_has_no_mlp_options_nor_unused_transfer_settings(
    client: TestClient, registry: Registry
) -> None:
    registry.add("c", arch={"arch": "cnn", "channels": [4], "dropout": 0.25})
    card = client.get("/models/c/card").json()
    assert card["arch"] == {"arch": "cnn", "activation": "relu", "dropout": 0.25, "channels": [4]}
    for absent in ("init_from", "freeze", "pretrained", "hidden", "unfreeze_after"):
        assert absent not in card["arch"]
    # nulls are left out: this classifier has class names but no feature names
    assert "class_names" in card and "feature_names" not in card
    assert card["input_shape"] == list(IMAGE_SHAPE)


def test_an_mlp_card_keeps_its_transfer_settings_when_used(
    client: TestClient, registry: Registry
) -> None:
    registry.add("t", arch={"arch": "mlp", "hidden": [8], "init_from": "x:1", "freeze": ["0"]})
    arch = client.get("/models/t/card").json()["arch"]
    assert arch == {
        "arch": "mlp",
        "hidden": [8],
        "activation": "relu",
        "dropout": 0.0,
        "init_from": "x:1",
        "freeze": ["0"],
    }


@pytest.mark.parametrize(
    "spec",
    [
        {"arch": "mlp", "hidden": [7, 5], "activation": "tanh", "dropout": 0.3, "channels": [3]},
        {"arch": "linear", "hidden": [7], "dropout": 0.3},
        {"arch": "cnn", "channels": [5, 6], "activation": "gelu", "dropout": 0.3, "hidden": [9]},
        {"arch": "resnet18", "dropout": 0.3, "hidden": [9], "channels": [3], "activation": "tanh"},
        {"arch": "resnet18", "hidden": [9]},
    ],
)
def test_the_pruned_arch_rebuilds_the_same_network(spec: dict[str, Any]) -> None:
    """A field the card drops is one the builder never reads: the network from the pruned arch has
    the same parameters (names and shapes) and the same modules."""
    full = ModelSpec.model_validate(spec)
    pruned = ModelSpec.model_validate(card_arch(full.model_dump(mode="json")))
    a, b = build_model(full, (1, 8, 8), 3), build_model(pruned, (1, 8, 8), 3)
    assert {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in b.state_dict().items()
    }
    assert repr(a) == repr(b)
