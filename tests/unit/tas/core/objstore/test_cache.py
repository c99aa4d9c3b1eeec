"""The local cache of verified bundles: hits, LRU bound, entries in use, and several processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import time
from pathlib import Path

import pytest

from tas.core.objstore import (
    Bundle,
    BundleCorrupt,
    LocalCache,
    ObjectStore,
    open_bundle,
    open_store,
    write_bundle,
)
from tas.core.objstore.cache import LOCK, STALE_S

KB = 1024


def make(store: ObjectStore, prefix: str, size: int, files: int = 2) -> Bundle:
    with write_bundle(store, prefix) as w:
        for i in range(files):
            w.put_bytes(f"part{i}.bin" if i else "sub/part0.bin", os.urandom(size // files))
        return w.commit({"prefix": prefix})


def verify_dir(bundle: Bundle, folder: Path) -> None:
    for name, entry in bundle.manifest.objects.items():
        data = (folder / name).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry.size, entry.sha256), name


def entries(cache: LocalCache) -> set[str]:
    return {p.name for p in cache.entries.iterdir()}


def test_a_bundle_is_materialised_once_and_verified(store: ObjectStore, tmp_path: Path) -> None:
    bundle = make(store, "ck/a", 64 * KB)
    cache = LocalCache(tmp_path / "cache", max_bytes=1 << 20)
    with cache.bundle(bundle) as folder:
        verify_dir(bundle, folder)
        assert not any(p.name.startswith(".tmp-") for p in folder.rglob("*"))
    # A hit reads nothing from the store: its objects can be gone.
    store.delete_prefix("ck/a")
    with cache.bundle(bundle) as again:
        assert again == folder
        verify_dir(bundle, again)
    assert cache.stats().entries == 1 and cache.stats().bytes == 64 * KB


def test_one_object_is_materialised_under_its_name(store: ObjectStore, tmp_path: Path) -> None:
    bundle = make(store, "ck/a", 10 * KB)
    cache = LocalCache(tmp_path / "cache", max_bytes=1 << 20)
    with cache.object(bundle, "sub/part0.bin") as path:
        assert path.name == "part0.bin"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == (
            bundle.manifest.objects["sub/part0.bin"].sha256
        )
    assert cache.bundle_path(bundle).is_dir()


def test_a_corrupt_object_never_reaches_the_cache(store: ObjectStore, tmp_path: Path) -> None:
    bundle = make(store, "ck/a", 10 * KB)
    store.put_bytes(bundle.key("part1.bin"), os.urandom(5 * KB))  # same size, other bytes
    cache = LocalCache(tmp_path / "cache", max_bytes=1 << 20)
    with pytest.raises(BundleCorrupt, match="sha256"), cache.bundle(bundle):
        pass
    assert entries(cache) == set()
    assert list(cache.tmp.iterdir()) == []


def test_least_recently_used_entries_go_first_within_the_bound(
    store: ObjectStore, tmp_path: Path
) -> None:
    a, b, c, d = (make(store, f"ck/{n}", 100 * KB) for n in "abcd")
    cache = LocalCache(tmp_path / "cache", max_bytes=250 * KB)  # two bundles fit, not three
    keys = {}
    for bundle in (a, b, c):
        with cache.bundle(bundle) as folder:
            keys[bundle.name] = folder.name
        time.sleep(0.01)  # distinct last-use times
    assert entries(cache) == {keys["b"], keys["c"]}  # `a`, the oldest, made room for `c`
    assert cache.stats().bytes <= 250 * KB
    with cache.bundle(b):  # `b` is now more recent than `c`
        pass
    time.sleep(0.01)
    with cache.bundle(d) as folder:
        keys["d"] = folder.name
    assert entries(cache) == {keys["b"], keys["d"]}
    assert cache.stats().bytes <= 250 * KB


def test_an_entry_in_use_is_never_evicted(store: ObjectStore, tmp_path: Path) -> None:
    a, b = make(store, "ck/a", 100 * KB), make(store, "ck/b", 100 * KB)
    cache = LocalCache(tmp_path / "cache", max_bytes=1)  # nothing fits
    with cache.bundle(a) as held:
        with cache.bundle(b) as other:
            assert cache.evict() == []  # both in use
            verify_dir(a, held)
            verify_dir(b, other)
        assert cache.evict() == [other.name]  # `b` released: gone; `a` still held
        verify_dir(a, held)
    assert cache.evict() == [held.name]
    assert cache.stats().entries == 0


def test_leftovers_of_killed_processes_are_swept(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "cache", max_bytes=1 << 20)
    old = time.time() - STALE_S - 1
    dead, live, trash = cache.tmp / ".tmp-dead", cache.tmp / ".tmp-live", cache.trash / ".trash-x"
    for folder in (dead, live, trash):
        folder.mkdir()
        (folder / LOCK).touch()
        os.utime(folder, (old, old))
    import fcntl

    fd = os.open(live / LOCK, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a build still running in another process
    try:
        cache.evict()
        assert not dead.exists() and not trash.exists()
        assert live.exists()
    finally:
        os.close(fd)


def _fill(url: str, root: str, prefixes: list[str], rounds: int, seed: int) -> None:
    """One process using the cache: every bundle, in a shuffled order, `rounds` times; each file
    checked against its manifest while held."""
    store = open_store(url)
    bundles = [open_bundle(store, p) for p in prefixes]
    cache = LocalCache(root, max_bytes=250 * KB)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(bundles)
        for bundle in bundles:
            with cache.bundle(bundle) as folder:
                verify_dir(bundle, folder)
            with cache.object(bundle, "part1.bin") as path:
                assert path.stat().st_size == bundle.manifest.objects["part1.bin"].size


def test_processes_sharing_the_cache_do_not_corrupt_it(
    store: ObjectStore, store_url: str, tmp_path: Path
) -> None:
    """Three processes fetch six bundles (six times the bound) into one cache at once: each sees
    only complete, verified files, and the cache ends within its bound, holding only whole
    entries."""
    prefixes = [f"ck/{i}" for i in range(6)]
    bundles = [make(store, p, 100 * KB, files=3) for p in prefixes]
    root = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding s3fs's loop thread
    procs = [
        ctx.Process(target=_fill, args=(store_url, str(root), prefixes, 4, seed))
        for seed in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    cache = LocalCache(root, max_bytes=250 * KB)
    assert cache.stats().bytes <= 250 * KB
    by_key = {}
    for bundle in bundles:
        with cache.bundle(bundle) as folder:
            by_key[folder.name] = bundle
    for entry in cache.entries.iterdir():
        files = {p for p in entry.rglob("*") if p.is_file() and p.name != LOCK}
        if entry.name in by_key:
            verify_dir(by_key[entry.name], entry)
        else:  # a one-object entry
            assert len(files) == 1
    assert list(cache.tmp.iterdir()) == []


def test_a_content_addressed_object_is_cached_by_its_known_digest(
    store: ObjectStore, tmp_path: Path
) -> None:
    data = os.urandom(30 * KB)
    digest = hashlib.sha256(data).hexdigest()
    store.put_bytes(f"uploads/{digest}.zip", data)
    cache = LocalCache(tmp_path / "cache", max_bytes=1 << 20)
    with cache.blob(store, f"uploads/{digest}.zip", size=len(data), sha256=digest) as path:
        assert path.name == f"{digest}.zip" and path.read_bytes() == data
    store.put_bytes(f"uploads/{digest}.zip", os.urandom(30 * KB))  # replaced behind our back
    with (
        pytest.raises(BundleCorrupt, match="sha256"),
        cache.blob(store, f"uploads/{digest}.zip", size=len(data), sha256=digest[::-1]),
    ):
        pass
    with pytest.raises(FileNotFoundError), cache.blob(store, "uploads/none", size=1, sha256="0"):
        pass
