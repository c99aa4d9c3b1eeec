"""The artifact store and this machine's cache of it, as the settings name them: the one place
that turns TAS_ARTIFACT_URL, TAS_CACHE_DIR and the cache bound into objects, for the worker
(checkpoints, models, reading uploads) and the API (uploads, serving, downloads) alike.

`remote` tells the two set-ups apart: without TAS_ARTIFACT_URL the store is the local artifact
directory, every process of the deployment shares it (one machine or a shared mount) and files
are read in place, as before there was a store; with it, nothing but the store is shared, and a
process reads what it needs through its own bounded cache."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import cache

from tas.core.objstore import LocalCache, ObjectStore, open_store
from tas.settings import Settings

MIB = 1 << 20


@dataclass(frozen=True)
class Artifacts:
    store: ObjectStore
    cache: LocalCache
    #: True when the store is not the local artifact directory (TAS_ARTIFACT_URL is set).
    remote: bool


_opened: dict[tuple[int, str, str, int], Artifacts] = {}
_lock = threading.Lock()


def open_artifacts(settings: Settings) -> Artifacts:
    """The deployment's store and this machine's cache, one per process and configuration. Per
    process: a store's client (s3fs keeps connections and an event loop) must not cross a fork,
    and a prefork worker's children each open their own."""
    key = (
        os.getpid(),
        settings.resolved_artifact_url,
        str(settings.object_cache_dir),
        settings.object_cache_max_mb,
    )
    with _lock:
        found = _opened.get(key)
        if found is None:
            found = Artifacts(
                store=open_store(settings.resolved_artifact_url),
                cache=LocalCache(settings.object_cache_dir, settings.object_cache_max_mb * MIB),
                remote=settings.remote_artifacts,
            )
            _opened[key] = found
        return found


@cache
def store_unreachable() -> tuple[type[BaseException], ...]:
    """What a store that does not answer raises: OSError (s3fs turns HTTP failures into it) and
    botocore's errors for a connection that got no response (imported on first use, and only if
    installed: only an S3 store can raise them, and botocore is slow to import)."""
    kinds: list[type[BaseException]] = [OSError]
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:  # no S3 support installed: no S3 store either
        pass
    else:
        kinds.append(BotoCoreError)
    return tuple(kinds)
