"""A segment shrunk under its stream ends that stream (SHM-15), never the process.

Either party can ``ftruncate`` the pipeline's segment while the other uses it; through a
mapping, the next access past the new end would be a SIGBUS that kills the whole
process. Here both sides are real: avaproto's server on a loopback port (in this
process, and as ``avaproto serve`` in a process of its own), avaproto's client, and
segments under /dev/shm. The pipeline that shrinks its own segment is written with
grpclib directly, as a broken third-party pipeline would be: it writes its frames with
``pwrite`` and has no mapping of its own, so nothing here can fault the test process.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import grpclib.client
import grpclib.const
import grpclib.exceptions
import numpy as np
import pytest

from avaproto.client import connect
from avaproto.engine.config import EngineConfig
from avaproto.engine.frame import Frame
from avaproto.errors import ProtocolError
from avaproto.messages import (
    METHOD_PATH,
    ContentReference,
    Encoding,
    GraphIdentifier,
    Inference,
    MediaDescriptor,
    MediaSample,
    MediaStreamDescriptor,
    MediaStreamMessage,
    PixelFormat,
    SharedMemoryBufferTransferProperties,
)
from avaproto.protocol.video_format import VideoFormat
from avaproto.server import running
from avaproto.status import Status
from avaproto.transport.grpc_server import ServerConfig
from tests.transport.test_grpc import _RawCodec
from tests.transport.test_grpc_shm import shm_fds

pytestmark = pytest.mark.anyio
TIMEOUT = 30
SHM = Path("/dev/shm")
FORMAT = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 64, 48)
FRAME = FORMAT.frame_bytes
SEGMENT = 4 * FRAME


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib runs on asyncio


def picture(value: int) -> bytes:
    """A frame whose bytes sum to a known total: ``value`` everywhere but one byte."""
    return bytes([value % 256]) * (FRAME - 1) + bytes([(value * 7) % 256])


def total(data: bytes | memoryview) -> int:
    return int(np.frombuffer(data, np.uint8).sum(dtype=np.uint64))


def summed(frame: Frame) -> list[Inference]:
    """Reads every byte of the frame, as any model does."""
    assert frame.data is not None
    return [Inference(subtype=str(total(frame.data)))]


# --- a pipeline that shrinks its own segment -------------------------------------------


class ShrinkingPipeline:
    """A third-party pipeline's segment and stream: frames go in with pwrite, no mapping."""

    def __init__(self, name: str, fd: int, stream: Any) -> None:
        self.name = name
        self.fd = fd
        self.stream = stream

    async def send(
        self,
        number: int,
        offset: int,
        frame: bytes,
        *,
        last: bool = False,
        then_shrink_to: int | None = None,
    ) -> None:
        """Write ``frame`` at ``offset`` and refer to it; ``last`` ends our input with it.

        ``then_shrink_to``: shrink the file after writing the frame, before sending.
        """
        os.pwrite(self.fd, frame, offset)  # extends the file again if it was shrunk below
        if then_shrink_to is not None:
            self.shrink(then_shrink_to)
        message = MediaStreamMessage(
            sequence_number=number,
            media_sample=MediaSample(
                timestamp=number,
                content_reference=ContentReference(address_offset=offset, length_bytes=len(frame)),
            ),
        )
        await self.stream.send_message(bytes(message), end=last)

    async def answer(self) -> MediaStreamMessage:
        data = await self.stream.recv_message()
        assert data is not None, "the extension ended the stream without a status"
        return MediaStreamMessage.parse(data)

    def shrink(self, size: int) -> None:
        os.ftruncate(self.fd, size)


@contextmanager
def pipeline_segment() -> Iterator[tuple[str, int]]:
    name = f"avaproto-test-{os.getpid()}-{secrets.token_hex(6)}"
    path = SHM / name
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, SEGMENT)
        yield name, fd
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


