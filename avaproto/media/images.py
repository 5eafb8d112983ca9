"""Encoded samples (JPG, PNG, BMP): bytes on the wire, arrays only on request.

The protocol passes encoded images through untouched (MEDIA-12): a sender's JPEG
reaches the extension as the same bytes. Turning them into pixels needs an image
codec, so it is an optional extra (Pillow, ``pip install 'avaproto[image]'``),
imported only when a caller asks for pixels, with an error that says what to install.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import weakref
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import FrameError
from ..messages import Encoding
from ..status import Status
from .held_bytes import HeldBytes

#: Pillow's name for each encoded format of the contract.
PILLOW_FORMATS = {Encoding.JPG: "JPEG", Encoding.PNG: "PNG", Encoding.BMP: "BMP"}
#: The encoded formats' names, as the commands take them.
ENCODED = tuple(str(encoding.name) for encoding in PILLOW_FORMATS)

#: The bytes the images of the process being decoded and decoded (while their arrays
#: live) may take together (SRV-18): a PNG of 10 KB can announce 88 million pixels,
#: a gigabyte once decoded, and a few streams of them took a server past 3.7 GB while
#: its frame memory counted their 10 KB each. ``avaproto serve --max-decoded-bytes``.
DEFAULT_MAX_DECODED_BYTES = 1024**3
#: What decoding one pixel takes at its peak, in bytes: the decoder's own image (up to
#: four bytes a pixel, more for progressive JPEGs), its RGB conversion and the array
#: made from that (14 bytes a pixel measured for progressive and CMYK JPEGs, RGBA PNGs).
DECODING_BYTES_PER_PIXEL = 15
#: What a decoded pixel keeps while its array lives: RGB.
DECODED_BYTES_PER_PIXEL = 3

log = logging.getLogger("avaproto.media.images")


#: The process's decoded images (``limit_decoded_bytes`` sets their bound).
decoded = HeldBytes(DEFAULT_MAX_DECODED_BYTES)


def limit_decoded_bytes(limit: int) -> None:
    """Bound the bytes the process's images take being decoded and decoded (SRV-18)."""
    if limit <= 0:
        raise ValueError(f"the bound on decoded images must be above 0, got {limit}")
    decoded.limit = limit


def load_pillow() -> Any:
    """Pillow's ``Image`` module, or an ``ImportError`` naming the extra to install."""
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(
            "decoding and encoding JPG, PNG and BMP needs Pillow: pip install 'avaproto[image]'"
        ) from error
    return Image


def _pillow_format(encoding: Encoding) -> str:
    try:
        return PILLOW_FORMATS[encoding]
    except KeyError:
        raise ValueError(
            f"{Encoding(encoding).name} is not an encoded image format; RAW frames are "
            "read with avaproto.media.frames"
        ) from None


def decode_image(data: bytes | bytearray | memoryview, encoding: Encoding) -> npt.NDArray[np.uint8]:
    """An encoded sample as height x width x 3 RGB (a new array: decoding must allocate).

    The bytes are the peer's: what cannot be decoded as the stream's encoding is
    ``FrameError`` (MEDIA-12, INVALID_ARGUMENT) saying why, and an image whose header
    announces more pixels than Pillow decodes safely is refused (MEDIA-3,
    RESOURCE_EXHAUSTED) before its pixels are allocated.
    """
    expected = _pillow_format(encoding)
    image_module = load_pillow()
    name = Encoding(encoding).name  # one of PILLOW_FORMATS' (checked above)
    size = memoryview(data).nbytes
    _check_cost(memoryview(data).cast("B"), name)
    try:
        with warnings.catch_warnings():
            # Pillow warns of an image past its limit; it is refused below instead.
            warnings.simplefilter("ignore", image_module.DecompressionBombWarning)
            image = image_module.open(io.BytesIO(data))
        with image:
            found = image.format
            pixels = image.width * image.height
            limit = image_module.MAX_IMAGE_PIXELS
            if limit and pixels > limit:  # Pillow itself only warns up to twice as many
                raise FrameError(
                    "MEDIA-3",
                    Status.RESOURCE_EXHAUSTED,
                    f"the {name} sample's header announces {image.width}x{image.height}, "
                    f"{pixels} pixels; the decoder takes at most {limit} "
                    "(PIL.Image.MAX_IMAGE_PIXELS)",
                )
            if found == expected:
                return _decoded(image, name, pixels)
    except image_module.DecompressionBombError as error:
        status = Status.RESOURCE_EXHAUSTED
        raise FrameError("MEDIA-3", status, f"the {name} sample: {error}") from None
    except image_module.UnidentifiedImageError:
        raise FrameError(
            "MEDIA-12",
            Status.INVALID_ARGUMENT,
            f"the {name} sample ({size} bytes) is not an image Pillow recognises",
        ) from None
    except (OSError, SyntaxError, ValueError) as error:  # Pillow's words for broken data
        raise FrameError(
            "MEDIA-12",
            Status.INVALID_ARGUMENT,
            f"the {name} sample ({size} bytes) cannot be decoded: {error}",
        ) from None
    raise FrameError(
        "MEDIA-12",
        Status.INVALID_ARGUMENT,
        f"the sample is {found} data, but the stream says {name}",
    )


