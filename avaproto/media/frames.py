"""RAW frames as numpy views, and back to bytes.

``decode`` reads a sample's bytes in place: a strided ``numpy.ndarray`` over the
buffer, so an embedded frame stays a view of the received message and a
shared-memory frame a view of the sender's mapping (MEDIA-7). Row padding
(``stride_bytes`` wider than the row) is skipped by the view's strides, never copied,
and never read (MEDIA-11). The view is read-only exactly when the buffer is, so a
processor cannot scribble over a read-only mapping and a writable buffer can be
filled in place (``encode_native`` writes frames that way).

Every layout comes from ``avaproto.protocol.pixel_formats.PIXEL_LAYOUTS``: the plane
offsets and pitches from ``PixelLayout.planes``, the channel order of packed formats
from ``channels``, the 16-bit fields from ``bits`` and ``byte_order``. Nothing here
restates a format's bytes, so a new format is one row of that table.

Colour (MEDIA-9, MEDIA-10). ``to_rgb`` gives height x width x 3 uint8 RGB:

* 24- and 32-bit formats are channel-selecting views (RGB24 is the decoded view
  itself, BGR24 ``image[..., ::-1]``, RGBA ``image[..., :3]``, ARGB ``image[..., 1:4]``,
  BGRA ``image[..., 2::-1]``, ABGR ``image[..., 3:0:-1]``): no arithmetic, no allocation.
* 16-bit formats widen each field to 8 bits by bit replication (``v << 3 | v >> 2``
  for 5 bits, ``v << 2 | v >> 4`` for 6), so 0 maps to 0 and full scale to 255. The
  encoder picks, for each 8-bit value, the field whose widening lies nearest, so a
  round trip is off by at most half a step: 4 for 5 bits, 2 for 6.
* YUV420P is ITU-R BT.601 in limited ("studio swing") range, Y in 16..235 and U, V
  in 16..240, as video decoders produce it. With Kr = 0.299, Kb = 0.114::

      Y' = (Y - 16) * 255/219            U' = (U - 128) * 255/224
      V' = (V - 128) * 255/224
      R = Y' + 1.402 V'
      G = Y' - 0.344136 U' - 0.714136 V'
      B = Y' + 1.772 U'

  computed in float32, rounded to nearest and clipped to 0..255. Chroma is upsampled
  by nearest neighbour: each U, V sample covers its 2 x 2 block of luma, and at an
  odd width or height the last chroma column or row covers the single luma column or
  row left over (the block is cropped at the edge). The encoder is the exact inverse
  (the same coefficients) with each chroma sample the mean of its block, so a picture
  constant over 2 x 2 blocks survives a round trip within the rounding of 8-bit
  limited range.

Errors. A buffer that does not match its announced format is the peer's fault:
``FrameError`` naming the rule (MEDIA-6 for the size, MEDIA-12 for an encoded
format). An array of the wrong shape or dtype handed to ``to_rgb``, ``encode`` or
``encode_native`` is the caller's programming error: ``ValueError`` saying what was
expected.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import TypeAlias, cast

import numpy as np
import numpy.typing as npt

from ..errors import FrameError
from ..messages import VideoFrameSampleFormat
from ..protocol.pixel_formats import Layout, PixelLayout, Plane
from ..protocol.video_format import DEFAULT_LIMITS, FrameLimits, VideoFormat
from ..status import Status

#: Anything holding a frame's bytes: received bytes, a buffer, a shared-memory slice.
Buffer: TypeAlias = bytes | bytearray | memoryview | mmap.mmap
RGB: TypeAlias = npt.NDArray[np.uint8]


@dataclass(frozen=True, eq=False)
class YuvPlanes:
    """A YUV420P frame: three 2-D uint8 views, Y full size, U and V at half (rounded up)."""

    y: npt.NDArray[np.uint8]
    u: npt.NDArray[np.uint8]
    v: npt.NDArray[np.uint8]

    def __iter__(self) -> Iterator[npt.NDArray[np.uint8]]:
        """Y, U, V in buffer order, so code can treat every plane alike."""
        return iter((self.y, self.u, self.v))


#: What ``decode`` returns: packed pixels, 16-bit words, or YUV planes.
Image: TypeAlias = npt.NDArray[np.uint8] | npt.NDArray[np.uint16] | YuvPlanes

# BT.601: luma weights, and the stretch from limited to full range.
_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB
_Y_SCALE = 255.0 / 219.0
_C_SCALE = 255.0 / 224.0
# Full-range chroma to colour differences (the matrix of the module docstring).
_V_TO_R = 2.0 * (1.0 - _KR)
_U_TO_G = -2.0 * _KB * (1.0 - _KB) / _KG
_V_TO_G = -2.0 * _KR * (1.0 - _KR) / _KG
_U_TO_B = 2.0 * (1.0 - _KB)


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


def _word_dtype(layout: PixelLayout) -> np.dtype[np.uint16]:
    return np.dtype(">u2" if layout.byte_order == "big" else "<u2")


def _native_shape(layout: PixelLayout, plane: Plane) -> tuple[int, ...]:
    """The array shape ``decode`` gives a plane: one entry per byte of a packed pixel."""
    if layout.layout is Layout.PACKED:
        return (plane.height, plane.width, layout.bytes_per_pixel)
    return (plane.height, plane.width)


def _plane(raw: np.ndarray, layout: PixelLayout, plane: Plane) -> np.ndarray:
    """One plane as a strided view of ``raw``; the padding past each row is skipped."""
    shape = _native_shape(layout, plane)
    if layout.layout is Layout.WORD16:
        return np.ndarray(shape, _word_dtype(layout), raw, plane.offset, (plane.pitch, 2))
    item = layout.bytes_per_pixel
    strides = (plane.pitch, item, 1) if len(shape) == 3 else (plane.pitch, item)
    return np.ndarray(shape, np.uint8, raw, plane.offset, strides)


def _exporting(view: memoryview) -> np.ndarray:
    """``view``'s bytes as an array that holds an export of them while it lives.

    ``np.ndarray(buffer=a_memoryview)`` keeps the object under the view (a bytearray,
    an mmap) without an export: the view can then be released, a pooled buffer reused
    under the array, a mapping unmapped (a segmentation fault on the next read).
    ``np.frombuffer`` keeps one, which refuses all three (SHM-12).
    """
    return np.frombuffer(view, np.uint8)


def decode(buffer: Buffer, fmt: VideoFormat) -> Image:
    """The frame in ``buffer`` as a view in its native layout, without copying.

    Packed formats give height x width x channels uint8 (channels in memory order),
    16-bit formats height x width uint16 in the format's byte order (``>u2``/``<u2``),
    YUV420P a ``YuvPlanes``. The buffer must measure exactly one frame (MEDIA-6): a
    view over a short buffer would read past the sample, and a long one means the
    sender and the format disagree. Only the padding after the last row may be
    missing (MEDIA-6's field note): every pixel is still in the buffer.
    """
    layout = _raw(fmt)
    raw = _byte_view(buffer)
    expected = fmt.frame_bytes
    if not fmt.shortest_bytes <= raw.nbytes <= expected:
        raise FrameError(
            "MEDIA-6",
            Status.INVALID_ARGUMENT,
            f"a {fmt} frame measures {expected} bytes, the content has {raw.nbytes}",
        )
    whole = _exporting(raw)
    planes = [_plane(whole, layout, plane) for plane in _planes(fmt)]
    if layout.layout is Layout.PLANAR_YUV420:
        return YuvPlanes(*planes)
    image: Image = planes[0]
    return image


def decode_message(
    buffer: Buffer, message: VideoFrameSampleFormat, limits: FrameLimits = DEFAULT_LIMITS
) -> Image:
    """``decode`` for a format straight off the wire: checked first (MEDIA-1 to 5).

    An absurd format (100000 x 100000, RAW without a pixel format) is refused before
    anything is sized or allocated.
    """
    return decode(buffer, VideoFormat.from_message(message, limits))


def _planes(fmt: VideoFormat) -> tuple[Plane, ...]:
    return fmt.layout.planes(fmt.width, fmt.height, fmt.stride_bytes)


# --- to RGB ----------------------------------------------------------------------------


def _rgb_slice(layout: PixelLayout) -> slice | None:
    """The slice of a packed pixel's bytes that reads R, G, B in order, if one exists."""
    if layout.layout is not Layout.PACKED:
        return None
    r, g, b = (layout.channels.index(name) for name in "RGB")
    step = g - r
    if step not in (1, -1) or b - g != step:
        return None
    stop = b + step
    return slice(r, stop if stop >= 0 else None, step)


def rgb_view_possible(fmt: VideoFormat) -> bool:
    """Whether ``to_rgb`` of this format is a view (no arithmetic, no allocation)."""
    return fmt.is_raw and _rgb_slice(fmt.layout) is not None


def _check_native(image: Image, fmt: VideoFormat, layout: PixelLayout) -> None:
    """Refuse an image that is not what ``decode`` gives for ``fmt`` (a caller's bug)."""
    planes = _planes(fmt)
    arrays: list[np.ndarray]
    if layout.layout is Layout.PLANAR_YUV420:
        if not isinstance(image, YuvPlanes):
            raise ValueError(f"{fmt} frames are YuvPlanes, got {type(image).__name__}")
        arrays = list(image)
    else:
        if not isinstance(image, np.ndarray):
            raise ValueError(f"{fmt} frames are numpy arrays, got {type(image).__name__}")
        arrays = [image]
    word = layout.layout is Layout.WORD16
    for array, plane in zip(arrays, planes, strict=True):
        shape = _native_shape(layout, plane)
        if not isinstance(array, np.ndarray) or array.shape != shape:
            got = array.shape if isinstance(array, np.ndarray) else type(array).__name__
            raise ValueError(
                f"expected a native {fmt} {plane.name} plane of shape {shape}, got {got}"
            )
        kind_ok = array.dtype.kind == "u" and array.dtype.itemsize == (2 if word else 1)
        if not kind_ok:
            wanted = "uint16" if word else "uint8"
            raise ValueError(f"expected {wanted} pixels for {fmt}, got {array.dtype}")


def _check_out(out: RGB, fmt: VideoFormat) -> None:
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8:
        raise ValueError(f"out must be a uint8 numpy array, got {getattr(out, 'dtype', out)!r}")
    if out.shape != (fmt.height, fmt.width, 3):
        raise ValueError(
            f"out must have shape {(fmt.height, fmt.width, 3)} for {fmt}, got {out.shape}"
        )
    if not out.flags.writeable:
        raise ValueError("out is read-only")


def to_rgb(image: Image, fmt: VideoFormat, out: RGB | None = None) -> RGB:
    """The frame as height x width x 3 RGB: a view for 24- and 32-bit formats.

    ``image`` is what ``decode(buffer, fmt)`` returned. A view shares the sample's
    memory, so it is valid only as long as the sample (copy it to keep it). With
    ``out`` the pixels are written there and ``out`` returned, for a caller that
    keeps one destination across frames; without it the computed formats (16-bit,
    YUV420P) allocate their result. The colour maths is in the module docstring.
    """
    layout = _raw(fmt)
    _check_native(image, fmt, layout)
    if out is not None:
        _check_out(out, fmt)
    channels = _rgb_slice(layout)
    if channels is not None:
        assert isinstance(image, np.ndarray)
        view = cast(RGB, image[..., channels])
        if out is None:
            return view
        np.copyto(out, view)
        return out
    if out is None:
        out = np.empty((fmt.height, fmt.width, 3), np.uint8)
    if isinstance(image, YuvPlanes):
        _yuv_to_rgb(image, out)
    elif layout.layout is Layout.WORD16:
        _unpack_words(image, layout, out)
    else:  # a packed format whose R, G, B are not evenly spaced: pick them one by one
        for channel, name in enumerate("RGB"):
            out[..., channel] = image[..., layout.channels.index(name)]
    return out


def _widen(field: np.ndarray, bits: int) -> np.ndarray:
    """A ``bits``-wide field to 8 bits by replicating its top bits into the low ones."""
    return (field << (8 - bits)) | (field >> (2 * bits - 8))


def _fields(layout: PixelLayout) -> list[tuple[int, int]]:
    """(shift, bits) of red, green and blue in a 16-bit word, from the table's widths."""
    shift = sum(layout.bits)
    fields = []
    for bits in layout.bits:
        shift -= bits
        fields.append((shift, bits))
    return fields


def _unpack_words(image: Image, layout: PixelLayout, out: RGB) -> None:
    assert isinstance(image, np.ndarray)
    words = image.astype(np.uint16, copy=False)  # to native byte order
    field = np.empty(words.shape, np.uint16)
    for channel, (shift, bits) in enumerate(_fields(layout)):
        np.right_shift(words, shift, out=field)
        field &= (1 << bits) - 1
        np.copyto(out[..., channel], _widen(field, bits), casting="unsafe")


#: Bytes of float32 per working row band: small enough that a band's temporaries stay
#: in the CPU cache, large enough that numpy's per-call overhead does not show.
_BAND_BYTES = 1 << 18

# (U, V) coefficients of R, G and B, with the chroma stretch folded in.
_CHROMA_TERMS = (
    (0.0, _C_SCALE * _V_TO_R),
    (_C_SCALE * _U_TO_G, _C_SCALE * _V_TO_G),
    (_C_SCALE * _U_TO_B, 0.0),
)


def _yuv_to_rgb(planes: YuvPlanes, out: RGB) -> None:
    """BT.601 limited range (module docstring) with nearest-neighbour chroma.

    The frame is converted in bands of rows so the float32 temporaries are allocated
    once and stay in cache. Each chroma term is computed once per chroma sample,
    doubled along the row, and broadcast over the block's two rows, so the
    full-resolution work is one add, one clip and one store per channel.
    """
    height, width = planes.y.shape
    chroma_width = planes.u.shape[1]
    band = max(2, (_BAND_BYTES // (4 * width)) & ~1)  # even: bands start on a block
    luma = np.empty((band, width), np.float32)
    total = np.empty((band, width), np.float32)
    u = np.empty((band // 2, chroma_width), np.float32)
    v = np.empty_like(u)
    scratch = np.empty_like(u)
    #: A chroma term per luma column: [..., 0] and [..., 1] are a block's two columns.
    wide = np.empty((band // 2, chroma_width, 2), np.float32)
    for top in range(0, height, band):
        rows = min(band, height - top)
        chroma_rows = (rows + 1) // 2
        first = top // 2
        y = luma[:rows]
        np.subtract(planes.y[top : top + rows], np.float32(16), out=y)
        y *= np.float32(_Y_SCALE)
        y += np.float32(0.5)  # so the truncating store below rounds to nearest
        uu, vv, tmp = u[:chroma_rows], v[:chroma_rows], scratch[:chroma_rows]
        np.subtract(planes.u[first : first + chroma_rows], np.float32(128), out=uu)
        np.subtract(planes.v[first : first + chroma_rows], np.float32(128), out=vv)
        pixels = total[:rows]
        for channel, (from_u, from_v) in enumerate(_CHROMA_TERMS):
            block = wide[:chroma_rows]
            term = block[..., 0]
            if from_u and from_v:
                np.multiply(uu, np.float32(from_u), out=term)
                np.multiply(vv, np.float32(from_v), out=tmp)
                term += tmp
            elif from_u:
                np.multiply(uu, np.float32(from_u), out=term)
            else:
                np.multiply(vv, np.float32(from_v), out=term)
            np.copyto(block[..., 1], term)
            per_column = block.reshape(chroma_rows, 2 * chroma_width)[:, :width]
            _add_over_row_pairs(y, per_column, pixels)
            np.clip(pixels, 0, 255, out=pixels)
            np.copyto(out[top : top + rows, :, channel], pixels, casting="unsafe")


def _add_over_row_pairs(luma: np.ndarray, per_column: np.ndarray, out: np.ndarray) -> None:
    """``out = luma + per_column`` with each row of ``per_column`` serving two luma rows;
    an odd last luma row uses the last one alone (the block cropped at the edge)."""
    rows, width = luma.shape
    pairs = rows // 2
    even = 2 * pairs
    np.add(
        luma[:even].reshape(pairs, 2, width),
        per_column[:pairs, None, :],
        out=out[:even].reshape(pairs, 2, width),
    )
    if rows % 2:
        np.add(luma[-1], per_column[-1], out=out[-1])


# --- encoding ---------------------------------------------------------------------------


def _check_rgb(rgb: RGB, fmt: VideoFormat) -> None:
    if not isinstance(rgb, np.ndarray):
        raise ValueError(f"expected a numpy RGB array for {fmt}, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8 or rgb.shape != (fmt.height, fmt.width, 3):
        raise ValueError(
            f"expected a {fmt.height} x {fmt.width} x 3 uint8 RGB array for {fmt}, "
            f"got {rgb.shape} {rgb.dtype}"
        )


def _with_stride(fmt: VideoFormat, stride_bytes: int | None) -> VideoFormat:
    """``fmt`` with another stride, checked by MEDIA-4 as a receiver with the default
    limits checks it (the size was checked already: a larger one stays accepted)."""
    if stride_bytes is None or stride_bytes == fmt.stride_bytes or not fmt.is_raw:
        return fmt
    limits = FrameLimits(
        max(fmt.width, DEFAULT_LIMITS.max_width),
        max(fmt.height, DEFAULT_LIMITS.max_height),
        max(fmt.width * fmt.height, DEFAULT_LIMITS.max_pixels),
    )
    return VideoFormat.checked(
        fmt.encoding, fmt.pixel_format, fmt.width, fmt.height, stride_bytes, limits
    )


def encode(rgb: RGB, fmt: VideoFormat, *, stride_bytes: int | None = None) -> bytes:
    """Height x width x 3 RGB as one frame of ``fmt``, rows padded to its stride.

    Padding bytes are zero (MEDIA-11); alpha, where the format has it, is opaque
    (255). ``stride_bytes`` overrides the format's stride (0: packed rows).
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
        for channel, (shift, bits) in enumerate(_fields(layout)):
            words |= _nearest_field(bits)[rgb[..., channel]] << np.uint16(shift)
        return encode_native(words, fmt)
    return encode_native(_rgb_to_yuv(rgb), fmt)


@cache
def _nearest_field(bits: int) -> npt.NDArray[np.uint16]:
    """For each 8-bit value, the ``bits``-wide field whose widening lies nearest."""
    widened = _widen(np.arange(1 << bits, dtype=np.int32), bits)
    distance = np.abs(np.arange(256, dtype=np.int32)[:, None] - widened[None, :])
    table: npt.NDArray[np.uint16] = distance.argmin(axis=1).astype(np.uint16)
    table.flags.writeable = False
    return table


def _rgb_to_yuv(rgb: RGB) -> YuvPlanes:
    height, width = rgb.shape[:2]
    r, g, b = (rgb[..., c].astype(np.float32) for c in range(3))
    luma = _KR * r + _KG * g + _KB * b
    y = 16.0 + luma / _Y_SCALE
    u_full = 128.0 + (b - luma) / _U_TO_B / _C_SCALE
    v_full = 128.0 + (r - luma) / _V_TO_R / _C_SCALE
    return YuvPlanes(
        _to_u8(y),
        _to_u8(_block_mean(u_full, height, width)),
        _to_u8(_block_mean(v_full, height, width)),
    )


def _block_mean(full: npt.NDArray[np.float32], height: int, width: int) -> npt.NDArray[np.float32]:
    """Average each 2 x 2 block; a block cropped by an odd edge averages what it has."""
    padded_h, padded_w = height + height % 2, width + width % 2
    padded = np.pad(full, ((0, padded_h - height), (0, padded_w - width)), mode="edge")
    blocks = padded.reshape(padded_h // 2, 2, padded_w // 2, 2)
    mean: npt.NDArray[np.float32] = blocks.mean(axis=(1, 3), dtype=np.float32)
    return mean


def _to_u8(values: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def encode_native(image: Image, fmt: VideoFormat) -> bytes:
    """A frame already in ``fmt``'s layout (what ``decode`` returns) as bytes with its stride.

    16-bit words may come in either byte order: they are written in the format's.
    Padding bytes are zero (MEDIA-11).
    """
    layout = _raw(fmt)
    _check_native(image, fmt, layout)
    planes = _planes(fmt)
    if len(planes) == 1 and planes[0].pitch == layout.row_bytes(fmt.width):
        assert isinstance(image, np.ndarray)
        dtype = _word_dtype(layout) if layout.layout is Layout.WORD16 else np.dtype(np.uint8)
        return np.asarray(image, dtype).tobytes()  # packed rows: one copy, no padding
    out = bytearray(fmt.frame_bytes)
    whole = _exporting(memoryview(out))
    sources = list(image) if isinstance(image, YuvPlanes) else [image]
    for source, plane in zip(sources, planes, strict=True):
        np.copyto(_plane(whole, layout, plane), source, casting="same_kind")
    del whole  # its export, before the bytes are taken
    return bytes(out)


__all__ = [
    "RGB",
    "Buffer",
    "Image",
    "YuvPlanes",
    "decode",
    "decode_message",
    "encode",
    "encode_native",
    "rgb_view_possible",
    "to_rgb",
]
