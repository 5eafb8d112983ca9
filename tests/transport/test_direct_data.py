"""DATA frames the connection's guard reads past h2's frame buffer, on a real server.

The guard reads each DATA frame's payload into a buffer of its own (a message that
arrives in several frames into one buffer of the message's size) and gives h2 the frame
as an object; everything else goes to h2 as received. These tests send frames cut at
every awkward place, with a raw HTTP/2 client, and check that every byte reaches the
processor as sent, that a large message reaches it as one buffer (the only copy of an
embedded frame is the kernel's), and what still goes to h2.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections.abc import Callable

import anyio
import pytest
from h2.errors import ErrorCodes

from avaproto.codec import encode_framed
from avaproto.engine.frame import Frame
from avaproto.messages import ContentBytes, Inference, MediaSample, MediaStreamMessage
from avaproto.transport import guard
from avaproto.transport.grpc_server import ExtensionServer
from tests.builders import pipeline_descriptor, video_format
from tests.transport.test_hostile_http2 import (
    DATA,
    HEADERS,
    REQUEST,
    TIMEOUT,
    Attacker,
    completes,
    eventually,
    frame,
    goaway,
    serving,
)

pytestmark = pytest.mark.anyio
PADDED, PUSH_PROMISE, WINDOW_UPDATE = 0x8, 0x5, 0x8
SIZE = 120_000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib runs on asyncio


def picture(number: int, size: int) -> bytes:
    return bytes((number * 7 + i) % 251 for i in range(256)) * (size // 256) + bytes(size % 256)


def sample(number: int, size: int) -> bytes:
    content = ContentBytes(bytes=picture(number, size))
    return encode_framed(
        MediaStreamMessage(sequence_number=number, media_sample=MediaSample(content_bytes=content))
    )


class Seen:
    """The processor: the digest of each frame's bytes, and what held them."""

    def __init__(self) -> None:
        self.digests: dict[int, str] = {}
        self.holders: dict[int, tuple[type, int]] = {}

    def __call__(self, frame: Frame) -> list[Inference]:
        data = frame.data
        assert isinstance(data, memoryview)
        self.digests[frame.sequence_number] = hashlib.sha256(data).hexdigest()
        self.holders[frame.sequence_number] = (type(data.obj), len(data.obj))  # type: ignore[arg-type]
        return []


def digest(number: int, size: int) -> str:
    return hashlib.sha256(picture(number, size)).hexdigest()


async def answered(attacker: Attacker, stream_id: int, count: int) -> None:
    """Wait for ``count`` answers to samples (besides the descriptor's) on ``stream_id``;
    answers made ready together share a DATA frame, so messages are counted."""

    def messages() -> int:
        data = b"".join(
            event.data
            for event in attacker.events
            if type(event).__name__ == "DataReceived" and event.stream_id == stream_id
        )
        found = position = 0
        while position + 5 <= len(data):
            position += 5 + int.from_bytes(data[position + 1 : position + 5], "big")
            found += position <= len(data)
        return found

    await attacker.until(lambda: messages() >= count + 1)


