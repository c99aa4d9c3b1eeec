"""A bounded local cache of verified bundles and objects, for code that needs a file path
(`torch.load`, `safetensors.torch.load_file`, an ONNX runtime).

    <root>/entries/<key>/.lock        empty; its mtime is the entry's last use
    <root>/entries/<key>/<name>...    the files, verified against the bundle's manifest
    <root>/tmp/.tmp-<uuid>/           an entry being built
    <root>/trash/.trash-<uuid>/       an entry being deleted

An entry's key is derived from content: a whole bundle is keyed by its manifest's sha256 (which
names every object's sha256), one object by its sha256 and file name. An entry therefore never goes
stale: a re-written bundle has another manifest, hence another entry, and the old one ages out.

Safe for several processes on one machine: an entry is built in `tmp/`, each file downloaded and
verified (size, sha256) and fsynced, then the folder is renamed into `entries/` (atomic); when two
processes build the same entry, the second rename fails and its copy is dropped. A present entry is
complete. The bound is kept after every build: least recently used entries are deleted until the
cache holds at most `max_bytes`.

An entry in use is never deleted: a reader holds a shared `flock` on the entry's `.lock` for as long
as it uses the path (the `bundle` and `object` context managers), and eviction takes an exclusive,
non-blocking lock before it renames an entry away, skipping entries it cannot lock. Entries in use
can therefore hold the cache above its bound until they are released (one larger than the bound is
evicted at the first eviction after its release). A reader that locks an entry just as it is being
evicted sees the lock file gone from its path, and fetches again."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tas.core import fsio
from tas.core.objstore.base import ObjectStore, ObjectStoreError
from tas.core.objstore.bundle import Bundle, Entry, fetch_verified

LOCK = ".lock"
#: A build or a delete left by a killed process is swept after this long (a build in progress holds
#: its lock, so it is never swept whatever its age).
STALE_S = 600.0


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file `fd` has open (the entry was not moved away)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev)


def _files(entry: Path) -> dict[str, int]:
    """Relative path -> size of an entry's files (its lock excluded)."""
    out = {}
    for path in entry.rglob("*"):
        if path.is_file() and path.name != LOCK:
            out[path.relative_to(entry).as_posix()] = path.stat().st_size
    return out


