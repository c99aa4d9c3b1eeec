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
in the database are relative to the uploads directory and every read checks containment.

With an artifact store (TAS_ARTIFACT_URL set, `Artifacts.remote`), processes share no disk: a file
is still received into `.tmp` on the receiving machine (hashed and checked there), then streamed
to the store as a content-addressed object and the temp file dropped, so the API keeps no copy:

    <tenant prefix>uploads/datasets/<sha256>/<name>
    <tenant prefix>uploads/weights/<sha256>.safetensors

A reader fetches it through its machine's bounded cache, verified against the size and sha256 in
its row (`fetch`); the row's relative path stays what it is locally, `upload_key` maps it to the
object's key. An object store writes all or nothing under a key (a local file is renamed into
place, an S3 upload is aborted), so a reader never sees half an upload there either."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from tas.core.objstore import BundleCorrupt, ObjectStoreError
from tas.errors import InvalidUpload, body_error
from tas.settings import Settings
from tas.store.artifacts import open_artifacts

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


# ---------------------------------------------------------------------------------------------
# Uploads in the artifact store (TAS_ARTIFACT_URL set): objects named by content, no shared disk.

#: The folder of uploads below a tenant's prefix in the store (as `uploads` below the artifact
#: directory locally, the default uploads directory).
UPLOADS_PREFIX = "uploads/"


class StoredFileMissing(Exception):
    """An upload's bytes are not in the store (deleted, or never written), or not the bytes its
    row names (size or sha256 differ): the message says which, naming the key (for the server's
    log); `reason` says it without the key, for a job's submitter (who names the upload by its
    name and id: the key holds the tenant's prefix and the file's sha256)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def upload_key(relative: str) -> str:
    """The store key of an upload whose path relative to the uploads directory is `relative`
    (`<tenant prefix><datasets|weights>/...`): `<tenant prefix>uploads/<datasets|weights>/...`,
    so everything of a tenant's lies under its prefix in the store. ValueError for a path that
    is not a clean relative one."""
    parts = PurePosixPath(relative).parts
    if not parts or relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{relative!r} is not a path below the uploads directory")
    if parts[0] == "tenants" and len(parts) > 2:
        head, rest = parts[:2], parts[2:]
        return "/".join((*head, UPLOADS_PREFIX.rstrip("/"), *rest))
    return UPLOADS_PREFIX + "/".join(parts)


def store_upload(settings: Settings, spool: Spool, relative: str) -> None:
    """Put a finished spool's file where readers find it under `relative`: locally, moved into
    the uploads directory (`place`); with an artifact store, streamed to its object (skipped when
    an object of that size is there already: the key names the content), checked against the
    spool's hash, and the temp file dropped. Blocking I/O: call it from a worker thread."""
    artifacts = open_artifacts(settings)
    if not artifacts.remote:
        place(spool.path, contained(settings.resolved_uploads_dir, relative))
        return
    key = upload_key(relative)
    there = artifacts.store.stat(key)
    if there is None or there.size != spool.size:
        put = artifacts.store.put_file(key, spool.path)
        if put.sha256 != spool.sha256 or put.size != spool.size:
            # The temp file changed under us (a disk error): never leave other bytes under a key
            # that names these.
            artifacts.store.delete(key)
            raise ObjectStoreError(f"{key}: the upload changed while it was stored; send it again")
    spool.discard()


def upload_present(settings: Settings, relative: str) -> bool:
    """Whether the upload's bytes are where readers look (its file, or its object)."""
    artifacts = open_artifacts(settings)
    if not artifacts.remote:
        return contained(settings.resolved_uploads_dir, relative).is_file()
    return artifacts.store.stat(upload_key(relative)) is not None


def remove_upload(settings: Settings, relative: str) -> None:
    """Delete an upload's file (and its emptied `<sha256>` directory) or its object."""
    artifacts = open_artifacts(settings)
    if not artifacts.remote:
        remove_file(contained(settings.resolved_uploads_dir, relative))
        return
    artifacts.store.delete(upload_key(relative))


@contextlib.contextmanager
def fetch(settings: Settings, relative: str, *, size: int, sha256: str) -> Iterator[Path]:
    """A local path to the upload's bytes for the block: locally the file itself (read in place,
    as before there was a store); with an artifact store, this machine's cached copy, fetched and
    verified against `size` and `sha256` when absent and kept from eviction until the block ends.
    StoredFileMissing when the bytes are gone or are not the ones named."""
    artifacts = open_artifacts(settings)
    if not artifacts.remote:
        path = contained(settings.resolved_uploads_dir, relative)
        if not path.is_file():
            raise StoredFileMissing(
                f"{relative} is missing from the uploads directory",
                "its file is missing from the uploads directory",
            )
        yield path
        return
    key = upload_key(relative)
    with contextlib.ExitStack() as stack:
        try:
            path = stack.enter_context(
                artifacts.cache.blob(artifacts.store, key, size=size, sha256=sha256)
            )
        except FileNotFoundError as exc:
            raise StoredFileMissing(
                f"{key} is missing from the artifact store",
                "its file is missing from the artifact store",
            ) from exc
        except BundleCorrupt as exc:
            # The cause (chained) names the store's URL and this machine's cache; the message
            # names the key only, and the reason (what a job's submitter reads) not even that.
            raise StoredFileMissing(
                f"{key} in the artifact store is not the file uploaded (its size or sha256"
                " differs from the upload's)",
                "its file in the artifact store is not the file uploaded (its size or sha256"
                " differs from the upload's)",
            ) from exc
        yield path


def cached_copy(settings: Settings, relative: str, *, size: int, sha256: str) -> Path:
    """`fetch`'s path without holding it: for a caller that hands a path on (the init_from file a
    job starts from). With a store, the cached copy may be evicted by another process once this
    returns (a file already opened stays readable); locally it is the file itself."""
    with fetch(settings, relative, size=size, sha256=sha256) as path:
        return path
