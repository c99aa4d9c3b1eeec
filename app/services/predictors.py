"""Which model a `/predict` reference means, and the cache of loaded models.

`resolve` reads the registry (a job id, `name`, `name:version`, `name@alias`). `ModelResolver`
remembers answers for `ttl_s` so a hot `/predict` does not query the database per request; the
registry routes of this process call `forget()` after a change (an alias move, a deleted version),
so here the next prediction sees it at once, and other API processes within `ttl_s`.

`PredictorCache` keeps loaded models (with their request batchers) in LRU order, bounded both by
count and by the bytes of their weights."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from app.services.batching import Batcher
from tas.core.predictor import Predictor
from tas.store import registry as registry_store


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """What a request needs of a registered version, detached from any session."""

    name: str
    version: int
    job_id: str
    model_dir: str


class ModelResolver:
    """`resolve` with a short-lived memory (see the module docstring). Errors are not cached."""

    def __init__(self, sessions: sessionmaker[Session], ttl_s: float) -> None:
        self.sessions = sessions
        self.ttl_s = ttl_s
        self._memo: dict[tuple[str, str], tuple[float, ResolvedModel]] = {}
        self._generation = 0
        self._lock = threading.Lock()

    def cached(self, ref: str, tenant: str) -> ResolvedModel | None:
        hit = self._memo.get((tenant, ref))
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return None

    def resolve(self, ref: str, tenant: str) -> ResolvedModel:
        """Blocking (a database read on a miss): call from a worker thread."""
        hit = self.cached(ref, tenant)
        if hit is not None:
            return hit
        with self._lock:
            generation = self._generation
        with self.sessions() as session:
            mv = registry_store.resolve_model(session, ref, tenant=tenant)
            model = ResolvedModel(mv.name, mv.version, mv.job_id, mv.model_dir)
        with self._lock:
            if generation == self._generation and self.ttl_s > 0:  # no forget() raced this read
                self._memo[(tenant, ref)] = (time.monotonic() + self.ttl_s, model)
        return model

    def forget(self) -> None:
        """After a registry change: every reference is read afresh."""
        with self._lock:
            self._generation += 1
            self._memo = {}


@dataclass(slots=True)
class Served:
    """A loaded model and its request batcher."""

    predictor: Predictor
    batcher: Batcher
    nbytes: int


def _in_place(model_dir: str) -> AbstractContextManager[Path]:
    return nullcontext(Path(model_dir))


class PredictorCache:
    """Loaded models in LRU order, at most `size` of them and `max_bytes` of weights (the one just
    loaded always stays, even alone over the bound). Loading costs a file read, a checksum and a
    model build, so it runs on a worker thread; a hit is a dict lookup on the event loop.

    `opener` turns a registry row's `model_dir` into a local folder for the duration of a load
    (`app.services.artifacts.local_path`: in place, or the artifact store's verified bundle held
    in this machine's cache while the weights are read; once loaded, a model needs no file)."""

    def __init__(
        self,
        size: int,
        *,
        max_bytes: int = 1 << 62,
        max_batch: int = 64,
        max_wait_s: float = 0.0,
        executor: Executor | None = None,
        opener: Callable[[str], AbstractContextManager[Path]] = _in_place,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.size = size
        self.max_bytes = max_bytes
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.executor = executor or ThreadPoolExecutor(1, thread_name_prefix="tas-forward")
        self.opener = opener
        self._items: OrderedDict[str, Served] = OrderedDict()
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}

    def __contains__(self, model_dir: str) -> bool:
        return model_dir in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._items.values())

    def peek(self, model_dir: str) -> Served | None:
        """A hit, marked recently used; None on a miss (then `load` on a worker thread)."""
        with self._lock:
            hit = self._items.get(model_dir)
            if hit is not None:
                self._items.move_to_end(model_dir)
            return hit

    def load(self, model_dir: str) -> Served:
        """Blocking: the cached model, or load it (once, however many requests ask at once)."""
        hit = self.peek(model_dir)
        if hit is not None:
            return hit
        with self._lock:
            load_lock = self._load_locks.setdefault(model_dir, threading.Lock())
        with load_lock:
            hit = self.peek(model_dir)
            if hit is not None:
                return hit
            with self.opener(model_dir) as directory:
                predictor = Predictor.from_dir(directory)
            batcher = Batcher(
                predictor,
                max_batch=self.max_batch,
                max_wait_s=self.max_wait_s,
                executor=self.executor,
            )
            served = Served(predictor, batcher, predictor.nbytes)
            with self._lock:
                self._items[model_dir] = served
                self._shrink(keep=model_dir)
                self._load_locks.pop(model_dir, None)
            return served

    def get(self, model_dir: str) -> Predictor:
        return self.load(model_dir).predictor

    def evict(self, model_dir: str) -> bool:
        with self._lock:
            return self._items.pop(model_dir, None) is not None

    def _shrink(self, keep: str) -> None:
        total = sum(s.nbytes for s in self._items.values())
        while len(self._items) > 1 and (len(self._items) > self.size or total > self.max_bytes):
            oldest = next(iter(self._items))
            if oldest == keep:
                break
            total -= self._items.pop(oldest).nbytes
