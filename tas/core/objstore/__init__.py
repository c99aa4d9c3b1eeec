"""The artifact store: objects (checkpoints, model versions, exports, uploads) behind one interface,
selected by a URL, so that workers and the API need share no disk.

- `open_store(url)`: a local path or `file://` URL (the artifact directory, the default) or
  `s3://bucket/prefix` (S3 or any S3-compatible store, configured by the standard AWS environment).
  Backends are looked up in `BACKENDS` by the URL's scheme.
- `base`: the interface (put, get, open, list, delete a prefix), streamed in bounded chunks.
- `bundle`: a set of objects committed by a manifest written last, verified on every read.
- `cache`: a bounded, multi-process-safe local cache of verified bundles for code that needs paths.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tas.core.objstore.base import (
    CHUNK,
    InvalidKey,
    ObjectNotFound,
    ObjectStat,
    ObjectStore,
    ObjectStoreError,
)
from tas.core.objstore.bundle import (
    MANIFEST,
    Bundle,
    BundleCorrupt,
    BundleNotFound,
    BundleWriter,
    Manifest,
    delete_bundle,
    fetch_verified,
    latest_bundle,
    list_bundles,
    open_bundle,
    sweep_torn,
    write_bundle,
)
from tas.core.objstore.cache import CacheStats, LocalCache
from tas.core.objstore.local import LocalStore

__all__ = [
    "BACKENDS",
    "CHUNK",
    "MANIFEST",
    "Bundle",
    "BundleCorrupt",
    "BundleNotFound",
    "BundleWriter",
    "CacheStats",
    "InvalidKey",
    "LocalCache",
    "LocalStore",
    "Manifest",
    "ObjectNotFound",
    "ObjectStat",
    "ObjectStore",
    "ObjectStoreError",
    "delete_bundle",
    "fetch_verified",
    "latest_bundle",
    "list_bundles",
    "open_bundle",
    "open_store",
    "sweep_torn",
    "write_bundle",
]


def _local(url: str) -> ObjectStore:
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{url!r}: a file:// URL names a local path (file:///path)")
        return LocalStore(Path(unquote(parts.path)))
    return LocalStore(Path(url))


def _s3(url: str) -> ObjectStore:
    # Imported on use: s3fs (and botocore behind it) costs a second to import, and a local store
    # never needs it.
    from tas.core.objstore.remote import s3_store

    return s3_store(url)


#: URL scheme -> the builder of its store ("" is a plain local path).
BACKENDS: dict[str, Callable[[str], ObjectStore]] = {
    "": _local,
    "file": _local,
    "s3": _s3,
}


def open_store(url: str | Path) -> ObjectStore:
    """The store at `url`: a local path, `file:///path` or `s3://bucket[/prefix]`."""
    text = str(url)
    scheme = urlsplit(text).scheme if "://" in text else ""
    try:
        builder = BACKENDS[scheme]
    except KeyError:
        raise ValueError(
            f"{text!r}: unknown artifact store scheme {scheme!r}; known:"
            f" {', '.join(repr(s) for s in sorted(BACKENDS) if s)} or a local path"
        ) from None
    return builder(text)
