"""Serving against a real `tas serve` process: two trained versions, an alias moved back and forth
while concurrent clients predict through it — no request fails — then downloads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.stack import Stack, embedded_stack

pytestmark = pytest.mark.integration

SPEC = {
    "name": "serve-digits",
    "dataset": {"name": "digits", "val_fraction": 0.15},
    "model": {"arch": "mlp", "hidden": [16]},
    "training": {"epochs": 1, "batch_size": 64, "optimizer": "adam", "lr": 0.01},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with embedded_stack(Path(tmp_path_factory.mktemp("serving"))) as s:
        yield s


def test_alias_moves_under_load_against_a_real_server(stack: Stack) -> None:
    jobs = [stack.submit({**SPEC, "training": {**SPEC["training"], "seed": i}}) for i in (1, 2)]
    for job in jobs:
        assert stack.wait(job["id"])["status"] == "succeeded"
    model = stack.http.get("/models/serve-digits").json()
    assert [v["version"] for v in model["versions"]] == [2, 1]
    assert stack.http.put("/models/serve-digits/aliases/live", json={"version": 1}).is_success

    sample = [[[0.5] * 8] * 8]
    stop = threading.Event()
    seen: list[int] = []
    failures: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=stack.base_url, timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post("/predict", json={"model": "serve-digits@live", "inputs": sample})
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code == 200:
                    seen.append(r.json()["model"]["version"])
                else:
                    failures.append(f"{r.status_code} {r.text}")

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        for i in range(10):
            stop.wait(0.1)
            r = stack.http.put("/models/serve-digits/aliases/live", json={"version": 2 - i % 2})
            assert r.status_code == 200, r.text
        assert stack.http.put("/models/serve-digits/aliases/live", json={"version": 2}).is_success
        r = stack.http.post("/predict", json={"model": "serve-digits@live", "inputs": sample})
        assert r.json()["model"]["version"] == 2
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == [], failures[:5]
    assert set(seen) == {1, 2} and len(seen) > 20

    # downloads from the real server: the card rides along in both formats
    st = stack.http.get("/models/serve-digits/versions/2/download")
    assert st.status_code == 200 and b"tas.card" in st.content[:20000]
    card = stack.http.get("/models/serve-digits/versions/2/card").json()
    assert card["input_shape"] == [1, 8, 8] and card["class_names"]
