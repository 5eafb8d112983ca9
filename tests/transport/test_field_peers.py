"""avaproto against peers that behave as widely used pipelines and extensions do.

Each peer here is built from the generated stubs (``MediaGraphExtensionStub`` and
``MediaGraphExtensionBase``) and reproduces one behaviour seen in the field, over real
HTTP/2 on a loopback port and, where it matters, a real segment under /dev/shm:

* a pipeline whose shared-memory allocator computes closed intervals wrongly (every
  slot after the first starts on the previous slot's last byte, one byte longer);
* an extension that never numbers its answers (each is 0) but acknowledges correctly;
* an extension that silently drops frames (never acknowledges them);
* an extension that never answers the descriptor, and a server that never finishes a
  TLS handshake.

The peers are stand-ins for third-party programs that cannot run here; everything on
avaproto's side is the real server, client and CLI core.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import grpclib.client
import grpclib.const
import grpclib.encoding.base
import grpclib.server
import pytest
import trustme

from avaproto.client import connect
from avaproto.engine import drive as pipeline_stream
from avaproto.engine.drive import Result
from avaproto.engine.frame import Frame
from avaproto.errors import ProtocolError
from avaproto.messages import (
    METHOD_PATH,
    ContentBytes,
    ContentReference,
    Encoding,
    GraphIdentifier,
    Inference,
    InferenceType,
    MediaDescriptor,
    MediaGraphExtensionBase,
    MediaGraphExtensionStub,
    MediaSample,
    MediaStreamDescriptor,
    MediaStreamMessage,
    PixelFormat,
    SharedMemoryBufferTransferProperties,
)
from avaproto.protocol.video_format import VideoFormat
from avaproto.report import Report
from avaproto.send import SendOptions, send_frames
from avaproto.server import running
from avaproto.sources import SourceFrame
from avaproto.status import Status
from avaproto.transport.grpc_server import ServerConfig
from avaproto.transport.tls import client_context

pytestmark = pytest.mark.anyio
TIMEOUT = 30
WIDTH, HEIGHT = 16, 8
FRAME = WIDTH * HEIGHT * 3
RGB24 = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, WIDTH, HEIGHT)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib runs on asyncio


@asynccontextmanager
async def extension_peer(service: MediaGraphExtensionBase) -> AsyncIterator[int]:
    """A third-party extension: the generated base class served by plain grpclib."""
    server = grpclib.server.Server([service])
    await server.start("127.0.0.1", 0)
    try:
        assert server._server is not None
        yield int(server._server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


def source(count: int) -> list[SourceFrame]:
    import numpy as np

    return [
        SourceFrame(rgb=np.full((HEIGHT, WIDTH, 3), i, dtype=np.uint8), pts=i / 30)
        for i in range(count)
    ]


def options(port: int, transfer: str = "embedded", **more: Any) -> SendOptions:
    """``send``'s options for the peer on ``port``: RGB24 frames, embedded or in a
    segment of 1 MiB."""
    return SendOptions(
        target=f"127.0.0.1:{port}",
        format=RGB24,
        transfer=transfer,  # type: ignore[arg-type]
        shm_bytes=1 << 20,
        **more,
    )


async def sent_to(
    peer: MediaGraphExtensionBase,
    frames: int,
    transfer: str = "embedded",
    *,
    timeout: float = TIMEOUT,
    **more: Any,
) -> Report:
    """``send`` of ``frames`` frames to ``peer``, served on a port of its own; within
    ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        async with extension_peer(peer) as port:
            return await send_frames(source(frames), options(port, transfer, **more))


def answer_descriptor(number: int = 1, ack: int = 1) -> MediaStreamMessage:
    """What the published sample extension answers: no identifier, timescale only."""
    return MediaStreamMessage(
        sequence_number=number,
        ack_sequence_number=ack,
        media_stream_descriptor=MediaStreamDescriptor(
            media_descriptor=MediaDescriptor(timescale=90000)
        ),
    )


# --- an extension that numbers every answer 0 ------------------------------------------


class UnnumberedAnswers(MediaGraphExtensionBase):
    """Acknowledges every sample with an answer whose sequence_number is never set."""

    async def process_media_stream(
        self, messages: AsyncIterator[MediaStreamMessage]
    ) -> AsyncIterator[MediaStreamMessage]:
        first = True
        async for message in messages:
            if first:
                first = False
                yield answer_descriptor(ack=message.sequence_number)
                continue
            yield MediaStreamMessage(
                ack_sequence_number=message.sequence_number,
                media_sample=MediaSample(
                    timestamp=message.media_sample.timestamp if message.media_sample else 0,
                    inferences=[Inference(subtype="seen")],
                ),
            )