async def open_call(attacker: Attacker, size: int, height: int = 100) -> int:
    """A call whose frames are RAW RGB24 of ``size`` bytes (a multiple of 3 x ``height``)."""
    fmt = video_format(width=size // (3 * height), height=height)
    descriptor = MediaStreamMessage(
        sequence_number=1, media_stream_descriptor=pipeline_descriptor(fmt)
    )
    stream_id = attacker.h2.get_next_available_stream_id()
    attacker.h2.send_headers(stream_id, REQUEST)
    attacker.h2.send_data(stream_id, encode_framed(descriptor))
    assert await attacker.flush()
    return stream_id


async def send_raw(
    attacker: Attacker, server: ExtensionServer, data: bytes, cuts: list[int]
) -> None:
    """``data`` in pieces ending at ``cuts``, each read by the server before the next."""
    assert server.guard is not None
    start = 0
    for end in [*cuts, len(data)]:
        target = server.guard.received + end - start
        assert await attacker.send(data[start:end])
        await eventually(lambda target=target: server.guard.received >= target)  # type: ignore[misc, union-attr]
        start = end


async def test_frames_cut_anywhere_reach_the_processor_intact() -> None:
    seen = Seen()
    with anyio.fail_after(4 * TIMEOUT):
        async with serving(seen) as server, Attacker.connect(server.port) as attacker:
            stream_id = await open_call(attacker, SIZE)
            first, second = sample(2, SIZE), sample(3, SIZE)
            credit = frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", 1000))
            raw = (
                credit
                + frame(DATA, 0, stream_id, first)
                + frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">L", 1000))
                + frame(DATA, 0, stream_id, second)
            )
            # The header cut, the prefix cut, the body cut (h2 reads that frame: too
            # little of it came with its header), a WINDOW_UPDATE cut, the next frame's
            # header with 70,000 bytes of it (read past h2 from there), and the rest.
            head = len(credit)
            window_update = head + 9 + len(first)
            cuts = [head + 4, head + 9 + 3, head + 9 + 200, window_update + 7]
            cuts += [window_update + 13 + 9 + 70_000, len(raw) - 100]
            await send_raw(attacker, server, raw, cuts)
            await answered(attacker, stream_id, 2)
            # The window h2 consumed for them is what the bytes took: more still fits.
            attacker.h2.send_data(stream_id, sample(4, SIZE))
            assert await attacker.flush()
            await answered(attacker, stream_id, 3)
    assert seen.digests == {n: digest(n, SIZE) for n in (2, 3, 4)}


async def test_a_large_message_in_several_frames_reaches_the_processor_as_one_buffer() -> None:
    seen = Seen()
    size = 300_000
    with anyio.fail_after(4 * TIMEOUT):
        async with serving(seen) as server, Attacker.connect(server.port) as attacker:
            stream_id = await open_call(attacker, size)
            message = sample(2, size)
            parts = [message[:100_000], message[100_000:250_000], message[250_000:]]
            raw = b"".join(frame(DATA, 0, stream_id, part) for part in parts)
            # Enough of the first frame with its header to read past h2 from there.
            await send_raw(attacker, server, raw, [70_000, 100_009 + 5, 200_000])
            await answered(attacker, stream_id, 1)
    assert seen.digests == {2: digest(2, size)}
    # The processor's view is of the buffer the frames were read into: the whole
    # message (its prefix, then its body), nothing copied out of it.
    assert seen.holders[2] == (bytearray, len(message))


async def test_a_4k_frame_in_1_mib_frames_reaches_the_processor_as_one_buffer() -> None:
    """A 3840x2160 RGB frame (24.9 MB) in DATA frames of 1 MiB, as avaproto's client
    sends it: read into one buffer of the message's size, never joined."""
    seen = Seen()
    size = 3840 * 2160 * 3
    with anyio.fail_after(4 * TIMEOUT):
        async with serving(seen) as server, Attacker.connect(server.port) as attacker:
            stream_id = await open_call(attacker, size, height=2160)
            attacker.h2.max_outbound_frame_size = 1 << 20  # what the server allows
            message, sent = sample(2, size), 0
            while sent < len(message):  # within the windows the server opens as it reads
                await eventually(lambda: attacker.h2.local_flow_control_window(stream_id) > 0)
                window = attacker.h2.local_flow_control_window(stream_id)
                for start in range(sent, sent + min(window, len(message) - sent), 1 << 20):
                    end = min(start + (1 << 20), sent + window, len(message))
                    attacker.h2.send_data(stream_id, message[start:end])
                sent += min(window, len(message) - sent)
                assert await attacker.flush()
            await answered(attacker, stream_id, 1)
    assert seen.digests == {2: digest(2, size)}
    assert seen.holders[2] == (bytearray, len(sample(2, size)))  # the message's buffer


async def connection_error(attacker: Attacker) -> None:
    """h2 found a connection error: the connection ends (grpclib closes it at once; a
    GOAWAY, if it got out, says PROTOCOL_ERROR)."""
    event = await attacker.closed()
    assert event is None or event.error_code == 1
    await attacker.ended.wait()