class LocalCache:
    def __init__(self, root: Path | str, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be at least 0")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.entries = self.root / "entries"
        self.tmp = self.root / "tmp"
        self.trash = self.root / "trash"
        for d in (self.entries, self.tmp, self.trash):
            d.mkdir(parents=True, exist_ok=True)

    # --- use ---------------------------------------------------------------------------------------

    @contextmanager
    def bundle(self, bundle: Bundle) -> Iterator[Path]:
        """A local folder holding every object of `bundle` under its name, verified; kept from
        eviction until the block ends."""
        key = hashlib.sha256(f"bundle\0{bundle.manifest.sha256}".encode()).hexdigest()
        sizes = {n: e.size for n, e in bundle.manifest.objects.items()}

        def build(tmp: Path) -> None:
            for name in bundle.names():
                bundle.fetch(name, tmp / name)

        with self._use(key, sizes, build) as entry:
            yield entry

    @contextmanager
    def object(self, bundle: Bundle, name: str) -> Iterator[Path]:
        """A local file holding one object of `bundle`, verified, named as in the bundle (its last
        segment); kept from eviction until the block ends. Shared by every bundle holding the same
        bytes under the same file name."""
        entry_of = bundle.manifest.objects[name]
        base = name.rsplit("/", 1)[-1]
        key = hashlib.sha256(f"object\0{entry_of.sha256}\0{base}".encode()).hexdigest()

        def build(tmp: Path) -> None:
            bundle.fetch(name, tmp / base)

        with self._use(key, {base: entry_of.size}, build) as entry:
            yield entry / base

    @contextmanager
    def blob(self, store: ObjectStore, key: str, *, size: int, sha256: str) -> Iterator[Path]:
        """A local file holding the object at `key`, verified against the size and sha256 the
        caller knows it by (a content-addressed upload); kept from eviction until the block ends."""
        base = key.rsplit("/", 1)[-1]
        entry_key = hashlib.sha256(f"object\0{sha256}\0{base}".encode()).hexdigest()

        def build(tmp: Path) -> None:
            fetch_verified(store, key, Entry(size, sha256), tmp / base)

        with self._use(entry_key, {base: size}, build) as entry:
            yield entry / base

    def bundle_path(self, bundle: Bundle) -> Path:
        """The bundle's local folder, without holding it: another process's eviction may delete it
        at any time after this returns (a file already open stays readable on POSIX). Prefer the
        `bundle` context manager."""
        with self.bundle(bundle) as path:
            return path

    # --- entries -----------------------------------------------------------------------------------

    @contextmanager
    def _use(
        self, key: str, sizes: dict[str, int], build: Callable[[Path], None]
    ) -> Iterator[Path]:
        fd, entry = self._acquire(key, sizes, build)
        try:
            yield entry
        finally:
            os.close(fd)  # releases the shared lock

    def _acquire(
        self, key: str, sizes: dict[str, int], build: Callable[[Path], None]
    ) -> tuple[int, Path]:
        """(an fd holding a shared lock on the entry, the entry), building it when absent."""
        final = self.entries / key
        for _ in range(16):
            try:
                fd = os.open(final / LOCK, os.O_RDONLY)
            except FileNotFoundError:
                fd = -1
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_SH)
                if _same_file(fd, final / LOCK):
                    if self._complete(final, sizes):
                        os.utime(final / LOCK)
                        return fd, final
                    os.close(fd)
                    self._discard(final)  # tampered with by hand: away, then fetch again
                    continue
                os.close(fd)  # evicted while we waited: fetch again
                continue
            built = self._build(final, build)
            if built is not None:
                self.evict()
                return built, final
        raise ObjectStoreError(f"the cache entry {final} kept disappearing while being read")

    def _build(self, final: Path, build: Callable[[Path], None]) -> int | None:
        """Build the entry in tmp and rename it into place, holding its lock shared throughout;
        the lock's fd, or None when another process published the entry first."""
        tmp = self.tmp / f"{fsio.TMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        fd = os.open(tmp / LOCK, os.O_RDONLY | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            build(tmp)
            for path in tmp.rglob("*"):
                if path.is_file() and path.name != LOCK:
                    with open(path, "rb+") as f:
                        os.fsync(f.fileno())
            fsio.fsync_dir(tmp)
            try:
                os.rename(tmp, final)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # Another process published this entry first (it may even be evicted again by
                # now): drop our copy, and the caller looks again.
                os.close(fd)
                shutil.rmtree(tmp, ignore_errors=True)
                return None
        except BaseException:
            os.close(fd)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsio.fsync_dir(self.entries)
        return fd

    @staticmethod
    def _complete(entry: Path, sizes: dict[str, int]) -> bool:
        try:
            return _files(entry) == sizes
        except OSError:
            return False

    def _discard(self, entry: Path) -> bool:
        """Move the entry to trash and delete it, unless a reader holds it; whether it went."""
        try:
            fd = os.open(entry / LOCK, os.O_RDONLY)
        except FileNotFoundError:
            fd = -1  # not an entry we made (no lock): nobody can be using it through us
        try:
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False  # in use
                if not _same_file(fd, entry / LOCK):
                    return False  # already gone
            trash = self.trash / f"{fsio.TRASH_PREFIX}{uuid.uuid4().hex}"
            try:
                os.rename(entry, trash)
            except FileNotFoundError:
                return False
        finally:
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def _entries(self) -> list[tuple[Path, int, float]]:
        """(entry, bytes, last use) of every entry."""
        out = []
        for entry in self.entries.iterdir():
            try:
                size = sum(_files(entry).values())
                used = (entry / LOCK).stat().st_mtime
            except OSError:
                continue  # deleted while we looked, or half-made by hand
            out.append((entry, size, used))
        return out

    def stats(self) -> CacheStats:
        entries = self._entries()
        return CacheStats(len(entries), sum(size for _, size, _ in entries))

    def evict(self, max_bytes: int | None = None) -> list[str]:
        """Delete least recently used entries not in use until the cache holds at most `max_bytes`
        (default: the cache's bound); the keys deleted. Also sweeps builds and deletes that killed
        processes left."""
        bound = self.max_bytes if max_bytes is None else max_bytes
        entries = sorted(self._entries(), key=lambda e: e[2])
        total = sum(size for _, size, _ in entries)
        removed = []
        for entry, size, _ in entries:
            if total <= bound:
                break
            if self._discard(entry):
                total -= size
                removed.append(entry.name)
        self._sweep()
        return removed

    def _sweep(self) -> None:
        now = time.time()
        for folder in (self.tmp, self.trash):
            for path in folder.iterdir():
                with suppress(OSError):
                    if now - path.stat().st_mtime < STALE_S:
                        continue
                    if folder is self.tmp:
                        fd = os.open(path / LOCK, os.O_RDONLY)
                        try:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live build: raises
                        finally:
                            os.close(fd)
                    shutil.rmtree(path, ignore_errors=True)
