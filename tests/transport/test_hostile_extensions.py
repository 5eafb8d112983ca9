"""The pipeline against hostile or broken extensions (spec: the pipeline's limits).

Each extension is raw HTTP/2 (h2 over a loopback TCP stream) that answers the
pipeline's descriptor, then does what no gRPC server does; the pipeline is avaproto's
real client. Each test shows that the stream ends at once (well before its deadlines)
with the one error that names what the extension did, and nothing else is logged.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from h2.errors import ErrorCodes

from avaproto.client import connect
from avaproto.codec import encode_framed
from avaproto.engine.drive import Result
from avaproto.errors import AvaprotoError, ProtocolError, StreamFailed
from avaproto.media import inferences
from avaproto.messages import MediaSample, MediaStreamMessage
from avaproto.protocol.video_format import VideoFormat
from avaproto.status import Status
from avaproto.transport.answer_guard import AnswerGuard
from avaproto.transport.limits import ConnectionLimits
from tests.builders import extension_descriptor
from tests.transport.test_goaway import ACK_TIMEOUT, _listening, _raw_extension
from tests.transport.test_grpc import RGB24
from tests.transport.test_hostile_http2 import TIMEOUT, frame

pytestmark = pytest.mark.anyio

DATA, HEADERS, RST_STREAM, PING, PUSH_PROMISE = 0x0, 0x1, 0x3, 0x6, 0x5
END_STREAM, END_HEADERS = 0x1, 0x4

RGB24_1080P = VideoFormat.checked(RGB24.encoding, RGB24.pixel_format, 1920, 1080)

Misbehave = Callable[[anyio.abc.SocketStream, h2.connection.H2Connection, int, list[int]], Any]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib's transport runs on asyncio only


def answer(number: int, text_bytes: int = 0) -> bytes:
    """An answer acknowledging sample ``number``, framed, with a text of that many bytes."""
    found = [inferences.text("x" * text_bytes)] if text_bytes else []
    sample = MediaSample(inferences=found)
    return encode_framed(
        MediaStreamMessage(sequence_number=2, ack_sequence_number=number, media_sample=sample)
    )


async def ended_by(
    misbehave: Misbehave,
    caplog: pytest.LogCaptureFixture,
    limits: ConnectionLimits | None = None,
    timeout: float = TIMEOUT,
    *,
    received: list[Result] | None = None,
    ack_timeout: float | None = ACK_TIMEOUT,
) -> AvaprotoError:
    """What ends a pipeline's stream whose first sample meets ``misbehave``, which ends
    well before the acknowledgement deadline; nothing is logged above INFO. The results
    read before go to ``received``."""
    async with _listening(_raw_extension(misbehave)) as port:
        with anyio.fail_after(timeout), pytest.raises(AvaprotoError) as ended:
            async with connect(
                f"127.0.0.1:{port}", format=RGB24, ack_timeout=ack_timeout, limits=limits
            ) as pipe:
                await pipe.send(bytes(RGB24.frame_bytes), timestamp=0)
                async for result in pipe.results():
                    if received is not None:
                        received.append(result)
    assert not [r for r in caplog.records if r.levelno > logging.INFO or r.exc_info]
    return ended.value


def refused(error: AvaprotoError, rule: str, status: Status, *words: str) -> None:
    assert isinstance(error, ProtocolError), repr(error)
    assert (error.rule, error.status) == (rule, status), repr(error)
    assert all(word in error.detail for word in words), error.detail


# --- what an extension makes the pipeline hold (PIPE-8) -------------------------------


@pytest.mark.rule("PIPE-8")
async def test_an_answer_in_one_byte_frames_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    """A legal 20 KB answer, one byte per DATA frame: a parse, an event and a buffer
    entry per byte (a 3 MB one took a pipeline past 1.5 GB). Refused after 68 frames."""

    async def trickle(
        client: anyio.abc.SocketStream, _: Any, stream_id: int, got: list[int]
    ) -> None:
        framed = answer(got[0], 20_000)
        await client.send(
            b"".join(frame(DATA, 0, stream_id, framed[i : i + 1]) for i in range(2000))
        )

    error = await ended_by(trickle, caplog)
    refused(error, "PIPE-8", Status.RESOURCE_EXHAUSTED, "arrived in more than 68 DATA frames")


@pytest.mark.rule("PIPE-8")
async def test_a_frame_larger_than_the_pipeline_takes_is_refused_from_its_header(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """h2 checks a frame's length once all of it arrived: a header announcing 1 MiB and
    nothing more held the stream until its deadline."""

    async def announce(client: anyio.abc.SocketStream, _: Any, stream_id: int, __: Any) -> None:
        await client.send(frame(DATA, 0, stream_id, b"\x00" * 10, length=1 << 20))

    error = await ended_by(announce, caplog)
    refused(error, "PIPE-8", Status.RESOURCE_EXHAUSTED, f"{1 << 20} bytes", "16384")


@pytest.mark.rule("PIPE-8")
async def test_pings_from_an_extension_that_reads_nothing_are_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The extension stops reading and sends PINGs: their acknowledgements would pile up
    in the pipeline's write buffer for as long as it lasts."""

    async def flood(client: anyio.abc.SocketStream, _: Any, __: int, ___: Any) -> bool:
        pings = b"".join(frame(PING, 0, 0, struct.pack(">Q", n)) for n in range(1000))
        while True:  # never reads again
            await client.send(pings)

    # The allowance of frames without a message lifted, to watch this bound alone. The
    # acknowledgements queue only once the sockets' buffers are full: megabytes of them,
    # some hundred thousand PINGs read first, which took past 5 s on a busy 2-core machine.
    lifted = ConnectionLimits(max_frames_without_data=1 << 40)
    error = await ended_by(flood, caplog, lifted, timeout=60)
    refused(error, "PIPE-8", Status.RESOURCE_EXHAUSTED, "acknowledgements (PING, SETTINGS)")


