"""Deterministic moving shapes: a source that needs no file and no decoder.

The picture is a fixed gradient with a square and a disc that move along known paths,
then hold still, then move again. Motion detection therefore has something to find
and, during the pauses, nothing to find; and the same arguments always give the same
pixels, so tests can rely on them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from . import SourceFrame

#: Frames per phase: the shapes move for MOVE frames, then hold for HOLD frames.
MOVE, HOLD = 45, 24


def _background(width: int, height: int) -> npt.NDArray[np.uint8]:
    x = np.linspace(40, 90, width, dtype=np.float32)
    y = np.linspace(30, 70, height, dtype=np.float32)
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = (x[None, :] + y[:, None] * 0.5).astype(np.uint8)
    image[..., 1] = (y[:, None] + x[None, :] * 0.3).astype(np.uint8)
    image[..., 2] = 110
    return image


def _travel(index: int) -> float:
    """How far along its path a shape is at frame ``index``: moves, then pauses."""
    cycle = MOVE + HOLD
    done, into = divmod(index, cycle)
    return float(done * MOVE + min(into, MOVE))


def synthetic_frames(
    width: int, height: int, *, count: int, rate: float = 30.0
) -> Iterator[SourceFrame]:
    """``count`` frames of ``width`` x ``height`` at ``rate`` frames per second."""
    if width <= 0 or height <= 0:
        raise ValueError(f"synthetic frames need a positive size, got {width}x{height}")
    if rate <= 0:
        raise ValueError(f"synthetic frames need a positive rate, got {rate}")
    background = _background(width, height)
    side = max(1, min(width, height) // 5)
    radius = max(1, min(width, height) // 8)
    rows, cols = np.ogrid[:height, :width]
    # The square carries a fixed random texture, so that all of it changes as it moves,
    # not only its edges (a flat square's inside looks the same one step on).
    texture = np.random.default_rng(0).integers(0, 4, (max(1, side // 6),) * 2)
    palette = np.array([[230, 60, 40], [250, 220, 60], [40, 40, 40], [250, 250, 250]], np.uint8)
    square = palette[texture.repeat(6, axis=0).repeat(6, axis=1)][:side, :side]
    square = np.pad(square, ((0, side - square.shape[0]), (0, side - square.shape[1]), (0, 0)))
    for index in range(count):
        image = background.copy()
        step = _travel(index)
        # The square bounces left to right along the upper third.
        span = max(1, width - side)
        x = int(step * 4) % (2 * span)
        x = x if x < span else 2 * span - x
        y = height // 6
        patch = image[y : y + side, x : x + side]  # clipped at the edges of a tiny frame
        patch[...] = square[: patch.shape[0], : patch.shape[1]]
        # The disc circles around the lower half.
        angle = step / 12.0
        cx = width / 2 + (width / 3) * np.cos(angle)
        cy = height * 2 / 3 + (height / 6) * np.sin(angle)
        disc = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
        image[disc] = (40, 200, 90)
        yield SourceFrame(image, index / rate)