async def test_padded_frames_and_frames_on_stream_zero_are_h2s() -> None:
    seen = Seen()
    with anyio.fail_after(4 * TIMEOUT):
        async with serving(seen) as server:
            async with Attacker.connect(server.port) as attacker:
                stream_id = await open_call(attacker, SIZE)
                payload = sample(2, SIZE)
                padded = frame(DATA, PADDED, stream_id, bytes([3]) + payload + bytes(3))
                await send_raw(attacker, server, padded, [20])
                await answered(attacker, stream_id, 1)
                # Small and whole in one read, after a WINDOW_UPDATE: h2's all the same.
                small = await open_call(attacker, 300)
                credit = frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", 1000))
                padded = frame(DATA, PADDED, small, bytes([7]) + sample(5, 300) + bytes(7))
                await send_raw(attacker, server, credit + padded, [])
                await answered(attacker, small, 1)
            assert seen.digests == {2: digest(2, SIZE), 5: digest(5, 300)}
            async with Attacker.connect(server.port) as attacker:
                await attacker.send(frame(DATA, 0, 0, b"x" * 10))
                await connection_error(attacker)
            await completes(server.port)


def zero_window_update(attacker: Attacker) -> bytes:
    return frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", 0))  # hyperframe refuses 0


def data_inside_a_header_block(attacker: Attacker) -> bytes:
    """HEADERS without END_HEADERS, then DATA where a CONTINUATION must be."""
    block = attacker.h2.encoder.encode(REQUEST)
    stream_id = attacker.h2.get_next_available_stream_id()
    return frame(HEADERS, 0, stream_id, block) + frame(DATA, 0, stream_id, b"x" * 10)


@pytest.mark.parametrize("refused", [zero_window_update, data_inside_a_header_block])
async def test_frames_h2_refuses_are_still_refused(refused: Callable[[Attacker], bytes]) -> None:
    with anyio.fail_after(4 * TIMEOUT):
        async with serving() as server:
            async with Attacker.connect(server.port) as attacker:
                await attacker.send(refused(attacker))
                await connection_error(attacker)
            await completes(server.port)


async def test_a_frame_past_the_buffer_budget_is_read_by_h2() -> None:
    """Buffers a header asks for are bounded: past the bound, h2 buffers what arrives."""
    seen = Seen()
    messages = [sample(n, 21_000) for n in range(2, 20)]  # 18 small messages, one frame
    raw_size = sum(len(m) for m in messages)
    limit = raw_size // 2
    assert raw_size > guard.READ_SIZE
    with anyio.fail_after(4 * TIMEOUT):
        async with serving(seen, max_read_buffers_bytes=limit) as server:
            async with Attacker.connect(server.port) as attacker:
                stream_id = await open_call(attacker, 21_000)
                raw = frame(DATA, 0, stream_id, b"".join(messages))
                await send_raw(attacker, server, raw, [1000])
                await answered(attacker, stream_id, len(messages))
            assert server.guard is not None and server.guard.direct_bytes == 0
    assert seen.digests == {n: digest(n, 21_000) for n in range(2, 20)}


async def test_buffers_headers_ask_for_are_bounded_and_given_back() -> None:
    """A header alone asks for a buffer: the server's total stays under the flag, and
    what a connection held comes back when it goes."""
    limit = 8 << 20
    with anyio.fail_after(4 * TIMEOUT):
        async with serving(max_read_buffers_bytes=limit) as server:
            assert server.guard is not None
            async with contextlib.AsyncExitStack() as connections:
                sent = server.guard.received
                for _ in range(6):  # each: a 1 MiB frame that begins a 3 MB message
                    attacker = await connections.enter_async_context(Attacker.connect(server.port))
                    stream_id = await open_call(attacker, SIZE)
                    start = b"\0" + (3_000_000).to_bytes(4, "big") + bytes(70_000)
                    raw = frame(DATA, 0, stream_id, start, 1 << 20)
                    assert await attacker.send(raw)
                    sent += len(raw)
                await eventually(lambda: server.guard.received >= sent)  # type: ignore[union-attr]
                # Two messages' buffers fit, then two frames'; the rest goes to h2.
                assert server.guard.direct_bytes == 2 * 3_000_005 + 2 * (1 << 20) <= limit
            await eventually(lambda: server.guard.direct_bytes == 0)  # type: ignore[union-attr]
            await completes(server.port)