@asynccontextmanager
async def shrinking_pipeline(port: int, name: str, fd: int) -> AsyncIterator[ShrinkingPipeline]:
    """Negotiated: the descriptor is sent and answered."""
    descriptor = MediaStreamDescriptor(
        graph_identifier=GraphIdentifier(graph_instance_name="shrinks", graph_node_name="g"),
        media_descriptor=MediaDescriptor(
            timescale=90000, video_frame_sample_format=FORMAT.to_message()
        ),
        shared_memory_buffer_transfer_properties=SharedMemoryBufferTransferProperties(
            handle_name=name, length_bytes=SEGMENT
        ),
    )
    channel = grpclib.client.Channel("127.0.0.1", port, codec=_RawCodec())  # type: ignore[arg-type]
    try:
        async with channel.request(
            METHOD_PATH, grpclib.const.Cardinality.STREAM_STREAM, bytes, bytes
        ) as stream:
            await stream.send_request()
            await stream.send_message(
                bytes(MediaStreamMessage(sequence_number=1, media_stream_descriptor=descriptor))
            )
            pipeline = ShrinkingPipeline(name, fd, stream)
            answer = await pipeline.answer()
            assert answer.media_stream_descriptor is not None
            yield pipeline
    finally:
        channel.close()


async def ended(pipeline: ShrinkingPipeline) -> None:
    """Wait until the extension ends the stream without another answer.

    Its status comes in the trailers and is raised as ``GRPCError`` on leaving the
    ``shrinking_pipeline`` block.
    """
    with contextlib.suppress(grpclib.exceptions.StreamTerminatedError):
        assert await pipeline.stream.recv_message() is None


