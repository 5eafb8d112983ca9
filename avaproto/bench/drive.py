"""What an extension sustains: drive any extension with a steady load, report fps and latency.

``avaproto bench TARGET`` runs this: it opens one or more streams to the extension at
TARGET, as a pipeline would, and sends the same RAW frame (or encoded test image) over
and over,
embedded or through shared memory, keeping a window of unacknowledged samples per
stream (or pacing at a fixed rate), and reports the frames per second answered and the
latency of each frame, from sending it to receiving its acknowledgement.

The frame is one fixed buffer of pseudo-random bytes, made once: what is measured is
the transport and the extension, not the making of frames. Through shared memory, each
slot of the stream's segment is written when first used and then holds the frame: the
message is then all a sample costs, as for a pipeline that decodes into the segment.
Copying 6 MB (1920x1080 RGB24) again for every sample took the client longer than any
extension took to answer, so the figure was the client's. ``rewrite_frames`` writes
every sample's frame, as a pipeline that copies each decoded frame in does. Its bytes are not zeros,
whose pages the kernel may share, which would make copying them unrealistically cheap.
The timer starts once a stream is negotiated and stops at the last acknowledgement, so
connecting and the descriptors' exchange are not counted.
"""

from __future__ import annotations

import math
import ssl
import time
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

import anyio
import numpy as np

from ..client import (
    DEFAULT_ACK_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DESCRIPTOR_TIMEOUT,
    Transfer,
    connect,
)
from ..engine.outcome import protocol_errors
from ..engine.statistics import StreamStatistics
from ..media.images import ENCODED, synthetic_image
from ..media.shared_memory import WriteMode
from ..messages import Encoding, PixelFormat
from ..protocol.auth import Credentials
from ..protocol.video_format import VideoFormat
from ..report import percentile

#: The clock of the timestamps sent, and the frame rate they assume when not paced.
TIMESCALE = 90000
NOMINAL_RATE = 30.0
#: Slots are 64-byte aligned in the segment (SHM-13).
_ALIGNMENT = 64


@lru_cache(maxsize=4)
def synthetic_payload(size: int) -> bytes:
    """``size`` deterministic pseudo-random bytes: the same on every run and every client.

    Kept for the next run of the same size, so that a process driving run after run
    makes it once (and a client's measured CPU time is not the making of frames).
    """
    return np.random.default_rng(2024).integers(0, 256, size, dtype=np.uint8).tobytes()