@pytest.mark.rule("PIPE-8")
@pytest.mark.parametrize(
    "flood",
    [
        b"".join(frame(PING, 0, 0, struct.pack(">Q", n)) for n in range(1100)),
        frame(0x2, 0, 1, bytes(5)) * 1100,  # PRIORITY
        frame(0x4, 0, 0, struct.pack(">HI", 0x7F00, 1) * 2000),  # unknown settings
        b"".join(frame(0xF0, 0, 0) for _ in range(1100)),  # a type HTTP/2 does not define
    ],
    ids=["pings", "priority", "settings-entries", "unknown-frames"],
)
async def test_a_flood_of_frames_without_a_message_ends_the_connection(
    flood: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """An extension that reads what the pipeline sends, and floods it with frames that
    each cost a parse: held to the server's own allowance (its CONN-19)."""

    async def flooding(client: anyio.abc.SocketStream, _: Any, __: int, ___: Any) -> bool:
        await client.send(flood)
        await anyio.sleep_forever()
        return True

    error = await ended_by(flooding, caplog)
    refused(error, "PIPE-8", Status.RESOURCE_EXHAUSTED, "frames that carry no message")


@pytest.mark.rule("PIPE-8")
def test_the_pipelines_own_frames_waiting_to_be_written_are_not_held_against_the_extension() -> (
    None
):
    """A grpcio extension may take frames of 16 MiB: one 4K frame then fills the write
    buffer past any bound of bytes, and is no sign of an extension that reads nothing.
    Only the acknowledgements it is owed count."""
    refusals: list[ProtocolError] = []
    guard = AnswerGuard(ConnectionLimits(), "extension", lambda error, _: refusals.append(error))
    guard.event(h2.events.PingReceived(ping_data=b"12345678"))
    guard.unread(64 << 20)
    assert refusals == []
    for _ in range(1000):
        guard.event(h2.events.PingReceived(ping_data=b"12345678"))
    guard.unread(17 * 1001)
    [error] = refusals
    refused(error, "PIPE-8", Status.RESOURCE_EXHAUSTED, "1001 acknowledgements")


@pytest.mark.rule("PIPE-9")
async def test_a_refusal_while_the_pipeline_has_bytes_unwritten_logs_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The extension takes frames of any size and reads nothing after the descriptor: a
    1080p frame waits in the pipeline's write buffer when the extension opens a stream.
    Ending the connection then must not fail the read that found it (grpclib drops the
    transport a flush after the events would write to)."""
    big = RGB24_1080P
    sent = anyio.Event()

    async def extension(client: anyio.abc.SocketStream) -> None:
        machine = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        machine.initiate_connection()
        machine.update_settings(
            {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: 2**24 - 1,
            }
        )
        machine.increment_flow_control_window(2**31 - 1 - 65535)
        async with client:
            await client.send(machine.data_to_send())
            answered = None
            while answered is None:
                for event in machine.receive_data(await client.receive()):
                    if isinstance(event, h2.events.RequestReceived):
                        ok = [(":status", "200"), ("content-type", "application/grpc")]
                        machine.send_headers(event.stream_id, ok)
                    elif isinstance(event, h2.events.DataReceived):
                        reply = MediaStreamMessage(
                            sequence_number=1,
                            ack_sequence_number=1,
                            media_stream_descriptor=extension_descriptor(),
                        )
                        machine.send_data(event.stream_id, encode_framed(reply))
                        answered = event.stream_id
                await client.send(machine.data_to_send())
            await sent.wait()  # reading nothing since the descriptor
            block = machine.encoder.encode([(":status", "200")])
            await client.send(frame(HEADERS, END_HEADERS, 2, block))
            await anyio.sleep_forever()

    async with _listening(extension) as port:
        with anyio.fail_after(TIMEOUT), pytest.raises(AvaprotoError) as ended:
            async with connect(f"127.0.0.1:{port}", format=big, ack_timeout=ACK_TIMEOUT) as pipe:
                await pipe.send(bytes(big.frame_bytes), timestamp=0)
                sent.set()
                async for _ in pipe.results():
                    pass
    refused(ended.value, "PIPE-9", Status.INTERNAL, "opened a stream")
    assert not [r for r in caplog.records if r.levelno > logging.INFO or r.exc_info]


@pytest.mark.rule("PIPE-10")
async def test_answers_that_acknowledge_nothing_are_taken_up_to_their_allowance(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Inferences of the extension's own are results, but not without end: 10,000 for
    5 frames went to ``send --output`` as 104 MB (a flood of them, 562 MB in 15 s), the
    frames never acknowledged and the deadline never reached. Refused at the 33rd for
    one sample sent (16 per sample, and as many before the first); the 32 before kept."""

    async def flood(client: anyio.abc.SocketStream, h2: Any, stream_id: int, _: list[int]) -> None:
        for number in range(2, 2 + 40):
            sample = MediaSample(inferences=[inferences.text("its own")])
            own = MediaStreamMessage(sequence_number=number, media_sample=sample)
            await client.send(frame(DATA, 0, stream_id, encode_framed(own)))

    results: list[Result] = []
    refused(
        await ended_by(flood, caplog, received=results),
        "PIPE-10",
        Status.RESOURCE_EXHAUSTED,
        "sent 33 answers that acknowledge none of our 1 samples; at most 16 per sample",
    )
    assert len(results) == 32
    assert all(r.acknowledged is None and r.inferences for r in results)


# --- what is not HTTP/2 a client takes (PIPE-9) ---------------------------------------


@asynccontextmanager
async def speaking(first: bytes) -> AsyncIterator[int]:
    """A listener that sends ``first`` to whoever connects, then reads until they go."""

    async def serve(client: anyio.abc.SocketStream) -> None:
        async with client:
            await client.send(first) if first else None
            while True:
                try:
                    await client.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return

    async with _listening(serve) as port:
        yield port


@pytest.mark.rule("PIPE-9")
async def test_an_http1_server_is_named_as_such() -> None:
    async with speaking(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n") as port:
        with anyio.fail_after(TIMEOUT), pytest.raises(AvaprotoError) as ended:
            async with connect(f"127.0.0.1:{port}", format=RGB24, connect_timeout=TIMEOUT * 4):
                pass
    refused(ended.value, "PIPE-9", Status.UNAVAILABLE, "HTTP/1", "'HTTP/1.1 400 Bad Request'")


@pytest.mark.rule("PIPE-3")
@pytest.mark.parametrize(
    ("connect_timeout", "descriptor_timeout", "words"),
    [
        (0.3, None, ("sent no HTTP/2", "within 0.3 s")),
        (None, 0.3, ("did not answer our descriptor within 0.3 s",)),  # the deadline left
    ],
    ids=["connect-deadline", "no-connect-deadline"],
)
async def test_an_endpoint_that_never_speaks_http2_ends_at_a_deadline(
    connect_timeout: float | None, descriptor_timeout: float | None, words: tuple[str, ...]
) -> None:
    """TCP connects; no SETTINGS ever comes (a TLS port, a service of another protocol)."""
    async with speaking(b"") as port:
        with anyio.fail_after(TIMEOUT), pytest.raises(AvaprotoError) as ended:
            async with connect(
                f"127.0.0.1:{port}",
                format=RGB24,
                connect_timeout=connect_timeout,
                descriptor_timeout=descriptor_timeout,
            ):
                pass
    refused(ended.value, "PIPE-3", Status.DEADLINE_EXCEEDED, *words)


@pytest.mark.rule("PIPE-9")
@pytest.mark.parametrize(
    ("kind", "words"),
    [
        (PUSH_PROMISE, ("pushed stream",)),
        (HEADERS, ("opened a stream", "stream 2")),
    ],
    ids=["push-promise", "headers-on-a-stream-of-its-own"],
)
async def test_a_stream_the_extension_opens_is_refused(
    kind: int, words: tuple[str, ...], caplog: pytest.LogCaptureFixture
) -> None:
    """grpclib raised on both, with a traceback in the log, and ended as connection lost."""

    async def opens(
        client: anyio.abc.SocketStream, machine: h2.connection.H2Connection, stream_id: int, _: Any
    ) -> None:
        block = machine.encoder.encode([(":status", "200"), ("content-type", "application/grpc")])
        if kind == PUSH_PROMISE:
            await client.send(frame(kind, END_HEADERS, stream_id, struct.pack(">I", 2) + block))
        else:
            await client.send(frame(kind, END_HEADERS, 2, block))

    error = await ended_by(opens, caplog)
    refused(error, "PIPE-9", Status.INTERNAL, *words)


@pytest.mark.rule("PIPE-9")
@pytest.mark.parametrize(
    ("sent", "words"),
    [
        (frame(DATA, 0, 0, b"abc"), ("broke HTTP/2", "Stream ID must be non-zero")),
        (frame(DATA, 0, 99, answer(2)), ("stream 99, which is not open",)),
    ],
    ids=["data-on-stream-0", "data-on-a-stream-never-opened"],
)
async def test_a_frame_h2_refuses_is_named(
    sent: bytes, words: tuple[str, ...], caplog: pytest.LogCaptureFixture
) -> None:
    async def breaks(client: anyio.abc.SocketStream, _: Any, __: int, ___: Any) -> None:
        await client.send(sent)

    refused(await ended_by(breaks, caplog), "PIPE-9", Status.INTERNAL, *words)


@pytest.mark.rule("PIPE-9")
async def test_a_header_that_is_not_utf8_is_named(caplog: pytest.LogCaptureFixture) -> None:
    """h2 raises UnicodeDecodeError there, not its ProtocolError: grpclib let it out of
    the read as a traceback, and the stream ended as connection lost."""

    async def garbles(
        client: anyio.abc.SocketStream, machine: h2.connection.H2Connection, stream_id: int, _: Any
    ) -> None:
        block = machine.encoder.encode([("grpc-status", "0"), (b"x-name", b"caf\xe9")])
        await client.send(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))

    error = await ended_by(garbles, caplog)
    refused(error, "PIPE-9", Status.INTERNAL, "broke HTTP/2", "a header that is not UTF-8")


@pytest.mark.rule("PIPE-6")
async def test_a_status_message_in_utf8_not_percent_encoded_is_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """gRPC percent-encodes grpc-message; an extension that sends it as UTF-8 as it is
    had its status lost, read as a header that is not UTF-8."""

    async def fails(client: anyio.abc.SocketStream, machine: Any, stream_id: int, _: Any) -> None:
        trailers = [("grpc-status", "13"), ("grpc-message", "héllo wörld ✓")]
        block = machine.encoder.encode([(k.encode(), v.encode()) for k, v in trailers])
        await client.send(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))

    error = await ended_by(fails, caplog)
    assert isinstance(error, StreamFailed), repr(error)
    assert (error.status, error.detail) == (Status.INTERNAL, "héllo wörld ✓")


