"""The API's answers to a client's mistakes name the field (or header) and what to send instead."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

SPEC: dict[str, Any] = {"name": "ok", "dataset": {"name": "iris"}, "training": {"epochs": 1}}


def detail(r: Any) -> list[dict[str, Any]]:
    body = r.json()
    assert isinstance(body["detail"], list), body
    return list(body["detail"])


def test_unknown_field_is_422_with_a_suggestion(client: TestClient) -> None:
    r = client.post("/jobs", json={**SPEC, "training": {"epcohs": 1}})
    assert r.status_code == 422, r.text
    [error] = detail(r)
    assert error["loc"] == ["body", "training", "epcohs"]
    assert "did you mean 'epochs'?" in error["msg"]


def test_number_as_string_is_422_naming_the_field(client: TestClient) -> None:
    r = client.post("/jobs", json={**SPEC, "training": {"lr": "0.01", "epochs": "10"}})
    assert r.status_code == 422, r.text
    by_loc = {tuple(e["loc"]): e["msg"] for e in detail(r)}
    assert set(by_loc) == {("body", "training", "lr"), ("body", "training", "epochs")}
    assert "got the string '0.01'" in by_loc[("body", "training", "lr")]
    assert "got the string '10'" in by_loc[("body", "training", "epochs")]


def test_choices_in_any_case_are_stored_canonically(client: TestClient) -> None:
    spec = {
        "name": "ok",
        "dataset": {"name": "Iris"},
        "training": {"optimizer": "Adam", "precision": "FP32", "lr": 1},
        "resources": {"device": "CPU"},
    }
    r = client.post("/jobs", json=spec)
    assert r.status_code == 201, r.text
    stored = client.get(f"/jobs/{r.json()['id']}").json()["spec"]
    assert stored["dataset"]["name"] == "iris"
    assert stored["training"]["optimizer"] == "adam"
    assert stored["training"]["precision"] == "fp32"
    assert stored["training"]["lr"] == 1.0
    assert stored["resources"]["device"] == "cpu"


@pytest.mark.parametrize(
    "headers",
    [{}, {"content-type": "application/x-www-form-urlencoded"}, {"content-type": "text/plain"}],
)
def test_json_route_without_json_content_type_is_415_saying_what_to_send(
    client: TestClient, headers: dict[str, str]
) -> None:
    import json

    r = client.post("/jobs", content=json.dumps(SPEC), headers=headers)
    assert r.status_code == 415, r.text
    [error] = detail(r)
    assert error["loc"] == ["header", "content-type"]
    assert "Content-Type: application/json" in error["msg"]
    sent = headers.get("content-type")
    assert (repr(sent) if sent else "no Content-Type header was sent") in error["msg"]


def test_every_json_route_answers_415_for_a_form_body(client: TestClient) -> None:
    r = client.put("/models/m/aliases/prod", data={"version": "1"})
    assert r.status_code == 415, r.text
    assert "Content-Type: application/json" in detail(r)[0]["msg"]


def test_json_content_types_still_get_the_ordinary_422(client: TestClient) -> None:
    for ctype in ("application/json", "application/json; charset=utf-8", "application/x+json"):
        r = client.post("/jobs", content=b"{not json", headers={"content-type": ctype})
        assert r.status_code == 422, (ctype, r.text)
        assert detail(r)[0]["type"] == "json_invalid"


def test_form_routes_keep_their_own_answers(client: TestClient) -> None:
    """Multipart routes (uploads) are not JSON routes: their errors stay their own."""
    r = client.post("/datasets", json={"file": "iris.csv"})
    assert r.status_code == 415, r.text
    assert "multipart" in r.text


def test_an_unexpected_exception_is_a_logged_json_500_that_names_no_internals(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from app.api.errors import INTERNAL_ERROR
    from app.services import workers as worker_service

    def broken(*_args: object) -> None:
        raise RuntimeError("secret: /srv/tas/var/tas.db is locked")

    monkeypatch.setattr(worker_service, "warn_if_unservable", broken)
    with caplog.at_level("ERROR", logger="app.api.errors"):
        r = client.post("/jobs", json=SPEC)
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"detail": INTERNAL_ERROR}
    assert "secret" not in r.text and "Traceback" not in r.text
    [record] = [rec for rec in caplog.records if rec.name == "app.api.errors"]
    assert "RuntimeError in POST /jobs" in record.getMessage()
    assert record.exc_info is not None and "secret" in str(record.exc_info[1])
