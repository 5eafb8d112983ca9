"""The ``motion`` built-in: its configuration, its detector, and serving it."""

from __future__ import annotations

import json

import anyio
import numpy as np
import pytest

from avaproto.client import connect
from avaproto.engine.extension import ExtensionRefused
from avaproto.errors import StreamFailed
from avaproto.extensions import BUILTINS, load_extension
from avaproto.extensions.motion import MotionDetector, MotionExtension, MotionSettings
from avaproto.extensions.null import NullExtension
from avaproto.messages import Encoding, InferenceType, PixelFormat
from avaproto.protocol.video_format import VideoFormat
from avaproto.server import running
from avaproto.sources.synthetic import HOLD, MOVE, synthetic_frames
from avaproto.status import Status
from avaproto.transport.grpc_server import ServerConfig

TIMEOUT = 30


def still(value: int = 80, size: tuple[int, int] = (160, 96)) -> np.ndarray:
    return np.full((size[1], size[0], 3), value, np.uint8)


def with_square(x: int, y: int, side: int = 16, value: int = 230) -> np.ndarray:
    image = still()
    image[y : y + side, x : x + side] = value
    return image


class TestConfiguration:
    @pytest.mark.rule("CFG-1")
    def test_empty_configuration_means_defaults(self) -> None:
        assert MotionSettings.from_configuration("") == MotionSettings()
        assert MotionSettings.from_configuration("  ") == MotionSettings()

    @pytest.mark.rule("CFG-2")
    def test_every_key_is_read(self) -> None:
        settings = MotionSettings.from_configuration(
            json.dumps({"sensitivity": 0.9, "minArea": 0.01, "learningRate": 1})
        )
        assert settings == MotionSettings(sensitivity=0.9, min_area=0.01, learning_rate=1.0)

    @pytest.mark.rule("CFG-3")
    @pytest.mark.parametrize(
        ("text", "named"),
        [
            ('{"sensitivity": 1.5}', "sensitivity"),
            ('{"sensitivity": "high"}', "sensitivity"),
            ('{"sensitivity": true}', "sensitivity"),
            ('{"minArea": -0.1}', "minArea"),
            ('{"learningRate": 0}', "learningRate"),
            ('{"treshold": 3}', "treshold"),
            ("[1, 2]", "JSON object"),
            ("sensitivity=1", "not JSON"),
        ],
    )
    def test_bad_configuration_is_refused_naming_the_key(self, text: str, named: str) -> None:
        with pytest.raises(ExtensionRefused) as caught:
            MotionSettings.from_configuration(text)
        assert caught.value.status is Status.INVALID_ARGUMENT
        assert caught.value.rule == "CFG-3"
        assert named in str(caught.value)


