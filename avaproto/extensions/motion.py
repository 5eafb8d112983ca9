"""``motion``: a real motion detector in numpy, with no model weights.

Per stream, every frame is reduced to a small grey picture (block means over a grid
about ``GRID_WIDTH`` cells wide), compared with a running background (an exponential
average of earlier frames), and the cells that differ by more than a threshold are
grouped into regions (8-connected, after joining cells at most one apart). Each region
of at least ``minArea`` of the frame becomes a Motion inference with a normalized box.
The first frame of a stream only starts the background: nothing has moved yet.

The pipeline tunes it through its extension configuration, a JSON object:

==================  =======  ===============================================
key                 default  meaning
==================  =======  ===============================================
``sensitivity``     0.5      0 (only big changes) .. 1 (the faintest change)
``minArea``         0.0005   smallest region reported, as a fraction of the frame
``learningRate``    0.2      how fast the background absorbs a change, (0, 1]
==================  =======  ===============================================

Anything else (not JSON, an unknown key, a value out of range) refuses the stream with
INVALID_ARGUMENT naming the key (CFG-3).

The extension is ``sequential``: the engine hands it one frame at a time, in stream
order, since each frame is compared with the ones before it. The detector's lock only
guards direct use of one detector from several threads.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import numpy as np
import numpy.typing as npt

from ..engine.extension import ExtensionRefused, Result
from ..engine.frame import Frame
from ..messages import Inference, InferenceType, Motion, Rectangle
from ..protocol.descriptor import StreamDescriptor

#: Cells across the frame in the detection grid: enough for a mouse pointer at 1080p.
GRID_WIDTH = 160
#: Grey-level difference (0..255) that counts as change at sensitivity 0 and at 1.
THRESHOLD_AT_0, THRESHOLD_AT_1 = 60.0, 4.0


@dataclass(frozen=True)
class MotionSettings:
    sensitivity: float = 0.5
    min_area: float = 0.0005
    learning_rate: float = 0.2

    @property
    def threshold(self) -> float:
        """Grey-level difference that marks a cell as changed."""
        return THRESHOLD_AT_0 + (THRESHOLD_AT_1 - THRESHOLD_AT_0) * self.sensitivity

    @classmethod
    def from_configuration(cls, text: str) -> MotionSettings:
        """Settings from the pipeline's extension_configuration; empty means defaults."""
        if not text.strip():
            return cls()
        try:
            given = json.loads(text)
        except json.JSONDecodeError as error:
            raise ExtensionRefused(
                f"motion: extension_configuration is not JSON ({error.msg} at "
                f"character {error.pos}); expected an object such as "
                '{"sensitivity": 0.7, "minArea": 0.001}'
            ) from None
        if not isinstance(given, dict):
            raise ExtensionRefused(
                f"motion: extension_configuration must be a JSON object, got {type(given).__name__}"
            )
        values: dict[str, float] = {}
        for key, value in given.items():
            field, low, high, low_open = _KEYS.get(key, ("", 0.0, 0.0, False))
            if not field:
                raise ExtensionRefused(
                    f"motion: unknown configuration key {key!r}; expected one of "
                    + ", ".join(sorted(_KEYS))
                )
            number = _number(value)
            if number is None or not (
                (low < number if low_open else low <= number) and number <= high
            ):
                interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
                raise ExtensionRefused(
                    f"motion: configuration {key} = {json.dumps(value)} is not a number "
                    f"in {interval}"
                )
            values[field] = number
        return cls(**values)


#: Configuration key -> (field, lowest, highest, lowest excluded).
_KEYS: dict[str, tuple[str, float, float, bool]] = {
    "sensitivity": ("sensitivity", 0.0, 1.0, False),
    "minArea": ("min_area", 0.0, 1.0, False),
    "learningRate": ("learning_rate", 0.0, 1.0, True),
}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Region:
    """A moving region as fractions of the frame."""

    left: float
    top: float
    width: float
    height: float

    def to_inference(self) -> Inference:
        box = Rectangle(l=self.left, t=self.top, w=self.width, h=self.height)
        return Inference(type=InferenceType.MOTION, motion=Motion(box=box))


