"""Keep a long-running process's memory flat (Linux, glibc).

Every radiograph passes through several multi-megabyte arrays (a 2048² image is 16 MB as float32),
allocated and freed by different threads. glibc raises its mmap threshold dynamically (up to 32 MB) after
the first such array is freed, so later ones come from per-thread heap arenas, which fragment and do not
shrink: resident memory creeps up over thousands of studies. Fixing the threshold at 1 MiB (which also
turns the dynamic adjustment off) returns every large array to the system when it is freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from functools import cache

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD_BYTES = 1 << 20


@cache
def fix_mmap_threshold() -> bool:
    """Set glibc's mmap threshold to 1 MiB once per process; False where there is no glibc (a no-op)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    logger.debug("mallopt(M_MMAP_THRESHOLD, %d) -> %s", MMAP_THRESHOLD_BYTES, ok)
    return ok
