"""Uploaded datasets and weights files: how their bytes are received and stored, and the rows that
make them a tenant's. Shared by the API (uploads) and the worker (reading them back); no HTTP here.

Layout under the uploads directory (`TAS_UPLOADS_DIR`, default `artifact_dir/uploads`, so workers
on other machines read them from the shared artifact store):

    .tmp/upload-*.part                 files being received (removed on every error path)
    <prefix>datasets/<sha256>/<name>   an uploaded dataset, stored once per tenant and content hash
    <prefix>weights/<sha256>.safetensors   an uploaded weights file

`<prefix>` is the tenant's (`tenant_prefix`): `tenants/<tenant>/`, or nothing for the tenant
`default`, whose files keep the layout they had before there were tenants. Two tenants uploading
the same bytes get a file each: deleting one tenant's never touches the other's, and neither
tenant's quota depends on the other.

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
from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from tas.errors import InvalidUpload, body_error
from tas.settings import Settings

if TYPE_CHECKING:
    from tas.core.data.archive import UploadLimits


#: How much of a file is held in memory before it is written out.
WRITE_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------
# Where a tenant's files live.

#: The tenant whose files stay at the roots of the artifact and uploads directories: every row
#: written before there were tenants belongs to it, and job directories and weights files are
#: found by id and hash, not by a stored path, so moving them would orphan them.
ROOT_TENANT = "default"

#: A tenant name is one path component: no separator, no `..`, nothing a filesystem treats
#: specially (tenant names are checked where keys are created; this guards every path built).
_PATH_SAFE_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def tenant_prefix(tenant: str) -> str:
    """The tenant's prefix below the artifact and uploads directories, as a relative POSIX path
    ending in `/` (empty for ROOT_TENANT). ValueError for a name that is not one path component."""
    if tenant == ROOT_TENANT:
        return ""
    if not _PATH_SAFE_TENANT.fullmatch(tenant):
        raise ValueError(f"tenant {tenant!r} cannot name a directory")
    return f"tenants/{tenant}/"


def tenant_root(root: Path, tenant: str) -> Path:
    """The tenant's directory under `root` (the artifact or the uploads directory)."""
    prefix = tenant_prefix(tenant)
    return root / prefix if prefix else root


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (0 when it does not exist), without following
    links. A file removed while the tree is walked is skipped, never an error."""
    total = 0
    stack = [path]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
    return total


# ---------------------------------------------------------------------------------------------
# Receiving: a temp file, hashed and counted as it is written.


class Spool:
    """A file being received into `<uploads>/.tmp`: hashed (sha256) and counted as it is written,
    refused (413, naming `field`) the moment it passes `max_bytes`. Blocking writes: call `write`
    from a worker thread. Use as a context manager, or call `discard` on every error path.

    `refusal` is the error for a file past `max_bytes` when that bound is not TAS_MAX_UPLOAD_MB
    (the room left in the tenant's storage quota), so the 413 names the limit that was hit."""

    def __init__(
        self,
        tmp_dir: Path,
        max_bytes: int,
        *,
        field: str = "file",
        refusal: Callable[[], InvalidUpload] | None = None,
    ) -> None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-", suffix=".part")
        self.path = Path(name)
        self._fh = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.max_bytes = max_bytes
        self.field = field
        self._refusal = refusal

    def refused(self) -> InvalidUpload:
        """The 413 for a file past `max_bytes`, naming the limit behind it."""
        if self._refusal is not None:
            return self._refusal()
        return too_large(self.field, self.max_bytes)

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise self.refused()
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
        max_total_pixels=settings.upload_max_total_pixels,
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
