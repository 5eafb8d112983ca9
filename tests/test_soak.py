"""A soak: sixteen streams at once against real servers, and nothing left behind.

Sixteen pipelines (``avaproto.connect``) stream ``AVAPROTO_SOAK_FRAMES`` frames each
(200 by default; ``make soak`` sends 5000) to two extension servers on loopback, one
reading shared memory with checked reads and one mapping it, in every mix of transfer
(embedded, shared memory) and format (RGB24, BGR24, YUV420P, an odd-sized YUV420P). The
extension sleeps 0 to 3 ms per frame (seeded per stream), so frames finish out of order,
and answers with a checksum of the bytes it was given.

Every answer must acknowledge the next sample, in order, exactly once, with the checksum
of what was sent. At the end nothing may be left: no shared-memory view that outlived
its acknowledgement, no live lease or slot in any arena, no segment file, no file
descriptor, no mapping of /dev/shm, no task; and the memory the process holds may not
have grown since the warm-up (the first 10% of the frames) by more than
``RSS_GROWTH_LIMIT``.

RSS is the anonymous part (statm's resident minus shared): the shared-memory segments
are file pages, mapped on both sides of the same process, and come and go with their
streams. Measured on a 2-core machine: the short run grows by about 0.5 MiB, the full
one (5000 frames per stream) by about 3.5 MiB; the limits are 5 MiB (short) and
10 MiB (full).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import struct
import time
import zlib
from collections import deque
from dataclasses import dataclass, field

import anyio
import pytest

from avaproto.client import connect
from avaproto.engine.config import EngineConfig
from avaproto.engine.frame import Frame
from avaproto.messages import Encoding, Inference, PixelFormat
from avaproto.protocol.descriptor import StreamDescriptor
from avaproto.protocol.video_format import VideoFormat
from avaproto.transport.grpc_server import ServerConfig, start_server

pytestmark = pytest.mark.anyio

FRAMES = int(os.environ.get("AVAPROTO_SOAK_FRAMES", "200"))
STREAMS = 16
FULL = FRAMES >= 1000
RSS_GROWTH_LIMIT = (10 if FULL else 5) << 20
#: Seconds for the whole soak: generous, it only stops a hang.
DEADLINE = 30 + FRAMES * STREAMS / 500
FORMATS = [
    VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 64, 48),
    VideoFormat.checked(Encoding.RAW, PixelFormat.BGR24, 64, 48),
    VideoFormat.checked(Encoding.RAW, PixelFormat.YUV420P, 64, 48),
    VideoFormat.checked(Encoding.RAW, PixelFormat.YUV420P, 33, 19),
]
#: Room for 16 frames of the largest format: the segment is reused from the start.
SEGMENT_BYTES = 16 * 64 * 48 * 3 + 16 * 64


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib runs on asyncio


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def shm_mappings() -> int:
    with open("/proc/self/maps", encoding="utf-8") as maps:
        return sum("/dev/shm/" in line for line in maps)


def anonymous_rss() -> int:
    """Resident bytes that are not file pages (the heap, not the segments)."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        _, resident, shared = (int(value) for value in statm.read().split()[:3])
    return (resident - shared) * os.sysconf("SC_PAGE_SIZE")


def released(view: memoryview) -> bool:
    try:
        _ = view.nbytes
    except ValueError:  # "operation forbidden on released memoryview object"
        return True
    return False


@dataclass
class Soaked:
    """The extension of one stream: sleeps 0-3 ms, answers with the checksum of its bytes.

    It keeps the shared-memory views it was given until they are released, and counts at
    ``close`` those still usable: each should have ended right after its acknowledgement.
    """

    outlived: list[int]
    views: list[memoryview] = field(default_factory=list)
    delays: random.Random = field(default_factory=random.Random)

    async def open(self, descriptor: StreamDescriptor) -> None:
        self.delays = random.Random(int(descriptor.extension_configuration))

    async def process(self, frame: Frame) -> list[Inference]:
        await anyio.sleep(self.delays.random() * 0.003)
        data = frame.data
        assert data is not None
        checksum = zlib.crc32(data)
        if frame.descriptor.shared_memory is not None:
            self.views = [view for view in self.views if not released(view)]
            self.views.append(data)
        return [Inference(subtype=f"{checksum:08x}")]

    async def close(self) -> None:
        self.outlived.append(sum(not released(view) for view in self.views))


