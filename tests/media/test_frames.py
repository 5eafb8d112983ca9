"""Spec section 10, media formats: RAW frames as views, colour, and encoding back."""

from __future__ import annotations

import mmap
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avaproto.errors import FrameError
from avaproto.media import frames
from avaproto.media.frames import YuvPlanes
from avaproto.messages import Dimensions, Encoding, PixelFormat, VideoFrameSampleFormat
from avaproto.protocol.pixel_formats import PIXEL_LAYOUTS, Layout
from avaproto.protocol.video_format import VideoFormat
from avaproto.status import Status

FORMATS = list(PIXEL_LAYOUTS)
PACKED = [f for f in FORMATS if PIXEL_LAYOUTS[f].layout is Layout.PACKED]
WORDS = [f for f in FORMATS if PIXEL_LAYOUTS[f].layout is Layout.WORD16]


def raw(pixel_format: PixelFormat, width: int, height: int, stride: int = 0) -> VideoFormat:
    return VideoFormat.checked(Encoding.RAW, pixel_format, width, height, stride)


def padded(pixel_format: PixelFormat, width: int, height: int, pad: int) -> VideoFormat:
    return raw(pixel_format, width, height, PIXEL_LAYOUTS[pixel_format].row_bytes(width) + pad)


def planes_of(image: frames.Image) -> tuple[np.ndarray, ...]:
    return tuple(image) if isinstance(image, YuvPlanes) else (image,)


def base_of(image: frames.Image) -> np.ndarray:
    return image.y if isinstance(image, YuvPlanes) else image


def picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def blocky(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A picture constant over 2 x 2 blocks: 4:2:0 subsampling loses nothing of it."""
    small = picture((width + 1) // 2, (height + 1) // 2, seed)
    return small.repeat(2, axis=0).repeat(2, axis=1)[:height, :width].copy()


class TestReadingInPlace:
    @pytest.mark.rule("MEDIA-7")
    @pytest.mark.parametrize("pixel_format", FORMATS, ids=lambda f: f.name)
    def test_every_format_is_a_view_of_the_buffer(self, pixel_format: PixelFormat) -> None:
        fmt = raw(pixel_format, 6, 4)
        buffer = bytearray(fmt.frame_bytes)
        image = frames.decode(buffer, fmt)
        planes = (image.y, image.u, image.v) if isinstance(image, YuvPlanes) else (image,)
        whole = np.frombuffer(buffer, np.uint8)
        assert all(np.shares_memory(plane, whole) for plane in planes)

    @pytest.mark.rule("MEDIA-7")
    @pytest.mark.parametrize("pixel_format", PACKED, ids=lambda f: f.name)
    def test_packed_shape(self, pixel_format: PixelFormat) -> None:
        fmt = raw(pixel_format, 5, 3)
        image = frames.decode(bytes(fmt.frame_bytes), fmt)
        assert isinstance(image, np.ndarray)
        assert image.shape == (3, 5, PIXEL_LAYOUTS[pixel_format].bytes_per_pixel)
        assert image.dtype == np.uint8

    @pytest.mark.rule("MEDIA-7", "MEDIA-9")
    @pytest.mark.parametrize("pixel_format", WORDS, ids=lambda f: f.name)
    def test_sixteen_bit_words_in_their_byte_order(self, pixel_format: PixelFormat) -> None:
        fmt = raw(pixel_format, 2, 1)
        image = frames.decode(b"\x12\x34\xab\xcd", fmt)
        assert isinstance(image, np.ndarray) and image.shape == (1, 2)
        expected = [0x1234, 0xABCD] if pixel_format.name.endswith("BE") else [0x3412, 0xCDAB]
        assert image.tolist() == [expected]

    @pytest.mark.rule("MEDIA-7", "MEDIA-11")
    @pytest.mark.parametrize("pixel_format", FORMATS, ids=lambda f: f.name)
    def test_stride_padding_is_skipped_by_a_strided_view(self, pixel_format: PixelFormat) -> None:
        fmt = padded(pixel_format, 5, 4, 7)
        buffer = bytearray(b"\xee" * fmt.frame_bytes)  # padding bytes marked 0xee
        image = frames.decode(buffer, fmt)
        assert base_of(image).strides[0] == fmt.pitch
        assert np.shares_memory(base_of(image), np.frombuffer(buffer, np.uint8))
        # Writing the whole picture through the view leaves the padding alone.
        for plane in (image.y, image.u, image.v) if isinstance(image, YuvPlanes) else (image,):
            plane[...] = 0
        assert buffer.count(0xEE) == fmt.frame_bytes - sum(
            plane.nbytes
            for plane in ((image.y, image.u, image.v) if isinstance(image, YuvPlanes) else (image,))
        )

    @pytest.mark.rule("MEDIA-7")
    @pytest.mark.parametrize("pixel_format", FORMATS, ids=lambda f: f.name)
    def test_read_only_exactly_when_the_buffer_is(self, pixel_format: PixelFormat) -> None:
        fmt = raw(pixel_format, 4, 2)
        assert not base_of(frames.decode(bytes(fmt.frame_bytes), fmt)).flags.writeable
        assert base_of(frames.decode(bytearray(fmt.frame_bytes), fmt)).flags.writeable
        view = memoryview(bytearray(fmt.frame_bytes)).toreadonly()
        assert not base_of(frames.decode(view, fmt)).flags.writeable

    @pytest.mark.rule("MEDIA-8")
    @pytest.mark.parametrize(("width", "height"), [(1, 1), (5, 3), (33, 17), (4, 7)])
    def test_yuv_planes_for_odd_sizes(self, width: int, height: int) -> None:
        fmt = raw(PixelFormat.YUV420P, width, height)
        cw, ch = (width + 1) // 2, (height + 1) // 2
        assert fmt.frame_bytes == width * height + 2 * cw * ch
        buffer = bytes([1]) * (width * height) + bytes([2]) * (cw * ch) + bytes([3]) * (cw * ch)
        image = frames.decode(buffer, fmt)
        assert isinstance(image, YuvPlanes)
        assert image.y.shape == (height, width) and (image.y == 1).all()
        assert image.u.shape == (ch, cw) and (image.u == 2).all()
        assert image.v.shape == (ch, cw) and (image.v == 3).all()

    @pytest.mark.rule("MEDIA-8")
    def test_yuv_chroma_pitch_is_half_the_stride(self) -> None:
        fmt = raw(PixelFormat.YUV420P, 6, 4, 9)
        image = frames.decode(bytes(fmt.frame_bytes), fmt)
        assert isinstance(image, YuvPlanes)
        assert (image.y.strides[0], image.u.strides[0], image.v.strides[0]) == (9, 5, 5)
        assert fmt.frame_bytes == 9 * 4 + 2 * 5 * 2

    @pytest.mark.rule("MEDIA-7")
    def test_a_memoryview_of_another_shape_is_read_as_bytes(self) -> None:
        fmt = raw(PixelFormat.RGBA, 2, 2)
        words = memoryview(np.arange(4, dtype=np.uint32).tobytes()).cast("I")
        image = frames.decode(words, fmt)
        assert isinstance(image, np.ndarray) and image.shape == (2, 2, 4)

    @pytest.mark.rule("MEDIA-7")
    @pytest.mark.parametrize("pixel_format", FORMATS, ids=lambda f: f.name)
    def test_a_read_only_mapping_gives_a_read_only_view(self, pixel_format: PixelFormat) -> None:
        fmt = padded(pixel_format, 7, 5, 3)
        mapping = mmap.mmap(-1, fmt.frame_bytes, prot=mmap.PROT_READ)
        try:
            image = frames.decode(mapping, fmt)
            plane = base_of(image)
            assert not plane.flags.writeable
            assert np.shares_memory(plane, np.frombuffer(mapping, np.uint8))
            with pytest.raises(ValueError, match="read-only"):
                plane[0, 0] = 1
        finally:
            del image, plane
            mapping.close()

    @pytest.mark.rule("MEDIA-7")
    def test_a_writable_mapping_slice_is_written_in_place(self) -> None:
        fmt = raw(PixelFormat.RGB24, 4, 3)
        mapping = mmap.mmap(-1, 16 + fmt.frame_bytes)
        try:
            window = memoryview(mapping)[16 : 16 + fmt.frame_bytes]
            image = frames.decode(window, fmt)
            assert isinstance(image, np.ndarray) and image.flags.writeable
            image[2, 3] = (7, 8, 9)
            assert mapping[16 + fmt.frame_bytes - 3 : 16 + fmt.frame_bytes] == b"\x07\x08\x09"
        finally:
            del image, window
            mapping.close()

    @pytest.mark.rule("MEDIA-7", "MEDIA-10")
    @pytest.mark.parametrize(
        ("pixel_format", "start", "step"),
        [
            (PixelFormat.RGB24, 0, 1),
            (PixelFormat.BGR24, 2, -1),
            (PixelFormat.RGBA, 0, 1),
            (PixelFormat.ARGB, 1, 1),
            (PixelFormat.BGRA, 2, -1),
            (PixelFormat.ABGR, 3, -1),
        ],
    )
    def test_rgb_is_a_channel_slice_of_the_pixels(
        self, pixel_format: PixelFormat, start: int, step: int
    ) -> None:
        fmt = raw(pixel_format, 3, 2)
        data = bytes(range(fmt.frame_bytes))
        image = frames.decode(data, fmt)
        assert isinstance(image, np.ndarray)
        rgb = frames.to_rgb(image, fmt)
        assert frames.rgb_view_possible(fmt)
        assert rgb.base is not None and np.shares_memory(rgb, image)
        assert rgb.strides[-1] == step
        first = PIXEL_LAYOUTS[pixel_format].bytes_per_pixel  # bytes of the first pixel
        assert rgb[0, 0].tolist() == [data[start + i * step] for i in range(3)]
        assert rgb[0, 1].tolist() == [data[first + start + i * step] for i in range(3)]

    @pytest.mark.rule("MEDIA-9", "MEDIA-10")
    @pytest.mark.parametrize("pixel_format", [*WORDS, PixelFormat.YUV420P], ids=lambda f: f.name)
    def test_computed_formats_are_not_views(self, pixel_format: PixelFormat) -> None:
        fmt = raw(pixel_format, 4, 2)
        assert not frames.rgb_view_possible(fmt)
        data = bytearray(fmt.frame_bytes)
        rgb = frames.to_rgb(frames.decode(data, fmt), fmt)
        assert rgb.shape == (2, 4, 3) and rgb.dtype == np.uint8
        assert not np.shares_memory(rgb, np.frombuffer(data, np.uint8))


class TestRefusals:
    @pytest.mark.rule("MEDIA-6")
    @pytest.mark.parametrize("delta", [-1, 1, -100, 4096])
    @pytest.mark.parametrize("pixel_format", FORMATS, ids=lambda f: f.name)
    def test_a_buffer_of_the_wrong_size(self, pixel_format: PixelFormat, delta: int) -> None:
        fmt = raw(pixel_format, 16, 9)
        size = fmt.frame_bytes + delta
        with pytest.raises(FrameError) as caught:
            frames.decode(bytes(max(size, 0)), fmt)
        assert caught.value.rule == "MEDIA-6"
        assert caught.value.status is Status.INVALID_ARGUMENT
        assert str(fmt.frame_bytes) in str(caught.value) and str(max(size, 0)) in str(caught.value)

    @pytest.mark.rule("MEDIA-6")
    @pytest.mark.parametrize("pixel_format", FORMATS, ids=lambda f: f.name)
    def test_only_the_padding_after_the_last_row_may_be_missing(
        self, pixel_format: PixelFormat
    ) -> None:
        """A buffer copied from the first pixel to the last of a padded image."""
        fmt = padded(pixel_format, 7, 5, 6)
        whole = bytes(range(256)) * (fmt.frame_bytes // 256 + 1)
        whole = whole[: fmt.frame_bytes]
        short = whole[: fmt.shortest_bytes]
        assert fmt.shortest_bytes < fmt.frame_bytes
        for got, want in zip(
            planes_of(frames.decode(short, fmt)), planes_of(frames.decode(whole, fmt)), strict=True
        ):
            np.testing.assert_array_equal(got, want)
        with pytest.raises(FrameError) as caught:
            frames.decode(short[:-1], fmt)
        assert caught.value.rule == "MEDIA-6"

    @pytest.mark.rule("MEDIA-6", "MEDIA-11")
    def test_a_padded_frame_needs_its_padding(self) -> None:
        fmt = padded(PixelFormat.BGR24, 10, 3, 2)
        with pytest.raises(FrameError, match="96 bytes"):
            frames.decode(bytes(10 * 3 * 3), fmt)

    @pytest.mark.rule("MEDIA-3")
    def test_an_absurd_size_is_refused_before_allocating(self) -> None:
        message = VideoFrameSampleFormat(
            encoding=Encoding.RAW,
            pixel_format=PixelFormat.RGB24,
            dimensions=Dimensions(width=100_000, height=100_000),
        )
        tracemalloc.start()
        try:
            with pytest.raises(FrameError) as caught:
                frames.decode_message(b"", message)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert caught.value.rule == "MEDIA-3"
        assert peak < 64 << 10  # nothing near the 30 GB such a frame would take

    @pytest.mark.rule("MEDIA-2")
    def test_raw_without_a_pixel_format(self) -> None:
        message = VideoFrameSampleFormat(
            encoding=Encoding.RAW, dimensions=Dimensions(width=4, height=4)
        )
        with pytest.raises(FrameError) as caught:
            frames.decode_message(bytes(48), message)
        assert caught.value.rule == "MEDIA-2"

    @pytest.mark.rule("MEDIA-4")
    def test_a_stride_smaller_than_a_row(self) -> None:
        message = VideoFrameSampleFormat(
            encoding=Encoding.RAW,
            pixel_format=PixelFormat.BGRA,
            dimensions=Dimensions(width=10, height=2),
            stride_bytes=39,
        )
        with pytest.raises(FrameError) as caught:
            frames.decode_message(bytes(78), message)
        assert caught.value.rule == "MEDIA-4"

    @pytest.mark.rule("MEDIA-12")
    @pytest.mark.parametrize("encoding", [Encoding.JPG, Encoding.PNG, Encoding.BMP])
    def test_encoded_samples_are_not_raw_frames(self, encoding: Encoding) -> None:
        fmt = VideoFormat.checked(encoding)
        with pytest.raises(FrameError, match="decode_image") as caught:
            frames.decode(b"\xff\xd8", fmt)
        assert caught.value.rule == "MEDIA-12"
        with pytest.raises(FrameError):
            frames.encode(picture(2, 2), fmt)

    def test_encode_checks_the_array(self) -> None:
        with pytest.raises(ValueError, match="2 x 3 x 3 uint8"):
            frames.encode(np.zeros((3, 2, 3), np.uint8), raw(PixelFormat.RGB24, 3, 2))
        with pytest.raises(ValueError, match="uint8"):
            frames.encode(np.zeros((2, 3, 3), np.float32), raw(PixelFormat.RGB24, 3, 2))  # type: ignore[arg-type]

    @pytest.mark.rule("MEDIA-7")
    @pytest.mark.parametrize("pixel_format", FORMATS, ids=lambda f: f.name)
    def test_to_rgb_refuses_an_image_of_another_format(self, pixel_format: PixelFormat) -> None:
        fmt = raw(pixel_format, 4, 2)
        wrong: frames.Image = (
            np.zeros((2, 4, 3), np.uint8)
            if PIXEL_LAYOUTS[pixel_format].layout is not Layout.PACKED
            else YuvPlanes(*(np.zeros((1, 1), np.uint8) for _ in range(3)))
        )
        with pytest.raises(ValueError, match=str(fmt)):
            frames.to_rgb(wrong, fmt)

    @pytest.mark.rule("MEDIA-10")
    def test_to_rgb_checks_the_destination(self) -> None:
        fmt = raw(PixelFormat.RGB565LE, 4, 2)
        image = frames.decode(bytes(fmt.frame_bytes), fmt)
        with pytest.raises(ValueError, match=r"shape \(2, 4, 3\)"):
            frames.to_rgb(image, fmt, out=np.empty((4, 2, 3), np.uint8))
        with pytest.raises(ValueError, match="uint8"):
            frames.to_rgb(image, fmt, out=np.empty((2, 4, 3), np.float32))  # type: ignore[arg-type]
        read_only = np.empty((2, 4, 3), np.uint8)
        read_only.flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            frames.to_rgb(image, fmt, out=read_only)

    def test_encode_native_checks_the_pixels(self) -> None:
        with pytest.raises(ValueError, match="uint16"):
            frames.encode_native(np.zeros((2, 2), np.uint8), raw(PixelFormat.RGB565BE, 2, 2))
        with pytest.raises(ValueError, match="uint8"):
            frames.encode_native(np.zeros((2, 2, 3), np.float64), raw(PixelFormat.RGB24, 2, 2))
        with pytest.raises(ValueError, match="YuvPlanes"):
            frames.encode_native(np.zeros((2, 2), np.uint8), raw(PixelFormat.YUV420P, 2, 2))

    @pytest.mark.rule("MEDIA-4")
    def test_encode_refuses_a_stride_shorter_than_a_row(self) -> None:
        with pytest.raises(FrameError) as caught:
            frames.encode(picture(4, 2), raw(PixelFormat.RGB24, 4, 2), stride_bytes=11)
        assert caught.value.rule == "MEDIA-4"


class TestColour:
    @pytest.mark.rule("MEDIA-9")
    @pytest.mark.parametrize(
        ("pixel_format", "data", "rgb"),
        [
            (PixelFormat.RGB565BE, b"\xf8\x00", (255, 0, 0)),
            (PixelFormat.RGB565LE, b"\x00\xf8", (255, 0, 0)),
            (PixelFormat.RGB565BE, b"\x07\xe0", (0, 255, 0)),
            (PixelFormat.RGB565LE, b"\x1f\x00", (0, 0, 255)),
            (PixelFormat.RGB555BE, b"\x7c\x00", (255, 0, 0)),
            (PixelFormat.RGB555LE, b"\xe0\x03", (0, 255, 0)),
            (PixelFormat.RGB555BE, b"\x00\x1f", (0, 0, 255)),
            (PixelFormat.RGB555BE, b"\x80\x00", (0, 0, 0)),  # bit 15 is unused
            (PixelFormat.RGB565BE, b"\x84\x10", (132, 130, 132)),  # 16, 32, 16 of 31/63/31
        ],
    )
    def test_sixteen_bit_pixels(
        self, pixel_format: PixelFormat, data: bytes, rgb: tuple[int, ...]
    ) -> None:
        fmt = raw(pixel_format, 1, 1)
        assert tuple(frames.to_rgb(frames.decode(data, fmt), fmt)[0, 0]) == rgb

    @pytest.mark.rule("MEDIA-10")
    @pytest.mark.parametrize(
        ("y", "u", "v", "rgb"),
        [
            (16, 128, 128, (0, 0, 0)),
            (235, 128, 128, (255, 255, 255)),
            (126, 128, 128, (128, 128, 128)),
            (81, 90, 240, (255, 0, 0)),
            (145, 54, 34, (0, 255, 0)),
            (41, 240, 110, (0, 0, 255)),
        ],
    )
    def test_bt601_limited_range(self, y: int, u: int, v: int, rgb: tuple[int, int, int]) -> None:
        fmt = raw(PixelFormat.YUV420P, 2, 2)
        image = frames.decode(bytes([y] * 4 + [u, v]), fmt)
        got = frames.to_rgb(image, fmt)
        assert np.abs(got.astype(int) - np.array(rgb)).max() <= 2, got[0, 0]
        assert (got == got[0, 0]).all()

    @pytest.mark.rule("MEDIA-10")
    @pytest.mark.parametrize("pixel_format", PACKED, ids=lambda f: f.name)
    def test_packed_formats_convert_by_choosing_channels(self, pixel_format: PixelFormat) -> None:
        fmt = raw(pixel_format, 3, 2)
        layout = PIXEL_LAYOUTS[pixel_format]
        native = np.zeros((2, 3, len(layout.channels)), np.uint8)
        for index, name in enumerate(layout.channels):
            native[..., index] = {"R": 10, "G": 20, "B": 30, "A": 40}[name]
        image = frames.decode(frames.encode_native(native, fmt), fmt)
        rgb = frames.to_rgb(image, fmt)
        assert rgb.shape == (2, 3, 3) and (rgb == [10, 20, 30]).all()
        assert np.shares_memory(rgb, image)  # a view: no arithmetic, no allocation

    @pytest.mark.rule("MEDIA-10")
    def test_into_a_destination(self) -> None:
        fmt = raw(PixelFormat.YUV420P, 4, 4)
        out = np.zeros((4, 4, 3), np.uint8)
        image = frames.decode(bytes([235] * 16 + [128] * 8), fmt)
        assert frames.to_rgb(image, fmt, out=out) is out
        assert (out == 255).all()
        bgr = raw(PixelFormat.BGR24, 4, 4)
        frames.to_rgb(frames.decode(bytes([1, 2, 3] * 16), bgr), bgr, out=out)
        assert (out == [3, 2, 1]).all()

    @pytest.mark.rule("MEDIA-7", "MEDIA-10")
    def test_bgr24_to_rgb_of_a_1080p_frame_allocates_nothing(self) -> None:
        fmt = raw(PixelFormat.BGR24, 1920, 1080)
        buffer = np.random.default_rng(0).integers(0, 256, fmt.frame_bytes, dtype=np.uint8)
        data = buffer.tobytes()
        frames.to_rgb(frames.decode(data, fmt), fmt)  # warm up any lazy imports
        tracemalloc.start()
        try:
            rgb = frames.to_rgb(frames.decode(data, fmt), fmt)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # A few array headers (the strided view, the byte array it exports from): no pixels.
        assert peak < 4096, f"{peak} bytes allocated for a 6 MB frame"
        assert np.shares_memory(rgb, np.frombuffer(data, np.uint8))
        assert (rgb[0, 0] == buffer[2::-1]).all() and (rgb[0, 1] == buffer[5:2:-1]).all()

    @pytest.mark.rule("MEDIA-8", "MEDIA-10")
    @pytest.mark.parametrize(("width", "height"), [(3, 3), (5, 2), (2, 5), (1, 1)])
    def test_odd_edges_use_the_last_chroma_sample(self, width: int, height: int) -> None:
        fmt = raw(PixelFormat.YUV420P, width, height)
        cw, ch = (width + 1) // 2, (height + 1) // 2
        u = np.arange(cw * ch, dtype=np.uint8).reshape(ch, cw) * 20 + 60
        v = 200 - u
        planes = YuvPlanes(np.full((height, width), 120, np.uint8), u, v)
        rgb = frames.to_rgb(frames.decode(frames.encode_native(planes, fmt), fmt), fmt)
        for row in range(height):
            for column in range(width):
                # Nearest neighbour: every pixel takes the chroma of its 2 x 2 block.
                single = raw(PixelFormat.YUV420P, 1, 1)
                block = bytes([120, u[row // 2, column // 2], v[row // 2, column // 2]])
                expected = frames.to_rgb(frames.decode(block, single), single)[0, 0]
                assert rgb[row, column].tolist() == expected.tolist(), (row, column)

    @pytest.mark.rule("MEDIA-10")
    def test_full_range_input_is_clipped(self) -> None:
        fmt = raw(PixelFormat.YUV420P, 2, 2)
        rgb = frames.to_rgb(frames.decode(bytes([255] * 4 + [255, 255]), fmt), fmt)
        assert (rgb[..., 0] == 255).all() and (rgb[..., 2] == 255).all()
        rgb = frames.to_rgb(frames.decode(bytes([0] * 4 + [0, 0]), fmt), fmt)
        assert (rgb[..., 0] == 0).all() and (rgb[..., 2] == 0).all()

    @pytest.mark.rule("MEDIA-9")
    @pytest.mark.parametrize("pixel_format", WORDS, ids=lambda f: f.name)
    def test_every_sixteen_bit_level_survives_a_round_trip(self, pixel_format: PixelFormat) -> None:
        layout = PIXEL_LAYOUTS[pixel_format]
        used = (1 << sum(layout.bits)) - 1  # RGB555 leaves bit 15 unused
        words = np.arange(used + 1, dtype=np.uint16).reshape(256, -1)
        fmt = raw(pixel_format, words.shape[1], 256)
        dtype = ">u2" if layout.byte_order == "big" else "<u2"
        rgb = frames.to_rgb(frames.decode(words.astype(dtype).tobytes(), fmt), fmt)
        again = frames.decode(frames.encode(np.ascontiguousarray(rgb), fmt), fmt)
        assert isinstance(again, np.ndarray)
        assert (again == words).all()

    @pytest.mark.rule("MEDIA-9")
    @pytest.mark.parametrize("pixel_format", WORDS, ids=lambda f: f.name)
    def test_every_eight_bit_value_comes_back_within_half_a_step(
        self, pixel_format: PixelFormat
    ) -> None:
        ramp = np.arange(256, dtype=np.uint8)
        source = np.stack([ramp, ramp[::-1], ramp], axis=-1).reshape(16, 16, 3)
        fmt = raw(pixel_format, 16, 16)
        back = frames.to_rgb(frames.decode(frames.encode(source, fmt), fmt), fmt)
        error = np.abs(back.astype(int) - source).max(axis=(0, 1))
        limits = [4 if bits == 5 else 2 for bits in PIXEL_LAYOUTS[pixel_format].bits]
        assert (error <= limits).all(), error


class TestEncoding:
    @pytest.mark.rule("MEDIA-11")
    @pytest.mark.parametrize("pixel_format", FORMATS, ids=lambda f: f.name)
    def test_padding_is_written_as_zeros(self, pixel_format: PixelFormat) -> None:
        fmt = padded(pixel_format, 3, 4, 5)
        data = frames.encode(np.full((4, 3, 3), 255, np.uint8), fmt)
        assert len(data) == fmt.frame_bytes
        image = frames.decode(data, fmt)
        planes = (image.y, image.u, image.v) if isinstance(image, YuvPlanes) else (image,)
        for plane in planes:
            row_bytes = plane[0].nbytes
            for row in range(plane.shape[0]):
                start = (
                    plane.__array_interface__["data"][0]
                    - np.frombuffer(data, np.uint8).__array_interface__["data"][0]
                )
                pad = data[
                    start + row * plane.strides[0] + row_bytes : start
                    + (row + 1) * plane.strides[0]
                ]
                assert pad == bytes(len(pad))

    @pytest.mark.rule("MEDIA-9")
    @pytest.mark.parametrize("pixel_format", WORDS, ids=lambda f: f.name)
    def test_native_words_in_either_byte_order(self, pixel_format: PixelFormat) -> None:
        fmt = raw(pixel_format, 2, 1)
        data = frames.encode_native(np.array([[0x1234, 0xABCD]], "<u2"), fmt)
        same = frames.encode_native(np.array([[0x1234, 0xABCD]], ">u2"), fmt)
        assert data == same
        assert data == (
            b"\x12\x34\xab\xcd" if pixel_format.name.endswith("BE") else b"\x34\x12\xcd\xab"
        )

    @pytest.mark.rule("MEDIA-11")
    def test_a_stride_can_be_given_when_encoding(self) -> None:
        fmt = raw(PixelFormat.RGB24, 2, 2)
        data = frames.encode(picture(2, 2), fmt, stride_bytes=8)
        assert len(data) == 16
        assert data[6:8] == b"\x00\x00"

    @pytest.mark.rule("MEDIA-8")
    def test_native_yuv_planes_are_written_in_order(self) -> None:
        fmt = raw(PixelFormat.YUV420P, 3, 3)
        planes = YuvPlanes(
            np.full((3, 3), 1, np.uint8), np.full((2, 2), 2, np.uint8), np.full((2, 2), 3, np.uint8)
        )
        assert frames.encode_native(planes, fmt) == bytes([1] * 9 + [2] * 4 + [3] * 4)
        with pytest.raises(ValueError, match="YuvPlanes"):
            frames.encode_native(np.zeros((3, 3), np.uint8), fmt)
        with pytest.raises(ValueError, match="shape"):
            frames.encode_native(np.zeros((2, 2, 3), np.uint8), raw(PixelFormat.RGB24, 3, 3))

    @pytest.mark.rule("MEDIA-7", "MEDIA-9", "MEDIA-10", "MEDIA-11")
    @settings(max_examples=50, deadline=None)
    @given(
        pixel_format=st.sampled_from(FORMATS),
        width=st.integers(1, 33),
        height=st.integers(1, 33),
        pad=st.one_of(st.just(0), st.integers(1, 9)),
        seed=st.integers(0, 2**16),
    )
    def test_encode_decode_to_rgb_round_trip(
        self, pixel_format: PixelFormat, width: int, height: int, pad: int, seed: int
    ) -> None:
        fmt = padded(pixel_format, width, height, pad) if pad else raw(pixel_format, width, height)
        layout = PIXEL_LAYOUTS[pixel_format]
        source = (
            blocky(width, height, seed)
            if layout.layout is Layout.PLANAR_YUV420
            else picture(width, height, seed)
        )
        back = frames.to_rgb(frames.decode(frames.encode(source, fmt), fmt), fmt)
        error = np.abs(back.astype(int) - source.astype(int))
        if layout.layout is Layout.PACKED:
            assert (error == 0).all()
        elif layout.layout is Layout.WORD16:
            # The nearest of 32 (64) widened levels, 8 or 9 (4 or 5) apart: half a step.
            limits = np.array([4 if bits == 5 else 2 for bits in layout.bits])
            assert (error <= limits).all(), error.max(axis=(0, 1))
        else:
            # 8-bit limited range keeps 219 (224) levels of 256, rounded twice.
            assert error.max() <= 3


def test_the_pixel_benchmark_runs_and_names_every_format() -> None:
    from avaproto.bench import pixels

    results = pixels.measure(width=32, height=16, repeat=1)
    assert [r.name for r in results[1:]] == [f.name for f in FORMATS]
    views = {r.name for r in results if r.view}
    assert views == {f.name for f in PACKED}  # every 24/32-bit format converts as a view
    assert "ratio" in pixels.report(results, 32, 16)


def test_the_bench_command_prints_the_pixel_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from avaproto.bench import __main__ as bench
    from avaproto.bench import pixels

    monkeypatch.setitem(
        bench.BENCHMARKS, "pixels", lambda repeat=20: pixels.run(repeat, width=8, height=4)
    )
    assert bench.main(["--only", "pixels", "--repeat", "1"]) == 0
    table = capsys.readouterr().out
    assert "copy (baseline)" in table and "8x4" in table
    assert all(f.name in table for f in FORMATS)


def test_a_raw_format_is_made_by_size_and_pixel_format_name() -> None:
    """A library user had to find Encoding, PixelFormat and VideoFormat.checked."""
    import avaproto
    from avaproto.messages import Encoding, PixelFormat

    fmt = avaproto.VideoFormat.raw(640, 480, "bgr24")
    assert (fmt.encoding, fmt.pixel_format, fmt.width, fmt.height) == (
        Encoding.RAW,
        PixelFormat.BGR24,
        640,
        480,
    )
    assert avaproto.VideoFormat.raw(4, 2).pixel_format is PixelFormat.RGB24
    with pytest.raises(ValueError, match="unknown pixel format 'rgb'; expected one of"):
        avaproto.VideoFormat.raw(4, 2, "rgb")
    with pytest.raises(FrameError, match="a width and a height above zero"):
        avaproto.VideoFormat.raw(0, 2)
