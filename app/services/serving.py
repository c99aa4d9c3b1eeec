"""The serving side of the API in one object: reference → registered version → loaded model →
batched forward pass, plus what the registry routes tell it (alias moved, version deleted).

Every blocking step (a database read on a resolver miss, loading weights) runs on a worker thread;
on the hot path — a resolved reference, a cached model — a request touches neither and goes
straight to its model's batcher."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.services.predictors import ModelResolver, PredictorCache, ResolvedModel, Served
from tas.errors import ModelNotFound

if TYPE_CHECKING:
    from app.metrics import PredictMetrics, PredictObserver
from tas.settings import Settings


def contained_artifact(settings: Settings, model_dir: str) -> Path:
    """The artifact directory a registry row names, only if it lies inside the artifact store:
    paths are built by the server, and every read checks containment (a registry row that named
    `../` or an absolute path must never make the server read outside its store)."""
    root = settings.resolved_artifact_dir
    path = Path(model_dir).resolve()
    if not path.is_relative_to(root):
        raise ModelNotFound(model_dir.rsplit("/", 1)[-1])
    return path


class Serving:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        if settings.predict_threads is not None:
            torch.set_num_threads(settings.predict_threads)
        self.executor = ThreadPoolExecutor(
            max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="tas-forward"
        )
        self.resolver = ModelResolver(sessions, settings.predict_resolve_ttl_s)
        #: Set by the app: /predict's latency and batch-size histograms (None: not observed).
        self.predict_metrics: PredictMetrics | None = None
        self.cache = PredictorCache(
            settings.predict_cache_size,
            max_bytes=int(settings.predict_cache_mb * 2**20),
            max_batch=settings.predict_max_batch,
            max_wait_s=settings.predict_max_wait_ms / 1000.0,
            executor=self.executor,
        )

    async def resolve(self, ref: str, tenant: str) -> ResolvedModel:
        hit = self.resolver.cached(ref, tenant)
        if hit is not None:
            return hit
        return await run_in_threadpool(self.resolver.resolve, ref, tenant)

    async def load(self, model: ResolvedModel) -> Served:
        hit = self.cache.peek(model.model_dir)
        if hit is not None:
            return hit
        return await run_in_threadpool(self.load_blocking, model.model_dir)

    def observer(self, model: ResolvedModel, served: Served) -> PredictObserver | None:
        """The model's label-bound histograms, made on its first request and kept on its
        batcher (which observes each forward pass's batch size)."""
        obs = served.batcher.observer
        if obs is None and self.predict_metrics is not None:
            obs = served.batcher.observer = self.predict_metrics.bind(
                f"{model.name}:{model.version}"
            )
        return obs

    def load_blocking(self, model_dir: str) -> Served:
        contained_artifact(self.settings, model_dir)
        return self.cache.load(model_dir)

    def registry_changed(self, *, warm: str | None = None, evict: str | None = None) -> None:
        """Called (from a worker thread) after the registry was committed: references are read
        afresh, a deleted version leaves memory, and the version an alias now points at is
        loaded before the deploy call returns."""
        self.resolver.forget()
        if evict is not None:
            self.cache.evict(evict)
        if warm is not None:
            self.load_blocking(warm)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
