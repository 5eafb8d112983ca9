"""Shared-memory transfer end to end over loopback gRPC, and what a disconnect leaves.

Both parties are real: the pipeline's arena is a file under /dev/shm that it writes
with ``pwrite`` (or through a mapping, ``shm_write="map"``); the extension opens it
read-only and reads each sample's pixels with checked reads (by default) or through a
read-only mapping (``shm_access="map"``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from avaproto.client import Pipeline, connect
from avaproto.engine.config import EngineConfig
from avaproto.engine.drive import Result
from avaproto.engine.frame import Frame
from avaproto.errors import StreamFailed
from avaproto.media import frames
from avaproto.media.shared_memory import LeaseState, WriteMode
from avaproto.messages import Encoding, Inference, PixelFormat
from avaproto.protocol.video_format import VideoFormat
from avaproto.server import running
from avaproto.status import Status
from avaproto.transport.grpc_server import ServerConfig

pytestmark = pytest.mark.anyio
TIMEOUT = 30
SHM = Path("/dev/shm")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib runs on asyncio


@asynccontextmanager
async def shm_pipeline(processor: Any, fmt: VideoFormat, **options: Any) -> AsyncIterator[Pipeline]:
    """A real server for ``processor`` on a loopback port, and a pipeline's stream to it
    through shared memory (``options`` go to ``connect``)."""
    async with (
        running(processor, ServerConfig(port=0), grace=2) as server,
        connect(f"127.0.0.1:{server.port}", format=fmt, transfer="shm", **options) as pipe,
    ):
        yield pipe


async def exchanged(pipe: Pipeline, frames: Sequence[Any]) -> list[Result]:
    """Send ``frames`` (timestamps 0, 1, ...), end the input, and read every answer."""

    async def feed() -> None:
        for t, content in enumerate(frames):
            await pipe.send(content, timestamp=t)
        await pipe.end()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(feed)
        return [r async for r in pipe.results()]


def shm_fds() -> list[str]:
    """This process's open files under /dev/shm."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed while listing (the listing's own fd)
        if target.startswith("/dev/shm/"):
            found.append(target)
    return sorted(found)


def shm_mappings() -> list[str]:
    """This process's mappings of files under /dev/shm."""
    with open("/proc/self/maps", encoding="utf-8") as maps:
        return sorted(line.split(maxsplit=5)[-1].strip() for line in maps if "/dev/shm/" in line)


def pictures(count: int, width: int, height: int) -> list[np.ndarray]:
    generator = np.random.default_rng(7)
    return [generator.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def digest_of_rgb(frame: Frame) -> list[Inference]:
    shared = frame.descriptor.shared_memory is not None
    digest = hashlib.sha256(np.ascontiguousarray(frame.rgb()).tobytes()).hexdigest()
    return [Inference(subtype=f"{shared}:{digest}")]


@pytest.mark.rule("SHM-1", "SHM-4", "ACK-1", "SRV-7")
@pytest.mark.parametrize(
    "fmt",
    [
        VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 64, 48),
        VideoFormat.checked(Encoding.RAW, PixelFormat.BGRA, 31, 17, 31 * 4 + 12),
        VideoFormat.checked(Encoding.RAW, PixelFormat.YUV420P, 33, 19),
        VideoFormat.checked(Encoding.RAW, PixelFormat.RGB565LE, 20, 10),
    ],
    ids=str,
)
@pytest.mark.parametrize("shm_write", ["pwrite", "map"])
async def test_frames_through_shared_memory_reach_the_processor_intact(
    fmt: VideoFormat, shm_write: WriteMode
) -> None:
    sources = pictures(12, fmt.width, fmt.height)
    expected = []
    for rgb in sources:
        sent = frames.encode(rgb, fmt)
        seen = np.ascontiguousarray(frames.to_rgb(frames.decode(sent, fmt), fmt))
        expected.append(f"True:{hashlib.sha256(seen.tobytes()).hexdigest()}")
    with anyio.fail_after(TIMEOUT):
        async with shm_pipeline(digest_of_rgb, fmt, shm_bytes=1 << 20, shm_write=shm_write) as pipe:
            arena = pipe.stream.arena
            assert arena is not None and (SHM / arena.handle_name).exists()
            results = await exchanged(pipe, sources)
            assert arena.in_use == 0  # every slot came back with its acknowledgement
    assert [r.acknowledged for r in results] == list(range(2, 14))
    assert [r.inferences[0].subtype for r in results] == expected
    assert not (SHM / arena.handle_name).exists()  # the pipeline unlinked its segment
    assert not any(arena.handle_name in mapping for mapping in shm_mappings())


