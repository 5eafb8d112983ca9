"""What the ``motion`` detector costs per frame, against a plain frame difference.

For each frame size the detector runs over a short clip of moving synthetic shapes
(``avaproto.sources.synthetic``), so that it finds and boxes motion in every frame, as
it does on a live stream. The baseline, timed on the same frames in the same run, is
the first step of the simplest motion detector: the absolute difference of each frame
with the one before it, every pixel, in 16-bit integers. A ratio that stays flat (or
falls) as frames grow says the detector's cost follows the pixels it reads, with no
size where its grid or its grouping blows up.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..extensions.motion import MotionDetector
from ..sources.synthetic import synthetic_frames

#: Width x height: small square model inputs, common stream sizes, and odd ones.
SIZES: tuple[tuple[int, int], ...] = (
    (64, 48),
    (318, 318),
    (416, 416),
    (640, 360),
    (656, 260),
    (1280, 720),
    (1920, 1080),
)
#: Frames per clip: all within the synthetic source's first moving phase.
FRAMES = 24


@dataclass(frozen=True)
class Timing:
    width: int
    height: int
    #: Median seconds per frame of the detector and of the baseline.
    detect: float
    baseline: float
    #: Motion boxes reported per frame, on average: the detector did find the shapes.
    boxes: float

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def _per_frame(works: tuple[Callable[[], object], ...], frames: int, repeat: int) -> list[float]:
    """Per work, the median over ``repeat`` passes of a pass's time, divided by its frames.

    The passes alternate between the works, so that a machine busier at one moment
    than at another weighs on both sides of the ratio alike.
    """
    for work in works:
        work()  # warm up: caches, the grid of this size
    samples: list[list[float]] = [[] for _ in works]
    for _ in range(repeat):
        for work, times in zip(works, samples, strict=True):
            started = time.perf_counter()
            work()
            times.append((time.perf_counter() - started) / frames)
    return [statistics.median(times) for times in samples]


def measure_size(width: int, height: int, repeat: int = 10, frames: int = FRAMES) -> Timing:
    """Detector and baseline on the same clip of ``frames`` frames of one size."""
    clip = [f.rgb for f in synthetic_frames(width, height, count=frames + 1)]
    pairs = list(itertools.pairwise(clip))
    detector = MotionDetector()
    detector.detect(clip[0])
    found: list[int] = []

    def detect() -> None:
        found.extend(len(detector.detect(rgb)) for rgb in clip[1:])

    difference = np.empty((height, width, 3), np.int16)

    def baseline() -> None:
        for previous, current in pairs:
            np.subtract(current, previous, out=difference, dtype=np.int16)
            np.abs(difference, out=difference)

    detected, differenced = _per_frame((detect, baseline), frames, repeat)
    return Timing(width, height, detected, differenced, boxes=sum(found) / len(found))


def measure(
    sizes: tuple[tuple[int, int], ...] = SIZES, repeat: int = 10, frames: int = FRAMES
) -> list[Timing]:
    return [measure_size(width, height, repeat, frames) for width, height in sizes]


def report(results: list[Timing]) -> str:
    """A table per size; the ratio is what compares across machines and runs."""
    lines = [
        "motion detect per frame on moving shapes; baseline = |frame - previous| "
        "(int16, every pixel) on the same frames; ratio = detect median / baseline median",
        f"{'size':<11} {'MP':>6} {'detect ms':>10} {'ms/MP':>8} {'fps':>8} {'boxes':>6} "
        f"{'baseline ms':>12} {'ratio':>7}",
    ]
    for t in results:
        lines.append(
            f"{f'{t.width}x{t.height}':<11} {t.megapixels:>6.3f} {t.detect * 1e3:>10.3f} "
            f"{t.detect * 1e3 / t.megapixels:>8.2f} {1 / t.detect:>8.0f} {t.boxes:>6.2f} "
            f"{t.baseline * 1e3:>12.3f} {t.detect / t.baseline:>7.2f}"
        )
    return "\n".join(lines)


def run(repeat: int = 10, sizes: tuple[tuple[int, int], ...] = SIZES) -> str:
    """Measure and format the table; sizes are a parameter so a test can run it tiny."""
    return report(measure(sizes, repeat))
