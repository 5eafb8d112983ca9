"""Frame sources: generated, still images and real video through a real decoder.

The video here is encoded at test time with PyAV (FFmpeg) and decoded back, so the
timestamps tested are the container's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avaproto.send import ticks
from avaproto.sources import (
    SYNTHETIC_FRAMES,
    SYNTHETIC_SIZE,
    SourceError,
    frame_count,
    open_source,
)
from avaproto.sources.synthetic import synthetic_frames
from avaproto.sources.video import encode_test_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    return encode_test_clip(path, (f.rgb for f in synthetic_frames(96, 64, count=24)), 24.0)


class TestSynthetic:
    def test_same_arguments_same_pixels(self) -> None:
        first = [f.rgb for f in synthetic_frames(64, 48, count=5)]
        again = [f.rgb for f in synthetic_frames(64, 48, count=5)]
        assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
        assert not np.array_equal(first[0], first[4])  # and they move

    @pytest.mark.rule("PIPE-1")
    def test_times_follow_the_rate(self) -> None:
        frames = list(open_source("synthetic", size=(32, 16), frames=4, rate=25.0))
        assert [f.pts for f in frames] == [0.0, 0.04, 0.08, 0.12]
        assert frames[0].rgb.shape == (16, 32, 3) and frames[0].rgb.dtype == np.uint8

    def test_defaults(self) -> None:
        frames = list(open_source("synthetic"))
        assert len(frames) == SYNTHETIC_FRAMES
        assert frames[0].rgb.shape == (SYNTHETIC_SIZE[1], SYNTHETIC_SIZE[0], 3)

    @pytest.mark.parametrize(("width", "height"), [(1, 1), (2, 1), (1, 9), (3, 3), (11, 4)])
    def test_any_size_down_to_one_pixel(self, width: int, height: int) -> None:
        frames = list(synthetic_frames(width, height, count=80))
        assert all(f.rgb.shape == (height, width, 3) for f in frames)

    @pytest.mark.parametrize(("width", "height", "rate"), [(0, 10, 30.0), (10, 10, 0.0)])
    def test_bad_arguments(self, width: int, height: int, rate: float) -> None:
        with pytest.raises(ValueError, match="positive"):
            next(synthetic_frames(width, height, count=1, rate=rate))


class TestImages:
    def test_a_still_is_repeated_and_resized(self, tmp_path: Path) -> None:
        path = tmp_path / "card.png"
        pixels = np.zeros((40, 60, 3), np.uint8)
        pixels[:, :30] = (255, 0, 0)
        Image.fromarray(pixels).save(path)
        frames = list(open_source(str(path), frames=3, rate=10.0))
        assert len(frames) == 3 and [f.pts for f in frames] == [0.0, 0.1, 0.2]
        assert np.array_equal(frames[0].rgb, pixels)
        [small] = open_source(str(path), size=(30, 20))
        assert small.rgb.shape == (20, 30, 3)
        assert tuple(small.rgb[10, 5]) == (255, 0, 0)

    def test_a_file_that_is_not_an_image(self, tmp_path: Path) -> None:
        path = tmp_path / "card.png"
        path.write_text("not an image")
        with pytest.raises(SourceError, match=r"card\.png is not an image file"):
            list(open_source(str(path)))

    def test_a_truncated_image_is_named(self, tmp_path: Path) -> None:
        path = tmp_path / "card.png"
        Image.fromarray(np.arange(60 * 40 * 3, dtype=np.uint8).reshape(40, 60, 3)).save(path)
        path.write_bytes(path.read_bytes()[:-200])
        with pytest.raises(SourceError, match=r"card\.png cannot be read as an image: "):
            list(open_source(str(path)))


class TestFrameCount:
    def test_generated_and_still_sources(self, tmp_path: Path) -> None:
        assert frame_count("synthetic") == SYNTHETIC_FRAMES
        assert frame_count("synthetic", frames=7) == 7
        assert frame_count(str(tmp_path / "card.png")) == 1
        assert frame_count(str(tmp_path / "card.png"), frames=5) == 5

    def test_a_video_counts_what_its_container_records(self, clip: Path) -> None:
        assert frame_count(str(clip)) == len(list(open_source(str(clip)))) == 24
        assert frame_count(str(clip), frames=5) == 5
        assert frame_count(str(clip), frames=500) == 24

    def test_unknown_when_the_file_does_not_say(self, tmp_path: Path) -> None:
        path = tmp_path / "notes.mp4"
        path.write_text("not a video")
        assert frame_count(str(path)) is None
        assert frame_count(str(path), frames=9) == 9


class TestVideo:
    @pytest.mark.rule("PIPE-1")
    def test_decoded_frames_keep_the_container_times(self, clip: Path) -> None:
        frames = list(open_source(str(clip)))
        assert len(frames) == 24
        assert frames[0].rgb.shape == (64, 96, 3)
        assert frames[0].pts == 0.0
        assert [ticks(f.pts, 90000) for f in frames[:3]] == [0, 3750, 7500]

    def test_resized_and_limited(self, clip: Path) -> None:
        frames = list(open_source(str(clip), size=(48, 32), frames=5))
        assert len(frames) == 5
        assert frames[0].rgb.shape == (32, 48, 3)

    def test_decoded_pixels_resemble_the_source(self, clip: Path) -> None:
        [decoded] = open_source(str(clip), frames=1)
        [original] = synthetic_frames(96, 64, count=1)
        error = np.abs(decoded.rgb.astype(int) - original.rgb.astype(int)).mean()
        assert error < 12  # lossy, but the same picture

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match="synthetic"):
            open_source(str(tmp_path / "nope.mp4"))

    def test_not_a_video(self, tmp_path: Path) -> None:
        path = tmp_path / "notes.mp4"
        path.write_text("not a video")
        with pytest.raises(SourceError, match="not a video"):
            list(open_source(str(path)))
        assert issubclass(SourceError, ValueError)
