"""Memory handed back to the system while one process trains and scores model after model.

glibc keeps freed heap for reuse: without handing it back, a process that trains nine models in turn looks as
large as all of them together, and scoring in small batches grows the heap by gigabytes (ml.train.trainer).
"""

from __future__ import annotations

import ctypes
import functools
import gc


def release_freed_memory() -> None:
    """Collect what Python still holds in cycles, then hand the freed heap back (trim_heap)."""
    gc.collect()
    trim_heap()


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl)
        return None


def trim_heap() -> None:
    """glibc's malloc_trim: the free pages of the heap go back to the system. A loop of tensors of a few to
    a few tens of MB (DIN's attention over 2048 rows) otherwise grew the heap by 3 GB while scoring."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
