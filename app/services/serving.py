"""The serving side of the API in one object: reference → registered version → loaded model →
batched forward pass, plus what the registry routes tell it (alias moved, version deleted).

Every blocking step (a database read on a resolver miss, loading weights) runs on a worker thread;
on the hot path — a resolved reference, a cached model — a request touches neither and goes
straight to its model's batcher."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.services.artifacts import contained_artifact, local_path
from app.services.predictors import ModelResolver, PredictorCache, ResolvedModel, Served
from tas.store.artifacts import Artifacts, open_artifacts

if TYPE_CHECKING:
    from app.metrics import PredictMetrics, PredictObserver
from tas.settings import Settings

__all__ = ["Serving", "contained_artifact"]


class Serving:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        artifacts: Artifacts | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        #: The artifact store and this machine's cache of it (opened from the settings unless
        #: the app passes the one it opened).
        self.artifacts = artifacts or open_artifacts(settings)
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
            opener=partial(local_path, settings, self.artifacts),
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
        """Resolution (containment, or the store's verified bundle) happens in the cache's
        opener, only on a miss."""
        return self.cache.load(model_dir)

    def model_files(self, model_dir: str) -> AbstractContextManager[Path]:
        """A registry row's model folder, local for the block (cards and downloads)."""
        return local_path(self.settings, self.artifacts, model_dir)

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
