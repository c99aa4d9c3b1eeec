"""The loaded-model cache: LRU by count and by memory; a load happens once."""

from __future__ import annotations

import threading

from app.services.predictors import PredictorCache
from tests.helpers.registry import Registry


def test_lru_by_count(registry: Registry) -> None:
    a, b, c = (registry.add(n, seed=i) for i, n in enumerate("abc"))
    cache = PredictorCache(2)
    cache.get(a.model_dir)
    cache.get(b.model_dir)
    cache.get(a.model_dir)  # a is now the most recently used
    cache.get(c.model_dir)
    assert a.model_dir in cache and c.model_dir in cache and b.model_dir not in cache
    assert len(cache) == 2


def test_lru_by_memory(registry: Registry) -> None:
    small = registry.add("small", hidden=(4,))
    big = registry.add("big", hidden=(256,))
    other = registry.add("other", hidden=(4,))
    cache = PredictorCache(10, max_bytes=big.model.state_dict()["1.weight"].numel() * 4 + 4096)
    cache.get(small.model_dir)
    cache.get(other.model_dir)
    assert len(cache) == 2
    cache.get(big.model_dir)  # over the byte bound: the older ones go, the new one stays
    assert big.model_dir in cache and len(cache) == 1
    assert cache.nbytes <= cache.max_bytes + 8192
    # one model bigger than the whole bound still serves (alone)
    tiny = PredictorCache(10, max_bytes=1)
    tiny.get(big.model_dir)
    tiny.get(small.model_dir)
    assert len(tiny) == 1 and small.model_dir in tiny


def test_concurrent_misses_load_once(registry: Registry, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tas.core import predictor as predictor_module

    m = registry.add("m")
    loads = []
    real = predictor_module.Predictor.from_dir.__func__  # type: ignore[attr-defined]

    def counting(cls, directory, device="cpu"):  # type: ignore[no-untyped-def]
        loads.append(directory)
        return real(cls, directory, device)

    monkeypatch.setattr(predictor_module.Predictor, "from_dir", classmethod(counting))
    cache = PredictorCache(4)
    got = []
    threads = [
        threading.Thread(target=lambda: got.append(cache.load(m.model_dir))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len({id(s) for s in got}) == 1


def test_evict(registry: Registry) -> None:
    m = registry.add("m")
    cache = PredictorCache(4)
    cache.get(m.model_dir)
    assert cache.evict(m.model_dir) and m.model_dir not in cache
    assert not cache.evict(m.model_dir)


def test_the_opener_holds_the_files_while_the_model_loads(registry: Registry) -> None:
    """A model is read through the opener (for a store key: the cache's verified bundle, held
    from eviction meanwhile), which is released once the weights are loaded; an opener's error
    caches nothing, and the next request tries again."""
    import shutil
    import tempfile
    from collections.abc import Iterator
    from contextlib import contextmanager
    from pathlib import Path

    m = registry.add("m")
    events: list[str] = []
    fail = [True]

    @contextmanager
    def opener(ref: str) -> Iterator[Path]:
        events.append(f"open {ref}")
        if fail[0]:
            raise OSError("the store did not answer")
        # The files exist only inside the block, as a cache entry may be evicted after it.
        with tempfile.TemporaryDirectory() as held:
            shutil.copytree(m.model_dir, Path(held) / "model")
            yield Path(held) / "model"
        events.append("release")

    cache = PredictorCache(4, opener=opener)
    try:
        cache.load("jobs/x/model")
    except OSError:
        pass
    else:
        raise AssertionError("the opener's error must reach the caller")
    assert "jobs/x/model" not in cache
    fail[0] = False
    served = cache.load("jobs/x/model")
    assert events == ["open jobs/x/model", "open jobs/x/model", "release"]
    assert cache.load("jobs/x/model") is served and len(events) == 3  # a hit opens nothing
