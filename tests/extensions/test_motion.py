"""The ``motion`` built-in: its configuration, its detector, and serving it."""

from __future__ import annotations

import itertools
import json
from collections import deque

import anyio
import numpy as np
import pytest

from avaproto.bench import __main__ as bench
from avaproto.bench import motion as motion_bench
from avaproto.client import connect
from avaproto.engine.extension import ExtensionRefused
from avaproto.errors import StreamFailed
from avaproto.extensions import BUILTINS, load_extension
from avaproto.extensions.motion import (
    GRID_CELLS,
    Grid,
    MotionDetector,
    MotionExtension,
    MotionSettings,
    Region,
)
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


#: Frame sizes (width, height) from tiny to 1080p, square, 16:9, and odd ones whose
#: sides are not a multiple of their grid's cell (657 x 263: cells of 4 px).
SIZES = [(64, 48), (318, 318), (416, 416), (657, 263), (640, 360), (1280, 720), (1920, 1080)]


def textured(width: int, height: int) -> np.ndarray:
    """A still scene with fine detail everywhere, so that stillness is not trivially flat."""
    generator = np.random.default_rng(width * 10_000 + height)
    return generator.integers(60, 120, (height, width, 3), dtype=np.uint8)


def after_change(
    background: np.ndarray,
    *boxes: tuple[int, int, int, int],
    settings: MotionSettings | None = None,
) -> list[Region]:
    """The regions seen when the boxes (x, y, width, height) light up on ``background``."""
    detector = MotionDetector(settings)
    assert detector.detect(background) == []
    changed = background.copy()
    for x, y, w, h in boxes:
        changed[y : y + h, x : x + w] = 250
    return detector.detect(changed)


def covers(region: Region, box: tuple[int, int, int, int], width: int, height: int) -> bool:
    """Whether each edge of the region lies within one cell of the pixel box's.

    A cell that the box only grazes may change too little to count, and one the box
    barely enters still counts whole: give or take a cell, as the grid sees it.
    """
    x, y, w, h = box
    slack = Grid.of(height, width).cell + 1e-6
    left, top = region.left * width, region.top * height
    right, bottom = left + region.width * width, top + region.height * height
    return (
        abs(left - x) <= slack
        and abs(top - y) <= slack
        and abs(right - (x + w)) <= slack
        and abs(bottom - (y + h)) <= slack
    )


def normalized(region: Region) -> bool:
    return (
        0 <= region.left <= region.left + region.width <= 1
        and 0 <= region.top <= region.top + region.height <= 1
        and region.width > 0
        and region.height > 0
    )


