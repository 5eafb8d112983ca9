"""What ``to_rgb`` costs per pixel format, against merely moving the pixels.

For each format a frame (1920 x 1080 by default) is decoded and converted to RGB,
then written into a preallocated RGB array. The write makes the formats comparable:
a format whose ``to_rgb`` is a view would otherwise cost nothing, while a pipeline
that uses the pixels touches them at least once. The baseline is a plain
``numpy.copyto`` of an RGB frame of the same size: the floor of any conversion.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..media import frames
from ..messages import Encoding, PixelFormat
from ..protocol.pixel_formats import PIXEL_LAYOUTS
from ..protocol.video_format import VideoFormat


@dataclass(frozen=True)
class Timing:
    name: str
    median: float
    best: float
    view: bool | None = None


def _time(work: Callable[[], object], repeat: int, warmup: int = 2) -> tuple[float, float]:
    for _ in range(warmup):
        work()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), min(samples)


def measure(width: int = 1920, height: int = 1080, repeat: int = 20) -> list[Timing]:
    """The baseline first, then every pixel format of the contract."""
    generator = np.random.default_rng(0)
    source = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
    destination = np.empty_like(source)
    results = [Timing("copy (baseline)", *_time(lambda: np.copyto(destination, source), repeat))]
    for pixel_format in PIXEL_LAYOUTS:
        fmt = VideoFormat.checked(Encoding.RAW, pixel_format, width, height)
        data = frames.encode(source, fmt)

        def convert(fmt: VideoFormat = fmt, data: bytes = data) -> None:
            np.copyto(destination, frames.to_rgb(frames.decode(data, fmt), fmt))

        rgb = frames.to_rgb(frames.decode(data, fmt), fmt)
        view = bool(np.shares_memory(rgb, np.frombuffer(data, np.uint8)))
        results.append(Timing(PixelFormat(pixel_format).name or "", *_time(convert, repeat), view))
    return results


def report(results: list[Timing], width: int, height: int) -> str:
    """A table of the timings; the ratio is what compares across machines."""
    baseline = results[0].median
    lines = [
        f"to_rgb, {width}x{height}, then written into an RGB array; "
        "ratio = median / baseline median",
        f"{'format':<16} {'median ms':>10} {'min ms':>8} {'ratio':>7}  to_rgb",
    ]
    for timing in results:
        kind = "" if timing.view is None else ("view" if timing.view else "computed")
        lines.append(
            f"{timing.name:<16} {timing.median * 1e3:>10.2f} {timing.best * 1e3:>8.2f} "
            f"{timing.median / baseline:>7.2f}  {kind}"
        )
    return "\n".join(lines)


def run(repeat: int = 20, width: int = 1920, height: int = 1080) -> str:
    """Measure and format the table; the size is a parameter so a test can run it tiny."""
    return report(measure(width, height, repeat), width, height)