@pytest.mark.rule("SEQ-4")
@pytest.mark.parametrize("transfer", ["embedded", "shm"])
async def test_send_completes_against_answers_numbered_zero(
    transfer: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="avaproto")
    with anyio.fail_after(TIMEOUT):
        async with extension_peer(UnnumberedAnswers()) as port:
            report = await send_frames(source(12), options(port, transfer))
    assert (report.sent, report.answered) == (12, 12)
    assert report.by_type["auto"] == 12 or sum(report.by_type.values()) == 12
    assert report.tolerated == {"SEQ-4": 12}
    assert any("SEQ-4" in line for line in report.lines())
    warnings = [r.getMessage() for r in caplog.records if "SEQ-4" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per stream
    assert f"127.0.0.1:{port}" in warnings[0]


class UnnumberedDescriptor(MediaGraphExtensionBase):
    """Microsoft's published C# extension: its descriptor is ``new MediaStreamMessage {
    MediaStreamDescriptor = ... }`` (numbered 0, acknowledging nothing); its answers are
    numbered from 1 and acknowledge each sample."""

    async def process_media_stream(
        self, messages: AsyncIterator[MediaStreamMessage]
    ) -> AsyncIterator[MediaStreamMessage]:
        number = 0
        async for message in messages:
            if message.media_stream_descriptor is not None:
                yield answer_descriptor(number=0, ack=0)
                continue
            number += 1
            yield MediaStreamMessage(
                sequence_number=number,
                ack_sequence_number=message.sequence_number,
                media_sample=MediaSample(inferences=[Inference(subtype="seen")]),
            )


@pytest.mark.rule("SEQ-4")
async def test_send_completes_against_an_unnumbered_answer_descriptor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="avaproto")
    with anyio.fail_after(TIMEOUT):
        async with extension_peer(UnnumberedDescriptor()) as port:
            report = await send_frames(
                source(5), SendOptions(target=f"127.0.0.1:{port}", format=RGB24)
            )
    assert (report.sent, report.answered) == (5, 5)
    assert report.tolerated == {"SEQ-4": 1}
    warnings = [r.getMessage() for r in caplog.records if "SEQ-4" in r.getMessage()]
    assert len(warnings) == 1, warnings


@pytest.mark.rule("PIPE-1")
async def test_each_result_carries_the_timestamp_its_frame_was_sent_with() -> None:
    """Microsoft's C# and Python samples answer without a timestamp (0): a result, and
    the line ``send --output`` writes for it, are filed under the frame's own."""
    results: list[Result] = []
    with anyio.fail_after(TIMEOUT):
        async with extension_peer(UnnumberedDescriptor()) as port:
            await send_frames(
                source(4),
                SendOptions(target=f"127.0.0.1:{port}", format=RGB24),
                on_result=results.append,
            )
    assert [r.timestamp for r in results] == [0] * 4  # as the extension answered
    assert [r.sample_timestamp for r in results] == [0, 3000, 6000, 9000]  # 1/30 s apart


# --- an extension that answers a sample only when the next arrives ------------------------


class HoldsLatestAnswer(MediaGraphExtensionBase):
    """Intel DL Streamer's extension server (``samples/ava_ai_extension/server/
    media_graph_extension.py``): inside ``for request in request_iterator`` it yields
    only the answers its pipeline finished, and with its default input queue of 1 the
    answer to the latest request is yielded when the next request arrives, or after
    the requests end. Its answers are numbered 0."""

    def __init__(self) -> None:
        self.drops = False  # also a broken one: never answers anything

    async def process_media_stream(
        self, messages: AsyncIterator[MediaStreamMessage]
    ) -> AsyncIterator[MediaStreamMessage]:
        held: int | None = None
        async for message in messages:
            if message.media_stream_descriptor is not None:
                yield answer_descriptor(number=0, ack=message.sequence_number)
                continue
            if held is not None and not self.drops:
                yield MediaStreamMessage(ack_sequence_number=held)
            held = message.sequence_number
        if held is not None and not self.drops:
            yield MediaStreamMessage(ack_sequence_number=held)


@pytest.mark.rule("PIPE-4")
async def test_send_paced_slower_than_the_deadline_waits_for_answers_held_until_the_next() -> None:
    """Each answer comes 0.5 s after its frame, when the next goes: past an ack_timeout
    of 0.3 s, which counts from then (nothing sent after a frame is no fault yet)."""
    with anyio.fail_after(TIMEOUT):
        async with extension_peer(HoldsLatestAnswer()) as port:
            report = await send_frames(
                source(3),
                SendOptions(target=f"127.0.0.1:{port}", format=RGB24, rate=2.0, ack_timeout=0.3),
            )
    assert (report.sent, report.answered) == (3, 3)
    assert "PIPE-2" not in report.tolerated


async def silent_holder_ends(frames: int, **more: Any) -> ProtocolError:
    """What ``send`` fails with against that extension broken: it answers nothing."""
    peer = HoldsLatestAnswer()
    peer.drops = True
    with anyio.fail_after(TIMEOUT):
        async with extension_peer(peer) as port:
            with pytest.raises(ProtocolError) as caught:
                await send_frames(source(frames), options(port, **more))
    return caught.value


