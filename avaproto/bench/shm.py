"""What reaching a shared-memory frame costs a receiver: mapped, read, or already resident.

A pipeline's frame lies in its segment under /dev/shm. The receiver either maps the
segment (``access="map"``, zero-copy, but a segment the sender shrinks faults the
process) or reads each frame out with ``preadv`` into a pooled buffer of its own
(``access="read"``, the default, which a shrink cannot fault). Each figure is one frame:
take the lease (with its size check), get its bytes, read every one of them (``max``,
as a processor touches each pixel at least once), release the lease. The baseline is
the same read of a private buffer already resident in memory: the floor of any access.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..media.shared_memory import SharedMemoryArena, SharedMemoryRegion
from .pixels import _time

#: Frame sizes measured: a typical detector input and a full-HD frame, RGB24.
SIZES: tuple[tuple[int, int], ...] = ((416, 416), (1920, 1080))


@dataclass(frozen=True)
class Timing:
    size: str
    access: str
    median: float
    best: float


def measure(width: int, height: int, repeat: int = 200) -> list[Timing]:
    """The resident baseline first, then map, read, and read with the bytes left unused."""
    size = f"{width}x{height}"
    length = width * height * 3
    frame = np.random.default_rng(0).integers(0, 256, length, dtype=np.uint8).tobytes()
    resident = bytearray(frame)
    results = [
        Timing(size, "resident (floor)", *_time(lambda: np.frombuffer(resident).max(), repeat))
    ]
    with SharedMemoryArena.create(length, prefix="avaproto-bench-") as arena:
        slot = arena.allocate(length)
        slot.write(frame)
        slot.mark_sent(2)
        for access in ("map", "read"):
            with SharedMemoryRegion.open(arena.handle_name, length, access=access) as region:

                def touched(region: SharedMemoryRegion = region) -> None:
                    with region.lease(2, 0, length) as lease:
                        np.frombuffer(lease.view, np.uint8).max()

                results.append(Timing(size, access, *_time(touched, repeat)))
                if access == "read":

                    def unused(region: SharedMemoryRegion = region) -> None:
                        region.lease(2, 0, length).release()

                    results.append(Timing(size, "read, bytes unused", *_time(unused, repeat)))
    return results


def report(results: list[Timing]) -> str:
    """A table per frame; the ratio (to the resident floor of the same size) compares."""
    lines = [
        "shared-memory access, one frame (RGB24): lease, bytes, every byte read, release; "
        "ratio = median / resident median",
        f"{'size':<10} {'access':<20} {'median µs':>10} {'min µs':>8} {'ratio':>7}",
    ]
    floor: dict[str, float] = {}
    for timing in results:
        baseline = floor.setdefault(timing.size, timing.median)
        lines.append(
            f"{timing.size:<10} {timing.access:<20} {timing.median * 1e6:>10.1f} "
            f"{timing.best * 1e6:>8.1f} {timing.median / baseline:>7.2f}"
        )
    return "\n".join(lines)


def run(repeat: int = 200, sizes: Sequence[tuple[int, int]] = SIZES) -> str:
    """Measure and format the table; the sizes are a parameter so a test can run it tiny."""
    results: list[Timing] = []
    for width, height in sizes:
        results.extend(measure(width, height, repeat))
    return report(results)
