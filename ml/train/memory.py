"""Memory handed back to the system while one process trains and scores model after model.

glibc keeps freed heap for reuse: without handing it back, a process that trains nine models in turn looks as
large as all of them together, and scoring in small batches grows the heap by gigabytes (ml.train.trainer).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def freed_when_done() -> Iterator[None]:
    """A block (a model's training, the encoding of the rows) whose own garbage is collected and handed back
    when it ends, every collection meanwhile leaving out the objects made before it (gc.freeze). A full
    collection walks every object of the process: in one that has imported Airflow, dbt, MLflow and torch
    (0.6-2 million objects, a test worker or a task process) each costs 0.35-1 s, and what a training must free
    is what it made. Not nested: the outermost block freezes and unfreezes, and one that starts while objects
    are frozen by someone else (another block, another thread, the Cosmos callback of
    ml.orchestration.freeze_surviving_objects) collects what is not frozen and leaves the rest as it is."""
    owner = gc.get_freeze_count() == 0
    if owner:
        gc.freeze()
    try:
        yield
    finally:
        gc.collect()
        if owner:
            gc.unfreeze()
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