@pytest.mark.rule("SHM-1", "LIFE-3", "SRV-7")
async def test_a_pipeline_that_disconnects_mid_stream_leaves_nothing_behind() -> None:
    fds_before, maps_before = shm_fds(), shm_mappings()
    entered = 0
    three_in = anyio.Event()
    never = anyio.Event()

    async def stuck(frame: Frame) -> None:
        nonlocal entered
        assert frame.data is not None and len(frame.data) == 32 * 24 * 3
        entered += 1
        if entered == 3:
            three_in.set()
        await never.wait()  # the pipeline goes away before this returns

    fmt = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 32, 24)
    with anyio.fail_after(TIMEOUT):
        async with running(stuck, ServerConfig(port=0), grace=2) as server:
            with anyio.CancelScope() as client:
                async with connect(
                    f"127.0.0.1:{server.port}", format=fmt, transfer="shm", shm_bytes=1 << 16
                ) as pipe:
                    arena = pipe.stream.arena
                    assert arena is not None
                    for t in range(3):
                        await pipe.send(bytes(fmt.frame_bytes), timestamp=t)
                    await three_in.wait()
                    # Mid-stream: both parties hold the file open; the extension has
                    # three leases on it.
                    assert shm_fds().count(str(SHM / arena.handle_name)) == 2
                    client.cancel()
            await server.service.wait_idle()
            assert server.service.active == 0
    assert not (SHM / arena.handle_name).exists()
    assert shm_fds() == fds_before
    assert shm_mappings() == maps_before


@pytest.mark.rule("SRV-7", "SHM-7")
async def test_each_lease_ends_right_after_its_acknowledgement() -> None:
    """With one frame in flight, frame N arrives after N-1's answer was sent: by then the
    view frame N-1 was given must be released (the server never touches it again)."""
    seen: list[bool] = []

    class Checking:
        sequential = True

        def __init__(self) -> None:
            self.previous: Frame | None = None

        async def process(self, frame: Frame) -> list[Inference]:
            if self.previous is not None:
                try:
                    bytes(self.previous.data or b"")
                except ValueError:  # "operation forbidden on released memoryview object"
                    seen.append(True)
                else:
                    seen.append(False)
            self.previous = frame
            return []

    fmt = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 16, 8)
    with anyio.fail_after(TIMEOUT):
        async with shm_pipeline(Checking, fmt, shm_bytes=1 << 20, window=1) as pipe:
            answers = await exchanged(pipe, [bytes(fmt.frame_bytes)] * 6)
    assert len(answers) == 6
    assert seen == [True] * 5


