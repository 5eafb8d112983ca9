"""A video sample format, checked once and then trusted.

``VideoFormat`` is the validated form of the contract's ``VideoFrameSampleFormat``:
building one through ``VideoFormat.from_message`` or ``VideoFormat.checked`` applies
the MEDIA rules, so code holding a ``VideoFormat`` never re-checks dimensions or
strides, and a frame is sized (and an absurd one refused) before any byte of it is
allocated or read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ..errors import FrameError
from ..messages import Dimensions, Encoding, PixelFormat, VideoFrameSampleFormat
from ..status import Status
from .pixel_formats import PIXEL_LAYOUTS, PixelLayout


@dataclass(frozen=True)
class FrameLimits:
    """Largest frame a party accepts: refused before allocating, never after."""

    max_width: int = 16384
    max_height: int = 16384
    max_pixels: int = 1 << 28
    #: The longest encoded (JPG, PNG, BMP) sample a shared-memory reference may name:
    #: unlike a RAW frame's, its size is only what the reference says (SHM-16). None:
    #: the largest message the server takes, which bounds an embedded one
    #: (``ServerConfig.max_message_bytes``; ``ENCODED_BYTES`` where there is none).
    max_encoded_bytes: int | None = None

    @property
    def encoded_bytes(self) -> int:
        """The bound on an encoded sample in shared memory, in bytes (SHM-16)."""
        return ENCODED_BYTES if self.max_encoded_bytes is None else self.max_encoded_bytes


#: The bound on an encoded sample in shared memory where no message limit gives one.
ENCODED_BYTES = 64 << 20


DEFAULT_LIMITS = FrameLimits()

_KNOWN_ENCODINGS = frozenset(Encoding)


@dataclass(frozen=True)
class VideoFormat:
    """A checked video sample format; construct with ``checked`` or ``from_message``."""

    encoding: Encoding
    pixel_format: PixelFormat
    width: int
    height: int
    #: The stride as sent: 0 means packed rows. Always 0 for encoded formats.
    stride_bytes: int = 0

    @classmethod
    def checked(
        cls,
        encoding: Encoding,
        pixel_format: PixelFormat = PixelFormat.NONE,
        width: int = 0,
        height: int = 0,
        stride_bytes: int = 0,
        limits: FrameLimits = DEFAULT_LIMITS,
    ) -> VideoFormat:
        """Apply MEDIA-1 to MEDIA-5 and return the format, or raise ``FrameError``."""
        if encoding not in _KNOWN_ENCODINGS:
            raise FrameError(
                "MEDIA-1",
                Status.INVALID_ARGUMENT,
                f"unknown encoding {int(encoding)}; expected BMP, JPG, PNG or RAW",
            )
        if encoding is not Encoding.RAW:
            # MEDIA-5: the stride means nothing for an encoded image; ignore it.
            return cls(encoding, pixel_format, width, height, 0)
        if pixel_format not in PIXEL_LAYOUTS:
            raise FrameError(
                "MEDIA-2",
                Status.INVALID_ARGUMENT,
                f"RAW frames need a pixel format, got {_name(pixel_format)}; expected one of "
                + ", ".join(f.name or "" for f in PIXEL_LAYOUTS),
            )
        if width <= 0 or height <= 0:
            raise FrameError(
                "MEDIA-3",
                Status.INVALID_ARGUMENT,
                f"RAW frames need a width and a height above zero, got {width}x{height}",
            )
        if (
            width > limits.max_width
            or height > limits.max_height
            or width * height > limits.max_pixels
        ):
            raise FrameError(
                "MEDIA-3",
                Status.INVALID_ARGUMENT,
                f"frame {width}x{height} exceeds the limit of {limits.max_width}x"
                f"{limits.max_height} and {limits.max_pixels} pixels",
            )
        layout = PIXEL_LAYOUTS[pixel_format]
        if stride_bytes and stride_bytes < layout.row_bytes(width):
            raise FrameError(
                "MEDIA-4",
                Status.INVALID_ARGUMENT,
                f"stride_bytes {stride_bytes} is shorter than a row of {width} "
                f"{_name(pixel_format)} pixels ({layout.row_bytes(width)} bytes)",
            )
        widest = layout.row_bytes(limits.max_width)
        if stride_bytes > widest:
            raise FrameError(
                "MEDIA-4",
                Status.INVALID_ARGUMENT,
                f"stride_bytes {stride_bytes} is longer than a row of the widest frame "
                f"accepted ({limits.max_width} {_name(pixel_format)} pixels, {widest} "
                f"bytes): a {width}x{height} frame would take "
                f"{stride_bytes * (height - 1) + layout.row_bytes(width)} bytes",
            )
        return cls(encoding, pixel_format, width, height, stride_bytes)

    @classmethod
    def raw(
        cls,
        width: int,
        height: int,
        pixel_format: PixelFormat | str = PixelFormat.RGB24,
        stride_bytes: int = 0,
    ) -> VideoFormat:
        """RAW frames of ``width`` x ``height``, checked: ``VideoFormat.raw(416, 416)``,
        or with a pixel format by name, ``VideoFormat.raw(640, 480, "bgr24")``."""
        if isinstance(pixel_format, str):
            try:
                pixel_format = PixelFormat[pixel_format.upper()]
            except KeyError:
                names = ", ".join(f.name or "" for f in PIXEL_LAYOUTS)
                raise ValueError(
                    f"unknown pixel format {pixel_format!r}; expected one of {names}"
                ) from None
        return cls.checked(Encoding.RAW, pixel_format, width, height, stride_bytes)

    @classmethod
    def from_message(
        cls, message: VideoFrameSampleFormat, limits: FrameLimits = DEFAULT_LIMITS
    ) -> VideoFormat:
        dims = message.dimensions or Dimensions()
        return cls.checked(
            message.encoding,
            message.pixel_format,
            dims.width,
            dims.height,
            message.stride_bytes,
            limits,
        )

    def to_message(self) -> VideoFrameSampleFormat:
        return VideoFrameSampleFormat(
            encoding=self.encoding,
            pixel_format=self.pixel_format,
            dimensions=Dimensions(width=self.width, height=self.height),
            stride_bytes=self.stride_bytes,
        )

    @cached_property
    def is_raw(self) -> bool:
        """Whether frames are RAW pixels (asked several times per sample: computed once)."""
        return self.encoding is Encoding.RAW

    @property
    def layout(self) -> PixelLayout:
        """The pixel layout of a RAW format (KeyError for an encoded one)."""
        return PIXEL_LAYOUTS[self.pixel_format]

    @property
    def pitch(self) -> int:
        """Bytes from one row to the next (of the Y plane for YUV420P)."""
        return self.layout.pitch(self.width, self.stride_bytes)

    @cached_property
    def frame_bytes(self) -> int:
        """Exact size of one RAW frame's content (computed once: it is checked per sample)."""
        return self.layout.frame_bytes(self.width, self.height, self.stride_bytes)

    @cached_property
    def shortest_bytes(self) -> int:
        """A RAW frame without the padding after its last row (MEDIA-6's field note)."""
        return self.layout.shortest_frame_bytes(self.width, self.height, self.stride_bytes)

    def __str__(self) -> str:
        if not self.is_raw:
            size = f" {self.width}x{self.height}" if self.width and self.height else ""
            return f"{_name(self.encoding)}{size}"
        stride = f" stride {self.stride_bytes}" if self.stride_bytes else ""
        return f"RAW {_name(self.pixel_format)} {self.width}x{self.height}{stride}"


def _name(value: Encoding | PixelFormat) -> str:
    return value.name if value.name and not value.name.startswith("~") else str(int(value))