@dataclass
class Progress:
    """Answers so far, across streams, and the anonymous RSS at two moments."""

    total: int
    answered: int = 0
    warm: int | None = None
    last: int | None = None

    def one_more(self) -> None:
        self.answered += 1
        if self.answered == self.total // 10:
            gc.collect()
            self.warm = anonymous_rss()
        elif self.answered == self.total:
            gc.collect()
            self.last = anonymous_rss()


def frame_of(index: int, number: int, base: bytes) -> bytes:
    """Frame ``number`` of stream ``index``: its own header, then the stream's pattern."""
    return struct.pack(">II", index, number) + base[8:]


async def stream(index: int, port: int, progress: Progress, segments: list[str]) -> None:
    fmt = FORMATS[index % len(FORMATS)]
    transfer = "shm" if index // 4 % 2 else "embedded"
    base = random.Random(index).randbytes(fmt.frame_bytes)
    expected: deque[tuple[int, int, str]] = deque()  # sequence number, timestamp, checksum
    async with connect(
        f"127.0.0.1:{port}",
        format=fmt,
        transfer=transfer,
        shm_bytes=SEGMENT_BYTES,
        configuration=str(index),
    ) as pipe:
        arena = pipe.stream.arena
        if arena is not None:
            segments.append(arena.handle_name)

        async def feed() -> None:
            for number in range(FRAMES):
                data = frame_of(index, number, base)
                # The descriptor is message 1; samples are 2, 3, ... (SEQ-1).
                expected.append((number + 2, number * 3000, f"{zlib.crc32(data):08x}"))
                assert await pipe.send(data, timestamp=number * 3000) == number + 2
            await pipe.end()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(feed)
            async for result in pipe.results():
                # Each sample acknowledged once, in order, by the answer about its bytes.
                number, timestamp, checksum = expected.popleft()
                assert (result.acknowledged, result.timestamp) == (number, timestamp)
                assert [i.subtype for i in result.inferences] == [checksum], (index, number)
                progress.one_more()
        assert not expected
        if arena is not None:
            assert (arena.live_leases, arena.in_use) == (0, 0)


@pytest.mark.rule("ACK-1", "SRV-2", "SRV-7", "SHM-9")
async def test_sixteen_streams_leave_nothing_behind() -> None:
    logging.getLogger("avaproto").setLevel(logging.WARNING)  # two lines per stream otherwise
    gc.collect()
    fds, maps, tasks = open_fds(), shm_mappings(), len(asyncio.all_tasks())
    progress = Progress(total=FRAMES * STREAMS)
    outlived: list[int] = []
    segments: list[str] = []
    started = time.monotonic()
    with anyio.fail_after(DEADLINE):
        servers = [
            await start_server(
                lambda: Soaked(outlived),
                ServerConfig(port=0, engine=EngineConfig(shm_access=access, max_in_flight=8)),
            )
            for access in ("read", "map")
        ]
        try:
            async with anyio.create_task_group() as group:
                for index in range(STREAMS):
                    group.start_soon(stream, index, servers[index // 8].port, progress, segments)
        finally:
            with anyio.CancelScope(shield=True):
                for server in servers:
                    await server.drain(5)
    seconds = time.monotonic() - started
    del servers
    gc.collect()
    end = anonymous_rss()

    assert progress.answered == FRAMES * STREAMS
    assert outlived == [0] * STREAMS  # no view outlived its acknowledgement
    assert len(segments) == STREAMS // 2
    assert not [name for name in segments if os.path.exists(f"/dev/shm/{name}")]
    # Nothing more than before: fewer is possible (another test's garbage, collected late).
    assert open_fds() <= fds and shm_mappings() <= maps
    assert len(asyncio.all_tasks()) == tasks
    assert progress.warm is not None and progress.last is not None
    growth = max(progress.last, end) - progress.warm
    print(
        f"\nsoak: {STREAMS} streams x {FRAMES} frames in {seconds:.1f} s "
        f"({progress.answered / seconds:.0f} frames/s); anonymous RSS "
        f"{progress.warm / 2**20:.1f} MiB after warm-up, {progress.last / 2**20:.1f} MiB at "
        f"the last answer, {end / 2**20:.1f} MiB at the end; fds {fds} before and after, "
        f"/dev/shm mappings {maps} before and after"
    )
    assert growth < RSS_GROWTH_LIMIT, f"anonymous RSS grew by {growth / 2**20:.1f} MiB"