class HealthyPipeline:
    """avaproto's own client on the same server: its stream must not notice the other."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.halfway = anyio.Event()
        self.go_on = anyio.Event()
        self.results: list[tuple[int | None, str]] = []

    async def run(self, count: int = 6) -> None:
        async with connect(
            f"127.0.0.1:{self.port}", format=FORMAT, transfer="shm", shm_bytes=SEGMENT, window=1
        ) as pipe:
            results = pipe.results()
            for number in range(count):
                if number == count // 2:
                    self.halfway.set()
                    await self.go_on.wait()
                await pipe.send(picture(100 + number), timestamp=number)
                result = await results.receive()
                self.results.append((result.acknowledged, result.inferences[0].subtype))
            await pipe.end()

    def expected(self, count: int = 6) -> list[tuple[int | None, str]]:
        return [(number + 2, str(total(picture(100 + number)))) for number in range(count)]


# --- the pipeline shrinks its own segment ----------------------------------------------


@pytest.mark.rule("SHM-15")
@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_segment_shrunk_before_the_processor_reads_ends_only_its_stream(
    kind: str,
) -> None:
    """The shrink falls between the sample's size check and the processor's read: the
    race a mapping cannot survive. Read access turns it into a short read and SHM-15."""
    entered = anyio.Event()
    shrunk, shrunk_in_thread = anyio.Event(), threading.Event()

    with pipeline_segment() as (name, fd):

        def gated(frame: Frame) -> bool:
            shm = frame.descriptor.shared_memory
            return shm is not None and shm.handle_name == name and frame.sequence_number == 3

        async def async_processor(frame: Frame) -> list[Inference]:
            if gated(frame):
                entered.set()
                await shrunk.wait()
            return summed(frame)

        def sync_processor(frame: Frame) -> list[Inference]:
            if gated(frame):
                anyio.from_thread.run_sync(entered.set)
                assert shrunk_in_thread.wait(TIMEOUT)
            return summed(frame)  # frame.data is read in the worker thread

        processor = async_processor if kind == "async" else sync_processor
        with anyio.fail_after(TIMEOUT):
            async with running(processor, ServerConfig(port=0), grace=2) as server:
                healthy = HealthyPipeline(server.port)
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(healthy.run)
                    await healthy.halfway.wait()  # a healthy stream is open alongside
                    with pytest.raises(grpclib.exceptions.GRPCError) as refused:
                        async with shrinking_pipeline(server.port, name, fd) as pipeline:
                            await pipeline.send(2, 0, picture(2))
                            answer = await pipeline.answer()
                            assert answer.ack_sequence_number == 2
                            assert answer.media_sample is not None
                            assert answer.media_sample.inferences[0].subtype == str(
                                total(picture(2))
                            )
                            await pipeline.send(3, FRAME, picture(3), last=True)
                            await entered.wait()  # the sample's lease exists: its size was fine
                            pipeline.shrink(FRAME + 100)  # now inside sample 3's bytes
                            shrunk.set()
                            shrunk_in_thread.set()
                            await ended(pipeline)
                    healthy.go_on.set()  # the same server goes on serving the other stream
                # And a new stream, after it all.
                later = HealthyPipeline(server.port)
                later.go_on.set()
                await later.run()
    error = refused.value
    assert error.status is grpclib.const.Status.FAILED_PRECONDITION
    assert (error.message or "").startswith("[SHM-15] ")
    assert f"{SHM}/{name} has {FRAME + 100} bytes now" in (error.message or "")
    assert f"sample 3's bytes [{FRAME}, {2 * FRAME})" in (error.message or "")
    assert healthy.results == healthy.expected()
    assert later.results == later.expected()


@pytest.mark.rule("SHM-15")
@pytest.mark.parametrize("access", ["map"])
async def test_a_segment_shrunk_before_the_sample_is_refused_when_it_arrives(
    access: str,
) -> None:
    """With mapped access, caught by the size check at the sample's arrival. The bytes
    the sample refers to still lie inside the shrunk file: a processor reading them
    cannot fault, so only the check can report the shrink. (Read access checks each
    read instead, and these bytes read whole.)"""
    config = ServerConfig(port=0, engine=EngineConfig(shm_access=access))  # type: ignore[arg-type]
    with pipeline_segment() as (name, fd), anyio.fail_after(TIMEOUT):
        async with running(summed, config, grace=2) as server:
            healthy = HealthyPipeline(server.port)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(healthy.run)
                await healthy.halfway.wait()
                with pytest.raises(grpclib.exceptions.GRPCError) as refused:
                    async with shrinking_pipeline(server.port, name, fd) as pipeline:
                        await pipeline.send(2, 0, picture(2))
                        assert (await pipeline.answer()).ack_sequence_number == 2
                        pipeline.shrink(0)
                        await pipeline.send(
                            3, 0, picture(3), last=True
                        )  # the file is FRAME bytes again
                        await ended(pipeline)
                healthy.go_on.set()
            await server.service.wait_idle()
            assert server.service.active == 0
    error = refused.value
    assert error.status is grpclib.const.Status.FAILED_PRECONDITION
    message = error.message or ""
    assert message.startswith("[SHM-15] ") and f"has {FRAME} bytes now" in message
    assert f"the {SEGMENT} bytes its descriptor announced, as sample 3 arrived" in message
    assert healthy.results == healthy.expected()


# --- the extension shrinks the pipeline's segment ---------------------------------------


@pytest.mark.rule("SHM-15", "SHM-9")
async def test_an_extension_that_shrinks_the_pipelines_segment_ends_only_that_stream() -> None:
    fds_before = shm_fds()
    handles: list[str] = []

    def shrinking(frame: Frame) -> list[Inference]:
        shm = frame.descriptor.shared_memory
        assert shm is not None
        answer = summed(frame)  # read first: the shrink is the pipeline's problem here
        if not handles:
            handles.append(shm.handle_name)
            fd = os.open(SHM / shm.handle_name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, 0)  # a broken extension on the same host
            finally:
                os.close(fd)
        return answer

    with anyio.fail_after(TIMEOUT):
        async with running(shrinking, ServerConfig(port=0), grace=2) as server:
            with pytest.raises(ProtocolError) as caught:
                async with connect(
                    f"127.0.0.1:{server.port}",
                    format=FORMAT,
                    transfer="shm",
                    shm_bytes=SEGMENT,
                    window=1,
                ) as pipe:
                    results = pipe.results()
                    for number in range(4):
                        await pipe.send(picture(number), timestamp=number)
                        await results.receive()
            # The server and this process live on: another stream completes.
            later = HealthyPipeline(server.port)
            later.go_on.set()
            await later.run()
            await server.service.wait_idle()
    assert (caught.value.rule, caught.value.status) == ("SHM-15", Status.FAILED_PRECONDITION)
    assert f"{SHM}/{handles[0]} has 0 bytes, fewer than the {SEGMENT}" in str(caught.value)
    assert "the extension shrank the pipeline's segment" in str(caught.value)
    assert not (SHM / handles[0]).exists()  # unlinked all the same
    assert later.results == later.expected()
    assert shm_fds() == fds_before


# --- avaproto serve with the motion extension, in a process of its own -----------------


class ServeProcess:
    """``avaproto serve`` on a free port; its log read as it comes, by one joined thread."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "avaproto", "serve", "--port", "0", *args],
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read)
        self._reader.start()
        found = re.search(r"on 127\.0\.0\.1:(\d+)", self.wait_for("serving "))
        assert found is not None
        self.port = int(found.group(1))

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # the end, for whoever waits
            self._changed.notify_all()

    def wait_for(self, text: str) -> str:
        deadline = time.monotonic() + TIMEOUT
        with self._changed:
            while True:
                found = next((line for line in self.lines if text in line), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                ended = self.process.poll() is not None and self.lines[-1:] == [""]
                assert not ended and left > 0, f"no {text!r} in: {self.lines}"
                self._changed.wait(left)

    def mappings_of(self, path: Path) -> int:
        with open(f"/proc/{self.process.pid}/maps", encoding="utf-8") as maps:
            return sum(1 for line in maps if line.rstrip().endswith(str(path)))

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=TIMEOUT)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(TIMEOUT)
            self._reader.join(TIMEOUT)


