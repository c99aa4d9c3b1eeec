"""The OpenAPI document describes every error a route can answer, with the error body's schema:
the errors each kind of route gives (401/403 where a key is needed, 404 on a path with an id or
name, 400 and 415 for a body) come from the operation itself, so a new route is covered without
listing it (tests/infra/test_schemathesis.py checks the answers against them)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi.testclient import TestClient

ERROR_BODY = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_each_kind_of_route_documents_its_errors(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    for method, path, op in operations(document):
        codes = set(op["responses"])
        where = f"{method} {path}"
        if op.get("security"):
            assert {"401", "403"} <= codes, where
        if "{" in path:
            assert "404" in codes, where
        body = op.get("requestBody", {}).get("content", {})
        if body:
            assert "400" in codes, where
        if "application/json" in body:
            assert "415" in codes, where
    # Public: no key, so no 401.
    assert "401" not in document["paths"]["/healthz"]["get"]["responses"]


def test_every_error_response_has_the_error_body(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert document["components"]["schemas"]["ErrorOut"]["required"] == ["detail"]
    for method, path, op in operations(document):
        for code, response in op["responses"].items():
            if code.startswith("4") and code != "422":
                assert response.get("content") == ERROR_BODY, f"{method} {path} {code}"


def test_a_route_s_own_error_description_is_kept(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    cancel = document["paths"]["/jobs/{job_id}/cancel"]["post"]["responses"]
    assert cancel["409"]["description"] == "The job has already finished"
    assert cancel["404"]["description"].startswith("No such object")
