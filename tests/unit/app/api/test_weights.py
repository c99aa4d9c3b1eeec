"""/weights over HTTP (safetensors only, a pickle never loaded) and jobs that start from
uploaded weights or a registered model (`init_from`, `freeze`)."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from fastapi.testclient import TestClient

from tas.core.models import build_model
from tas.core.spec import ModelSpec
from tas.settings import Settings
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.orm import Job, JobStatus, ModelVersion
from tests.helpers.uploads import leftovers, locs, msgs, small_upload_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Small upload limits, so the limit tests stay small."""
    return small_upload_settings(tmp_path)


def st_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return safetensors.torch.save(tensors)


def mlp_state(hidden: list[int], inputs: int, out: int) -> dict[str, torch.Tensor]:
    model = build_model(ModelSpec(arch="mlp", hidden=hidden), (inputs,), out)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def post_weights(client: TestClient, data: bytes, name: str = "w.safetensors") -> Any:
    return client.post("/weights", files={"file": (name, data, "application/octet-stream")})


def test_weights_upload_and_get(client: TestClient, settings: Settings) -> None:
    data = st_bytes({"a.weight": torch.zeros(3, 4), "a.bias": torch.zeros(3)})
    r = post_weights(client, data)
    assert r.status_code == 201, r.text
    w = r.json()
    assert w["tensors"] == {"a.weight": [3, 4], "a.bias": [3]}
    assert w["id"] == w["sha256"][:16] and w["size_bytes"] == len(data)
    assert r.headers["location"] == f"/weights/{w['id']}"
    assert (settings.resolved_uploads_dir / "weights" / f"{w['sha256']}.safetensors").exists()
    assert client.get(f"/weights/{w['id']}").json() == w
    assert post_weights(client, data).status_code == 200
    assert client.get("/weights/" + "0" * 16).status_code == 404
    assert client.get("/weights/nope").status_code == 404


@pytest.mark.parametrize(
    "data",
    [
        b"garbage, not safetensors",
        b"",
        struct.pack("<Q", 10**9) + b"{}",
        struct.pack("<Q", 60)
        + b'{"x":{"dtype":"F32","shape":[100,100],"data_offsets":[0,40000]}}'[:60],
    ],
    ids=["garbage", "empty", "huge-header", "truncated"],
)
def test_weights_that_are_not_safetensors_are_422(
    client: TestClient, settings: Settings, data: bytes
) -> None:
    r = post_weights(client, data)
    assert r.status_code == 422, r.text
    assert locs(r) == [["body", "file"]]
    assert "safetensors" in msgs(r)
    assert leftovers(settings) == []