@pytest.mark.rule("SHM-15")
@pytest.mark.parametrize("access", ["read", "map"])
async def test_serve_with_motion_outlives_a_pipeline_that_shrinks_its_segment(
    access: str,
) -> None:
    server = await anyio.to_thread.run_sync(
        lambda: ServeProcess("--extension", "motion", "--shm-access", access)
    )
    try:
        with pipeline_segment() as (name, fd), anyio.fail_after(TIMEOUT):
            with pytest.raises(grpclib.exceptions.GRPCError) as refused:
                async with shrinking_pipeline(server.port, name, fd) as pipeline:
                    await pipeline.send(2, 0, picture(2))
                    assert (await pipeline.answer()).ack_sequence_number == 2
                    # Read access never maps the segment; map access does.
                    assert server.mappings_of(SHM / name) == (1 if access == "map" else 0)
                    # Map access checks the size as the sample arrives; read access
                    # checks the read, which comes up short.
                    await pipeline.send(3, 0, picture(3), last=True, then_shrink_to=FRAME // 2)
                    await ended(pipeline)
            assert server.process.poll() is None  # alive: no SIGBUS
            async with connect(
                f"127.0.0.1:{server.port}", format=FORMAT, transfer="shm", shm_bytes=SEGMENT
            ) as pipe:
                for number in range(3):
                    await pipe.send(picture(number), timestamp=number)
                await pipe.end()
                answered = [result.acknowledged async for result in pipe.results()]
    finally:
        code = await anyio.to_thread.run_sync(server.stop)
    error = refused.value
    assert error.status is grpclib.const.Status.FAILED_PRECONDITION
    assert (error.message or "").startswith("[SHM-15] ")
    assert answered == [2, 3, 4]
    assert code == 0, server.lines
    assert any("[SHM-15]" in line for line in server.lines), server.lines
