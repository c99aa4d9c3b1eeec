"""The interface every artifact store backend implements, and what they share.

A store holds objects under `/`-separated keys relative to its root (`ckpt/e1/model.safetensors`).
A prefix is a folder of keys, never a string prefix: `list_objects("ckpt/e1")` is what lies under
`ckpt/e1/`, not `ckpt/e10/` too, so a local directory and an S3 bucket answer alike.

Everything is streamed in `CHUNK`-sized pieces: an upload or a download holds a chunk (and, on S3, one
multipart part) in memory, never the whole object. Every write reports the object's size and sha256,
computed on the way, so a caller can record them (a bundle's manifest) without reading the object
back. A write is all or nothing under its key: a failed or interrupted write never leaves a partial
object visible under the final key (a local file is renamed into place, an S3 upload is aborted)."""

from __future__ import annotations

import hashlib
import io
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

#: Bytes moved per read or write when copying between a file and the store.
CHUNK = 4 << 20
#: Key segments that start with these are a backend's own (temporary files, trash): refused as keys
#: and never listed.
RESERVED_PREFIXES = (".tmp-", ".trash-")


class ObjectStoreError(Exception):
    """Base of the store's errors."""


class ObjectNotFound(ObjectStoreError, FileNotFoundError):
    """No object under the key (also a FileNotFoundError, so plain file-handling code copes)."""

    def __init__(self, url: str) -> None:
        super().__init__(f"no object at {url}")
        self.url = url


class InvalidKey(ObjectStoreError, ValueError):
    pass


@dataclass(frozen=True)
class ObjectStat:
    """An object's key, size in bytes and, where it was computed (a write, a verified read), sha256."""

    key: str
    size: int
    sha256: str | None = None


def check_key(key: str, *, allow_empty: bool = False) -> str:
    """`key` if it is a clean relative key: `/`-separated, no empty, `.` or `..` segment, no leading
    `/`, no backslash, no reserved segment. A key can then never name something outside the store's
    root, whatever the backend."""
    if key == "" and allow_empty:
        return key
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise InvalidKey(f"invalid object key {key!r}")
    for part in key.split("/"):
        if part in ("", ".", "..") or part.startswith(RESERVED_PREFIXES):
            raise InvalidKey(f"invalid object key {key!r}: segment {part!r}")
    return key


def join(*parts: str) -> str:
    """Keys joined with `/`, empty parts dropped."""
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


class Sink(Protocol):
    """A backend's write in progress: bytes go in, then `commit` makes the object visible under its
    key, or `abort` drops it (nothing visible)."""

    def write(self, data: bytes) -> int: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class HashingWriter(io.RawIOBase):
    """A writable file object over a sink that counts and hashes what passes through it (so
    `torch.save(obj, writer)` works, and the object's sha256 is known when it is closed)."""

    def __init__(self, key: str, sink: Sink) -> None:
        super().__init__()
        self.key = key
        self._sink = sink
        self._hash = hashlib.sha256()
        self._size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = bytes(data)
        self._sink.write(view)
        self._hash.update(view)
        self._size += len(view)
        return len(view)

    def stat(self) -> ObjectStat:
        return ObjectStat(self.key, self._size, self._hash.hexdigest())


class ObjectStore(ABC):
    """Objects under keys. Backends implement the abstract methods; the copying, hashing and
    convenience methods are shared. Instances are per process: create one after a fork."""

    #: The store's URL (a local path or `s3://bucket/prefix`), for messages.
    url: str

    # --- what a backend implements ---------------------------------------------------------------

    @abstractmethod
    def _sink(self, key: str) -> Sink:
        """A write to `key` (already checked), visible only once committed."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """The object's bytes as a file object, read from the backend as they are consumed.
        Raises ObjectNotFound."""

    @abstractmethod
    def stat(self, key: str) -> ObjectStat | None:
        """The object's size (sha256 None), or None when there is no object under `key`."""

    @abstractmethod
    def list_objects(self, prefix: str = "") -> list[ObjectStat]:
        """Every object under the folder `prefix` (recursively), sorted by key, with its size."""

    @abstractmethod
    def list_children(self, prefix: str = "") -> list[str]:
        """The names of the sub-folders directly under the folder `prefix`, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; no error when it is already gone."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under the folder `prefix`; returns how many there were."""

    # --- shared ----------------------------------------------------------------------------------

    def describe(self, key: str) -> str:
        """Where `key` lives, for messages."""
        return f"{self.url.rstrip('/')}/{key}"

    @contextmanager
    def writer(self, key: str) -> Iterator[HashingWriter]:
        """A writable file object for `key`: the object appears when the block ends normally and
        not at all when it raises. `writer.stat()` gives its size and sha256 afterwards."""
        sink = self._sink(check_key(key))
        out = HashingWriter(key, sink)
        try:
            yield out
        except BaseException:
            sink.abort()
            raise
        sink.commit()

    def put_stream(self, key: str, src: BinaryIO) -> ObjectStat:
        """Copy a readable file object to `key`, CHUNK bytes at a time."""
        with self.writer(key) as out:
            while block := src.read(CHUNK):
                out.write(block)
        return out.stat()

    def put_file(self, key: str, path: Path | str) -> ObjectStat:
        with open(path, "rb") as src:
            return self.put_stream(key, src)

    def put_bytes(self, key: str, data: bytes) -> ObjectStat:
        return self.put_stream(key, io.BytesIO(data))

    def get_stream(self, key: str, dst: BinaryIO) -> ObjectStat:
        """Copy the object into a writable file object, CHUNK bytes at a time; its size and sha256."""
        h = hashlib.sha256()
        size = 0
        with self.open_read(check_key(key)) as src:
            while block := src.read(CHUNK):
                dst.write(block)
                h.update(block)
                size += len(block)
        return ObjectStat(key, size, h.hexdigest())

    def get_file(self, key: str, path: Path | str) -> ObjectStat:
        """Download the object to a local file (created or replaced); its size and sha256."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as dst:
            return self.get_stream(key, dst)

    def get_bytes(self, key: str) -> bytes:
        """The whole object in memory: for small ones (a manifest, a JSON record)."""
        buf = io.BytesIO()
        self.get_stream(key, buf)
        return buf.getvalue()

    def exists(self, key: str) -> bool:
        return self.stat(check_key(key)) is not None
