"""The grpcio client: the same load as avaproto's, with grpc.aio and the official runtime.

It does what ``avaproto.bench.drive`` does, with grpcio and protoc's classes: send the
descriptor, wait for the extension's, then stream the same payload bytes with at most
``window`` samples unacknowledged (or paced at ``rate``), and time from the first sample
to the last acknowledgement. Each sample's message is the template built once with the
payload, its sequence number and timestamp set and serialized (the one copy of the frame
into the message, as any protobuf sender makes).

With shared memory it creates a segment of its own in /dev/shm holding ``window + 1``
frames (the size avaproto's client gets too), takes a free slot of that ring for each
frame, refers to it, and frees it when the slot's acknowledgement arrives; the segment is
unlinked when the stream ends, however it ends. A slot is written when first taken and
then holds the frame, as avaproto's client does (``avaproto.bench.drive``), unless
``rewrite_frames``.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import secrets
import time
from collections import deque
from types import ModuleType
from typing import Any

from avaproto.bench.drive import (
    NOMINAL_RATE,
    TIMESCALE,
    StreamRun,
    run_figures,
    segment_bytes,
    synthetic_payload,
)
from avaproto.messages import METHOD_PATH

from .official import GRPC_OPTIONS, descriptor_message, official_messages

SHM_DIRECTORY = "/dev/shm"


class Ring:
    """A segment of ``slots`` equal slots in /dev/shm, created here and unlinked on close."""

    def __init__(self, frame_bytes: int, window: int) -> None:
        self.length = segment_bytes(frame_bytes, window)
        self.slot_bytes = self.length // (window + 1)
        self.name = f"bench-grpcio-{os.getpid()}-{secrets.token_hex(6)}"
        self.path = os.path.join(SHM_DIRECTORY, self.name)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, self.length)
            self.mapping = mmap.mmap(fd, self.length, flags=mmap.MAP_SHARED)
        except BaseException:
            os.unlink(self.path)
            raise
        finally:
            os.close(fd)
        self.view = memoryview(self.mapping)
        self.free: deque[int] = deque(range(window + 1))
        self.written: set[int] = set()

    def write(self, slot: int, payload: bytes, again: bool) -> int:
        """The offset of ``slot``, ``payload`` written there first if new (or ``again``)."""
        offset = slot * self.slot_bytes
        if again or slot not in self.written:
            self.view[offset : offset + len(payload)] = payload
            self.written.add(slot)
        return offset

    def close(self) -> None:
        self.view.release()
        self.mapping.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


async def drive_stream(
    pb: ModuleType,
    target: str,
    payload: bytes,
    run: StreamRun,
    *,
    width: int,
    height: int,
    transfer: str,
    frames: int,
    window: int,
    rate: float | None,
    rewrite_frames: bool,
) -> None:
    import grpc

    ring = Ring(len(payload), window) if transfer == "shm" else None
    try:
        descriptor = descriptor_message(
            pb, width, height, shm=(ring.name, ring.length) if ring else None
        ).SerializeToString()
        template = pb.MediaStreamMessage()
        if ring is None:
            template.media_sample.content_bytes.bytes = payload
        else:
            template.media_sample.content_reference.length_bytes = len(payload)
        step = round(TIMESCALE / (rate or NOMINAL_RATE))
        negotiated = asyncio.Event()
        window_slots = asyncio.Semaphore(window)
        sent_at: dict[int, float] = {}
        slot_of: dict[int, int] = {}

        async def requests() -> Any:
            yield descriptor
            await negotiated.wait()
            run.started = begun = time.perf_counter()
            for number in range(frames):
                if rate:
                    delay = begun + number / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await window_slots.acquire()
                sequence = number + 2
                template.sequence_number = sequence
                template.media_sample.timestamp = number * step
                if ring is not None:
                    slot = ring.free.popleft()
                    slot_of[sequence] = slot
                    template.media_sample.content_reference.address_offset = ring.write(
                        slot, payload, rewrite_frames
                    )
                message = template.SerializeToString()
                sent_at[sequence] = time.perf_counter()
                yield message

        async with grpc.aio.insecure_channel(
            target, options=[*GRPC_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            call = channel.stream_stream(
                METHOD_PATH,
                request_serializer=lambda raw: raw,
                response_deserializer=pb.MediaStreamMessage.FromString,
            )(requests())
            async for answer in call:
                if answer.HasField("media_stream_descriptor"):
                    negotiated.set()
                    continue
                sent = sent_at.pop(answer.ack_sequence_number, None)
                if sent is None:
                    continue
                now = time.perf_counter()
                run.latencies.append(now - sent)
                if ring is not None:
                    ring.free.append(slot_of.pop(answer.ack_sequence_number))
                window_slots.release()
                run.answered += 1
                if run.answered == frames:
                    run.finished = now
    finally:
        if ring is not None:
            ring.close()


async def drive(
    target: str,
    *,
    transfer: str,
    width: int,
    height: int,
    frames: int,
    window: int,
    rate: float | None = None,
    streams: int = 1,
    rewrite_frames: bool = False,
) -> dict[str, Any]:
    """The grpcio client's run: the same keys as ``avaproto.bench.drive.drive_target``."""
    pb = official_messages()
    payload = synthetic_payload(width * height * 3)
    runs = [StreamRun() for _ in range(streams)]
    await asyncio.gather(
        *(
            drive_stream(
                pb,
                target,
                payload,
                run,
                width=width,
                height=height,
                transfer=transfer,
                frames=frames,
                window=window,
                rate=rate,
                rewrite_frames=rewrite_frames,
            )
            for run in runs
        )
    )
    figures = run_figures(runs)
    del figures["inferences"]  # the baselines answer none
    return {
        "transfer": transfer,
        "width": width,
        "height": height,
        "frames": frames * streams,
        "streams": streams,
        **figures,
    }
