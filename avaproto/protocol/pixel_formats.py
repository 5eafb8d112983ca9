"""The layout of every RAW pixel format of the contract, stated once.

Everything else derives from this table: the core's stride and size checks, the
media plane's numpy views, the encoders and ``to_rgb``. It is plain data (no numpy),
so the protocol core can size a frame without touching pixels.

Conventions, where the contract names a format but does not spell out its bytes:

* Packed formats name their bytes in memory order: ``BGR24`` is B, G, R at increasing
  addresses; ``ARGB`` is A, R, G, B.
* The 16-bit formats are one 16-bit word per pixel, big (``BE``) or little (``LE``)
  endian. RGB565: red in bits 15-11, green 10-5, blue 4-0. RGB555: bit 15 unused,
  red 14-10, green 9-5, blue 4-0.
* YUV420P is three planes in this order: Y at width x height, then U, then V, each at
  ceil(width / 2) x ceil(height / 2). ``stride_bytes`` gives the Y plane's row pitch;
  the chroma planes' pitch is ceil(stride / 2), as when a padded frame is subsampled.
* ``stride_bytes`` = 0 means rows are packed: the pitch is the row's own size.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..messages import PixelFormat


class Layout(Enum):
    PACKED = "packed"  # every pixel a run of whole bytes, one channel per byte
    WORD16 = "word16"  # every pixel one 16-bit word holding bit fields
    PLANAR_YUV420 = "planar-yuv420"  # three planes, chroma subsampled 2x2


@dataclass(frozen=True)
class PixelLayout:
    """How one pixel format puts pixels in memory."""

    format: PixelFormat
    layout: Layout
    bits_per_pixel: int
    #: PACKED: the channel of each byte, in memory order ("R", "G", "B", "A").
    channels: tuple[str, ...] = ()
    #: WORD16: the byte order of the word, "big" or "little".
    byte_order: str = ""
    #: WORD16: bits of red, green and blue, from the most significant end.
    bits: tuple[int, int, int] = (0, 0, 0)

    @property
    def bytes_per_pixel(self) -> int:
        """Bytes per pixel of a packed row (YUV420P: of the Y plane, 1)."""
        return 1 if self.layout is Layout.PLANAR_YUV420 else self.bits_per_pixel // 8

    def row_bytes(self, width: int) -> int:
        """Bytes of one packed row of ``width`` pixels (YUV420P: of the Y plane)."""
        return width * self.bytes_per_pixel

    def pitch(self, width: int, stride_bytes: int) -> int:
        """The row pitch actually used: the stride when set, else the packed row."""
        return stride_bytes or self.row_bytes(width)

    def planes(self, width: int, height: int, stride_bytes: int = 0) -> tuple[Plane, ...]:
        """Where each plane of a frame lies in its buffer, in buffer order."""
        pitch = self.pitch(width, stride_bytes)
        if self.layout is not Layout.PLANAR_YUV420:
            return (Plane("packed", 0, width, height, pitch),)
        cw, ch, cpitch = (width + 1) // 2, (height + 1) // 2, (pitch + 1) // 2
        y = Plane("Y", 0, width, height, pitch)
        u = Plane("U", y.end, cw, ch, cpitch)
        v = Plane("V", u.end, cw, ch, cpitch)
        return (y, u, v)

    def frame_bytes(self, width: int, height: int, stride_bytes: int = 0) -> int:
        """Exact size of a frame's buffer: what a sample's content must measure."""
        return self.planes(width, height, stride_bytes)[-1].end

    def shortest_frame_bytes(self, width: int, height: int, stride_bytes: int = 0) -> int:
        """The size of a frame whose last row stops at its last pixel (no padding after).

        Every pixel is there: a buffer copied from the first pixel to the last of a
        padded image measures this. Equal to ``frame_bytes`` when rows are packed.
        """
        last = self.planes(width, height, stride_bytes)[-1]
        samples = self.bytes_per_pixel if self.layout is not Layout.PLANAR_YUV420 else 1
        return last.end - last.pitch + last.width * samples if last.height else last.end


@dataclass(frozen=True)
class Plane:
    """One plane of a frame: ``height`` rows of ``width`` samples, ``pitch`` bytes apart."""

    name: str
    offset: int
    width: int
    height: int
    pitch: int

    @property
    def size(self) -> int:
        return self.pitch * self.height

    @property
    def end(self) -> int:
        return self.offset + self.size


def _packed(fmt: PixelFormat, channels: str) -> PixelLayout:
    return PixelLayout(fmt, Layout.PACKED, 8 * len(channels), channels=tuple(channels))


def _word(fmt: PixelFormat, bits: tuple[int, int, int], order: str) -> PixelLayout:
    return PixelLayout(fmt, Layout.WORD16, 16, byte_order=order, bits=bits)


#: Every RAW pixel format of the contract. NONE is absent: it has no layout.
PIXEL_LAYOUTS: dict[PixelFormat, PixelLayout] = {
    layout.format: layout
    for layout in (
        PixelLayout(PixelFormat.YUV420P, Layout.PLANAR_YUV420, 12),
        _word(PixelFormat.RGB565BE, (5, 6, 5), "big"),
        _word(PixelFormat.RGB565LE, (5, 6, 5), "little"),
        _word(PixelFormat.RGB555BE, (5, 5, 5), "big"),
        _word(PixelFormat.RGB555LE, (5, 5, 5), "little"),
        _packed(PixelFormat.RGB24, "RGB"),
        _packed(PixelFormat.BGR24, "BGR"),
        _packed(PixelFormat.ARGB, "ARGB"),
        _packed(PixelFormat.RGBA, "RGBA"),
        _packed(PixelFormat.ABGR, "ABGR"),
        _packed(PixelFormat.BGRA, "BGRA"),
    )
}
