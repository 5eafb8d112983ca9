"""``motion``: a real motion detector in numpy, with no model weights.

Per stream, every frame is reduced to a small grey picture (block means over square
cells, about ``GRID_CELLS`` of them whatever the frame's size), compared with a running
background (an exponential average of earlier frames), and the cells that differ by
more than a threshold are grouped into regions (8-connected, after joining cells at most
one apart). Each region of at least ``minArea`` of the frame becomes a Motion inference
with a normalized box. The first frame of a stream only starts the background: nothing
has moved yet.

The grid scales with the frame, so a frame costs about the same number of cells whatever
its size, and every step is whole-array numpy: a frame costs reading its sampled pixels
plus a bounded amount of work on the grid, never a Python loop per cell or per pixel.

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

import functools
import json
import math
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import anyio.to_thread
import numpy as np
import numpy.typing as npt

from ..engine.extension import ExtensionRefused, Result
from ..engine.frame import Frame
from ..messages import Inference, InferenceType, Motion, Rectangle
from ..protocol.descriptor import StreamDescriptor

#: Cells in the grid, about, whatever the frame's size: 160 x 90 at 16:9, 106 x 106 at
#: 318 x 318. Fine enough for a mouse pointer at 1080p (12 px cells), and a bound on the
#: work per frame. (Cells stay square: a frame hundreds of times wider than high gets
#: more, never more than its pixels.)
GRID_CELLS = 160 * 90
#: Pixels read per cell along each axis, at least (up to 7 once cells are 4 px or more):
#: the mean of a few samples barely differs from the mean of all, the cost does.
SAMPLES = 4
#: Luma weights (ITU-R BT.601), applied to the per-cell sums of R, G and B.
LUMA = (0.299, 0.587, 0.114)
#: Grey-level difference (0..255) that counts as change at sensitivity 0 and at 1.
THRESHOLD_AT_0, THRESHOLD_AT_1 = 60.0, 4.0


#: The longest configuration read: the settings are a handful of numbers.
MAX_CONFIGURATION_CHARACTERS = 4096


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
        if len(text) > MAX_CONFIGURATION_CHARACTERS:
            # Parsed on the event loop: a megabyte of JSON took 38 ms a stream.
            raise ExtensionRefused(
                f"motion: extension_configuration of {len(text)} characters; its settings "
                f"take a few dozen, and at most {MAX_CONFIGURATION_CHARACTERS} are read"
            )
        try:
            given = json.loads(text)
        except json.JSONDecodeError as error:
            raise ExtensionRefused(
                f"motion: extension_configuration is not JSON ({error.msg} at "
                f"character {error.pos}); expected an object such as "
                '{"sensitivity": 0.7, "minArea": 0.001}'
            ) from None
        except (RecursionError, ValueError) as error:
            # Nested past the parser's depth, or an integer of more digits than Python
            # converts: JSON, but no configuration of this extension.
            raise ExtensionRefused(
                f"motion: extension_configuration cannot be read ({type(error).__name__}); "
                'expected an object such as {"sensitivity": 0.7, "minArea": 0.001}'
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
        self._size = (0, 0)
        self._lock = threading.Lock()

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Region]:
        """The regions of ``rgb`` (height x width x 3) that differ from the background."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"motion needs height x width x 3 RGB pixels, got shape {rgb.shape}")
        height, width = rgb.shape[:2]
        grid = Grid.of(height, width)
        grey = grid.grey(rgb)
        with self._lock:
            background = self._background
            if background is None or self._size != (height, width):
                # A new size (sizes may share a grid shape) starts a new background.
                self._background, self._size = grey, (height, width)
                return []
            changed = np.abs(grey - background) > self.settings.threshold
            rate = self.settings.learning_rate
            background *= 1.0 - rate
            background += rate * grey
        return grid.regions(changed, self.settings.min_area)


