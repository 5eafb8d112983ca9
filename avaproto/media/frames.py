"""RAW frames as numpy views, and back to bytes.

``decode`` reads a sample's bytes in place: ``numpy.frombuffer`` over the buffer and a
strided view over it, so an embedded frame stays a view of the received message and a
shared-memory frame a view of the sender's mapping (MEDIA-7). Row padding
(``stride_bytes`` wider than the row) is skipped by the view's strides, never copied.
The view is read-only exactly when the buffer is.

Every layout comes from ``avaproto.protocol.pixel_formats.PIXEL_LAYOUTS``; nothing here
restates a format's bytes.

Colour (MEDIA-10). ``to_rgb`` gives height x width x 3 uint8 RGB:

* 24- and 32-bit formats are channel-selecting views (RGB24 is the decoded view itself,
  BGR24 its reversed channels, RGBA its first three), so they allocate nothing.
* 16-bit formats expand each field to 8 bits by bit replication (``v << 3 | v >> 2``
  for 5 bits, ``v << 2 | v >> 4`` for 6), so full scale maps to 255.
* YUV420P is ITU-R BT.601 in limited ("studio") range, Y in 16..235 and U, V in
  16..240, as video decoders produce it::

      R = 1.164 (Y - 16)                 + 1.596 (V - 128)
      G = 1.164 (Y - 16) - 0.392 (U - 128) - 0.813 (V - 128)
      B = 1.164 (Y - 16) + 2.017 (U - 128)

  Chroma is upsampled by repeating each sample over its 2 x 2 block (the odd last
  row or column uses the last sample); the encoder averages each block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from ..errors import FrameError
from ..messages import VideoFrameSampleFormat
from ..protocol.pixel_formats import Layout, PixelLayout, Plane
from ..protocol.video_format import DEFAULT_LIMITS, FrameLimits, VideoFormat
from ..status import Status

Buffer: TypeAlias = bytes | bytearray | memoryview
RGB: TypeAlias = npt.NDArray[np.uint8]


@dataclass(frozen=True, eq=False)
class YuvPlanes:
    """A YUV420P frame: three 2-D uint8 views, Y full size, U and V at half (rounded up)."""

    y: npt.NDArray[np.uint8]
    u: npt.NDArray[np.uint8]
    v: npt.NDArray[np.uint8]


Image: TypeAlias = npt.NDArray[np.uint8] | npt.NDArray[np.uint16] | YuvPlanes

# BT.601 limited range, as integer fixed point (x 2^16) for the inverse, float for encode.
_Y_SCALE = 255.0 / 219.0
_C_SCALE = 255.0 / 224.0
_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB


def _raw(fmt: VideoFormat) -> PixelLayout:
    if not fmt.is_raw:
        raise FrameError(
            "MEDIA-12",
            Status.INVALID_ARGUMENT,
            f"{fmt.encoding.name} samples are encoded images, passed through as bytes; "
            "decode them with avaproto.media.images.decode_image",
        )
    return fmt.layout


def _byte_view(buffer: Buffer) -> memoryview:
    view = memoryview(buffer)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def _plane(
    raw: memoryview, plane: Plane, item: int, dtype: str = "u1", channels: int = 0
) -> np.ndarray:
    """One plane as a strided view of ``raw``; the padding past each row is skipped."""
    shape: tuple[int, ...] = (plane.height, plane.width)
    strides: tuple[int, ...] = (plane.pitch, item)
    if channels:
        shape, strides = (*shape, channels), (*strides, 1)
    return np.ndarray(shape, np.dtype(dtype), buffer=raw, offset=plane.offset, strides=strides)


def decode(buffer: Buffer, fmt: VideoFormat) -> Image:
    """The frame in ``buffer`` as a view in its native layout, without copying.

    Packed formats give height x width x channels uint8 (channels in memory order),
    16-bit formats height x width uint16 in the format's byte order, YUV420P a
    ``YuvPlanes``. The buffer must measure exactly one frame (MEDIA-6).
    """
    layout = _raw(fmt)
    raw = _byte_view(buffer)
    expected = fmt.frame_bytes
    if raw.nbytes != expected:
        raise FrameError(
            "MEDIA-6",
            Status.INVALID_ARGUMENT,
            f"a {fmt} frame measures {expected} bytes, the content has {raw.nbytes}",
        )
    planes = layout.planes(fmt.width, fmt.height, fmt.stride_bytes)
    if layout.layout is Layout.PLANAR_YUV420:
        y, u, v = (_plane(raw, plane, 1) for plane in planes)
        return YuvPlanes(y, u, v)
    if layout.layout is Layout.WORD16:
        dtype = ">u2" if layout.byte_order == "big" else "<u2"
        words: npt.NDArray[np.uint16] = _plane(raw, planes[0], 2, dtype)
        return words
    item = layout.bytes_per_pixel
    packed: npt.NDArray[np.uint8] = _plane(raw, planes[0], item, channels=item)
    return packed


def decode_message(
    buffer: Buffer, message: VideoFrameSampleFormat, limits: FrameLimits = DEFAULT_LIMITS
) -> Image:
    """``decode`` for a format straight off the wire: checked first (MEDIA-1 to 5).

    An absurd format (100000 x 100000, RAW without a pixel format) is refused before
    anything is sized or allocated.
    """
    return decode(buffer, VideoFormat.from_message(message, limits))


def _channel_index(layout: PixelLayout) -> tuple[int, int, int]:
    return tuple(layout.channels.index(c) for c in "RGB")  # type: ignore[return-value]


def _rgb_view(image: npt.NDArray[np.uint8], layout: PixelLayout) -> RGB | None:
    """R, G, B as a view of a packed image, when they lie at evenly spaced positions."""
    r, g, b = _channel_index(layout)
    step = g - r
    if step in (1, -1) and b - g == step:
        stop = b + step if b + step >= 0 else None
        return image[..., r:stop:step]
    return None


def to_rgb(image: Image, fmt: VideoFormat, out: RGB | None = None) -> RGB:
    """The frame as height x width x 3 RGB: a view for 24- and 32-bit formats.

    With ``out`` the pixels are written there (and ``out`` returned), for a caller
    that keeps one destination across frames.
    """
    layout = _raw(fmt)
    if layout.layout is Layout.PACKED:
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8
        view = _rgb_view(image, layout)  # type: ignore[arg-type]  # every packed format of the contract has one
        assert view is not None
        if out is None:
            return view
        np.copyto(out, view)
        return out
    if out is None:
        out = np.empty((fmt.height, fmt.width, 3), np.uint8)
    if layout.layout is Layout.WORD16:
        assert isinstance(image, np.ndarray)
        _unpack_words(image.astype(np.uint16, copy=False), layout, out)
    else:
        assert isinstance(image, YuvPlanes)
        _yuv_to_rgb(image, out)
    return out


def _unpack_words(words: npt.NDArray[np.uint16], layout: PixelLayout, out: RGB) -> None:
    shift = sum(layout.bits)
    for channel, bits in enumerate(layout.bits):
        shift -= bits
        field = (words >> shift) & ((1 << bits) - 1)
        # Replicate the top bits into the low ones: 0 -> 0 and full scale -> 255.
        out[..., channel] = (field << (8 - bits)) | (field >> (2 * bits - 8))


def _yuv_to_rgb(planes: YuvPlanes, out: RGB) -> None:
    """BT.601 limited range; each chroma term is computed once per 2 x 2 block and
    broadcast over it, so the full-resolution work is one add per channel."""
    height, width = planes.y.shape
    ch, cw = planes.u.shape
    y = planes.y
    if (2 * ch, 2 * cw) != (height, width):  # odd size: repeat the last row / column
        y = np.pad(y, ((0, 2 * ch - height), (0, 2 * cw - width)), mode="edge")
    luma = np.subtract(y, np.float32(16), dtype=np.float32)
    luma *= np.float32(_Y_SCALE)
    blocks = luma.reshape(ch, 2, cw, 2)
    u = np.subtract(planes.u, np.float32(128), dtype=np.float32)
    v = np.subtract(planes.v, np.float32(128), dtype=np.float32)
    u *= np.float32(_C_SCALE)
    v *= np.float32(_C_SCALE)
    green = u * np.float32(-2 * _KB * (1 - _KB) / _KG)
    green -= v * np.float32(2 * _KR * (1 - _KR) / _KG)
    terms = (v * np.float32(2 * (1 - _KR)), green, u * np.float32(2 * (1 - _KB)))
    channel_values = np.empty_like(blocks)
    for channel, term in enumerate(terms):
        np.add(blocks, term[:, None, :, None], out=channel_values)
        np.rint(channel_values, out=channel_values)
        np.clip(channel_values, 0, 255, out=channel_values)
        out[..., channel] = channel_values.reshape(2 * ch, 2 * cw)[:height, :width]


# --- encoding ---------------------------------------------------------------------------


def _check_rgb(rgb: RGB, fmt: VideoFormat) -> None:
    if rgb.dtype != np.uint8 or rgb.shape != (fmt.height, fmt.width, 3):
        raise ValueError(
            f"expected a {fmt.height} x {fmt.width} x 3 uint8 RGB array for {fmt}, "
            f"got {rgb.shape} {rgb.dtype}"
        )


def _with_stride(fmt: VideoFormat, stride_bytes: int | None) -> VideoFormat:
    if stride_bytes is None or stride_bytes == fmt.stride_bytes:
        return fmt
    return VideoFormat.checked(fmt.encoding, fmt.pixel_format, fmt.width, fmt.height, stride_bytes)


def encode(rgb: RGB, fmt: VideoFormat, *, stride_bytes: int | None = None) -> bytes:
    """Height x width x 3 RGB as one frame of ``fmt``, rows padded to its stride.

    Padding bytes are zero (MEDIA-11). ``stride_bytes`` overrides the format's stride.
    """
    fmt = _with_stride(fmt, stride_bytes)
    layout = _raw(fmt)
    _check_rgb(rgb, fmt)
    if layout.layout is Layout.PACKED:
        native = np.empty((fmt.height, fmt.width, len(layout.channels)), np.uint8)
        for index, name in enumerate(layout.channels):
            native[..., index] = 255 if name == "A" else rgb[..., "RGB".index(name)]
        return encode_native(native, fmt)
    if layout.layout is Layout.WORD16:
        words = np.zeros((fmt.height, fmt.width), np.uint16)
        shift = sum(layout.bits)
        for channel, bits in enumerate(layout.bits):
            shift -= bits
            # Round to the nearest level, the inverse of the decoder's bit replication.
            levels = (1 << bits) - 1
            field = (rgb[..., channel].astype(np.uint16) * levels + 127) // 255
            words |= field << shift
        return encode_native(words, fmt)
    return encode_native(_rgb_to_yuv(rgb), fmt)


def _rgb_to_yuv(rgb: RGB) -> YuvPlanes:
    height, width = rgb.shape[:2]
    r, g, b = (rgb[..., c].astype(np.float32) for c in range(3))
    luma = _KR * r + _KG * g + _KB * b
    y = 16.0 + luma / _Y_SCALE
    u_full = 128.0 + (b - luma) / (2 * (1 - _KB)) / _C_SCALE
    v_full = 128.0 + (r - luma) / (2 * (1 - _KR)) / _C_SCALE
    return YuvPlanes(
        _to_u8(y),
        _to_u8(_block_mean(u_full, height, width)),
        _to_u8(_block_mean(v_full, height, width)),
    )


def _block_mean(full: npt.NDArray[np.float32], height: int, width: int) -> npt.NDArray[np.float32]:
    """Average each 2 x 2 block; an odd edge averages what it has."""
    padded_h, padded_w = height + height % 2, width + width % 2
    padded = np.pad(full, ((0, padded_h - height), (0, padded_w - width)), mode="edge")
    blocks = padded.reshape(padded_h // 2, 2, padded_w // 2, 2)
    mean: npt.NDArray[np.float32] = blocks.mean(axis=(1, 3), dtype=np.float32)
    return mean


def _to_u8(values: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def encode_native(image: Image, fmt: VideoFormat) -> bytes:
    """A frame already in ``fmt``'s layout (what ``decode`` returns) as bytes with its stride."""
    layout = _raw(fmt)
    out = bytearray(fmt.frame_bytes)
    target = decode(out, fmt)
    if isinstance(target, YuvPlanes):
        if not isinstance(image, YuvPlanes):
            raise ValueError(f"{fmt} frames are encoded from YuvPlanes")
        for name in ("y", "u", "v"):
            _copy_into(getattr(target, name), getattr(image, name), fmt)
    else:
        if not isinstance(image, np.ndarray):
            raise ValueError(f"{fmt} frames are encoded from an array, got {type(image).__name__}")
        _copy_into(target, image, fmt)
    del target  # release the export of ``out`` before handing the bytes over
    assert layout is not None
    return bytes(out)


def _copy_into(target: np.ndarray, source: np.ndarray, fmt: VideoFormat) -> None:
    if source.shape != target.shape:
        raise ValueError(
            f"expected a native {fmt} array of shape {target.shape}, got {source.shape}"
        )
    np.copyto(target, source, casting="same_kind")


__all__ = [
    "Image",
    "YuvPlanes",
    "decode",
    "decode_message",
    "encode",
    "encode_native",
    "to_rgb",
]