async def test_the_reserved_bit_of_a_stream_id_is_ignored() -> None:
    """RFC 9113, 4.1: a receiver ignores it (h2 masks it off as it parses)."""
    seen = Seen()
    with anyio.fail_after(4 * TIMEOUT):
        async with serving(seen) as server, Attacker.connect(server.port) as attacker:
            stream_id = await open_call(attacker, SIZE)
            credit = struct.pack(">L", 1000)
            raw = frame(WINDOW_UPDATE, 0, 1 << 31, credit)  # the connection's, R set
            raw += frame(DATA, 0, stream_id | 1 << 31, sample(2, SIZE))
            await send_raw(attacker, server, raw, [])
            await answered(attacker, stream_id, 1)
    assert seen.digests == {2: digest(2, SIZE)}


async def test_buffers_of_frames_never_given_to_h2_come_back_with_the_connection() -> None:
    """A limit that trips in a read drops the frames read past h2 before it; what their
    buffers held of the server's bound is given back when the connection goes."""
    size = 39_900
    with anyio.fail_after(4 * TIMEOUT):
        async with serving() as server:
            assert server.guard is not None
            async with Attacker.connect(server.port) as attacker:
                stream_id = await open_call(attacker, size)
                message = sample(2, size)
                first, rest = message[:30_000], message[30_000:]
                # The first frame begins a message's buffer; its last part comes whole in
                # one read with a run of empty DATA frames, which trips CONN-8.
                await send_raw(attacker, server, frame(DATA, 0, stream_id, first), [9 + 17_000])
                assert server.guard.direct_bytes == len(message)
                empty = frame(DATA, 0, stream_id) * 50
                assert await attacker.send(frame(DATA, 0, stream_id, rest) + empty)
                goaway(await attacker.closed(), ErrorCodes.ENHANCE_YOUR_CALM, "CONN-8")
            await eventually(lambda: server.guard.open == 0)  # type: ignore[union-attr]
            assert server.guard.direct_bytes == 0


async def test_data_after_an_unfinished_push_promise_is_refused_by_h2() -> None:
    """PUSH_PROMISE opens a header block as HEADERS does: a sample on an open call where
    a CONTINUATION must come ends the connection, as h2 alone would end it."""
    seen = Seen()
    with anyio.fail_after(4 * TIMEOUT):
        async with serving(seen) as server:
            async with Attacker.connect(server.port) as attacker:
                stream_id = await open_call(attacker, SIZE)
                promised = struct.pack(">L", 2) + attacker.h2.encoder.encode(REQUEST)
                raw = frame(PUSH_PROMISE, 0, stream_id, promised)
                await attacker.send(raw + frame(DATA, 0, stream_id, sample(2, SIZE)))
                await connection_error(attacker)
            assert seen.digests == {}  # the sample never reached the processor
            await completes(server.port)