@pytest.mark.rule("SHM-12")
@pytest.mark.parametrize("keeps", ["frame", "array"])
async def test_a_frame_kept_past_its_lease_is_not_blamed_an_array_is(
    keeps: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame kept past its lease (a tracker's previous frame; the worker thread that
    ran a plain ``def`` processor, until it takes its next job) must not hold the bytes
    through the image it cached: SHM-12 would blame an extension that kept no pixels.
    An array the extension keeps is blamed, and stays readable."""
    kept: dict[int, object] = {}

    def look(frame: Frame) -> list[Inference]:
        rgb = frame.rgb()
        kept[frame.sequence_number] = rgb if keeps == "array" else frame
        return []

    fmt = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 16, 8)
    sources = pictures(10, fmt.width, fmt.height)
    caplog.set_level(logging.WARNING)
    with anyio.fail_after(TIMEOUT):
        async with shm_pipeline(look, fmt, shm_bytes=1 << 20) as pipe:
            answers = await exchanged(pipe, sources)
    assert len(answers) == 10
    warned = caplog.text.count("[SHM-12]")
    if keeps == "array":
        assert warned == 1  # once per stream, for all ten
        arrays = [kept[number] for number in sorted(kept)]
        assert all(np.array_equal(a, b) for a, b in zip(arrays, sources, strict=True))
    else:
        assert warned == 0
        with pytest.raises(ValueError, match=r"sample 2's frame was let go .* copy what must"):
            kept[2].rgb()  # type: ignore[attr-defined]


async def test_a_slot_the_pipeline_filled_itself_goes_as_it_is() -> None:
    """``allocate`` hands out a slot to fill; ``send`` then copies nothing: the extension
    reads what was written there, and a slot taken again at an offset already written
    still holds its frame (what ``avaproto bench`` relies on)."""
    fmt = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 16, 8)
    sources = [frames.encode(rgb, fmt) for rgb in pictures(3, fmt.width, fmt.height)]
    seen: list[bytes] = []

    async def record(frame: Frame) -> None:
        assert frame.data is not None
        seen.append(bytes(frame.data))

    with anyio.fail_after(TIMEOUT):
        # Two slots: every other one is taken again.
        async with shm_pipeline(record, fmt, shm_bytes=2 * fmt.frame_bytes, window=1) as pipe:
            arena = pipe.stream.arena
            assert arena is not None
            offsets = []

            async def feed() -> None:
                for t, content in enumerate([*sources, None, None]):
                    slot = await pipe.allocate()
                    offsets.append(slot.offset)
                    if content is not None:
                        slot.write(content)
                    await pipe.send(slot, timestamp=t)
                await pipe.end()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(feed)
                answers = [r async for r in pipe.results()]
            assert arena.in_use == 0
    assert [r.acknowledged for r in answers] == [2, 3, 4, 5, 6]
    assert offsets == [0, fmt.frame_bytes, 0, fmt.frame_bytes, 0]
    # The last two slots were not written: they hold the frames written there before.
    assert seen == [*sources, sources[1], sources[2]]


async def test_a_slot_that_cannot_go_is_refused_or_freed() -> None:
    fmt = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 16, 8)
    with anyio.fail_after(TIMEOUT):
        async with running(digest_of_rgb, ServerConfig(port=0), grace=2) as server:
            target = f"127.0.0.1:{server.port}"
            async with (
                connect(target, format=fmt, transfer="shm", shm_bytes=1 << 16, window=1) as a,
                connect(target, format=fmt, transfer="shm", shm_bytes=1 << 16) as b,
                connect(target, format=fmt) as embedded,
            ):
                with pytest.raises(ValueError, match="frames embedded"):
                    await embedded.allocate()
                theirs = await b.allocate()
                with pytest.raises(ValueError, match="not a slot of this stream's segment"):
                    await a.send(theirs, timestamp=0)
                theirs.cancel()
                longer = await a.allocate(fmt.frame_bytes + 1)
                with pytest.raises(ValueError, match="holds 385 bytes; a RAW RGB24 16x8 frame"):
                    await a.send(longer, timestamp=0)
                assert longer.state is LeaseState.ALLOCATED  # still the caller's
                longer.cancel()
                assert a.stream.arena is not None
                slot = await a.allocate()
                await a.send(slot, timestamp=0)  # the window is full
                with pytest.raises(ValueError, match="cannot be sent"):
                    await a.send(slot, timestamp=1)  # a slot goes once
                assert a.stream.session.last_sent == 2  # and no number went with it
                waiting = await a.allocate()
                with anyio.move_on_after(0.2):  # no answer is read: the window stays full
                    await a.send(waiting, timestamp=1)
                # The send that never went freed its slot.
                assert waiting.state is LeaseState.RELEASED
                async for _ in a.results():
                    break


async def test_a_slot_sent_after_the_extension_failed_is_freed() -> None:
    fmt = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 16, 8)

    def fails(frame: Frame) -> None:
        raise RuntimeError("no model")

    with anyio.fail_after(TIMEOUT):
        async with running(fails, ServerConfig(port=0), grace=2) as server:
            with pytest.raises(StreamFailed):
                async with connect(
                    f"127.0.0.1:{server.port}", format=fmt, transfer="shm", shm_bytes=1 << 16
                ) as pipe:
                    await pipe.send(bytes(fmt.frame_bytes), timestamp=0)
                    with pytest.raises(StreamFailed):
                        async for _ in pipe.results():
                            pass
                    slot = await pipe.allocate()
                    await pipe.send(slot, timestamp=1)  # goes nowhere (PIPE-6)
                    arena = pipe.stream.arena
                    assert arena is not None
                    after = (slot.state, arena.live_leases)
    # Checked here: leaving the block raises the extension's failure over anything else.
    # Only the first frame's slot is held (never acknowledged), until the arena closes.
    assert after == (LeaseState.RELEASED, 1)


@pytest.mark.rule("SHM-17")
async def test_a_stream_past_the_mapping_budget_is_refused_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that maps segments: one of 1 MiB fits its budget of 1.5 MiB, a second
    stream's does not, while the first is open."""
    caplog.set_level(logging.WARNING, logger="avaproto")
    fmt = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 16, 16)
    config = ServerConfig(port=0, engine=EngineConfig(shm_access="map", max_mapped_bytes=3 << 19))
    with anyio.fail_after(TIMEOUT):
        async with running(lambda frame: [], config, grace=2) as server:
            target = f"127.0.0.1:{server.port}"
            async with connect(target, format=fmt, transfer="shm", shm_bytes=1 << 20) as first:
                await first.send(bytes(fmt.frame_bytes), timestamp=0)
                assert (await first.results().receive()).acknowledged == 2
                with pytest.raises(StreamFailed) as refused:
                    async with connect(target, format=fmt, transfer="shm", shm_bytes=1 << 20):
                        pass
    assert refused.value.status is Status.RESOURCE_EXHAUSTED
    assert refused.value.detail.startswith("[SHM-17] shared memory /dev/shm/")
    [line] = [r.getMessage() for r in caplog.records if "[SHM-17]" in r.getMessage()]
    assert line.startswith("stream of 127.0.0.1:") and "(--max-mapped-bytes)" in line
