"""Where the API reads a model's files and a job's per-sample predictions from: the one resolution
every reader goes through (/predict's model cache, cards, both downloads, predictions), so the
local and the object-store set-ups differ in this module only.

A reference is one of two things:

- an absolute path (the local set-up, TAS_ARTIFACT_URL unset: the artifact directory every
  process shares): read in place, after a containment check, exactly as before there was a store;
- a key in the artifact store (a deployment that shares nothing but the store, where the registry
  row names the model bundle's key, e.g. `jobs/<id>/model`): the committed bundle at that key,
  fetched into this machine's bounded cache with every object verified against its manifest, and
  held from eviction until the caller's block ends (a model is loaded, an export built, a file
  read while it is held).

What a client gets when the store fails (README, "Serving"): a corrupt object or a
registered bundle without its manifest is a 502 naming the artifact store and the key (nothing
torn or altered is ever read); a store that does not answer is a 503 with Retry-After. Details
(the store's URL, the object, the exception) go to the server's log, not to the client."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tas.core.objstore import (
    BundleNotFound,
    InvalidKey,
    ObjectStoreError,
    open_bundle,
)
from tas.errors import ArtifactStoreError, ArtifactStoreUnavailable, DomainError, ModelNotFound
from tas.settings import Settings
from tas.store.artifacts import Artifacts, store_unreachable

log = logging.getLogger(__name__)


def contained_artifact(settings: Settings, model_dir: str) -> Path:
    """The artifact directory a registry row names, only if it lies inside the artifact store:
    paths are built by the server, and every read checks containment (a registry row that named
    `../` or an absolute path must never make the server read outside its store)."""
    root = settings.resolved_artifact_dir
    path = Path(model_dir).resolve()
    if not path.is_relative_to(root):
        raise ModelNotFound(model_dir.rsplit("/", 1)[-1])
    return path


def is_store_key(ref: str) -> bool:
    """Whether a registry row's `model_dir` names a key in the artifact store (relative) rather
    than a directory on the shared local disk (absolute)."""
    return not Path(ref).is_absolute()


def _local_disk(exc: BaseException, local: Path | None) -> bool:
    """Whether an OSError is this machine's own cache failing (a full disk, a permission), which is
    the server's fault (a logged 500), not the store's."""
    name = getattr(exc, "filename", None)
    return local is not None and bool(name) and Path(str(name)).is_relative_to(local)


@contextmanager
def store_errors(ref: str, local: Path | None = None) -> Iterator[None]:
    """Reading `ref` from the store inside this block: the store's failures become the domain
    errors the module docstring lists (a client error never reaches them: keys are the server's).
    `local`: this machine's cache root, whose own disk errors are left as they are."""
    try:
        yield
    except DomainError:
        raise
    except InvalidKey:
        # A key with `..`, a leading `/` or a reserved segment is never read, as an escaping path
        # is never read.
        raise ModelNotFound(ref.rsplit("/", 1)[-1]) from None
    except BundleNotFound:
        log.error("a registered bundle is missing from the artifact store: %s", ref)
        raise ArtifactStoreError(
            f"the artifact store has no committed copy of {ref!r} (its manifest is missing);"
            " it cannot be read until it is restored"
        ) from None
    except ObjectStoreError:  # BundleCorrupt, an object listed but missing
        log.error("a corrupt bundle in the artifact store: %s", ref, exc_info=True)
        raise ArtifactStoreError(
            f"the artifact store holds a corrupt copy of {ref!r} (an object differs from its"
            " manifest or is missing); it is not read until it is restored"
        ) from None
    except Exception as exc:
        if not isinstance(exc, store_unreachable()) or _local_disk(exc, local):
            raise
        log.warning("the artifact store did not answer for %s", ref, exc_info=True)
        raise ArtifactStoreUnavailable(
            f"the artifact store did not answer while reading {ref!r}; try again"
        ) from None


@contextmanager
def local_path(settings: Settings, artifacts: Artifacts, ref: str) -> Iterator[Path]:
    """A local folder holding what `ref` names (see the module docstring), for the block's
    duration. Raises ModelNotFound for a reference outside the store, ArtifactStoreError (502) for
    a missing or corrupt bundle, ArtifactStoreUnavailable (503) for a store that did not answer."""
    if not is_store_key(ref):
        yield contained_artifact(settings, ref)
        return
    with ExitStack() as held:
        with store_errors(ref, artifacts.cache.root):
            bundle = open_bundle(artifacts.store, ref)
            path = held.enter_context(artifacts.cache.bundle(bundle))
        yield path
