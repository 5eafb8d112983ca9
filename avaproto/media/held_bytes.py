"""Bytes of one kind held across the process, against a bound.

Counted where they are taken and given back: the read buffers the shared-memory regions
pool, the segments they map, the images extensions decode. Given back from finalizers
too (an array's, a region's), so the lock is reentrant: a garbage collection inside a
count can run one on the same thread.
"""

from __future__ import annotations

import threading


class HeldBytes:
    """Bytes held now, against ``limit`` (or the one each ``admit`` gives)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.RLock()

    def admit(self, size: int, limit: int | None = None) -> bool:
        """Take ``size`` bytes if they stay within the limit; whether they did."""
        bound = self.limit if limit is None else limit
        with self._lock:
            if bound is not None and self.held + size > bound:
                return False
            self.held += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self.held -= size


__all__ = ["HeldBytes"]
