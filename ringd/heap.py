"""The daemon's heap on glibc: large blocks mmap'd, and free pages given back.

A daemon holds every spec and claim of the cluster (~1 KiB a child) and, while
someone lists every child, their rows and an encoded reply (~30 MB at 100,000
children). Freed, those are heap pages glibc keeps unless told otherwise.
Off glibc (no ``mallopt``/``malloc_trim``), both are no-ops.
"""

from __future__ import annotations

import ctypes

# glibc's mallopt parameter: allocations this big or bigger are mmap'd.
_M_MMAP_THRESHOLD = -3


def fix_mmap_threshold(size: int = 128 * 1024) -> bool:
    """Keep large allocations (a ring's 8 MiB arrays, a page of a list, a reply)
    mmap'd, so that each goes back to the system when freed. By default glibc
    raises the threshold to the largest block freed, up to 32 MiB: from then on
    large blocks come from the heap, which fragments and never shrinks (a daemon
    at 1,000 nodes held 94 MiB after five joins instead of 58). Returns whether it
    was set (False off glibc)."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, size))
    except (OSError, AttributeError):
        return False


def give_back() -> bool:
    """Return the heap's free pages to the system (``malloc_trim(0)``): after a
    listing of 100,000 children, 25 MiB of freed reply chunks that the heap kept
    (tried on a daemon: 299 -> 274 MiB). A few milliseconds; call it after freeing
    much, not often. Returns whether any memory was given back (False off glibc)."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False
