"""Frame sources: what ``avaproto send`` and ``avaproto demo`` feed to an extension.

A source yields ``SourceFrame``s: an RGB array and its presentation time in seconds,
taken from the source itself (a video's own timestamps, or frame number / rate for
generated frames and still images). The sender turns that time into ticks of the
stream's timescale, so an extension sees the timing the pipeline would give it.

``open_source`` picks the source from its name: ``synthetic``, an image file (Pillow,
extra ``image``) or a video file (PyAV, extra ``video``). Optional dependencies are
imported only when that kind of source is used. ``frame_count`` says how many frames a
source will give, when that is known beforehand (a progress bar's total).

A file that is not what its name promises raises ``SourceError`` (a ``ValueError``) as
soon as the first frame is asked for, so a command line can name the file in one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

#: File suffixes read as still images; anything else is opened as a video.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
#: Frames of a synthetic source when no count is given.
SYNTHETIC_FRAMES = 100
#: Size of a synthetic source when no size is given.
SYNTHETIC_SIZE = (640, 360)
#: Frame rate of synthetic and still-image sources when none is given.
DEFAULT_RATE = 30.0


class SourceError(ValueError):
    """A source file that cannot be read as what it claims to be (an image, a video)."""


@dataclass(frozen=True, eq=False)
class SourceFrame:
    """One frame of a source: height x width x 3 RGB pixels and when they are shown."""

    rgb: npt.NDArray[np.uint8]
    #: Presentation time in seconds from the start of the source.
    pts: float


def open_source(
    spec: str,
    *,
    size: tuple[int, int] | None = None,
    frames: int | None = None,
    rate: float | None = None,
) -> Iterator[SourceFrame]:
    """The frames of ``spec``: ``synthetic``, an image file or a video file.

    ``size`` (width, height) resizes every frame; ``frames`` stops after that many
    (a still image is repeated that many times, once by default); ``rate`` sets the
    frame rate of generated and still sources (a video keeps its own timestamps).
    Raises ``FileNotFoundError`` for a missing file and ``ImportError`` naming the
    extra to install when the decoder is absent; a file the decoder cannot read raises
    ``SourceError`` on the first frame.
    """
    if spec == "synthetic":
        from .synthetic import synthetic_frames

        width, height = size or SYNTHETIC_SIZE
        return synthetic_frames(
            width, height, count=frames or SYNTHETIC_FRAMES, rate=rate or DEFAULT_RATE
        )
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"no such source file: {spec} (or use --source synthetic)")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from .images import image_frames

        return image_frames(path, size=size, count=frames or 1, rate=rate or DEFAULT_RATE)
    from .video import video_frames

    return video_frames(path, size=size, count=frames)


def frame_count(spec: str, *, frames: int | None = None) -> int | None:
    """How many frames ``open_source(spec, frames=frames)`` gives; None when not known.

    A video's count comes from its container, which not every format records (a raw
    stream, a live recording): then only the ``frames`` limit, if any, is known.
    """
    if spec == "synthetic":
        return frames or SYNTHETIC_FRAMES
    path = Path(spec)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return frames or 1
    try:
        from .video import video_frame_count

        recorded = video_frame_count(path)
    except (ImportError, OSError, SourceError):
        recorded = None
    if recorded is None:
        return frames
    return min(recorded, frames) if frames else recorded


__all__ = ["SourceError", "SourceFrame", "frame_count", "open_source"]
