"""What the engine needs of shared memory: a region it leases slices of, and the leases.

The media plane's ``SharedMemoryRegion`` and ``ReceivedLease`` are what runs; the
engine names only these protocols, so it depends on the shape of the seam, not on the
media plane's classes (which a test checks still fit it).
"""

from __future__ import annotations

from typing import Protocol


class Lease(Protocol):
    """A received sample's slice of the peer's segment, live until released."""

    @property
    def view(self) -> memoryview:
        """The slice, read-only; unusable once released."""
        ...

    def release(self) -> None:
        """End the lease, after the sample's acknowledgement was sent (SRV-6)."""
        ...


class Region(Protocol):
    """The peer's segment, mapped read-only for the stream's duration."""

    def lease(self, sequence_number: int, offset: int, length: int) -> Lease:
        """The bounds-checked slice a sample refers to (SHM-4)."""
        ...

    def close(self, *, force: bool = False) -> None:
        """Unmap; ``force`` releases the leases still live (a stream that failed)."""
        ...
