"""Sending a frame source to an extension, as a pipeline would: ``avaproto send``'s core.

Frames are read and converted to the stream's format in a worker thread (decoding video
and converting pixels block), sent within the window, optionally paced at a frame rate,
and every answer is passed on as it arrives.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from .client import (
    DEFAULT_ACK_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DESCRIPTOR_TIMEOUT,
    DEFAULT_SHM_BYTES,
    Transfer,
    connect,
    encode_frame,
)
from .engine.drive import ANSWERS_PER_SAMPLE, Result
from .engine.outcome import protocol_errors
from .protocol.auth import Credentials
from .protocol.video_format import VideoFormat
from .report import Report
from .transport.limits import ConnectionLimits

if TYPE_CHECKING:
    from .media.shared_memory import WriteMode
    from .sources import SourceFrame


@dataclass(frozen=True)
class SendOptions:
    target: str
    format: VideoFormat | None
    transfer: Transfer = "embedded"
    window: int = 8
    #: Frames per second to pace the sending at (None: as fast as the window allows).
    rate: float | None = None
    #: Without ``rate``: pace by the source's own frame times (a video replays in real time).
    pace: bool = False
    configuration: str = ""
    credentials: Credentials | None = None
    tls: ssl.SSLContext | None = None
    timescale: int = 90000
    shm_bytes: int = DEFAULT_SHM_BYTES
    #: Where the segment is made (a shared-memory file system).
    shm_directory: str = "/dev/shm"
    #: How frames go into the segment: checked writes, or a mapping for a trusted extension.
    shm_write: WriteMode = "pwrite"
    #: The segment's permissions: 0o600, or 0o640 / 0o644 / 0o660 for an extension of
    #: another user (SHM-9).
    shm_mode: int = 0o600
    #: Seconds to establish the connection (TCP, TLS, HTTP/2) before giving up.
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT
    #: Seconds the extension has to answer our descriptor with its own.
    descriptor_timeout: float | None = DEFAULT_DESCRIPTOR_TIMEOUT
    #: Seconds each sample may wait for its acknowledgement before the run ends.
    ack_timeout: float | None = DEFAULT_ACK_TIMEOUT
    #: What the extension may make the pipeline hold (PIPE-8); None: the defaults.
    limits: ConnectionLimits | None = None
    #: Answers that acknowledge no sample taken per sample sent (PIPE-10).
    max_answers_per_sample: int = ANSWERS_PER_SAMPLE


def ticks(seconds: float, timescale: int) -> int:
    """A presentation time in ticks of ``timescale`` (90 kHz for the protocol's example)."""
    return round(seconds * timescale)


async def send_frames(
    frames: Iterable[SourceFrame],
    options: SendOptions,
    *,
    on_result: Callable[[Result], None] | None = None,
    report: Report | None = None,
) -> Report:
    """Send every frame of ``frames``; return the run's report once all are answered.

    Pass ``report`` to keep what the run did when it fails or is cancelled: it is filled
    as answers arrive, and its duration and the extension's tolerated deviations are set
    however the run ends.
    """
    report = report if report is not None else Report()
    source: Iterator[SourceFrame] = iter(frames)

    def next_encoded() -> tuple[bytes | bytearray | memoryview | None, int, float] | None:
        """The next frame in the stream's format, its timestamp and its time in seconds."""
        frame = next(source, None)
        if frame is None:
            return None
        content = encode_frame(frame.rgb, options.format) if options.format else None
        seconds = float(frame.pts)
        return content, ticks(seconds, options.timescale), seconds

    report.peer = options.target
    report.started, report.ended = time.monotonic(), None
    try:
        await _run(frames=next_encoded, options=options, report=report, on_result=on_result)
    finally:
        report.ended = time.monotonic()
    return report


async def _run(
    *,
    frames: Callable[[], tuple[bytes | bytearray | memoryview | None, int, float] | None],
    options: SendOptions,
    report: Report,
    on_result: Callable[[Result], None] | None,
) -> None:
    started = anyio.current_time()
    async with connect(
        options.target,
        format=options.format,
        transfer=options.transfer,
        shm_bytes=options.shm_bytes,
        configuration=options.configuration,
        credentials=options.credentials,
        tls=options.tls,
        window=options.window,
        timescale=options.timescale,
        shm_directory=options.shm_directory,
        shm_write=options.shm_write,
        shm_mode=options.shm_mode,
        connect_timeout=options.connect_timeout,
        descriptor_timeout=options.descriptor_timeout,
        ack_timeout=options.ack_timeout,
        statistics=report,
        limits=options.limits,
        max_answers_per_sample=options.max_answers_per_sample,
    ) as pipeline:

        async def feed() -> None:
            first: float | None = None
            while True:
                item = await anyio.to_thread.run_sync(frames)
                if item is None:
                    break
                content, timestamp, seconds = item
                if options.rate:
                    await anyio.sleep_until(started + report.sent / options.rate)
                elif options.pace:
                    first = seconds if first is None else first
                    await anyio.sleep_until(started + seconds - first)
                await pipeline.send(content, timestamp=timestamp)
            await pipeline.end()

        with protocol_errors():
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(feed)
                async for result in pipeline.results():
                    if on_result is not None:
                        on_result(result)
