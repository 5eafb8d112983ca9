"""A still image as a source: the same picture, repeated, at a steady rate.

Useful to check an extension on one known picture (a camera still, a test card); the
repetition gives the extension a stream to hold state over, as a pipeline would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..media.images import load_pillow
from . import SourceError, SourceFrame


def image_frames(
    path: Path, *, size: tuple[int, int] | None, count: int, rate: float
) -> Iterator[SourceFrame]:
    """The image at ``path`` as RGB, resized to ``size`` when given, ``count`` times."""
    try:
        image_module = load_pillow()
    except ImportError:
        raise ImportError(
            f"reading the image {path} needs Pillow: pip install 'avaproto[image]'"
        ) from None
    try:
        with image_module.open(path) as image:
            picture = image.convert("RGB")
    except image_module.UnidentifiedImageError:
        raise SourceError(f"{path} is not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as error:  # Pillow's words for broken data
        raise SourceError(f"{path} cannot be read as an image: {error}") from None
    if size is not None and picture.size != size:
        picture = picture.resize(size, image_module.Resampling.BILINEAR)
    rgb = np.asarray(picture, dtype=np.uint8)
    rgb.flags.writeable = False  # one array shared by every frame
    for index in range(count):
        yield SourceFrame(rgb, index / rate)
