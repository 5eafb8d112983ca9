"""Video files through PyAV (FFmpeg): real decoding, real presentation times.

Frames are converted to RGB (and resized) by FFmpeg's swscale, which is faster than
any numpy path. Each frame's time is its own presentation timestamp in seconds from
the stream's start, so a variable-rate recording keeps its real timing.
``encode_test_clip`` writes a clip (H.264 when available) for the demo and the tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import SourceError, SourceFrame


def _av() -> Any:
    try:
        import av
    except ImportError as error:
        raise ImportError(
            "reading and writing video files needs PyAV: pip install 'avaproto[video]'"
        ) from error
    return av


def _open(av: Any, path: Path) -> Any:
    try:
        return av.open(str(path))
    except av.FFmpegError as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise SourceError(f"{path} is not a video file FFmpeg can read ({reason})") from None


def video_frame_count(path: Path) -> int | None:
    """The number of frames the container records for the first video stream, if any."""
    with _open(_av(), path) as container:
        if not container.streams.video:
            return None
        return int(container.streams.video[0].frames) or None


def _decoded(av: Any, container: Any, stream: Any, path: Path) -> Iterator[Any]:
    """The stream's frames; a decoding failure names the file instead of FFmpeg's call."""
    frames = container.decode(stream)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except av.FFmpegError as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise SourceError(f"{path}: FFmpeg cannot decode it ({reason})") from None
        yield frame


def video_frames(
    path: Path, *, size: tuple[int, int] | None = None, count: int | None = None
) -> Iterator[SourceFrame]:
    """Decode the first video stream of ``path``; at most ``count`` frames."""
    av = _av()
    width, height = size if size is not None else (None, None)
    with _open(av, path) as container:
        if not container.streams.video:
            raise SourceError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start: Fraction | None = None
        for produced, frame in enumerate(_decoded(av, container, stream, path)):
            if count is not None and produced >= count:
                break
            time = (
                frame.time
                if frame.time is not None
                else produced / float(stream.average_rate or 30)
            )
            if start is None:
                start = Fraction(time)
            rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
            yield SourceFrame(rgb, float(Fraction(time) - start))


def encode_test_clip(
    path: Path, frames: Iterable[npt.NDArray[np.uint8]], rate: float = 30.0
) -> Path:
    """Write RGB frames to a video file (H.264 in MP4 when the encoder exists)."""
    av = _av()
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w") as container:
        stream = None
        for rgb in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=Fraction(rate).limit_denominator(1001))
                stream.width, stream.height = rgb.shape[1] // 2 * 2, rgb.shape[0] // 2 * 2
                stream.pix_fmt = "yuv420p"
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(rgb[: stream.height, : stream.width]), format="rgb24"
            )
            for packet in stream.encode(frame):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return path
