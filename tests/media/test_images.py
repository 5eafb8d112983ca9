"""Encoded samples decoded to pixels (spec: MEDIA-12, MEDIA-3): the bytes are the peer's."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from avaproto.errors import FrameError
from avaproto.media.images import decode_image, encode_image
from avaproto.messages import Encoding
from avaproto.status import Status

pytest.importorskip("PIL")

PICTURE = np.arange(8 * 6 * 3, dtype=np.uint8).reshape(8, 6, 3)


def chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_header(width: int, height: int) -> bytes:
    """A PNG that says its size and holds no pixels: a few dozen bytes on the wire."""
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


@pytest.mark.rule("MEDIA-12")
@pytest.mark.parametrize("encoding", [Encoding.PNG, Encoding.BMP, Encoding.JPG])
def test_an_encoded_sample_decodes_to_rgb(encoding: Encoding) -> None:
    rgb = decode_image(encode_image(PICTURE, encoding), encoding)
    assert rgb.shape == PICTURE.shape and rgb.dtype == np.uint8
    if encoding is not Encoding.JPG:  # lossless
        np.testing.assert_array_equal(rgb, PICTURE)


@pytest.mark.rule("MEDIA-12")
@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"not an image at all", "is not an image Pillow recognises"),
        (encode_image(PICTURE, Encoding.JPG)[:-40], "cannot be decoded"),
        (encode_image(PICTURE, Encoding.PNG), "the sample is PNG data, but the stream says JPG"),
    ],
    ids=["garbage", "cut short", "another format"],
)
def test_bytes_that_are_not_the_streams_image_are_invalid_argument(data: bytes, says: str) -> None:
    with pytest.raises(FrameError) as caught:
        decode_image(data, Encoding.JPG)
    assert (caught.value.rule, caught.value.status) == ("MEDIA-12", Status.INVALID_ARGUMENT)
    assert says in str(caught.value)
    assert "0x" not in str(caught.value)  # no object's address, as Pillow's own words give


@pytest.mark.rule("MEDIA-3")
@pytest.mark.parametrize("side", [12000, 20000])  # Pillow itself only warns at 12000
def test_an_image_announcing_too_many_pixels_is_refused_before_they_are_allocated(
    side: int,
) -> None:
    with pytest.raises(FrameError) as caught:
        decode_image(png_header(side, side), Encoding.PNG)
    assert (caught.value.rule, caught.value.status) == ("MEDIA-3", Status.RESOURCE_EXHAUSTED)
    assert f"{side * side} pixels" in str(caught.value)


@pytest.mark.rule("SRV-18")
def test_decoded_images_are_bounded_while_their_arrays_live(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A PNG of 10 KB can announce 88 million pixels, a gigabyte once decoded; a few
    streams of them took a server past 3.7 GB while its frame memory counted 10 KB
    each. What decoding takes is counted, and what a decoded array keeps until it goes."""
    import gc

    from avaproto.media import images

    monkeypatch.setattr(images, "decoded", images._DecodedBytes(images.DEFAULT_MAX_DECODED_BYTES))
    picture = encode_image(PICTURE, Encoding.PNG)
    pixels = PICTURE.shape[0] * PICTURE.shape[1]
    # Room to decode one at its peak; its array keeps 3 bytes a pixel once decoded.
    images.limit_decoded_bytes(pixels * images.DECODING_BYTES_PER_PIXEL)
    kept = decode_image(picture, Encoding.PNG)
    assert images.decoded.held == pixels * images.DECODED_BYTES_PER_PIXEL
    with pytest.raises(FrameError) as caught:
        decode_image(picture, Encoding.PNG)  # its peak does not fit beside the kept one
    assert (caught.value.rule, caught.value.status) == ("SRV-18", Status.RESOURCE_EXHAUSTED)
    assert "6x8 pixels" in str(caught.value) and "(--max-decoded-bytes)" in str(caught.value)
    assert "[SRV-18] decoding the PNG sample's 6x8 pixels" in caplog.text
    del kept
    gc.collect()
    assert images.decoded.held == 0
    np.testing.assert_array_equal(decode_image(picture, Encoding.PNG), PICTURE)
