"""Uploaded datasets and weights files: how their bytes are received and stored, and the rows that
make them a tenant's. Shared by the API (uploads) and the worker (reading them back); no HTTP here.

Layout under the uploads directory (`TAS_UPLOADS_DIR`, default `artifact_dir/uploads`, so workers
on other machines read them from the shared artifact store):

    .tmp/upload-*.part                 files being received (removed on every error path)
    datasets/<sha256>/<file name>      an uploaded dataset, stored once per content hash
    weights/<sha256>.safetensors       an uploaded weights file

Files land by `os.replace` from `.tmp` (same filesystem: atomic), so two identical uploads racing
each other write the same bytes to the same name and neither can see a half-written file. Paths
in the database are relative to the uploads directory and every read checks containment."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from tas.errors import InvalidUpload, body_error
from tas.settings import Settings

if TYPE_CHECKING:
    from tas.core.data.archive import UploadLimits


#: How much of a file is held in memory before it is written out.
WRITE_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------
# Receiving: a temp file, hashed and counted as it is written.


class Spool:
    """A file being received into `<uploads>/.tmp`: hashed (sha256) and counted as it is written,
    refused (413, naming `field`) the moment it passes `max_bytes`. Blocking writes: call `write`
    from a worker thread. Use as a context manager, or call `discard` on every error path."""

    def __init__(self, tmp_dir: Path, max_bytes: int, *, field: str = "file") -> None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-", suffix=".part")
        self.path = Path(name)
        self._fh = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.max_bytes = max_bytes
        self.field = field

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise too_large(self.field, self.max_bytes)
        self._hash.update(data)
        self._fh.write(data)

    def finish(self) -> str:
        """Close the file (flushed and synced: it is about to be renamed into place); the sha256."""
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        return self._hash.hexdigest()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def discard(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()  # a no-op for the name once the file was moved into place


def too_large(field: str, max_bytes: int) -> InvalidUpload:
    return body_error(
        field,
        f"the upload is over the limit of {max_bytes / 2**20:g} MiB (TAS_MAX_UPLOAD_MB);"
        " send a smaller file or raise the limit",
        413,
    )


def tmp_dir(settings: Settings) -> Path:
    return settings.resolved_uploads_dir / ".tmp"


def safe_file_name(filename: str | None, default: str = "upload") -> str:
    """The last path component of a client's file name, reduced to `[A-Za-z0-9._-]`, no leading
    dot, at most 100 characters (the extension kept): a name the server can store it under."""
    base = PureWindowsPath(PurePosixPath(filename or "").name).name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip("._")
    if not cleaned:
        return default
    if len(cleaned) > 100:
        stem, dot, ext = cleaned.rpartition(".")
        cleaned = stem[: 99 - len(ext)] + dot + ext if dot and len(ext) < 20 else cleaned[:100]
    return cleaned


def upload_limits(settings: Settings) -> UploadLimits:
    from tas.core.data.archive import UploadLimits

    return UploadLimits(
        max_entries=settings.upload_max_entries,
        max_uncompressed_bytes=settings.upload_max_uncompressed_mb * 2**20,
        max_ratio=settings.upload_max_ratio,
        max_pixels=settings.upload_max_pixels,
        max_samples=settings.upload_max_samples,
        max_columns=settings.upload_max_columns,
    )


def fingerprint(sha256: str, options: dict[str, Any]) -> str:
    """The dataset's identity: its bytes and how they were read (target, task, size, format)."""
    blob = json.dumps(options, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{sha256}\n{blob}".encode()).hexdigest()


def contained(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{relative!r} lies outside {root}")
    return path


def place(tmp: Path, dest: Path) -> None:
    """Move a received file into its content-addressed place (atomic; identical bytes win either
    way). When the file is already there, the temp file is dropped."""
    if dest.exists():
        tmp.unlink(missing_ok=True)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)


def remove_file(path: Path) -> None:
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # the <sha256> directory, once empty