@pytest.mark.rule("PIPE-4")
async def test_a_paced_extension_that_answers_nothing_still_fails_one_frame_later() -> None:
    error = await silent_holder_ends(5, rate=2.0, ack_timeout=0.3)
    assert error.rule == "PIPE-4"
    assert "sample 2 was not acknowledged within 0.3 s" in str(error)


@pytest.mark.rule("PIPE-2")
@pytest.mark.parametrize("transfer", ["embedded", "shm"])
async def test_a_window_of_one_sends_one_more_to_an_extension_that_holds_its_answer(
    transfer: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="avaproto")
    # one more after 0.3 s
    report = await sent_to(HoldsLatestAnswer(), 6, transfer, window=1, ack_timeout=0.6)
    assert (report.sent, report.answered) == (6, 6)
    assert report.tolerated.get("PIPE-2") == 1
    warnings = [r.getMessage() for r in caplog.records if "PIPE-2" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert (
        "sample 2, the oldest of 1 in flight, was not acknowledged and no answer came for "
        "0.3 s; one more goes beyond the window of 1" in warnings[0]
    )


@pytest.mark.rule("PIPE-2")
async def test_a_window_of_one_goes_beyond_itself_once_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An extension that answers nothing gets one sample beyond the window, then the
    deadline ends the stream: two in flight, never more, though the wait before going
    beyond passes five times before the deadline."""
    monkeypatch.setattr(pipeline_stream, "HELD_ANSWER_WAIT", 0.1)
    error = await silent_holder_ends(6, window=1, ack_timeout=0.6)
    assert error.rule == "PIPE-4"
    assert "sample 2 was not acknowledged within 0.6 s (2 unacknowledged)" in str(error)


class DrainsOnArrival(MediaGraphExtensionBase):
    """Intel VA Serving's first extension server (``VAServingServer``): each request goes
    into an asynchronous pipeline, and the answers it finished are handed out only when
    a request arrives, the rest once the requests end. Its answers are numbered 0."""

    async def process_media_stream(
        self, messages: AsyncIterator[MediaStreamMessage]
    ) -> AsyncIterator[MediaStreamMessage]:
        finished: list[int] = []

        async def pipeline(number: int) -> None:
            await anyio.sleep(0.02)
            finished.append(number)

        async with anyio.create_task_group() as tasks:
            async for message in messages:
                if message.media_stream_descriptor is not None:
                    yield answer_descriptor(number=0, ack=message.sequence_number)
                    continue
                tasks.start_soon(pipeline, message.sequence_number)
                while finished:
                    yield MediaStreamMessage(ack_sequence_number=finished.pop(0))
        while finished:
            yield MediaStreamMessage(ack_sequence_number=finished.pop(0))


@pytest.mark.rule("PIPE-2")
@pytest.mark.parametrize("window", [1, 4])
async def test_the_window_goes_beyond_itself_for_an_extension_that_answers_on_arrival(
    window: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Sent as fast as the window allows, every sample arrives before the one before it
    is finished, so a full window of finished answers waits for a request that would
    never come: one sample beyond the window brings them, each time it fills."""
    caplog.set_level(logging.WARNING, logger="avaproto")
    report = await sent_to(DrainsOnArrival(), 12, window=window, ack_timeout=0.4)
    assert (report.sent, report.answered) == (12, 12)
    assert report.tolerated["PIPE-2"] >= 2  # the window widened, then lent one more
    warnings = [r.getMessage() for r in caplog.records if "PIPE-2" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"one more goes beyond the window of {window}, and again" in warnings[0]


@pytest.mark.rule("PIPE-2")
async def test_each_wait_before_going_beyond_the_window_is_as_short_as_the_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the first sample beyond the window, the next ones waited for the oldest
    sample's deadline (30 s each) instead of the wait before going beyond."""
    monkeypatch.setattr(pipeline_stream, "HELD_ANSWER_WAIT", 0.1)
    # several waits of 0.1 s within 5 s; one wait of the deadline is 30 s
    report = await sent_to(DrainsOnArrival(), 24, timeout=5, window=4, ack_timeout=30)
    assert (report.sent, report.answered) == (24, 24)
    assert report.tolerated["PIPE-2"] >= 3


# --- an extension that never acknowledges ------------------------------------------------


class DropsFrames(MediaGraphExtensionBase):
    """Answers the descriptor, then swallows every frame (its handler fails silently)."""

    def __init__(self) -> None:
        self.received = 0

    async def process_media_stream(
        self, messages: AsyncIterator[MediaStreamMessage]
    ) -> AsyncIterator[MediaStreamMessage]:
        async for message in messages:
            if message.media_stream_descriptor is not None:
                yield answer_descriptor(ack=message.sequence_number)
            else:
                self.received += 1


def shm_listing(directory: Path) -> list[str]:
    """This process's segments (other processes may make and remove theirs meanwhile)."""
    return sorted(n for n in os.listdir(directory) if n.startswith(f"avaproto-{os.getpid()}-"))


@pytest.mark.rule("PIPE-4")
@pytest.mark.parametrize("transfer", ["embedded", "shm"])
async def test_send_fails_instead_of_hanging_when_nothing_is_acknowledged(
    transfer: str, tmp_path: Path
) -> None:
    shm_dir = Path("/dev/shm")
    before = shm_listing(shm_dir)
    peer = DropsFrames()
    report = Report()
    with anyio.fail_after(TIMEOUT):
        async with extension_peer(peer) as port:
            with pytest.raises(ProtocolError) as caught:
                await send_frames(
                    source(50),
                    options(port, transfer, window=4, ack_timeout=0.5),
                    report=report,
                )
    error = caught.value
    assert (error.rule, error.status) == ("PIPE-4", Status.DEADLINE_EXCEEDED)
    assert "sample 2 was not acknowledged within 0.5 s" in str(error)
    # the window's 4, and one beyond it in case the extension holds its answers (PIPE-2)
    assert "5 unacknowledged" in str(error)
    assert report.sent == 5 and report.answered == 0
    assert report.seconds > 0
    assert shm_listing(shm_dir) == before  # the segment is unlinked


@pytest.mark.rule("PIPE-4")
async def test_answers_received_before_the_deadline_are_kept() -> None:
    class AnswersThree(MediaGraphExtensionBase):
        async def process_media_stream(
            self, messages: AsyncIterator[MediaStreamMessage]
        ) -> AsyncIterator[MediaStreamMessage]:
            number = 0
            async for message in messages:
                number += 1
                if message.media_stream_descriptor is not None:
                    yield answer_descriptor(number, message.sequence_number)
                elif message.sequence_number <= 4:  # samples 2, 3, 4
                    yield MediaStreamMessage(
                        sequence_number=number, ack_sequence_number=message.sequence_number
                    )
            await anyio.sleep_forever()  # and keeps its stream open

    seen: list[int | None] = []
    with anyio.fail_after(TIMEOUT):
        async with extension_peer(AnswersThree()) as port:
            with pytest.raises(ProtocolError) as caught:
                await send_frames(
                    source(10),
                    SendOptions(target=f"127.0.0.1:{port}", format=RGB24, ack_timeout=0.5),
                    on_result=lambda result: seen.append(result.acknowledged),
                )
    assert caught.value.rule == "PIPE-4"
    assert "sample 5 " in str(caught.value)
    assert seen == [2, 3, 4]


@pytest.mark.rule("PIPE-4")
async def test_an_extension_that_never_ends_its_stream_is_not_waited_for_forever() -> None:
    class NeverEnds(MediaGraphExtensionBase):
        async def process_media_stream(
            self, messages: AsyncIterator[MediaStreamMessage]
        ) -> AsyncIterator[MediaStreamMessage]:
            number = 0
            async for message in messages:
                number += 1
                yield (
                    answer_descriptor(number, message.sequence_number)
                    if message.media_stream_descriptor is not None
                    else MediaStreamMessage(
                        sequence_number=number, ack_sequence_number=message.sequence_number
                    )
                )
            await anyio.sleep_forever()

    with anyio.fail_after(TIMEOUT):
        async with extension_peer(NeverEnds()) as port:
            with pytest.raises(ProtocolError) as caught:
                await send_frames(
                    source(3),
                    SendOptions(target=f"127.0.0.1:{port}", format=RGB24, ack_timeout=0.5),
                )
    assert caught.value.rule == "PIPE-4"
    assert "did not end its stream" in str(caught.value)


# --- an extension that never answers the descriptor, a server that never handshakes --


class Silent(MediaGraphExtensionBase):
    async def process_media_stream(
        self, messages: AsyncIterator[MediaStreamMessage]
    ) -> AsyncIterator[MediaStreamMessage]:
        async for _ in messages:
            pass
        return
        yield  # an async generator that yields nothing


class EndsAtOnce(MediaGraphExtensionBase):
    """Ends the call with OK before answering anything: a "trailers-only" response."""

    async def process_media_stream(
        self, messages: AsyncIterator[MediaStreamMessage]
    ) -> AsyncIterator[MediaStreamMessage]:
        return
        yield  # an async generator that yields nothing


@pytest.mark.rule("DESC-5")
async def test_an_extension_that_ends_at_once_is_refused_at_once() -> None:
    """Its status arrives with its headers and no trailers follow: not a wait for the
    descriptor deadline, but the violation, as soon as the stream ends."""
    with anyio.fail_after(TIMEOUT):
        async with extension_peer(EndsAtOnce()) as port:
            with pytest.raises(ProtocolError) as caught:
                async with connect(
                    f"127.0.0.1:{port}", format=RGB24, descriptor_timeout=TIMEOUT / 2
                ):
                    pass
    assert caught.value.rule == "DESC-5", caught.value


@pytest.mark.rule("DESC-5")
async def test_a_grpcio_extension_that_ends_at_once_is_refused_for_what_it_lacked() -> None:
    """grpcio's server ends such a call with OK in its headers, then resets the stream
    the pipeline still sends on (RST_STREAM NO_ERROR): the pipeline reports the
    descriptor it never got, not a lost connection."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from bench.official import METHOD, SERVICE

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    ends = grpc.stream_stream_rpc_method_handler(lambda requests, context: iter(()))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {METHOD: ends})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with anyio.fail_after(TIMEOUT), pytest.raises(ProtocolError) as caught:
            async with connect(f"127.0.0.1:{port}", format=RGB24, descriptor_timeout=TIMEOUT / 2):
                pass
    finally:
        server.stop(grace=None)
    assert caught.value.rule == "DESC-5", caught.value
    assert "without answering our descriptor" in str(caught.value)


@pytest.mark.rule("DESC-5")
async def test_an_end_that_comes_with_the_extensions_settings_is_read_as_said() -> None:
    """The same end, its SETTINGS, status and reset in one read (as a busy machine
    delivers grpcio's): the wait for the SETTINGS ended with the reset, and the
    pipeline said "connection lost"."""
    import h2.config
    import h2.connection
    import h2.events

    from tests.transport.test_goaway import _listening

    async def at_once(client: anyio.abc.SocketStream) -> None:
        machine = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        machine.initiate_connection()  # its SETTINGS, held back until the call came
        async with client:
            with anyio.fail_after(TIMEOUT):
                while True:
                    events = machine.receive_data(await client.receive())
                    opened = [e for e in events if isinstance(e, h2.events.RequestReceived)]
                    if opened:
                        break
            [call] = opened
            ended = [(":status", "200"), ("content-type", "application/grpc")]
            machine.send_headers(call.stream_id, [*ended, ("grpc-status", "0")], end_stream=True)
            machine.reset_stream(call.stream_id)  # NO_ERROR: our direction is not read
            await client.send(machine.data_to_send())
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while await client.receive():  # until the pipeline goes
                    pass

    async with _listening(at_once) as port:
        with anyio.fail_after(TIMEOUT), pytest.raises(ProtocolError) as caught:
            async with connect(f"127.0.0.1:{port}", format=RGB24, descriptor_timeout=TIMEOUT / 2):
                pass
    assert caught.value.rule == "DESC-5", caught.value
    assert "without answering our descriptor" in str(caught.value)


@pytest.mark.rule("PIPE-3")
async def test_no_answer_descriptor_ends_the_stream_at_its_deadline() -> None:
    before = shm_listing(Path("/dev/shm"))
    with anyio.fail_after(TIMEOUT):
        async with extension_peer(Silent()) as port:
            with pytest.raises(ProtocolError) as caught:
                async with connect(
                    f"127.0.0.1:{port}",
                    format=RGB24,
                    transfer="shm",
                    shm_bytes=1 << 20,
                    descriptor_timeout=0.3,
                ):
                    pass
    assert (caught.value.rule, caught.value.status) == ("PIPE-3", Status.DEADLINE_EXCEEDED)
    assert "did not answer our descriptor within 0.3 s" in str(caught.value)
    assert shm_listing(Path("/dev/shm")) == before


@pytest.mark.rule("PIPE-3")
async def test_a_server_that_never_completes_the_handshake_times_out(tmp_path: Path) -> None:
    authority = trustme.CA()
    ca = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(ca)
    accepted: list[Any] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def hold(connection: Any) -> None:
        accepted.append(connection)  # never reads, never answers
        await anyio.sleep_forever()

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(listener.serve, hold)
            with pytest.raises(ProtocolError) as caught:
                async with connect(
                    f"127.0.0.1:{port}",
                    format=RGB24,
                    tls=client_context(ca=ca),
                    connect_timeout=0.3,
                ):
                    pass
            tasks.cancel_scope.cancel()
    assert (caught.value.rule, caught.value.status) == ("PIPE-3", Status.DEADLINE_EXCEEDED)
    said = f"could not connect to 127.0.0.1:{port}, TLS handshake included, within 0.3 s"
    assert said in str(caught.value)
    assert accepted


# --- a pipeline whose slots are one byte too long ----------------------------------------


class ClosedIntervalAllocator:
    """Hands out slots as a widely used pipeline client does: (previous end, end + size)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.end: int | None = None

    def next(self) -> tuple[int, int]:
        if self.end is None:
            self.end = self.size - 1
            return 0, self.size
        start = self.end
        self.end = start + self.size
        return start, self.end - start + 1


def referring(number: int, offset: int, length: int) -> MediaStreamMessage:
    """A pipeline's sample referring to [offset, offset + length) of its segment."""
    return MediaStreamMessage(
        sequence_number=number,
        media_sample=MediaSample(
            content_reference=ContentReference(address_offset=offset, length_bytes=length)
        ),
    )


@asynccontextmanager
async def field_segment(length: int) -> AsyncIterator[tuple[str, mmap.mmap]]:
    name = f"avaproto-test-{secrets.token_hex(6)}"
    path = Path("/dev/shm") / name
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, length)
        mapping = mmap.mmap(fd, length)
        try:
            yield name, mapping
        finally:
            mapping.close()
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


@asynccontextmanager
async def served_stub(processor: Any) -> AsyncIterator[MediaGraphExtensionStub]:
    """avaproto's server for ``processor``, and a field pipeline's stub on a channel to it."""
    async with running(processor, ServerConfig(port=0), grace=2) as server:
        channel = grpclib.client.Channel("127.0.0.1", server.port)
        try:
            yield MediaGraphExtensionStub(channel)
        finally:
            channel.close()


async def field_stream(
    processor: Any, descriptor: MediaStreamDescriptor, samples: list[MediaStreamMessage]
) -> list[MediaStreamMessage]:
    """A field pipeline's stream through avaproto's server: its descriptor numbered 1,
    then ``samples``; the answers it got."""
    answers: list[MediaStreamMessage] = []
    with anyio.fail_after(TIMEOUT):
        async with served_stub(processor) as stub:
            opening = MediaStreamMessage(sequence_number=1, media_stream_descriptor=descriptor)
            async for message in stub.process_media_stream([opening, *samples]):
                answers.append(message)
    return answers


def warned_once(caplog: pytest.LogCaptureFixture, rule: str) -> str:
    """The stream's closing line, once ``rule`` was warned of exactly once."""
    lines = [r.getMessage() for r in caplog.records]
    assert len([line for line in lines if f"[{rule}]" in line and "deviates" in line]) == 1
    return next(line for line in lines if line.startswith("stream closed"))


def field_descriptor(
    fmt: VideoFormat, segment: tuple[str, int] | None = None
) -> MediaStreamDescriptor:
    """A field pipeline's descriptor: ``fmt``, and its segment (name, length) if any."""
    return MediaStreamDescriptor(
        graph_identifier=GraphIdentifier(graph_instance_name="field", graph_node_name="g"),
        media_descriptor=MediaDescriptor(
            timescale=90000, video_frame_sample_format=fmt.to_message()
        ),
        shared_memory_buffer_transfer_properties=SharedMemoryBufferTransferProperties(
            handle_name=segment[0], length_bytes=segment[1]
        )
        if segment
        else None,
    )


@pytest.mark.rule("SHM-14", "SHM-8", "SHM-4")
@pytest.mark.parametrize("filled", [False, True], ids=["room-left", "segment-filled"])
async def test_serve_answers_a_pipeline_whose_references_are_one_byte_long(
    filled: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Once the segment has filled, the allocator's last slot ends with it, and its
    reference a byte past it (Intel's DL Streamer client, at about its 400th frame)."""
    caplog.set_level(logging.INFO, logger="avaproto")
    seen: list[bytes] = []

    def remember(frame: Frame) -> list[Inference]:
        seen.append(bytes(frame.data or b""))
        return [Inference(subtype=f"{len(frame.data or b'')}")]

    count = 6
    allocator = ClosedIntervalAllocator(FRAME)
    slots = [allocator.next() for _ in range(count)]
    last, length = slots[-1]
    async with field_segment(last + length - 1 if filled else FRAME * (count + 1)) as (
        name,
        mapping,
    ):
        descriptor = field_descriptor(RGB24, (name, len(mapping)))
        answers: list[MediaStreamMessage] = []
        answered, next_answer = anyio.create_memory_object_stream[None](count + 1)
        with anyio.fail_after(TIMEOUT):
            async with served_stub(remember) as stub:

                async def requests() -> AsyncIterator[MediaStreamMessage]:
                    yield MediaStreamMessage(sequence_number=1, media_stream_descriptor=descriptor)
                    for index, (offset, length) in enumerate(slots):
                        # One sample at a time, so the overlap is with a released slot.
                        mapping[offset : offset + FRAME] = bytes([index + 1]) * FRAME
                        yield referring(index + 2, offset, length)
                        await next_answer.receive()

                async for message in stub.process_media_stream(requests()):
                    answers.append(message)
                    if message.media_sample is not None:
                        answered.send_nowait(None)
    assert [a.ack_sequence_number for a in answers] == [1, *range(2, count + 2)]
    assert seen == [bytes([i + 1]) * FRAME for i in range(count)]
    assert f"SHM-14 x{count - 1}" in warned_once(caplog, "SHM-14")


@pytest.mark.rule("MEDIA-6")
@pytest.mark.parametrize("transfer", ["embedded", "shm"])
async def test_serve_reads_frames_whose_last_row_lacks_its_padding(
    transfer: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A pipeline that copies a padded image from its first pixel to its last.

    RGB24 5x3 with rows 16 bytes apart: a frame is 48 bytes, and 47 hold every pixel.
    """
    caplog.set_level(logging.INFO, logger="avaproto")
    width, height, stride = 5, 3, 16
    shortest = stride * (height - 1) + width * 3
    corners: list[tuple[int, ...]] = []

    def corner(frame: Frame) -> list[Inference]:
        image = frame.image
        corners.append(tuple(int(v) for v in image[-1, -1]))
        return []

    count = 3
    async with field_segment(stride * height * count) as (name, mapping):
        padded = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, width, height, stride)
        descriptor = field_descriptor(padded, (name, len(mapping)) if transfer == "shm" else None)

        def content(index: int) -> bytes:
            frame = bytearray(shortest)
            frame[-3:] = bytes([index, index + 1, index + 2])  # the last pixel
            return bytes(frame)

        def sample(index: int) -> MediaStreamMessage:
            if transfer == "embedded":
                return MediaStreamMessage(
                    sequence_number=index + 2,
                    media_sample=MediaSample(content_bytes=ContentBytes(bytes=content(index))),
                )
            offset = index * stride * height
            mapping[offset : offset + shortest] = content(index)
            return referring(index + 2, offset, shortest)

        answers = await field_stream(corner, descriptor, [sample(i) for i in range(count)])
    assert [a.ack_sequence_number for a in answers] == [1, *range(2, count + 2)]
    assert sorted(corners) == [(i, i + 1, i + 2) for i in range(count)]  # processed at once
    assert warned_once(caplog, "MEDIA-6").endswith(f"OK; tolerated MEDIA-6 x{count}")


@pytest.mark.rule("DESC-7")
async def test_serve_reads_empty_content_on_an_inferences_only_stream_as_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pipeline of inferences only whose runtime marks content_bytes present once it is
    assigned, empty or not (Google's protobuf for Python does)."""
    caplog.set_level(logging.INFO, logger="avaproto")
    seen: list[tuple[bool, int]] = []

    def look(frame: Frame) -> list[Inference]:
        seen.append((frame.data is None, len(frame.inferences)))
        return []

    descriptor = MediaStreamDescriptor(
        graph_identifier=GraphIdentifier(graph_instance_name="field", graph_node_name="g"),
        media_descriptor=MediaDescriptor(timescale=90000),
    )
    count = 3
    samples = [
        MediaStreamMessage(
            sequence_number=index + 2,
            media_sample=MediaSample(
                timestamp=index,
                content_bytes=ContentBytes(bytes=b""),
                inferences=[Inference(type=InferenceType.CLASSIFICATION, subtype="s")],
            ),
        )
        for index in range(count)
    ]
    answers = await field_stream(look, descriptor, samples)
    assert [a.ack_sequence_number for a in answers] == [1, *range(2, count + 2)]
    assert seen == [(True, 1)] * count
    assert warned_once(caplog, "DESC-7").endswith(f"OK; tolerated DESC-7 x{count}")


@pytest.mark.rule("SHM-8")
async def test_serve_warns_when_live_references_overlap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="avaproto")
    release = anyio.Event()
    entered = 0

    async def hold(frame: Frame) -> list[Inference]:
        nonlocal entered
        entered += 1
        if entered == 2:  # both samples are being processed: neither is acknowledged
            release.set()
        await release.wait()
        return []

    async with field_segment(FRAME * 4) as (name, mapping):
        descriptor = field_descriptor(RGB24, (name, len(mapping)))
        allocator = ClosedIntervalAllocator(FRAME)
        slots = [allocator.next() for _ in range(2)]
        answers: list[MediaStreamMessage] = []
        with anyio.fail_after(TIMEOUT):
            async with served_stub(hold) as stub:

                async def requests() -> AsyncIterator[MediaStreamMessage]:
                    yield MediaStreamMessage(sequence_number=1, media_stream_descriptor=descriptor)
                    for index, (offset, length) in enumerate(slots):  # both live at once
                        yield referring(index + 2, offset, length)
                    await release.wait()

                async for message in stub.process_media_stream(requests()):
                    answers.append(message)
    assert [a.ack_sequence_number for a in answers] == [1, 2, 3]
    [warning] = [r.getMessage() for r in caplog.records if "[SHM-8]" in r.getMessage()]
    assert "overlaps" in warning and "message 2" in warning


# --- an extension whose answers are malformed ---------------------------------------------


class RawCodec(grpclib.encoding.base.CodecBase):
    """Sends the bytes it is given: a peer that writes its own protobuf, right or wrong."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


@asynccontextmanager
async def raw_extension(answers: list[bytes]) -> AsyncIterator[int]:
    """Answers the descriptor properly, then sends ``answers`` as they are, one per sample."""

    async def handle(stream: Any) -> None:
        await stream.recv_message()  # the descriptor
        await stream.send_message(bytes(answer_descriptor()))
        for answer in answers:
            if await stream.recv_message() is None:
                return
            await stream.send_message(answer)
        async for _ in stream:
            pass

    class Raw:
        def __mapping__(self) -> dict[str, grpclib.const.Handler]:
            return {
                METHOD_PATH: grpclib.const.Handler(
                    handle, grpclib.const.Cardinality.STREAM_STREAM, bytes, bytes
                )
            }

    server = grpclib.server.Server([Raw()], codec=RawCodec())
    await server.start("127.0.0.1", 0)
    try:
        assert server._server is not None
        yield int(server._server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def drive(port: int, frames: int, **options: Any) -> Report:
    return await send_frames(
        source(frames),
        SendOptions(target=f"127.0.0.1:{port}", format=RGB24, ack_timeout=5, **options),
    )


def field(number: int, wire_type: int, payload: bytes | int) -> bytes:
    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    key = varint(number << 3 | wire_type)
    if wire_type == 0:
        assert isinstance(payload, int)
        return key + varint(payload)
    assert isinstance(payload, bytes)
    return key + varint(len(payload)) + payload


@pytest.mark.rule("PIPE-5", "WIRE-1")
async def test_two_members_of_one_oneof_the_last_wins() -> None:
    descriptor = bytes(MediaStreamDescriptor(extension_identifier="x"))
    sample = bytes(MediaSample(inferences=[Inference(subtype="last")]))
    answer = field(1, 0, 2) + field(2, 0, 2) + field(5, 2, descriptor) + field(6, 2, sample)
    with anyio.fail_after(TIMEOUT):
        async with raw_extension([answer]) as port:
            report = await drive(port, 1)
    assert (report.sent, report.answered) == (1, 1)


@pytest.mark.rule("PIPE-5", "WIRE-1")
@pytest.mark.parametrize(
    "answer",
    [
        field(1, 0, 2) + field(2, 0, 2) + bytes([6 << 3 | 2, 50]) + b"\x08",  # truncated oneof
        field(1, 0, 2) + field(2, 0, 2) + field(6, 0, 7),  # a oneof member as a varint
        field(1, 0, 2) + field(2, 2, b"2"),  # ack_sequence_number with the wrong wire type
        field(1, 0, 2) + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # overlong varint
        field(1, 0, 2) + field(6, 2, field(10, 2, field(7, 2, b"\x0a\x05ab"))),  # bad inference
    ],
    ids=["truncated", "wire-type", "ack-wire-type", "overlong-varint", "inner-truncated"],
)
async def test_malformed_answers_end_the_stream_with_wire_1(answer: bytes) -> None:
    with anyio.fail_after(TIMEOUT):
        async with raw_extension([answer]) as port:
            with pytest.raises(ProtocolError) as caught:
                await drive(port, 1)
    assert (caught.value.rule, caught.value.status) == ("WIRE-1", Status.INVALID_ARGUMENT)
    assert "malformed MediaStreamMessage" in str(caught.value)


@pytest.mark.rule("PIPE-5")
async def test_an_answer_over_the_limit_is_refused_before_it_is_read() -> None:
    huge = field(1, 0, 2) + field(2, 0, 2) + field(6, 2, field(10, 2, bytes(200_000)))
    with anyio.fail_after(TIMEOUT):
        async with raw_extension([huge]) as port:
            with pytest.raises(ProtocolError) as caught:
                async with connect(
                    f"127.0.0.1:{port}", format=RGB24, max_message_bytes=100_000
                ) as pipeline:
                    await pipeline.send(bytes(FRAME), timestamp=0)
                    async for _ in pipeline.results():
                        pass
    assert (caught.value.rule, caught.value.status) == ("PIPE-5", Status.RESOURCE_EXHAUSTED)
    assert "exceeds the limit of 100000 bytes" in str(caught.value)


# --- a dropped frame, whatever the caller waits on ---------------------------------------


@pytest.mark.rule("PIPE-4")
async def test_a_caller_that_reads_each_answer_before_sending_again_is_not_left_waiting() -> None:
    """Its latest sample's clock starts with no next send: at the latest one ack_timeout
    after its sending, so a dropped frame ends the stream twice the timeout after it."""
    with anyio.fail_after(TIMEOUT):
        async with extension_peer(DropsFrames()) as port:
            with pytest.raises(ProtocolError) as caught:
                async with connect(f"127.0.0.1:{port}", format=RGB24, ack_timeout=0.3) as pipe:
                    await pipe.send(bytes(FRAME), timestamp=0)
                    await pipe.results().receive()
    assert caught.value.rule == "PIPE-4"
    assert "sample 2 was not acknowledged within 0.3 s (1 unacknowledged)" in str(caught.value)


@pytest.mark.rule("PIPE-4")
@pytest.mark.parametrize("allocating", [False, True])
async def test_a_sender_waiting_for_room_in_its_segment_is_not_left_waiting(
    allocating: bool,
) -> None:
    """A segment with room for one frame: the second waits for the first's answer."""
    with anyio.fail_after(TIMEOUT):
        async with extension_peer(DropsFrames()) as port:
            with pytest.raises(ProtocolError) as caught:
                async with connect(
                    f"127.0.0.1:{port}", format=RGB24, ack_timeout=0.3, transfer="shm",
                    shm_bytes=FRAME,
                ) as pipe:  # fmt: skip
                    for t in range(3):
                        frame = await pipe.allocate() if allocating else bytes(FRAME)
                        await pipe.send(frame, timestamp=t)
    assert caught.value.rule == "PIPE-4"
    assert "sample 2 was not acknowledged within 0.3 s" in str(caught.value)
