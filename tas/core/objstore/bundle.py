"""Bundles: a set of objects committed together (a checkpoint, a model version), with no rename.

An object store cannot rename a folder into place, so a bundle is made complete by its manifest,
written last:

    <prefix>/_manifest.json           {"format", "generation", "objects": {name: {size, sha256}},
                                       "meta": {...}, "created_at"}
    <prefix>/<generation>/<name>...   the objects, written first

A reader trusts only a prefix with a readable manifest, and verifies the size and sha256 of every
object it reads against it: objects without a manifest (a writer killed mid-upload), a manifest
whose objects are missing or differ (a later corruption, or two writers racing) are never used:
`open_bundle` raises, `list_bundles` skips what has no manifest, `latest_bundle` falls back to the
bundle before.

Each write puts its objects under a fresh generation folder and only then replaces the manifest
(one PUT, or one rename locally: atomic), so re-writing a bundle keeps the previous complete copy
readable until the new one is; the old generation is deleted after. Deleting a bundle deletes its
manifest first, so a half-deleted bundle is simply absent."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from tas.core.objstore.base import (
    CHUNK,
    ObjectNotFound,
    ObjectStat,
    ObjectStore,
    ObjectStoreError,
    check_key,
    join,
)

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
BUNDLE_FORMAT = 1


class BundleNotFound(ObjectStoreError, FileNotFoundError):
    """No committed bundle under the prefix (nothing there, or objects without a manifest)."""


class BundleCorrupt(ObjectStoreError):
    """A bundle's manifest is unreadable, or an object does not match its size or sha256."""


