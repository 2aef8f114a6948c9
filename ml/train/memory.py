"""Memory handed back to the system while one process trains and scores model after model.

glibc keeps freed heap for reuse: without handing it back, a process that trains nine models in turn looks as
large as all of them together, and scoring in small batches grows the heap by gigabytes (ml.train.trainer).
"""

from __future__ import annotations

import ctypes
import gc


def release_freed_memory() -> None:
    """Hand the heap memory Python and numpy freed back to the system (glibc keeps it for reuse otherwise, and
    a process that trains nine models in turn then looks as large as all of them together)."""
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """glibc's malloc_trim: the free pages of the heap go back to the system. A loop of tensors of a few to
    a few tens of MB (DIN's attention over 2048 rows) otherwise grew the heap by 3 GB while scoring."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass
