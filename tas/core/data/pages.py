"""Handing a memory-mapped array's pages back to the kernel once a pass over it is done.

A memory-mapped file's pages that a process has read stay in its resident set while the map lives
(as RssFile): clean, and the kernel's to drop under pressure, but counted, and on a machine with
memory to spare never dropped. A dataset larger than memory is read through two such maps during
preprocessing (the decoded upload, then the split gathered from it), so without this the worker's
resident set would reach twice the dataset. `MADV_PAGEOUT` (Linux 5.4) reclaims the given pages at
once; it is only ever a hint (the data is read again from the file on the next access, nothing
changes), and it is applied to file-backed maps only: anonymous memory is left alone, since paging
it out would mean swapping."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys

import torch

#: <linux/mman.h>; not exported by Python's mmap module.
MADV_PAGEOUT = 21


def _file_backed(address: int) -> bool:
    """Whether `address` lies in a map of a file (an inode), from /proc/self/maps."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                span, _perms, _offset, _dev, inode, *_ = line.split()
                lo, hi = (int(x, 16) for x in span.split("-"))
                if lo <= address < hi:
                    return inode != "0"
    except (OSError, ValueError):
        pass
    return False


def page_out(t: torch.Tensor) -> bool:
    """Ask the kernel to reclaim the whole pages of `t`'s storage from this process, if the storage
    is a map of a file. Returns whether it was asked (False: not Linux, not a file map, or a kernel
    without MADV_PAGEOUT). The tensor stays valid: its pages are read again when touched."""
    if sys.platform != "linux" or t.device.type != "cpu":
        return False
    storage = t.untyped_storage()
    start, size = storage.data_ptr(), storage.nbytes()
    page = mmap.PAGESIZE
    lo = -(-start // page) * page  # whole pages inside the storage only
    hi = (start + size) // page * page
    if hi <= lo or not _file_backed(lo):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return int(libc.madvise(lo, hi - lo, MADV_PAGEOUT)) == 0
