"""What the engine needs of shared memory: a region it leases slices of, and the leases.

The media plane's ``SharedMemoryRegion`` and ``ReceivedLease`` are what runs; the
engine names only these protocols, so it depends on the shape of the seam, not on the
media plane's classes (``mypy --strict``, in ``make test``, checks that they still fit
it: ``_fits`` below).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol


class Lease(Protocol):
    """A received sample's slice of the peer's segment, live until released.

    Taking a lease reads nothing: the bytes are fetched on the first use of ``view``
    (by the processor, through ``Frame.data``), so a sample nobody looks at costs no
    copy.
    """

    @property
    def view(self) -> memoryview:
        """The slice, read-only; unusable once released.

        The first use may raise ``ProtocolError`` (SHM-15: the peer shrank its segment),
        which ends the stream like any other violation.
        """
        ...

    @property
    def released(self) -> bool:
        """Whether ``release`` was called: the view may no longer be made or used."""
        ...

    def release(self) -> None:
        """End the lease, after the sample's acknowledgement was sent (SRV-6)."""
        ...


class Region(Protocol):
    """The peer's segment, open for the stream's duration."""

    def lease(self, sequence_number: int, offset: int, length: int) -> Lease:
        """The bounds-checked slice a sample refers to (SHM-4).

        Raises SHM-15 when the segment is already shorter than announced.
        """
        ...

    def close(self, *, force: bool = False) -> None:
        """Close; ``force`` releases the leases still live (a stream that failed)."""
        ...


if TYPE_CHECKING:
    from ..media.shared_memory import ReceivedLease, SharedMemoryRegion

    def _fits(region: SharedMemoryRegion, lease: ReceivedLease) -> tuple[Region, Lease]:
        return region, lease  # a type error here if the media plane's classes drift