# --- the end of the extension's stream ------------------------------------------------


@pytest.mark.rule("PIPE-6")
async def test_a_stream_ended_without_trailers_ends_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """END_STREAM on a DATA frame: no trailers, so no status, can follow. The pipeline
    waited for them until its deadline (for ever without one)."""

    async def ends(client: anyio.abc.SocketStream, _: Any, stream_id: int, got: list[int]) -> None:
        await client.send(frame(DATA, END_STREAM, stream_id, answer(got[0])))

    async with _listening(_raw_extension(ends)) as port:
        with anyio.fail_after(TIMEOUT), pytest.raises(AvaprotoError) as ended:
            async with connect(f"127.0.0.1:{port}", format=RGB24, ack_timeout=None) as pipe:
                await pipe.send(bytes(RGB24.frame_bytes), timestamp=0)
                results = pipe.results()
                assert (await results.receive()).acknowledged == 2  # the answer is kept
                await results.receive()
    refused(ended.value, "PIPE-6", Status.UNKNOWN, "without a status", "no trailers")


@pytest.mark.rule("PIPE-6")
@pytest.mark.parametrize("how", ["connection-closed", "reset"])
async def test_the_rest_of_an_answer_cut_short_is_never_read_as_answers(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An answer announced 100 bytes longer than what came, which is itself a whole
    answer acknowledging the sample, then the connection's end or a reset: the pipeline
    took the prefix, so what follows is the inside of a message, not one; it delivered
    that as an answer, an acknowledgement the extension never sent."""

    async def cuts(client: anyio.abc.SocketStream, _: Any, stream_id: int, got: list[int]) -> bool:
        inside = answer(got[0])
        await client.send(frame(DATA, 0, stream_id, struct.pack(">BI", 0, len(inside) + 100)))
        await client.send(frame(DATA, 0, stream_id, inside))
        if how == "reset":
            await client.send(frame(RST_STREAM, 0, stream_id, struct.pack(">I", ErrorCodes.CANCEL)))
            return False
        return True  # the extension goes: its connection closes

    received: list[Result] = []
    error = await ended_by(cuts, caplog, received=received, ack_timeout=None)
    assert received == []
    assert isinstance(error, StreamFailed), repr(error)
    if how == "reset":
        assert error.status is Status.CANCELLED
    else:
        assert error.status is Status.UNAVAILABLE
        assert "connection lost" in error.detail


@pytest.mark.rule("PIPE-6")
@pytest.mark.parametrize(
    ("code", "status"),
    [
        (ErrorCodes.NO_ERROR, Status.INTERNAL),
        (ErrorCodes.CANCEL, Status.CANCELLED),
        (ErrorCodes.REFUSED_STREAM, Status.UNAVAILABLE),
        (ErrorCodes.ENHANCE_YOUR_CALM, Status.RESOURCE_EXHAUSTED),
    ],
)
async def test_a_reset_without_a_status_ends_with_grpcs_status_for_its_code(
    code: ErrorCodes, status: Status, caplog: pytest.LogCaptureFixture
) -> None:
    """It read as "connection lost: Stream reset by remote party, error_code: 0"."""

    async def resets(client: anyio.abc.SocketStream, _: Any, stream_id: int, __: Any) -> None:
        await client.send(frame(RST_STREAM, 0, stream_id, struct.pack(">I", code)))

    error = await ended_by(resets, caplog)
    assert isinstance(error, StreamFailed), repr(error)
    assert error.status is status
    assert (
        error.detail == f"the extension reset the stream (RST_STREAM {code.name}) without a status"
    )


@pytest.mark.rule("WIRE-1")
async def test_a_compressed_flag_gRPC_does_not_define_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def flags(client: anyio.abc.SocketStream, _: Any, stream_id: int, got: list[int]) -> None:
        await client.send(frame(DATA, 0, stream_id, b"\x80" + answer(got[0])[1:]))

    error = await ended_by(flags, caplog)
    refused(error, "WIRE-1", Status.INVALID_ARGUMENT, "compressed flag is 0x80")
