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

from .client import DEFAULT_SHM_BYTES, Transfer, connect, encode_frame
from .engine.drive import Result
from .engine.outcome import first_protocol_error
from .protocol.auth import Credentials
from .protocol.video_format import VideoFormat
from .report import Report

if TYPE_CHECKING:
    from .sources import SourceFrame


@dataclass(frozen=True)
class SendOptions:
    target: str
    format: VideoFormat | None
    transfer: Transfer = "embedded"
    window: int = 8
    #: Frames per second to pace the sending at (None: as fast as the window allows).
    rate: float | None = None
    configuration: str = ""
    credentials: Credentials | None = None
    tls: ssl.SSLContext | None = None
    timescale: int = 90000
    shm_bytes: int = DEFAULT_SHM_BYTES


def ticks(seconds: float, timescale: int) -> int:
    """A presentation time in ticks of ``timescale`` (90 kHz for the protocol's example)."""
    return round(seconds * timescale)


async def send_frames(
    frames: Iterable[SourceFrame],
    options: SendOptions,
    *,
    on_result: Callable[[Result], None] | None = None,
) -> Report:
    """Send every frame of ``frames``; return the run's report once all are answered."""
    report = Report()
    source: Iterator[SourceFrame] = iter(frames)

    def next_encoded() -> tuple[bytes | bytearray | memoryview | None, int] | None:
        """The next frame in the stream's format and its timestamp; None at the end."""
        frame = next(source, None)
        if frame is None:
            return None
        content = encode_frame(frame.rgb, options.format) if options.format else None
        return content, ticks(float(frame.pts), options.timescale)

    started = time.monotonic()
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
    ) as pipeline:

        async def feed() -> None:
            while True:
                item = await anyio.to_thread.run_sync(next_encoded)
                if item is None:
                    break
                content, timestamp = item
                if options.rate:
                    await anyio.sleep_until(started + report.sent / options.rate)
                await pipeline.send(content, timestamp=timestamp)
                report.sent += 1
            await pipeline.end()

        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(feed)
                async for result in pipeline.results():
                    report.add(result)
                    if on_result is not None:
                        on_result(result)
        except BaseExceptionGroup as group:
            cause = first_protocol_error(group)
            if cause is None:
                raise
            raise cause from None
    report.seconds = time.monotonic() - started
    return report
