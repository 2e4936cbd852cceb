"""Giving freed heap memory back to the system after a burst.

glibc keeps what the process freed for reuse: after reading a week of claims from the owners
topic, a page of stored claims, or tens of thousands of claims written at once, tens of MB
stay resident although nothing uses them (34 MB of 97 MB of heap after a week of 100 000 IPs'
claims, docs/performance.md). ``malloc_trim(0)`` returns the free pages of every arena.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim from the process's own symbols; None elsewhere (musl, macOS): nothing to do."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Return the heap's free pages to the kernel, and Arrow's pool's; True when glibc's gave some."""
    arrow = sys.modules.get("pyarrow")  # not imported for it: a process without Arrow buffers has none to free
    if arrow is not None:
        arrow.default_memory_pool().release_unused()
    trim = _malloc_trim()
    return trim is not None and bool(trim(0))