@dataclass(frozen=True)
class Entry:
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    generation: str
    objects: dict[str, Entry]
    meta: dict[str, Any]
    created_at: float
    #: sha256 of the manifest's bytes: names this exact bundle content (the local cache's key).
    sha256: str = ""

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "format": BUNDLE_FORMAT,
                "generation": self.generation,
                "objects": {
                    n: {"size": e.size, "sha256": e.sha256} for n, e in self.objects.items()
                },
                "meta": self.meta,
                "created_at": self.created_at,
            },
            indent=1,
            sort_keys=True,
        ).encode()

    @classmethod
    def parse(cls, data: bytes, where: str) -> Manifest:
        try:
            raw = json.loads(data)
            if raw.get("format") != BUNDLE_FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, expected {BUNDLE_FORMAT}")
            objects = {
                check_key(str(name)): Entry(int(e["size"]), str(e["sha256"]))
                for name, e in raw["objects"].items()
            }
            meta = raw.get("meta") or {}
            if not isinstance(meta, dict):
                raise ValueError("meta is not an object")
            return cls(
                check_key(str(raw["generation"])),
                objects,
                meta,
                float(raw["created_at"]),
                hashlib.sha256(data).hexdigest(),
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise BundleCorrupt(f"the manifest {where} is unreadable: {exc}") from None


class VerifyingReader:
    """A bundle object's bytes, read from the store as consumed, checked against the manifest:
    reading past the expected size, or reaching the end with another size or sha256, raises
    BundleCorrupt. What was read before the end is unverified until the end is reached."""

    def __init__(self, raw: BinaryIO, entry: Entry, where: str) -> None:
        self._raw = raw
        self._entry = entry
        self._where = where
        self._hash = hashlib.sha256()
        self._size = 0
        self._checked = False

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        data = self._raw.read(n) if n is not None and n > 0 else self._raw.read()
        self._hash.update(data)
        self._size += len(data)
        if self._size > self._entry.size:
            raise BundleCorrupt(f"{self._where}: more than the manifest's {self._entry.size} bytes")
        if not data or (n is None or n < 0):
            self._check()
        return data

    def _check(self) -> None:
        if self._checked:
            return
        self._checked = True
        if self._size != self._entry.size:
            raise BundleCorrupt(
                f"{self._where}: {self._size} bytes, the manifest says {self._entry.size}"
            )
        if self._hash.hexdigest() != self._entry.sha256:
            raise BundleCorrupt(f"{self._where}: its sha256 does not match the manifest")

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> VerifyingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fetch(reader: VerifyingReader, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with reader as src, open(path, "wb") as dst:
            while block := src.read(CHUNK):  # the last, empty, read checks the object
                dst.write(block)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def fetch_verified(store: ObjectStore, key: str, entry: Entry, path: Path | str) -> Path:
    """Download one object whose size and sha256 are known from elsewhere (a content-addressed
    upload) to a local file, verified as a bundle's objects are; ObjectNotFound when it is absent."""
    return _fetch(VerifyingReader(store.open_read(key), entry, store.describe(key)), path)


@dataclass
class Bundle:
    """A committed bundle: its manifest, read once; every object read is verified against it."""

    store: ObjectStore
    prefix: str
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.prefix.rsplit("/", 1)[-1]

    @property
    def meta(self) -> dict[str, Any]:
        return self.manifest.meta

    def names(self) -> list[str]:
        return sorted(self.manifest.objects)

    def key(self, name: str) -> str:
        return join(self.prefix, self.manifest.generation, name)

    def _entry(self, name: str) -> Entry:
        try:
            return self.manifest.objects[name]
        except KeyError:
            raise KeyError(f"{self.describe()} has no object {name!r}") from None

    def describe(self, name: str | None = None) -> str:
        return self.store.describe(self.key(name) if name else self.prefix)

    def open(self, name: str) -> VerifyingReader:
        entry = self._entry(name)
        try:
            raw = self.store.open_read(self.key(name))
        except ObjectNotFound:
            raise BundleCorrupt(
                f"{self.describe(name)} is missing (listed in its manifest)"
            ) from None
        return VerifyingReader(raw, entry, self.describe(name))

    def read_bytes(self, name: str) -> bytes:
        """The whole object in memory, verified: for small objects."""
        with self.open(name) as r:
            return r.read()

    def fetch(self, name: str, path: Path | str) -> Path:
        """Download one object to a local file, verified; on a mismatch the file is removed and
        BundleCorrupt raised."""
        return _fetch(self.open(name), path)

    def check(self, deep: bool = False) -> None:
        """Raise BundleCorrupt unless every object is there with its size (one listing); with
        `deep`, also read each one through and compare its sha256 (downloads the bundle)."""
        listed = {
            o.key: o.size
            for o in self.store.list_objects(join(self.prefix, self.manifest.generation))
        }
        for name, entry in self.manifest.objects.items():
            size = listed.get(self.key(name))
            if size is None:
                raise BundleCorrupt(f"{self.describe(name)} is missing (listed in its manifest)")
            if size != entry.size:
                raise BundleCorrupt(
                    f"{self.describe(name)}: {size} bytes, the manifest says {entry.size}"
                )
        if deep:
            for name in self.names():
                with self.open(name) as r:
                    while r.read(CHUNK):
                        pass

    def is_valid(self, deep: bool = False) -> bool:
        try:
            self.check(deep)
        except BundleCorrupt:
            return False
        return True


def _new_generation() -> str:
    """A generation's name starts with its creation time (hex nanoseconds), so a sweep can tell an
    abandoned write's age from its name alone (listings carry no times on every store)."""
    return f"g{time.time_ns():x}-{uuid.uuid4().hex[:8]}"


def _generation_age_s(name: str, now_ns: int) -> float | None:
    """Seconds since the generation `name` was started; None for a name no writer made."""
    if not name.startswith("g"):
        return None
    stamp = name[1:].split("-", 1)[0]
    try:
        return (now_ns - int(stamp, 16)) / 1e9
    except ValueError:
        return None


@dataclass
class BundleWriter:
    """Objects put through it go under a fresh generation of `prefix`; `commit` writes the manifest
    (the bundle exists from then on) and deletes older generations. Used as a context manager,
    leaving the block without a commit, or by an exception, deletes what was written."""

    store: ObjectStore
    prefix: str
    generation: str = field(default_factory=_new_generation)
    objects: dict[str, Entry] = field(default_factory=dict)
    committed: Manifest | None = None

    def __post_init__(self) -> None:
        check_key(self.prefix)

    def _key(self, name: str) -> str:
        if name in self.objects:
            raise ValueError(f"{name!r} is already in the bundle")
        if name == MANIFEST:
            raise ValueError(f"{MANIFEST!r} is the bundle's own")
        return join(self.prefix, self.generation, check_key(name))

    def _record(self, name: str, stat: ObjectStat) -> ObjectStat:
        assert stat.sha256 is not None
        self.objects[name] = Entry(stat.size, stat.sha256)
        return stat

    def put_file(self, name: str, path: Path | str) -> ObjectStat:
        return self._record(name, self.store.put_file(self._key(name), path))

    def put_bytes(self, name: str, data: bytes) -> ObjectStat:
        return self._record(name, self.store.put_bytes(self._key(name), data))

    def put_stream(self, name: str, src: BinaryIO) -> ObjectStat:
        return self._record(name, self.store.put_stream(self._key(name), src))

    @contextmanager
    def writer(self, name: str) -> Iterator[BinaryIO]:
        """A writable file object for one object (`torch.save(state, f)`)."""
        key = self._key(name)
        with self.store.writer(key) as out:
            yield out  # type: ignore[misc]
        self._record(name, out.stat())

    def commit(self, meta: dict[str, Any] | None = None) -> Bundle:
        """Write the manifest (the bundle is complete from this instant), then delete any older
        generation of the prefix."""
        if self.committed is not None:
            raise RuntimeError(f"{self.store.describe(self.prefix)} is already committed")
        manifest = Manifest(self.generation, dict(self.objects), dict(meta or {}), time.time())
        data = manifest.to_bytes()
        manifest = Manifest(
            manifest.generation,
            manifest.objects,
            manifest.meta,
            manifest.created_at,
            hashlib.sha256(data).hexdigest(),
        )
        self.store.put_bytes(join(self.prefix, MANIFEST), data)
        self.committed = manifest
        for child in self.store.list_children(self.prefix):
            if child != self.generation:
                self.store.delete_prefix(join(self.prefix, child))
        return Bundle(self.store, self.prefix, manifest)

    def abort(self) -> None:
        """Delete this write's objects (the bundle's previous commit, if any, is untouched)."""
        self.store.delete_prefix(join(self.prefix, self.generation))
        self.objects.clear()

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.committed is None:
            try:
                self.abort()
            except Exception:  # the original error matters more; the objects are never trusted
                log.warning("could not delete an aborted bundle write under %s", self.prefix)


def write_bundle(store: ObjectStore, prefix: str) -> BundleWriter:
    """A writer for the bundle at `prefix`: `with write_bundle(s, p) as w: w.put_file(...);
    w.commit(meta)`."""
    return BundleWriter(store, prefix)


def open_bundle(store: ObjectStore, prefix: str) -> Bundle:
    """The committed bundle at `prefix`. Raises BundleNotFound when it has no manifest,
    BundleCorrupt when the manifest is unreadable. Objects are verified as they are read."""
    key = join(check_key(prefix), MANIFEST)
    try:
        data = store.get_bytes(key)
    except ObjectNotFound:
        raise BundleNotFound(f"no committed bundle at {store.describe(prefix)}") from None
    return Bundle(store, prefix, Manifest.parse(data, store.describe(key)))


def list_bundles(store: ObjectStore, prefix: str, newest_first: bool = True) -> list[Bundle]:
    """The committed bundles directly under `prefix`, ordered by name (newest first when names sort
    in the order they were written: zero-padded positions, timestamps). Folders without a manifest
    (torn writes) are skipped, and so are unreadable manifests (logged)."""
    found = []
    for child in store.list_children(prefix):
        try:
            found.append(open_bundle(store, join(prefix, child)))
        except BundleNotFound:
            continue
        except BundleCorrupt as exc:
            log.warning("skipped: %s", exc)
    return sorted(found, key=lambda b: b.name, reverse=newest_first)


def latest_bundle(store: ObjectStore, prefix: str, deep: bool = False) -> Bundle | None:
    """The newest committed bundle under `prefix` whose objects are all there with their sizes
    (and sha256 with `deep`); older ones are tried in turn."""
    for bundle in list_bundles(store, prefix):
        try:
            bundle.check(deep)
        except BundleCorrupt as exc:
            log.warning("skipped: %s", exc)
            continue
        return bundle
    return None


def sweep_torn(store: ObjectStore, prefix: str, older_than_s: float = 3600.0) -> int:
    """Delete what writers killed mid-write left under the bundles directly under `prefix`:
    generations no manifest names, started more than `older_than_s` ago (a younger one may be a
    write still in progress in another process). Returns how many objects were deleted."""
    now = time.time_ns()
    deleted = 0
    for child in store.list_children(prefix):
        bundle_prefix = join(prefix, child)
        try:
            current: str | None = open_bundle(store, bundle_prefix).manifest.generation
        except BundleNotFound:
            current = None
        except BundleCorrupt:
            continue  # a person should look at it: nothing is deleted
        for generation in store.list_children(bundle_prefix):
            age = _generation_age_s(generation, now)
            if generation != current and age is not None and age > older_than_s:
                deleted += store.delete_prefix(join(bundle_prefix, generation))
    return deleted


def delete_bundle(store: ObjectStore, prefix: str) -> int:
    """Delete the bundle at `prefix`: its manifest first (from then on it is absent to readers),
    then its objects. Returns how many objects were deleted, the manifest included."""
    key = join(check_key(prefix), MANIFEST)
    had_manifest = store.stat(key) is not None
    store.delete(key)
    return store.delete_prefix(prefix) + int(had_manifest)
