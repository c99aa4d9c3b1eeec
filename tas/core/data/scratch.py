"""A decoded upload's array built on disk, a bounded piece at a time, then memory-mapped: decoding
an upload larger than memory (a CSV of a few GB, an archive of many images) holds one piece in
memory, never the whole array, and a caller that only needs the schema (the API, at upload time)
never reads the array back at all.

The file is an anonymous temporary file beside the upload (same disk; `O_TMPFILE` where the
filesystem has it, so no name ever appears there), removed by the kernel once the array and its
file are dropped. The map is copy-on-write: the array is writable like any other (torch wants one),
a write stays in this process's memory and never reaches the file. Pieces are written with
`write`/`pwrite`, not through the map, so the pages written count as page cache, not as the
process's resident memory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _temp_file(near: Path | None) -> Any:
    """An unnamed temp file in `near`'s folder, or the system's temp folder when that folder
    cannot take one (read-only, gone)."""
    if near is not None:
        try:
            return tempfile.TemporaryFile(dir=near.parent, prefix=".decoded-")
        except OSError:
            pass
    return tempfile.TemporaryFile(prefix="tas-decoded-")


class ScratchArray:
    """Rows of shape `row_shape` and `dtype`, written in order (`append`) or by index (`put`),
    then `array(n)`: the first n rows, memory-mapped. Close it (or use `with`) on error paths."""

    def __init__(self, row_shape: tuple[int, ...], dtype: Any, *, near: Path | None) -> None:
        self.row_shape = tuple(int(s) for s in row_shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fh = _temp_file(near)
        self.rows = 0  # rows appended

    def _bytes(self, block: np.ndarray, rows: int) -> memoryview:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape != (rows, *self.row_shape):
            raise ValueError(f"expected {rows} rows of {self.row_shape}, got {block.shape}")
        return memoryview(block.reshape(-1).view(np.uint8).data)

    def append(self, block: np.ndarray) -> None:
        """Rows after the last appended ones."""
        data = self._bytes(block, int(block.shape[0]))
        self._fh.write(data)
        self.rows += int(block.shape[0])

    def put(self, index: int, row: np.ndarray) -> None:
        """One row at its index (the rows between stay zero until written)."""
        data = self._bytes(row[None], 1)
        offset = index * self.row_bytes
        fd = self._fh.fileno()
        while data:
            written = os.pwrite(fd, data, offset)
            data, offset = data[written:], offset + written

    def array(self, rows: int | None = None) -> np.ndarray:
        """The first `rows` rows (default: those appended), mapped; the file is closed here (the
        map keeps it). The scratch cannot be used afterwards."""
        n = self.rows if rows is None else rows
        shape = (n, *self.row_shape)
        try:
            if n == 0 or self.row_bytes == 0:
                return np.zeros(shape, dtype=self.dtype)
            self._fh.flush()
            if os.fstat(self._fh.fileno()).st_size < n * self.row_bytes:
                os.ftruncate(self._fh.fileno(), n * self.row_bytes)
            mapped: np.ndarray = np.memmap(self._fh, dtype=self.dtype, mode="c", shape=shape)
            return mapped
        finally:
            self._fh.close()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ScratchArray:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
