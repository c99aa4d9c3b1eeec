"""The fsspec backend: objects in any filesystem fsspec speaks, used for S3 (`s3://bucket/prefix`
through s3fs). Credentials, region and endpoint come from the standard AWS environment
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, `AWS_DEFAULT_REGION`,
`AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_S3` for MinIO, Ceph or any S3-compatible store), which
botocore reads itself: nothing here names a credential.

An upload is a multipart upload of `part_size` parts (one part in memory at a time); it becomes
visible only when it completes, and a failed one is aborted, so no partial object is ever visible
under its key. Listings are never cached: another process's write must be seen at once."""

from __future__ import annotations

import contextlib
from typing import Any, BinaryIO, cast

import fsspec

from tas.core.objstore.base import (
    CHUNK,
    RESERVED_PREFIXES,
    ObjectNotFound,
    ObjectStat,
    ObjectStore,
    check_key,
)

#: S3's smallest multipart part is 5 MiB; 16 MiB parts reach 160 GB in S3's 10,000 parts.
PART_SIZE = 16 << 20


class _FsspecSink:
    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, part_size: int) -> None:
        self._f = fs.open(path, "wb", block_size=part_size)

    def write(self, data: bytes) -> int:
        return cast(int, self._f.write(data))

    def commit(self) -> None:
        self._f.close()  # completes the upload: the object appears whole

    def abort(self) -> None:
        discard = getattr(self._f, "discard", None)
        if discard is not None:
            discard()  # S3: aborts the multipart upload
        # Closing a buffered fsspec file uploads what it holds; a discarded write must not be
        # completed by close() (or by the garbage collector calling it).
        self._f.closed = True


class FsspecStore(ObjectStore):
    def __init__(
        self, fs: fsspec.AbstractFileSystem, root: str, url: str, part_size: int = PART_SIZE
    ) -> None:
        self.fs = fs
        self.root = root.strip("/")
        self.url = url
        self.part_size = part_size

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def _key(self, path: str) -> str:
        return path.strip("/")[len(self.root) + 1 :]

    def _sink(self, key: str) -> _FsspecSink:
        return _FsspecSink(self.fs, self._path(key), self.part_size)

    def open_read(self, key: str) -> BinaryIO:
        try:
            return cast(BinaryIO, self.fs.open(self._path(check_key(key)), "rb", block_size=CHUNK))
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(self.describe(key)) from None

    def stat(self, key: str) -> ObjectStat | None:
        try:
            info: dict[str, Any] = self.fs.info(self._path(check_key(key)))
        except FileNotFoundError:
            return None
        return ObjectStat(key, int(info["size"])) if info.get("type") == "file" else None

    def list_objects(self, prefix: str = "") -> list[ObjectStat]:
        base = self._path(check_key(prefix, allow_empty=True))
        self.fs.invalidate_cache(base)
        found: dict[str, dict[str, Any]] = self.fs.find(base, detail=True)
        out = []
        for path, info in found.items():
            if info.get("type") != "file" or not path.strip("/").startswith(base + "/"):
                continue
            key = self._key(path)
            if any(part.startswith(RESERVED_PREFIXES) for part in key.split("/")):
                continue
            out.append(ObjectStat(key, int(info["size"])))
        return sorted(out, key=lambda o: o.key)

    def list_children(self, prefix: str = "") -> list[str]:
        base = self._path(check_key(prefix, allow_empty=True))
        self.fs.invalidate_cache(base)
        try:
            entries: list[dict[str, Any]] = self.fs.ls(base, detail=True)
        except FileNotFoundError:
            return []
        names = (e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries)
        return sorted(
            name
            for e, name in zip(entries, names, strict=True)
            if e.get("type") == "directory" and not name.startswith(RESERVED_PREFIXES)
        )

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(check_key(key)))

    def delete_prefix(self, prefix: str) -> int:
        keys = [o.key for o in self.list_objects(check_key(prefix))]
        if keys:
            # One request per 1,000 keys on S3.
            self.fs.rm([self._path(k) for k in keys])
            self.fs.invalidate_cache(self._path(prefix))
        return len(keys)


def s3_store(url: str) -> FsspecStore:
    """`s3://bucket[/prefix]`: the bucket must exist (buckets are provisioned, not created here)."""
    root = url.split("://", 1)[1].strip("/")
    if not root:
        raise ValueError(f"{url!r}: an S3 artifact URL names a bucket: s3://bucket[/prefix]")
    fs = fsspec.filesystem(
        "s3",
        # Another process's write must be seen by the next listing.
        use_listings_cache=False,
        # A store owns its filesystem: fsspec's shared instances carry an event loop that must not
        # cross a fork (the worker's prefork pool).
        skip_instance_cache=True,
        # Every part exactly `part_size` (the last excepted): bounded memory per upload, and some
        # S3-compatible stores (Cloudflare R2) refuse parts of different sizes.
        fixed_upload_size=True,
    )
    return FsspecStore(fs, root, url)
