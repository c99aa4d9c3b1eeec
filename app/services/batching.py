"""Gathering concurrent `/predict` requests for one model into one forward pass.

A request appends its checked batch to the model's queue and awaits a future. One runner task per
model (started when work arrives, gone when the queue is empty) waits up to `max_wait_s` for the
queue to hold `max_batch` samples, then takes whole requests up to that many samples (a request
bigger than `max_batch` goes alone), and runs one forward pass on a worker thread — under
`torch.inference_mode()`, off the event loop, which keeps parsing the next requests meanwhile. The
outputs are read (softmax, labels, `tolist`) on that thread too, split back per request, and each
future is resolved. Requests that arrive during a forward form the next batch, so under load the
batch fills without waiting; a lone request waits at most `max_wait_s`.

The runner holds its own reference to the predictor, so a request already queued completes even if
its model is evicted from the cache or its alias moves meanwhile."""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tas.core.predictor import Predictor

if TYPE_CHECKING:
    from app.metrics import PredictObserver


@dataclass(slots=True)
class _Pending:
    x: np.ndarray
    top_k: int | None
    future: asyncio.Future[list[dict[str, Any]]]


def add_top_k(rows: list[dict[str, Any]], k: int, names: list[str] | None) -> None:
    """Each classification row gains `top_k`: the k likeliest classes, most likely first."""
    for row in rows:
        probs: list[float] = row["probabilities"]
        best = heapq.nlargest(min(k, len(probs)), range(len(probs)), key=probs.__getitem__)
        row["top_k"] = [
            {
                "label": i,
                "class_name": names[i] if names and i < len(names) else None,
                "probability": probs[i],
            }
            for i in best
        ]


class Batcher:
    """One model's request queue and its forward-pass loop (see the module docstring)."""

    def __init__(
        self, predictor: Predictor, *, max_batch: int, max_wait_s: float, executor: Executor
    ) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._executor = executor
        self._pending: deque[_Pending] = deque()
        self._queued = 0
        self._runner: asyncio.Task[None] | None = None
        self._full: asyncio.Event | None = None
        self.forwards = 0  # forward passes run (tests and /metrics read these)
        self.samples = 0
        #: This model's /metrics histograms, bound by the serving layer on its first request.
        self.observer: PredictObserver | None = None

    async def predict(self, x: np.ndarray, top_k: int | None = None) -> list[dict[str, Any]]:
        """Rows for the checked batch `x`, computed in a gathered forward pass."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[dict[str, Any]]] = loop.create_future()
        self._pending.append(_Pending(x, top_k, future))
        self._queued += x.shape[0]
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run())
        elif self._full is not None and self._queued >= self.max_batch:
            self._full.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            if self._queued < self.max_batch and self.max_wait_s > 0:
                self._full = full = asyncio.Event()
                timer = loop.call_later(self.max_wait_s, full.set)
                try:
                    await full.wait()
                finally:
                    timer.cancel()
                    self._full = None
            batch = self._take()
            try:
                results = await loop.run_in_executor(self._executor, self._forward, batch)
            except Exception as exc:  # a model that cannot run this input: each caller hears it
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, rows in zip(batch, results, strict=True):
                if not p.future.done():  # the client may have gone away
                    p.future.set_result(rows)

    def _take(self) -> list[_Pending]:
        batch = [self._pending.popleft()]
        n = batch[0].x.shape[0]
        while self._pending and n + self._pending[0].x.shape[0] <= self.max_batch:
            p = self._pending.popleft()
            batch.append(p)
            n += p.x.shape[0]
        self._queued -= n
        return batch

    def _forward(self, batch: list[_Pending]) -> list[list[dict[str, Any]]]:
        """On the worker thread: one forward for the whole batch, read, split per request."""
        x = batch[0].x if len(batch) == 1 else np.concatenate([p.x for p in batch])
        rows = self.predictor.read(self.predictor.forward(x))
        self.forwards += 1
        self.samples += x.shape[0]
        if self.observer is not None:  # once per forward pass, whatever the requests in it
            self.observer.batch.observe(x.shape[0])
        out, start = [], 0
        names = self.predictor.card.class_names
        for p in batch:
            n = p.x.shape[0]
            part = rows[start : start + n]
            start += n
            if p.top_k:
                add_top_k(part, p.top_k, names)
            out.append(part)
        return out
