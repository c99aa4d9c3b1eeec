"""POST /jobs with a model of billions of parameters: a 422 naming the layer sizes and the limit,
answered in well under a second without the API's memory growing (nothing is allocated)."""

from __future__ import annotations

import resource
import time

from fastapi.testclient import TestClient

from tests.helpers.api import RecordingPublisher
from tests.helpers.specs import iris_spec


def test_an_mlp_of_three_65536_wide_layers_is_refused_at_once(
    client: TestClient, published: RecordingPublisher
) -> None:
    assert client.post("/jobs", json=iris_spec()).status_code == 201  # warm
    body = iris_spec(dataset={"name": "digits"}, model={"hidden": [65536, 65536, 65536]})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    r = client.post("/jobs", json=body)
    elapsed = time.perf_counter() - start
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.status_code == 422, r.text
    assert elapsed < 1.0, elapsed
    assert grown_mb < 50, grown_mb
    [problem] = r.json()["detail"]
    assert problem["loc"] == ["body", "model", "hidden"]
    assert "8.6 billion parameters" in problem["msg"] and "65536×65536" in problem["msg"]
    assert "TAS_MAX_PARAMETERS" in problem["msg"]
    assert len(published.published) == 1  # only the warm-up job was queued
    assert len(client.get("/jobs").json()["items"]) == 1