class MotionDetector:
    """The detector of one stream: a background and the settings to compare with it."""

    def __init__(self, settings: MotionSettings | None = None) -> None:
        self.settings = settings or MotionSettings()
        self._background: npt.NDArray[np.float32] | None = None
        self._lock = threading.Lock()

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Region]:
        """The regions of ``rgb`` (height x width x 3) that differ from the background."""
        grey, cell = _grey_grid(rgb)
        with self._lock:
            background = self._background
            if background is None or background.shape != grey.shape:
                self._background = grey
                return []
            changed = np.abs(grey - background) > self.settings.threshold
            rate = self.settings.learning_rate
            background *= 1.0 - rate
            background += rate * grey
        height, width = rgb.shape[:2]
        return [
            region
            for region in _regions(changed, cell, width, height)
            if region.width * region.height >= self.settings.min_area
        ]


def _grey_grid(rgb: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.float32], int]:
    """Block means of the luma over square cells; returns the grid and the cell size."""
    height, width = rgb.shape[:2]
    cell = max(1, width // GRID_WIDTH)
    # Sample at most 4x4 pixels per cell: the mean barely changes, the cost does.
    step = max(1, cell // 4)
    cell = cell // step * step
    rows, cols = height // cell, width // cell
    if rows == 0 or cols == 0:
        rows, cols, cell, step = height, width, 1, 1
    sampled = rgb[: rows * cell : step, : cols * cell : step].astype(np.float32)
    luma = sampled @ np.array([0.299, 0.587, 0.114], np.float32)
    per = cell // step
    grid = luma.reshape(rows, per, cols, per).mean(axis=(1, 3), dtype=np.float32)
    return grid, cell


def _regions(changed: npt.NDArray[np.bool_], cell: int, width: int, height: int) -> list[Region]:
    """Group changed cells into 8-connected regions, joining cells one apart."""
    joined = changed.copy()
    joined[1:] |= changed[:-1]
    joined[:-1] |= changed[1:]
    grown = joined.copy()
    grown[:, 1:] |= joined[:, :-1]
    grown[:, :-1] |= joined[:, 1:]
    rows, cols = grown.shape
    seen = np.zeros_like(grown)
    regions = []
    for start in zip(*np.nonzero(changed), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue = deque([start])
        top, left, bottom, right = start[0], start[1], start[0], start[1]
        while queue:
            r, c = queue.popleft()
            if changed[r, c]:
                top, bottom = min(top, r), max(bottom, r)
                left, right = min(left, c), max(right, c)
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    nr, nc = r + dr, c + dc
                    if 0 <= nr < rows and 0 <= nc < cols and grown[nr, nc] and not seen[nr, nc]:
                        seen[nr, nc] = True
                        queue.append((nr, nc))
        regions.append(
            Region(
                left=min(1.0, left * cell / width),
                top=min(1.0, top * cell / height),
                width=min(1.0, (right - left + 1) * cell / width),
                height=min(1.0, (bottom - top + 1) * cell / height),
            )
        )
    return regions


class MotionExtension:
    """The ``motion`` built-in: one detector per stream, configured by the pipeline."""

    #: Each frame is compared with the earlier ones: process them in order.
    sequential = True

    def __init__(self) -> None:
        self.detector = MotionDetector()

    async def open(self, descriptor: StreamDescriptor) -> None:
        self.detector = MotionDetector(
            MotionSettings.from_configuration(descriptor.extension_configuration)
        )

    async def process(self, frame: Frame) -> Result:
        if frame.data is None:
            return None  # inferences only: nothing to look at
        regions = await anyio.to_thread.run_sync(self._detect, frame)
        return [region.to_inference() for region in regions]

    def _detect(self, frame: Frame) -> list[Region]:
        return self.detector.detect(frame.rgb())

    async def close(self) -> None:
        return None