def flood_fill_boxes(changed: np.ndarray) -> set[tuple[int, int, int, int]]:
    """Reference grouping, one cell at a time: the changed cells' boxes (top, left,
    bottom, right) per 8-connected region of the changed cells grown by one cell."""
    rows, cols = changed.shape
    grown = np.zeros_like(changed)
    for r, c in zip(*np.nonzero(changed), strict=True):
        grown[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = True
    seen = np.zeros_like(changed)
    boxes = set()
    for start in zip(*np.nonzero(changed), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, members = deque([start]), []
        while queue:
            r, c = queue.popleft()
            if changed[r, c]:
                members.append((r, c))
            for nr in range(max(r - 1, 0), min(r + 2, rows)):
                for nc in range(max(c - 1, 0), min(c + 2, cols)):
                    if grown[nr, nc] and not seen[nr, nc]:
                        seen[nr, nc] = True
                        queue.append((nr, nc))
        ys, xs = zip(*members, strict=True)
        boxes.add((min(ys), min(xs), max(ys), max(xs)))
    return boxes


def spiral(side: int, gap: int) -> np.ndarray:
    """A one-cell-wide square spiral whose arms are ``gap`` cells apart."""
    mask = np.zeros((side, side), bool)
    r = c = 0
    length = side - 1
    moves = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    turn = 0
    while length > 0:
        dr, dc = moves[turn % 4]
        for _ in range(length):
            mask[r, c] = True
            r, c = r + dr, c + dc
        if turn % 2 == 1:
            length -= gap + 1
        turn += 1
    mask[r, c] = True
    return mask


def serpentine(rows: int, cols: int, gap: int) -> np.ndarray:
    """One-cell-wide rows ``gap`` apart, joined end to end in a single winding path."""
    mask = np.zeros((rows, cols), bool)
    lines = list(range(0, rows, gap + 1))
    mask[lines] = True
    for i, (upper, lower) in enumerate(itertools.pairwise(lines)):
        mask[upper:lower, -1 if i % 2 == 0 else 0] = True
    return mask


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
            ("[" * 4000, "cannot be read (RecursionError)"),  # nested past any parser
            ("[" * 200_000, "at most 4096 are read"),  # refused before it is parsed
            ('{"sensitivity": ' + "9" * 5000 + "}", "at most 4096 are read"),
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


class TestAnySize:
    """The detector behaves the same from thumbnails to 1080p, whatever the sides."""

    @pytest.mark.parametrize(("width", "height"), SIZES)
    def test_still_frames_report_nothing(self, width: int, height: int) -> None:
        detector = MotionDetector(MotionSettings(sensitivity=1.0, min_area=0.0))
        scene = textured(width, height)
        assert [detector.detect(scene) for _ in range(4)] == [[]] * 4

    @pytest.mark.parametrize(("width", "height"), SIZES)
    def test_a_moving_square_is_one_box_where_it_is(self, width: int, height: int) -> None:
        side = max(4, min(width, height) // 8)
        square = (width * 5 // 9, height * 3 // 7, side, side)
        [region] = after_change(textured(width, height), square)
        assert normalized(region)
        assert covers(region, square, width, height), region

    @pytest.mark.parametrize(("width", "height"), SIZES)
    def test_two_moving_objects_are_two_boxes(self, width: int, height: int) -> None:
        side = max(4, min(width, height) // 10)
        first = (width // 10, height // 10, side, side)
        second = (width * 7 // 10, height * 6 // 10, side, side)
        regions = after_change(textured(width, height), first, second)
        assert len(regions) == 2, regions
        by_left = sorted(regions, key=lambda region: region.left)
        assert covers(by_left[0], first, width, height), by_left[0]
        assert covers(by_left[1], second, width, height), by_left[1]

    @pytest.mark.parametrize(("width", "height"), [(64, 48), (318, 318), (1280, 720)])
    def test_an_l_shaped_change_is_one_box(self, width: int, height: int) -> None:
        thick = max(3, min(width, height) // 16)
        x, y = width // 5, height // 5
        upright = (x, y, thick, height // 2)
        foot = (x, y + height // 2 - thick, width // 2, thick)
        [region] = after_change(textured(width, height), upright, foot)
        assert covers(region, (x, y, width // 2, height // 2), width, height), region

    @pytest.mark.parametrize(("width", "height"), [(64, 48), (318, 318), (1280, 720)])
    def test_squares_touching_corner_to_corner_are_one_box(self, width: int, height: int) -> None:
        # Aligned on the grid, each square meets the next at a single corner: diagonal
        # contact alone must hold them together.
        cell = Grid.of(height, width).cell
        side = 2 * cell
        steps = min(width, height) // side - 1
        squares = [(k * side, k * side, side, side) for k in range(steps)]
        [region] = after_change(textured(width, height), *squares)
        span = steps * side
        assert covers(region, (0, 0, span, span), width, height), region

    @pytest.mark.parametrize(("width", "height"), [(657, 263), (263, 657), (101, 37)])
    def test_the_last_pixels_of_an_odd_size_are_watched(self, width: int, height: int) -> None:
        # The sides are not multiples of the cell: a change in the bottom-right corner,
        # smaller than a cell, is still seen, and its box ends on the frame's edge.
        corner = (width - 3, height - 3, 3, 3)
        [region] = after_change(
            textured(width, height), corner, settings=MotionSettings(min_area=0.0)
        )
        assert normalized(region)
        assert region.left + region.width == pytest.approx(1.0)
        assert region.top + region.height == pytest.approx(1.0)
        assert covers(region, corner, width, height), region

    @pytest.mark.parametrize(("width", "height"), [(64, 48), (318, 318), (640, 360), (1280, 720)])
    def test_synthetic_motion_is_seen_while_moving_only(self, width: int, height: int) -> None:
        detector = MotionDetector()
        counts = []
        for frame in synthetic_frames(width, height, count=MOVE + HOLD):
            regions = detector.detect(frame.rgb)
            assert all(normalized(region) for region in regions)
            counts.append(len(regions))
        assert all(counts[1:MOVE]), counts
        assert not any(counts[MOVE + HOLD // 2 :]), counts

    def test_a_new_frame_size_starts_a_new_background(self) -> None:
        # 640 x 360 and 1280 x 720 have grids of the same shape; the scenes differ.
        detector = MotionDetector(MotionSettings(sensitivity=1.0, min_area=0.0))
        small, large = textured(640, 360), still(200, (1280, 720))
        assert detector.detect(small) == []
        assert detector.detect(large) == []
        assert detector.detect(large) == []
        assert detector.detect(small) == []

    def test_strided_views_give_the_same_boxes_as_copies(self) -> None:
        # Frames often arrive as views (BGR read backwards, BGRA without its alpha).
        rgba = np.zeros((96, 160, 4), np.uint8)
        rgba[..., :3] = still()
        view, copy = MotionDetector(), MotionDetector()
        view.detect(rgba[..., 2::-1])
        copy.detect(still())
        rgba[48:64, 96:112, :3] = 230
        assert view.detect(rgba[..., 2::-1]) == copy.detect(with_square(96, 48))

    def test_frames_that_are_not_rgb_are_refused(self) -> None:
        with pytest.raises(ValueError, match="height x width x 3"):
            MotionDetector().detect(np.zeros((48, 64), np.uint8))


class TestGrid:
    @pytest.mark.parametrize(("width", "height"), [*SIZES[1:], (3840, 2160), (1080, 1920)])
    def test_the_grid_scales_with_the_frame(self, width: int, height: int) -> None:
        # About the same number of cells at every size: the work per frame on the grid
        # does not grow with the frame, and no size falls back to one cell per pixel.
        grid = Grid.of(height, width)
        rows, cols = grid.shape
        assert GRID_CELLS // 2 <= rows * cols <= GRID_CELLS
        assert grid.cell > 1
        # The cells reach every edge of the frame.
        assert grid.row_starts[0] == 0 and grid.row_starts[-1] + grid.cell == height
        assert grid.col_starts[0] == 0 and grid.col_starts[-1] + grid.cell == width

    @pytest.mark.parametrize(("width", "height"), [(1, 1), (64, 48), (5000, 2), (2, 5000)])
    def test_small_or_thin_frames_keep_a_cell_per_few_pixels(self, width: int, height: int) -> None:
        grid = Grid.of(height, width)
        rows, cols = grid.shape
        assert rows * cols <= width * height
        assert grid.grey(np.full((height, width, 3), 200, np.uint8)) == pytest.approx(200.0)

    @pytest.mark.parametrize("seed", range(12))
    def test_grouping_matches_a_flood_fill(self, seed: int) -> None:
        generator = np.random.default_rng(seed)
        rows, cols = generator.integers(1, 60, 2)
        changed = generator.random((rows, cols)) < generator.uniform(0.02, 0.5)
        grid = Grid.of(int(rows), int(cols))
        assert grid.cell == 1  # one cell per pixel: boxes are in cells
        found = {
            (
                round(r.top * rows),
                round(r.left * cols),
                round((r.top + r.height) * rows) - 1,
                round((r.left + r.width) * cols) - 1,
            )
            for r in grid.regions(changed, 0.0)
        }
        assert found == flood_fill_boxes(changed)

    @pytest.mark.parametrize(
        "changed",
        [spiral(119, 3), spiral(119, 3).T[::-1], serpentine(117, 119, 3)],
        ids=["spiral", "spiral-turned", "serpentine"],
    )
    def test_a_long_winding_change_is_one_box(self, changed: np.ndarray) -> None:
        # The arms are too far apart to be joined: only the winding path holds them.
        assert len(flood_fill_boxes(changed)) == 1
        rows, cols = changed.shape
        [region] = Grid.of(rows, cols).regions(changed, 0.0)
        assert (region.left, region.top, region.width, region.height) == (0, 0, 1, 1)
        parts = changed.copy()
        parts[rows // 2 - 1 : rows // 2 + 2, :] = False  # cut across, wider than a join
        assert len(Grid.of(rows, cols).regions(parts, 0.0)) == len(flood_fill_boxes(parts)) > 1


class TestBenchmark:
    def test_the_motion_benchmark_reports_ratios_per_size(self) -> None:
        results = motion_bench.measure(sizes=((64, 48), (101, 37)), repeat=1, frames=3)
        assert [(t.width, t.height) for t in results] == [(64, 48), (101, 37)]
        assert all(t.detect > 0 and t.baseline > 0 and t.boxes > 0 for t in results)
        table = motion_bench.report(results)
        assert "ratio" in table and "64x48" in table and "101x37" in table

    def test_the_bench_command_selects_motion(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setitem(
            bench.BENCHMARKS,
            "motion",
            lambda repeat=10: motion_bench.run(repeat, sizes=((32, 24),)),
        )
        assert bench.main(["--only", "motion", "--repeat", "1"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("== motion") and "32x24" in out and "ratio" in out


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

    @pytest.mark.rule("SRV-4")
    async def test_a_frame_past_the_frame_timeout_ends_its_stream_on_time(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """motion detects in a worker thread, which it did not abandon: --frame-timeout
        let a frame that took 20 s end OK."""
        import threading

        from avaproto.engine.config import EngineConfig

        release = threading.Event()
        monkeypatch.setattr(MotionExtension, "_detect", lambda self, frame: release.wait(60))
        fmt = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 16, 16)
        config = ServerConfig(port=0, engine=EngineConfig(frame_timeout=0.2))
        try:
            with anyio.fail_after(TIMEOUT):
                async with running(MotionExtension, config, grace=2) as server:
                    with pytest.raises(StreamFailed) as caught:
                        async with connect(f"127.0.0.1:{server.port}", format=fmt) as pipe:
                            await pipe.send(bytes(fmt.frame_bytes), timestamp=0)
                            await pipe.results().receive()
        finally:
            release.set()
        assert caught.value.status is Status.DEADLINE_EXCEEDED
        assert "[SRV-4]" in caught.value.detail