class TestDetector:
    def test_first_frame_only_starts_the_background(self) -> None:
        assert MotionDetector().detect(with_square(10, 10)) == []

    def test_nothing_moves_nothing_reported(self) -> None:
        detector = MotionDetector()
        assert [detector.detect(still()) for _ in range(5)] == [[]] * 5

    def test_a_moving_square_is_boxed_where_it_is(self) -> None:
        detector = MotionDetector()
        detector.detect(still())
        [region] = detector.detect(with_square(96, 48))
        # The box covers the square (96..112 of 160, 48..64 of 96), give or take a cell.
        assert region.left <= 96 / 160 < 112 / 160 <= region.left + region.width + 0.01
        assert region.top <= 48 / 96 < 64 / 96 <= region.top + region.height + 0.02
        assert region.width * region.height < 0.05
        [inference] = [region.to_inference()]
        assert inference.type is InferenceType.MOTION
        assert inference.motion is not None and inference.motion.box is not None

    def test_separate_changes_are_separate_regions(self) -> None:
        detector = MotionDetector()
        detector.detect(still())
        image = with_square(8, 8)
        image[70:86, 130:146] = 230
        assert len(detector.detect(image)) == 2

    def test_sensitivity_decides_what_counts_as_change(self) -> None:
        faint = with_square(60, 30, value=80 + 12)
        calm = MotionDetector(MotionSettings(sensitivity=0.0))
        keen = MotionDetector(MotionSettings(sensitivity=1.0))
        calm.detect(still())
        keen.detect(still())
        assert calm.detect(faint) == []
        assert len(keen.detect(faint)) == 1

    def test_min_area_drops_small_regions(self) -> None:
        detector = MotionDetector(MotionSettings(min_area=0.1))
        detector.detect(still())
        assert detector.detect(with_square(96, 48)) == []

    def test_boxes_are_normalized_at_the_frame_edges(self) -> None:
        detector = MotionDetector()
        detector.detect(still())
        regions = detector.detect(with_square(150, 88))  # clipped by the corner
        assert regions
        for region in regions:
            assert region.left >= 0 and region.left + region.width <= 1.0 + 1e-9
            assert region.top >= 0 and region.top + region.height <= 1.0 + 1e-9

    def test_large_frames_use_a_coarse_grid(self) -> None:
        detector = MotionDetector()
        big = np.zeros((1080, 1920, 3), np.uint8)
        detector.detect(big)
        big[500:540, 900:940] = 255
        [region] = detector.detect(big)
        assert region.left <= 900 / 1920 and region.left + region.width >= 940 / 1920

    def test_synthetic_motion_is_seen_while_moving_and_not_while_holding(self) -> None:
        detector = MotionDetector()
        counts = [len(detector.detect(f.rgb)) for f in synthetic_frames(160, 96, count=MOVE + HOLD)]
        assert all(counts[1:MOVE]), counts
        # Late in the pause the background has caught up: nothing moves.
        assert not any(counts[MOVE + HOLD // 2 :]), counts


class TestLoading:
    def test_builtins(self) -> None:
        assert load_extension("motion") is MotionExtension
        assert load_extension("null") is NullExtension
        assert set(BUILTINS) == {"motion", "null"}

    def test_module_attribute(self) -> None:
        factory = load_extension("avaproto.extensions.null:NullExtension")
        assert isinstance(factory(), NullExtension)

    def test_a_processor_function_is_wrapped(self) -> None:
        factory = load_extension("tests.extensions.processors:count_pixels")
        assert hasattr(factory(), "process")

    @pytest.mark.parametrize("spec", ["nosuch", "module:", ":attribute"])
    def test_unknown_names_are_refused(self, spec: str) -> None:
        with pytest.raises(ValueError, match="motion, null or module:attribute"):
            load_extension(spec)

    def test_missing_module_or_attribute(self) -> None:
        with pytest.raises(ImportError):
            load_extension("no_such_module_here:thing")
        with pytest.raises(AttributeError):
            load_extension("avaproto.extensions:NoSuchThing")


@pytest.mark.anyio
class TestServed:
    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.mark.rule("CFG-2")
    async def test_moving_frames_come_back_with_motion(self) -> None:
        fmt = VideoFormat.checked(Encoding.RAW, PixelFormat.BGR24, 160, 96)
        with anyio.fail_after(TIMEOUT):
            async with (
                running(MotionExtension, ServerConfig(port=0), grace=2) as server,
                connect(
                    f"127.0.0.1:{server.port}", format=fmt, configuration='{"sensitivity": 0.6}'
                ) as pipe,
            ):

                async def feed() -> None:
                    for frame in synthetic_frames(160, 96, count=20):
                        await pipe.send(frame.rgb, timestamp=round(frame.pts * 90000))
                    await pipe.end()

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(feed)
                    results = [r async for r in pipe.results()]
        assert len(results) == 20
        assert not results[0].inferences
        moving = [r for r in results if r.inferences]
        assert len(moving) >= 15
        assert all(i.type is InferenceType.MOTION for r in moving for i in r.inferences)

    @pytest.mark.rule("CFG-3")
    async def test_bad_configuration_ends_the_stream_naming_the_key(self) -> None:
        fmt = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 16, 16)
        with anyio.fail_after(TIMEOUT):
            async with running(MotionExtension, ServerConfig(port=0), grace=2) as server:
                with pytest.raises(StreamFailed) as caught:
                    async with connect(
                        f"127.0.0.1:{server.port}", format=fmt, configuration='{"minArea": 2}'
                    ):
                        pass
        assert caught.value.status is Status.INVALID_ARGUMENT
        assert "minArea" in caught.value.detail
