"""The local backend: objects are files under a root directory (today's artifact directory).

A write goes to a temporary file beside its final name, is flushed and fsynced, then renamed into
place (`os.replace` is atomic), and the directory is fsynced: a reader sees the whole old object,
the whole new one, or none, and a power cut cannot leave a half-written file under the key."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO

from tas.core import fsio
from tas.core.objstore.base import (
    RESERVED_PREFIXES,
    ObjectNotFound,
    ObjectStat,
    ObjectStore,
    check_key,
)


class _FileSink:
    def __init__(self, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        self._final = final
        self._tmp = final.parent / f"{fsio.TMP_PREFIX}{uuid.uuid4().hex}-{final.name}"
        self._f = open(self._tmp, "wb")  # noqa: SIM115 - closed by commit or abort

    def write(self, data: bytes) -> int:
        return self._f.write(data)

    def commit(self) -> None:
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self._tmp, self._final)
        except BaseException:
            self.abort()
            raise
        fsio.fsync_dir(self._final.parent)

    def abort(self) -> None:
        self._f.close()
        self._tmp.unlink(missing_ok=True)


class LocalStore(ObjectStore):
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.url = str(self.root)

    def path(self, key: str) -> Path:
        """The local file of `key` (code that needs a path can use it directly: no copy)."""
        return self.root / check_key(key)

    def _dir(self, prefix: str) -> Path:
        return self.root / check_key(prefix, allow_empty=True)

    def _sink(self, key: str) -> _FileSink:
        return _FileSink(self.root / key)

    def open_read(self, key: str) -> BinaryIO:
        path = self.path(key)
        try:
            return open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(self.describe(key)) from None

    def stat(self, key: str) -> ObjectStat | None:
        try:
            st = self.path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return ObjectStat(key, st.st_size) if os.path.isfile(self.path(key)) else None

    def list_objects(self, prefix: str = "") -> list[ObjectStat]:
        base = self._dir(prefix)
        out: list[ObjectStat] = []
        for folder, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if not d.startswith(RESERVED_PREFIXES)]
            rel = Path(folder).relative_to(self.root).as_posix()
            for name in files:
                if name.startswith(RESERVED_PREFIXES):
                    continue
                try:
                    size = os.stat(os.path.join(folder, name)).st_size
                except FileNotFoundError:  # deleted while listing
                    continue
                out.append(ObjectStat(name if rel == "." else f"{rel}/{name}", size))
        return sorted(out, key=lambda o: o.key)

    def list_children(self, prefix: str = "") -> list[str]:
        try:
            entries = list(os.scandir(self._dir(prefix)))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(
            e.name for e in entries if e.is_dir() and not e.name.startswith(RESERVED_PREFIXES)
        )

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            self.path(key).unlink()

    def delete_prefix(self, prefix: str) -> int:
        """The folder is first renamed aside (atomic), then deleted: a reader sees all of it or
        none of it, never a half-deleted folder."""
        folder = self.root / check_key(prefix)
        count = len(self.list_objects(prefix))
        trash = folder.parent / f"{fsio.TRASH_PREFIX}{uuid.uuid4().hex}"
        try:
            os.rename(folder, trash)
        except (FileNotFoundError, NotADirectoryError):
            return 0
        fsio.fsync_dir(folder.parent)
        shutil.rmtree(trash, ignore_errors=True)
        return count
