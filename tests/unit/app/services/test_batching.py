"""Concurrent requests share forward passes, each still gets its own rows; an alias moved under
load fails no request. Concurrent clients run against the ASGI app in process."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import torch
from fastapi import FastAPI

from tests.helpers.registry import IMAGE_SHAPE, Registry


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def test_concurrent_requests_share_forward_passes(app: FastAPI, registry: Registry) -> None:
    m = registry.add("m")
    xs = np.random.default_rng(0).random((48, 1, *IMAGE_SHAPE), dtype=np.float32)

    async def run() -> list[httpx.Response]:
        async with client(app) as c:
            await c.post("/predict", json={"model": "m", "inputs": xs[0].tolist()})  # load
            return await asyncio.gather(
                *(c.post("/predict", json={"model": "m", "inputs": x.tolist()}) for x in xs)
            )

    responses = asyncio.run(run())
    batcher = app.state.serving.cache.peek(m.model_dir).batcher
    assert all(r.status_code == 200 for r in responses)
    assert batcher.forwards - 1 < len(xs) // 4, batcher.forwards  # gathered, not one by one
    assert batcher.samples == len(xs) + 1
    for x, r in zip(xs, responses, strict=True):  # each request got the rows for its own input
        expected = torch.softmax(m.reference(x), dim=1).numpy()
        got = np.array([p["probabilities"] for p in r.json()["predictions"]])
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_alias_moves_under_load_fail_no_request(app: FastAPI, registry: Registry) -> None:
    registry.add("m", seed=1)
    registry.add("m", seed=2)
    x = np.random.default_rng(1).random((1, *IMAGE_SHAPE)).tolist()
    seen: list[int] = []
    failures: list[str] = []

    async def run() -> None:
        async with client(app) as c:
            assert (await c.put("/models/m/aliases/live", json={"version": 1})).status_code == 200
            stop = asyncio.Event()

            async def predictor() -> None:
                while not stop.is_set():
                    r = await c.post("/predict", json={"model": "m@live", "inputs": x})
                    if r.status_code != 200:
                        failures.append(r.text)
                    else:
                        seen.append(r.json()["model"]["version"])

            clients = [asyncio.create_task(predictor()) for _ in range(16)]
            for i in range(12):
                await asyncio.sleep(0.02)
                r = await c.put("/models/m/aliases/live", json={"version": 2 if i % 2 == 0 else 1})
                assert r.status_code == 200
            r = await c.put("/models/m/aliases/live", json={"version": 2})
            after = await c.post("/predict", json={"model": "m@live", "inputs": x})
            assert after.json()["model"]["version"] == 2  # the next prediction: the new version
            stop.set()
            await asyncio.gather(*clients)

    asyncio.run(run())
    assert failures == []
    assert set(seen) == {1, 2} and len(seen) > 50
