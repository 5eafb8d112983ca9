"""Encoded samples decoded to pixels (spec: MEDIA-12, MEDIA-3): the bytes are the peer's."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from avaproto.errors import FrameError
from avaproto.media.images import decode_image, encode_image
from avaproto.messages import Encoding, PixelFormat
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
    from avaproto.media.held_bytes import HeldBytes

    monkeypatch.setattr(images, "decoded", HeldBytes(images.DEFAULT_MAX_DECODED_BYTES))
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


@pytest.mark.rule("MEDIA-12")
def test_a_slow_image_holds_up_no_other_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Frame.image`` was a functools.cached_property, which up to Python 3.12 takes
    one lock for every frame of the process: one stream's image that took 20 s to
    decode held every other stream's frames, RAW ones included."""
    import threading

    from avaproto.engine.frame import Frame
    from avaproto.media import images
    from avaproto.protocol.descriptor import StreamDescriptor
    from avaproto.protocol.roles import Role
    from avaproto.protocol.video_format import VideoFormat

    entered, release = threading.Event(), threading.Event()
    decode = images.decode_image

    def slow(data: bytes | bytearray | memoryview, encoding: Encoding) -> np.ndarray:
        entered.set()
        assert release.wait(60)
        return decode(data, encoding)

    monkeypatch.setattr(images, "decode_image", slow)

    def frame(fmt: VideoFormat, data: bytes) -> Frame:
        described = StreamDescriptor(Role.PIPELINE, None, None, "", 90000, fmt, None)
        return Frame(2, 0, memoryview(data), fmt, described)

    encoded = VideoFormat.checked(Encoding.PNG, None, 6, 8)
    raw = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 2, 2)
    slow_one = frame(encoded, encode_image(PICTURE, Encoding.PNG))
    other = frame(raw, bytes(12))
    first = threading.Thread(target=lambda: slow_one.image)
    first.start()
    try:
        assert entered.wait(60)
        second = threading.Thread(target=lambda: other.image)
        second.start()
        second.join(60)
        assert not second.is_alive()  # done while the first still decodes
    finally:
        release.set()
        first.join(60)
    assert slow_one.image.shape == PICTURE.shape and other.image.shape == (2, 2, 3)


@pytest.mark.rule("MEDIA-12")
def test_an_image_that_costs_far_more_than_its_pixels_is_refused_before_pillow() -> None:
    """Pillow inflates each compressed metadata chunk of a PNG as it opens it (10,000 in
    a 1x1 PNG: 21 s), and decodes an RLE BMP a pixel at a time (9400x9400: 5 s)."""
    profile = b"icc\x00\x00" + zlib.compress(bytes(1000))
    png = encode_image(PICTURE, Encoding.PNG)
    crowded = png[:33] + chunk(b"iCCP", profile) * 17 + png[33:]
    with pytest.raises(FrameError) as caught:
        decode_image(crowded, Encoding.PNG)
    assert (caught.value.rule, caught.value.status) == ("MEDIA-12", Status.INVALID_ARGUMENT)
    assert "more than 16 compressed metadata chunks" in str(caught.value)
    decode_image(png[:33] + chunk(b"iCCP", profile) + png[33:], Encoding.PNG)  # one is usual
    after_the_pixels = png[:-12] + chunk(b"iCCP", profile) * 17 + png[-12:]  # before IEND
    with pytest.raises(FrameError, match="more than 16 compressed metadata chunks"):
        decode_image(after_the_pixels, Encoding.PNG)  # Pillow reads those too
    chatty = png[:-12] + chunk(b"tEXt", b"k\x00v") * 1001 + png[-12:]
    with pytest.raises(FrameError, match="or 1000 chunks besides its pixels"):
        decode_image(chatty, Encoding.PNG)
    header = struct.pack("<2sIHHI", b"BM", 0, 0, 0, 54)
    rle = header + struct.pack("<IiiHHI", 40, 9400, 9400, 1, 4, 2) + bytes(20)
    with pytest.raises(FrameError, match="RLE-compressed BMP of 9400x9400 pixels"):
        decode_image(rle, Encoding.BMP)
    # OS/2's 12-byte header has no compression field: its bytes there are pixels.
    from avaproto.media.images import _check_cost

    core = header + struct.pack("<IHHHH", 12, 64, 48, 1, 24) + struct.pack("<I", 1) * 8
    _check_cost(memoryview(core), "BMP")