#: Compressed metadata chunks (iCCP, zTXt, iTXt) a PNG may hold, before or after its pixels:
#: Pillow inflates each as it opens the file (up to 1 MiB each, whatever the image's
#: size), and a 1x1 PNG of 10,000 of them, 27 KB once the message was compressed,
#: cost 21 s of CPU.
MAX_PNG_COMPRESSED_CHUNKS = 16
#: Other chunks a PNG may hold besides its pixels (IDAT): 100,000 chunks of text took
#: 0.3 s; an image holds a few.
MAX_PNG_OTHER_CHUNKS = 1000
#: Pixels of an RLE-compressed BMP: Pillow decodes those in Python, a pixel at a time
#: (5 s for 9400x9400 pixels sent in 2.5 KB); a frame of 1920x1080 takes a tenth of a
#: second. Uncompressed BMPs, what pipelines send, are not bounded by this.
MAX_RLE_BMP_PIXELS = 1920 * 1088
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHUNK = struct.Struct(">I4s")
_BMP_RLE = (1, 2)  # BI_RLE8, BI_RLE4


def _check_cost(data: memoryview, name: str) -> None:
    """Refuse (MEDIA-12) what would cost Pillow far more than its pixels: a PNG's
    compressed metadata, an RLE-compressed BMP of many pixels; read from the bytes
    before Pillow parses any."""
    if bytes(data[:8]) == _PNG_SIGNATURE:
        pos, compressed, other = 8, 0, 0
        while pos + 8 <= len(data):  # every chunk: Pillow reads those after IDAT too
            length, kind = _PNG_CHUNK.unpack_from(data, pos)
            if kind == b"IEND":
                break
            if kind in (b"iCCP", b"zTXt", b"iTXt"):
                compressed += 1
            elif kind != b"IDAT":
                other += 1
            if compressed > MAX_PNG_COMPRESSED_CHUNKS or other > MAX_PNG_OTHER_CHUNKS:
                raise FrameError(
                    "MEDIA-12",
                    Status.INVALID_ARGUMENT,
                    f"the {name} sample holds more than {MAX_PNG_COMPRESSED_CHUNKS} "
                    f"compressed metadata chunks (iCCP, zTXt, iTXt), or {MAX_PNG_OTHER_CHUNKS} "
                    "chunks besides its pixels: each is read, the compressed ones inflated, as the "
                    "image is decoded",
                )
            pos += 12 + length
    elif bytes(data[:2]) == b"BM" and len(data) >= 34:
        if struct.unpack_from("<I", data, 14)[0] < 40:  # OS/2's header: no compression
            return
        width, height, _, _, compression = struct.unpack_from("<iiHHI", data, 18)
        pixels = abs(width) * abs(height)
        if compression in _BMP_RLE and pixels > MAX_RLE_BMP_PIXELS:
            raise FrameError(
                "MEDIA-12",
                Status.INVALID_ARGUMENT,
                f"the {name} sample is an RLE-compressed BMP of {abs(width)}x{abs(height)} "
                f"pixels; the decoder reads those a pixel at a time, so at most "
                f"{MAX_RLE_BMP_PIXELS} are taken: send it uncompressed",
            )


def _decoded(image: Any, name: str, pixels: int) -> npt.NDArray[np.uint8]:
    """``image``'s pixels as RGB, its bytes counted in ``decoded`` while decoding and
    then for as long as the array lives; refused (SRV-18, RESOURCE_EXHAUSTED) when
    they would pass its bound."""
    peak, kept = pixels * DECODING_BYTES_PER_PIXEL, pixels * DECODED_BYTES_PER_PIXEL
    if not decoded.admit(peak):
        message = (
            f"decoding the {name} sample's {image.width}x{image.height} pixels takes about "
            f"{peak / 2**20:.1f} MiB; the process's images being decoded and decoded hold "
            f"{decoded.held / 2**20:.1f} MiB of its bound of "
            f"{(decoded.limit or 0) / 2**20:.1f} MiB (--max-decoded-bytes)"
        )
        log.warning("[SRV-18] %s", message)
        raise FrameError("SRV-18", Status.RESOURCE_EXHAUSTED, message)
    try:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except BaseException:
        decoded.release(peak)
        raise
    decoded.release(peak - kept)
    weakref.finalize(rgb, decoded.release, kept)
    return rgb


def encode_image(rgb: npt.NDArray[np.uint8], encoding: Encoding, *, quality: int = 90) -> bytes:
    """Height x width x 3 RGB as an encoded sample of ``encoding``."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(
            f"expected a height x width x 3 uint8 RGB array, got {rgb.shape} {rgb.dtype}"
        )
    pillow_format = _pillow_format(encoding)
    image_module = load_pillow()
    buffer = io.BytesIO()
    options = {"quality": quality} if encoding is Encoding.JPG else {}
    image_module.fromarray(np.ascontiguousarray(rgb), "RGB").save(buffer, pillow_format, **options)
    return buffer.getvalue()


def synthetic_image(width: int, height: int, encoding: Encoding, index: int = 0) -> bytes:
    """A test pattern of ``width`` x ``height`` as an encoded sample: smooth gradients
    that shift with ``index``, so frames differ and stay small, as camera images do."""
    rows = np.arange(height, dtype=np.uint32)[:, None]
    columns = np.arange(width, dtype=np.uint32)[None, :]
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = (columns * 255 // max(width - 1, 1) + index * 7) % 256
    rgb[..., 1] = (rows * 255 // max(height - 1, 1) + index * 13) % 256
    rgb[..., 2] = ((rows + columns) * 2 + index * 29) % 256
    return encode_image(rgb, encoding)