@pytest.mark.parametrize("after", ["data", "headers"])
async def test_frames_after_the_peers_goaway_in_the_same_read_end_quietly(
    after: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer's GOAWAY with an error closes the connection (grpclib drops h2's frame
    table with it): what follows in the same read is dropped, not an error of the event
    loop."""
    with anyio.fail_after(4 * TIMEOUT):
        async with serving() as server:
            async with Attacker.connect(server.port) as attacker:
                stream_id = await open_call(attacker, 300)
                goaway = frame(7, 0, 0, struct.pack(">LL", 0, ErrorCodes.INTERNAL_ERROR))
                if after == "data":
                    more = frame(DATA, 0, stream_id, sample(2, 300))
                else:
                    more = frame(0x1, 0x4, stream_id + 2, attacker.h2.encoder.encode(REQUEST))
                credit = frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", 9))
                await attacker.send(goaway + more + credit)
                await attacker.ended.wait()
            await completes(server.port)
    assert [r for r in caplog.records if r.levelno >= 40] == []


# --- the pipeline's side: answers read past h2 -----------------------------------------


def _answer_writes(layout: str, framed: list[bytes], stream_id: int) -> list[bytes]:
    """The extension's answers as bytes on the wire, cut and mixed as ``layout`` says."""
    data = [frame(DATA, 0, stream_id, message) for message in framed]
    credit = frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", 1000))
    stream_credit = frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">L", 1000))
    if layout == "together":  # every answer and updates in one write
        return [credit + b"".join(data) + stream_credit]
    if layout == "cut":  # each answer's frame cut in the middle of its header
        return [part for whole in data for part in (whole[:4], whole[4:])]
    if layout == "padded":  # padded frames, which h2 reads
        return [frame(DATA, PADDED, stream_id, bytes([2]) + m + bytes(2)) for m in framed]
    assert layout == "split"  # each answer in two frames, then an update
    return [
        frame(DATA, 0, stream_id, m[:3]) + frame(DATA, 0, stream_id, m[3:]) + credit for m in framed
    ]


@pytest.mark.parametrize("layout", ["together", "cut", "padded", "split"])
async def test_answers_however_framed_reach_the_pipeline(layout: str) -> None:
    """An extension of raw HTTP/2 answers the pipeline's samples in frames cut, mixed
    and padded in every way: each answer arrives, in order, and the stream ends OK."""
    import h2.config
    import h2.connection
    import h2.events

    from avaproto.client import connect
    from avaproto.codec import decode_message
    from tests.builders import extension_descriptor
    from tests.transport.test_grpc import RGB24

    samples = 6

    async def extension(client: anyio.abc.SocketStream) -> None:
        connection = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        connection.initiate_connection()
        received, numbers, stream_id, ended = b"", [], 0, False
        async with client:
            await client.send(connection.data_to_send())
            while not ended:
                for event in connection.receive_data(await client.receive()):
                    if isinstance(event, h2.events.RequestReceived):
                        stream_id = event.stream_id
                        headers = [(":status", "200"), ("content-type", "application/grpc")]
                        connection.send_headers(stream_id, headers)
                    elif isinstance(event, h2.events.DataReceived):
                        connection.acknowledge_received_data(len(event.data), stream_id)
                        received += event.data
                        while len(received) >= 5:
                            size = 5 + int.from_bytes(received[1:5], "big")
                            if len(received) < size:
                                break
                            numbers.append(decode_message(received[5:size]).sequence_number)
                            received = received[size:]
                            if len(numbers) == 1:  # the descriptor: answered at once
                                answer = MediaStreamMessage(
                                    sequence_number=1,
                                    ack_sequence_number=numbers[0],
                                    media_stream_descriptor=extension_descriptor(),
                                )
                                connection.send_data(stream_id, encode_framed(answer))
                    elif isinstance(event, h2.events.StreamEnded):
                        ended = True
                await client.send(connection.data_to_send())
            answers = [
                encode_framed(
                    MediaStreamMessage(
                        sequence_number=2 + index,
                        ack_sequence_number=number,
                        media_sample=MediaSample(timestamp=index),
                    )
                )
                for index, number in enumerate(numbers[1:])
            ]
            for write in _answer_writes(layout, answers, stream_id):
                await client.send(write)
            connection.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)
            await client.send(connection.data_to_send())
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while await client.receive():
                    pass

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(listener.serve, extension)
            with anyio.fail_after(TIMEOUT):
                async with connect(f"127.0.0.1:{port}", format=RGB24, window=samples) as pipe:
                    for index in range(samples):
                        await pipe.send(bytes(RGB24.frame_bytes), timestamp=index)
                    await pipe.end()  # the extension answers them all once the end is in
                    answered = [result.timestamp async for result in pipe.results()]
            tasks.cancel_scope.cancel()
    assert answered == list(range(samples))