@dataclass(frozen=True, eq=False)
class Grid:
    """Where the cells of one frame size lie, and which pixels stand for each.

    Cells are squares of ``cell`` pixels. When a side is not a multiple of ``cell``, its
    last cell is moved back to end on the frame's edge (overlapping its neighbour), so
    that every cell has the same number of samples and the whole frame is watched.
    """

    height: int
    width: int
    cell: int
    #: Samples per cell along each axis.
    per: int
    #: First pixel row (column) of each row (column) of cells.
    row_starts: npt.NDArray[np.intp]
    col_starts: npt.NDArray[np.intp]
    #: The pixel rows read, cell by cell: ``per`` consecutive ones for each row of cells.
    row_samples: npt.NDArray[np.intp]
    #: The RGB columns (3 per pixel) read, sample by sample: first every cell's first
    #: pixel, then every cell's second, and so on.
    col_samples: npt.NDArray[np.intp]

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def of(height: int, width: int) -> Grid:
        """The grid of a frame size; cached, since a stream keeps its size."""
        if height <= 0 or width <= 0:
            raise ValueError(f"motion needs a frame of at least 1x1 pixels, got {width}x{height}")
        cell = max(1, math.ceil(math.sqrt(height * width / GRID_CELLS)))
        step = max(1, cell // SAMPLES)
        per = -(-cell // step)  # at most 7: sums of 7 x 7 samples of 255 fit in 16 bits
        cell = per * step
        row_starts, rows = _samples(height, cell, per)
        col_starts, cols = _samples(width, cell, per)
        row_samples = rows.ravel()
        col_samples = (3 * cols.T[..., None] + np.arange(3)).ravel()
        for array in (row_starts, col_starts, row_samples, col_samples):
            array.setflags(write=False)
        return Grid(height, width, cell, per, row_starts, col_starts, row_samples, col_samples)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.row_starts), len(self.col_starts)

    def grey(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Mean luma of each cell over its samples.

        Sums come first, in integers, and luma last, on the small grid: weighting every
        pixel in floating point would cost more than everything else together. Both sums
        reduce over a middle axis with a long contiguous one inside, which numpy does
        fast (a reduction over a short inner axis, such as a cell's few pixels, is slow).
        """
        rows, cols = self.shape
        taken = rgb.take(self.row_samples, axis=0).reshape(rows, self.per, -1)
        down = taken.sum(axis=1, dtype=np.uint16)
        across = down.take(self.col_samples, axis=1).reshape(rows, self.per, cols * 3)
        sums = across.sum(axis=1, dtype=np.uint16).reshape(rows, cols, 3)
        grey: npt.NDArray[np.float32] = sums @ (np.array(LUMA, np.float32) / self.per**2)
        return grey

    def regions(self, changed: npt.NDArray[np.bool_], min_area: float) -> list[Region]:
        """The regions of changed cells at least ``min_area`` of the frame, as boxes."""
        cells = np.flatnonzero(changed)
        if not cells.size:
            return []
        rows, cols = self.shape
        roots = _components(_joined(changed))[cells]
        found, which = np.unique(roots, return_inverse=True)
        top = np.full(found.size, rows, np.intp)
        left = np.full(found.size, cols, np.intp)
        bottom = np.zeros(found.size, np.intp)
        right = np.zeros(found.size, np.intp)
        row, col = np.divmod(cells, cols)
        np.minimum.at(top, which, row)
        np.maximum.at(bottom, which, row)
        np.minimum.at(left, which, col)
        np.maximum.at(right, which, col)
        # Pixel edges of the boxes: a cell ends ``cell`` pixels after it starts, or at the
        # frame's edge when the frame is smaller than one cell.
        x0 = self.col_starts[left]
        x1 = np.minimum(self.col_starts[right] + self.cell, self.width)
        y0 = self.row_starts[top]
        y1 = np.minimum(self.row_starts[bottom] + self.cell, self.height)
        wide = (x1 - x0) / self.width
        high = (y1 - y0) / self.height
        kept = np.flatnonzero(wide * high >= min_area)
        return [
            Region(
                left=float(x0[i] / self.width),
                top=float(y0[i] / self.height),
                width=float(wide[i]),
                height=float(high[i]),
            )
            for i in kept.tolist()
        ]


def _samples(size: int, cell: int, per: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Cell starts along one side, and the ``per`` pixels sampled in each (a row per cell).

    Samples are spread evenly over the cell (``cell / per`` apart), or over the whole
    side when the side is shorter than a cell.
    """
    count = -(-size // cell)
    starts = np.maximum(np.minimum(np.arange(count) * cell, size - cell), 0)
    samples = starts[:, None] + np.arange(per) * min(cell, size) // per
    return starts, samples


def _joined(changed: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """``changed`` grown by one cell on every side, so that cells one apart touch."""
    joined = changed.copy()
    joined[1:] |= changed[:-1]
    joined[:-1] |= changed[1:]
    grown = joined.copy()
    grown[:, 1:] |= joined[:, :-1]
    grown[:, :-1] |= joined[:, 1:]
    return grown


def _components(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.intp]:
    """Per cell, a number shared by exactly the cells of its 8-connected component.

    A union-find done a whole array at a time, over the set cells only (numbered in
    row-major order; cells outside ``mask`` get -1). Each horizontal run of set cells
    starts as one tree, every cell pointing at the run's first; runs that touch across
    consecutive rows are the edges. Each round, every root hooks onto the lowest root it
    touches if that one is lower, then every cell jumps to its root. A root that hooks
    nowhere is hooked onto, or hooks in the next round (its neighbours are lower then),
    so the trees of a component at least halve every two rounds: O(log cells) rounds
    whatever the shape (a spiral costs what a square does).
    """
    cols = mask.shape[1]
    cells = np.flatnonzero(mask)
    numbered = np.full(mask.size, -1, np.intp)
    numbered[cells] = np.arange(cells.size)
    node = numbered.reshape(mask.shape)
    first_of_run = np.ones(cells.size, np.bool_)
    first_of_run[1:] = (cells[1:] != cells[:-1] + 1) | (cells[1:] % cols == 0)
    parent = np.maximum.accumulate(np.where(first_of_run, np.arange(cells.size), 0))
    # Two runs in consecutive rows touch where a vertical contact begins, or diagonally
    # where no vertical contact is beside the diagonal one.
    below = mask[:-1] & mask[1:]
    begins = below.copy()
    begins[:, 1:] &= ~below[:, :-1]
    down_right = mask[:-1, :-1] & mask[1:, 1:] & ~mask[:-1, 1:] & ~mask[1:, :-1]
    down_left = mask[:-1, 1:] & mask[1:, :-1] & ~mask[:-1, :-1] & ~mask[1:, 1:]
    upper = np.concatenate(
        [node[:-1][begins], node[:-1, :-1][down_right], node[:-1, 1:][down_left]]
    )
    lower = np.concatenate([node[1:][begins], node[1:, 1:][down_right], node[1:, :-1][down_left]])
    while upper.size:
        a, b = parent[upper], parent[lower]
        apart = a != b
        upper, lower, a, b = upper[apart], lower[apart], a[apart], b[apart]
        if not upper.size:
            break
        np.minimum.at(parent, np.maximum(a, b), np.minimum(a, b))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    labels = np.full(mask.size, -1, np.intp)
    labels[cells] = parent
    return labels


class MotionExtension:
    """The ``motion`` built-in: one detector per stream, configured by the pipeline."""

    #: Each frame is compared with the earlier ones: process them in order.
    sequential: ClassVar[bool] = True

    def __init__(self) -> None:
        self.detector = MotionDetector()

    async def open(self, descriptor: StreamDescriptor) -> None:
        self.detector = MotionDetector(
            MotionSettings.from_configuration(descriptor.extension_configuration)
        )

    async def process(self, frame: Frame) -> Result:
        if not frame.has_data:
            return None  # inferences only: nothing to look at
        # The frame is read (from shared memory: it may be large) in the thread too.
        # Abandoned when the frame timeout expires (SRV-4): the stream ends on time, the
        # thread's result dropped, as for any plain def processor.
        regions = await anyio.to_thread.run_sync(self._detect, frame, abandon_on_cancel=True)
        return [region.to_inference() for region in regions]

    def _detect(self, frame: Frame) -> list[Region]:
        return self.detector.detect(frame.rgb())

    async def close(self) -> None:
        return None
