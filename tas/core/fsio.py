"""Durable, atomic directory writes: a kill during a save must not tear the last good copy.
A directory is built under a temporary name, every file and the directory are fsynced,
then one `os.replace` makes it visible under its final name: readers see all of it or none of it."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_durable(path: Path, data: bytes) -> str:
    """Write, flush and fsync one file; return its sha256."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return sha256_bytes(data)


def fsync_dir(path: Path) -> None:
    """Persist a directory's entries (new names, renames); a no-op where directories can't be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_tmp_dir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    return tmp


def publish_dir(tmp: Path, final: Path) -> None:
    """fsync `tmp` and move it to `final` atomically. An existing `final` (a re-save after a resume
    from an older checkpoint, a re-registered model) is first moved aside, then deleted: at every
    instant `final` is either the old complete copy, absent, or the new complete copy."""
    fsync_dir(tmp)
    trash: Path | None = None
    if final.exists():
        trash = final.parent / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
        os.replace(final, trash)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def remove_stale_tmp(parent: Path, older_than_s: float = 600.0) -> None:
    """Delete leftovers of saves that were killed midway. Only old ones: a young one may belong to a
    save still running in another process."""
    if not parent.is_dir():
        return
    now = time.time()
    for p in parent.iterdir():
        if p.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            try:
                if now - p.stat().st_mtime > older_than_s:
                    shutil.rmtree(p, ignore_errors=True)
            except FileNotFoundError:
                pass