def segment_bytes(frame_bytes: int, window: int) -> int:
    """A shared-memory segment that holds a full window of frames, and one more."""
    slot = -(-frame_bytes // _ALIGNMENT) * _ALIGNMENT
    return slot * (window + 1)


@dataclass
class StreamRun:
    """One driven stream's figures, as any client records them (grpcio's too)."""

    answered: int = 0
    inferences: int = 0
    started: float = math.inf
    finished: float = -math.inf
    latencies: list[float] = field(default_factory=list)


def run_figures(runs: list[StreamRun]) -> dict[str, Any]:
    """Frames answered per second over all ``runs``, and their latencies in ms."""
    answered = sum(run.answered for run in runs)
    seconds = max(run.finished for run in runs) - min(run.started for run in runs)
    latencies = [latency * 1000 for run in runs for latency in run.latencies]
    return {
        "answered": answered,
        "inferences": sum(run.inferences for run in runs),
        "seconds": seconds,
        "fps": answered / seconds if seconds > 0 else math.nan,
        "latency_ms": {
            "p50": percentile(latencies, 0.50),
            "p90": percentile(latencies, 0.90),
            "p99": percentile(latencies, 0.99),
            "max": max(latencies, default=math.nan),
        },
        "latencies_ms": latencies,
    }


async def _drive_stream(
    target: str,
    fmt: VideoFormat,
    payload: bytes,
    run: StreamRun,
    *,
    transfer: Transfer,
    frames: int,
    window: int,
    rate: float | None,
    rewrite_frames: bool,
    options: dict[str, Any],
) -> None:
    step = round(TIMESCALE / (rate or NOMINAL_RATE))
    # The stream's own record (kept by the engine as answers arrive) is the run's.
    stats = StreamStatistics(target)
    async with connect(
        target, format=fmt, transfer=transfer, window=window, statistics=stats, **options
    ) as pipe:
        run.started = time.perf_counter()
        begun = anyio.current_time()

        async def feed() -> None:
            written: set[int] = set()  # the offsets of the slots that hold the frame
            for number in range(frames):
                if rate:
                    await anyio.sleep_until(begun + number / rate)
                if transfer == "shm" and not rewrite_frames:
                    slot = await pipe.allocate(len(payload))
                    if slot.offset not in written:
                        slot.write(payload)
                        written.add(slot.offset)
                    await pipe.send(slot, timestamp=number * step)
                else:
                    await pipe.send(payload, timestamp=number * step)
            await pipe.end()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(feed)
            async for _ in pipe.results():
                if stats.answered == frames:
                    run.finished = time.perf_counter()
                    break
    run.answered, run.inferences = stats.answered, stats.inferences
    run.latencies = stats.latencies  # every one: a run is far below MAX_LATENCIES
    run.finished = run.finished if run.answered == frames else time.perf_counter()


async def _run_all(
    runs: list[StreamRun],
    target: str,
    fmt: VideoFormat,
    payload: bytes,
    transfer: Transfer,
    frames: int,
    window: int,
    rate: float | None,
    rewrite_frames: bool,
    options: dict[str, Any],
) -> None:
    async with anyio.create_task_group() as tasks:
        for run in runs:
            tasks.start_soon(
                partial(
                    _drive_stream,
                    target,
                    fmt,
                    payload,
                    run,
                    transfer=transfer,
                    frames=frames,
                    window=window,
                    rate=rate,
                    rewrite_frames=rewrite_frames,
                    options=options,
                )
            )


async def drive_target(
    target: str,
    *,
    transfer: Transfer = "embedded",
    size: tuple[int, int] = (416, 416),
    frames: int = 300,
    window: int = 8,
    rate: float | None = None,
    streams: int = 1,
    pixel_format: str = "RGB24",
    configuration: str = "",
    credentials: Credentials | None = None,
    tls: ssl.SSLContext | None = None,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    descriptor_timeout: float | None = DEFAULT_DESCRIPTOR_TIMEOUT,
    ack_timeout: float | None = DEFAULT_ACK_TIMEOUT,
    keep_latencies: bool = False,
    shm_write: WriteMode = "pwrite",
    shm_mode: int = 0o600,
    rewrite_frames: bool = False,
) -> dict[str, Any]:
    """Drive the extension at ``target`` and return what it sustained.

    Each of ``streams`` streams (each on a connection of its own, as separate pipelines
    are) sends ``frames`` RAW frames of ``size`` (width, height) in ``pixel_format``
    (or, for JPG, PNG or BMP, one encoded test image),
    with at most ``window`` unacknowledged, at ``rate`` frames per second per stream if
    given, else as fast as the window allows. With ``transfer="shm"`` each stream's
    segment holds ``window + 1`` frames, written as ``shm_write`` says (see ``connect``),
    each slot once unless ``rewrite_frames`` (then every sample's frame is written).
    Returns a JSON-ready dict: ``fps`` (frames
    answered per second over all streams), ``seconds``, ``answered``, ``latency_ms``
    (p50, p90, p99, max), the load's parameters and, with ``keep_latencies``, every
    frame's latency in ``latencies_ms``.

    A stream that fails raises its error (``ProtocolError``, ``StreamFailed``, ``OSError``)
    as itself, not inside an exception group, so a caller can say what went wrong.
    """
    if frames < 1 or window < 1 or streams < 1:
        raise ValueError("frames, window and streams must be at least 1")
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be positive (or None), got {rate}")
    width, height = size
    if pixel_format in ENCODED:  # an encoded image: most published extensions take JPG
        fmt = VideoFormat.checked(Encoding[pixel_format], PixelFormat.NONE, width, height)
        payload = synthetic_image(width, height, fmt.encoding)
    else:
        fmt = VideoFormat.checked(Encoding.RAW, PixelFormat[pixel_format], width, height)
        payload = synthetic_payload(fmt.frame_bytes)
    options: dict[str, Any] = {
        "configuration": configuration,
        "credentials": credentials,
        "tls": tls,
        "connect_timeout": connect_timeout,
        "descriptor_timeout": descriptor_timeout,
        "ack_timeout": ack_timeout,
    }
    if transfer == "shm":
        options["shm_bytes"] = segment_bytes(len(payload), window)
        options["shm_write"] = shm_write
        options["shm_mode"] = shm_mode
    runs = [StreamRun() for _ in range(streams)]
    with protocol_errors(also=(Exception,)):
        await _run_all(
            runs, target, fmt, payload, transfer, frames, window, rate, rewrite_frames, options
        )
    figures = run_figures(runs)
    latencies = figures.pop("latencies_ms")
    report: dict[str, Any] = {
        "target": target,
        "format": str(fmt),
        "transfer": transfer,
        "shm_write": shm_write if transfer == "shm" else None,
        "rewrite_frames": rewrite_frames if transfer == "shm" else None,
        "width": width,
        "height": height,
        "frame_bytes": len(payload),
        "window": window,
        "rate": rate,
        "streams": streams,
        "frames": frames * streams,
        **figures,
    }
    if keep_latencies:
        report["latencies_ms"] = latencies
    return report


def format_drive_report(report: dict[str, Any]) -> str:
    """The report of ``drive_target`` as a person reads it: the load, fps, latency."""
    streams = report["streams"]
    pace = f"paced at {report['rate']:g} fps" if report["rate"] else "as fast as the window allows"
    latency = report["latency_ms"]
    transfer = f"{report['transfer']} transfer"
    if report.get("rewrite_frames") is not None:
        written = "every frame written" if report["rewrite_frames"] else "each slot written once"
        transfer = f"{transfer} ({written})"
    per_stream = f", {report['fps'] / streams:.1f} per stream" if streams > 1 else ""
    return "\n".join(
        [
            f"{report['target']}: {report['format']}, {transfer}, "
            f"window {report['window']}, {streams} stream{'s' if streams > 1 else ''}, {pace}",
            f"frames: {report['answered']} of {report['frames']} answered in "
            f"{report['seconds']:.2f} s: {report['fps']:.1f} fps{per_stream}",
            f"latency: p50 {latency['p50']:.1f} ms, p90 {latency['p90']:.1f} ms, "
            f"p99 {latency['p99']:.1f} ms, max {latency['max']:.1f} ms",
        ]
    )