def test_a_pickle_is_never_loaded(client: TestClient, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    buf = io.BytesIO()
    torch.save({"w": Evil()}, buf)
    r = post_weights(client, buf.getvalue(), "model.pt")
    assert r.status_code == 422
    assert not marker.exists()


def test_init_from_unknown_is_422(client: TestClient) -> None:
    for ref, says in [
        ("no-such-model", "no model named 'no-such-model'"),
        ("no-such-model:3", "no model"),
        ("weights:0123456789abcdef", "no uploaded weights"),
        ("a" * 32, "no job or model"),
    ]:
        r = client.post(
            "/jobs",
            json={
                "name": "t",
                "dataset": {"name": "iris"},
                "model": {"arch": "mlp", "hidden": [8], "init_from": ref},
            },
        )
        assert r.status_code == 422, r.text
        assert locs(r) == [["body", "model", "init_from"]]
        assert says in msgs(r) and ref in msgs(r)


def test_init_from_weights_that_fit_is_queued_and_pinned(client: TestClient) -> None:
    w = post_weights(client, st_bytes(mlp_state([8], 4, 3))).json()
    r = client.post(
        "/jobs",
        json={
            "name": "ft",
            "dataset": {"name": "iris"},
            "model": {"arch": "mlp", "hidden": [8], "init_from": f"weights:{w['id']}"},
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["result"]["init_from"] == {
        "ref": f"weights:{w['id']}",
        "kind": "weights",
        "id": w["id"],
        "sha256": w["sha256"],
    }


def test_weights_in_use_are_kept_then_deleted_with_their_file(
    client: TestClient, settings: Settings
) -> None:
    """DELETE /weights/{id}: 409 while a queued job starts from them, then 204 and the file gone;
    404 after, and for an id that never existed."""
    w = post_weights(client, st_bytes(mlp_state([8], 4, 3))).json()
    stored = settings.resolved_uploads_dir / "weights" / f"{w['sha256']}.safetensors"
    job = client.post(
        "/jobs",
        json={
            "name": "ft",
            "dataset": {"name": "iris"},
            "model": {"arch": "mlp", "hidden": [8], "init_from": f"weights:{w['id']}"},
        },
    ).json()
    r = client.delete(f"/weights/{w['id']}")
    assert r.status_code == 409 and job["id"] in r.text and stored.is_file()
    assert client.post(f"/jobs/{job['id']}/cancel").status_code in (200, 202)
    assert client.delete(f"/weights/{w['id']}").status_code == 204
    assert not stored.exists()
    assert client.get(f"/weights/{w['id']}").status_code == 404
    assert client.delete(f"/weights/{w['id']}").status_code == 404
    assert client.delete("/weights/" + "0" * 16).status_code == 404


def test_init_from_weights_of_another_shape_names_the_layer(client: TestClient) -> None:
    """Weights of an MLP with 16 hidden units, for a job that builds one with 8."""
    w = post_weights(client, st_bytes(mlp_state([16], 4, 3))).json()
    r = client.post(
        "/jobs",
        json={
            "name": "ft",
            "dataset": {"name": "iris"},
            "model": {"arch": "mlp", "hidden": [8], "init_from": f"weights:{w['id']}"},
        },
    )
    assert r.status_code == 422, r.text
    assert ["body", "model", "init_from"] in locs(r)
    text = msgs(r)
    first = next(iter(mlp_state([8], 4, 3)))  # the first layer's weight: [8, 4] here, [16, 4] there
    assert f"'{first}'" in text and "[8, 4]" in text and "[16, 4]" in text


def test_freeze_of_an_unknown_layer_is_422(client: TestClient) -> None:
    r = client.post(
        "/jobs",
        json={
            "name": "t",
            "dataset": {"name": "iris"},
            "model": {"arch": "mlp", "hidden": [8], "freeze": ["nope"]},
        },
    )
    assert r.status_code == 422, r.text
    assert locs(r) == [["body", "model", "freeze"]]
    assert "nope" in msgs(r)


@pytest.fixture
def registered(settings: Settings) -> Iterator[str]:
    """A succeeded job whose model (an MLP 4→8→3 on iris) is registered as digits-base:1 and :2."""
    engine = make_engine(settings.resolved_database_url)
    sessions = make_sessionmaker(engine)
    with sessions() as s:
        for version in (1, 2):
            job = Job(name="base", spec={"name": "base"}, status=JobStatus.succeeded.value)
            s.add(job)
            s.flush()
            model_dir = settings.resolved_artifact_dir / "jobs" / job.id / "model"
            model_dir.mkdir(parents=True)
            safetensors.torch.save_file(mlp_state([8], 4, 3), str(model_dir / "model.safetensors"))
            s.add(
                ModelVersion(
                    name="base",
                    version=version,
                    job_id=job.id,
                    model_dir=str(model_dir),
                    card={},
                    metrics=None,
                )
            )
        s.commit()
        job_id = job.id
    yield job_id
    engine.dispose()


def test_init_from_a_registered_model(client: TestClient, registered: str) -> None:
    def submit(ref: str) -> Any:
        return client.post(
            "/jobs",
            json={
                "name": "ft",
                "dataset": {"name": "iris"},
                "model": {"arch": "mlp", "hidden": [8], "init_from": ref, "freeze": "backbone"},
            },
        )

    for ref in ("base", "base:2", registered):
        r = submit(ref)
        assert r.status_code == 201, r.text
        pinned = r.json()["result"]["init_from"]
        assert pinned["kind"] == "model" and pinned["name"] == "base" and pinned["version"] == 2
        assert pinned["job_id"] == registered
    assert submit("base:1").json()["result"]["init_from"]["version"] == 1
    r = submit("base:7")
    assert r.status_code == 422
    assert "no version '7'" in msgs(r) and "2, 1" in msgs(r)
