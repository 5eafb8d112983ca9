"""The guards of ``avaproto.transport._grpclib_private``: grpclib's private names it uses.

Each test compares with grpclib's own objects (its code, its classes), so an upgrade of
grpclib that renames or changes what avaproto mirrors fails here first.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import itertools
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import grpclib.client
import grpclib.const
import grpclib.exceptions
import grpclib.protocol
import grpclib.server
import grpclib.utils
import h2.windows
import pytest

from avaproto.messages import (
    METHOD_PATH,
    ContentBytes,
    Inference,
    MediaGraphExtensionStub,
    MediaSample,
    MediaStreamDescriptor,
    MediaStreamMessage,
)
from avaproto.server import running
from avaproto.transport import _grpclib_private
from avaproto.transport.grpc_server import ServerConfig
from avaproto.transport.limits import ConnectionLimits
from tests.builders import FRAME_BYTES, pipeline_descriptor

pytestmark = pytest.mark.anyio
TIMEOUT = 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def assert_steps(function: object, *steps: str) -> None:
    """Each of ``steps`` is a line of ``function``'s source, as avaproto mirrors it."""
    source = inspect.getsource(function)  # type: ignore[arg-type]
    assert [step for step in steps if step not in source] == []


def assigned(function: object) -> set[str]:
    """The attributes a function assigns or augments (``self.a.b = ...`` gives ``a.b``)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))  # type: ignore[arg-type]
    found = set()
    for node in ast.walk(tree):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AugAssign)
            else []
        )
        for target in targets:
            if isinstance(target, ast.Attribute):
                found.add(ast.unparse(target))
    return found


def test_send_messages_mirrors_every_assignment_of_grpclibs_send_message() -> None:
    theirs = assigned(grpclib.server.Stream.send_message)
    assert theirs == {
        "self._send_message_done",
        "self._messages_sent",
        "self._stream.connection.messages_sent",
        "self._stream.connection.last_message_sent",
    }
    ours = {
        name.replace("stream.", "self.", 1) for name in assigned(_grpclib_private.send_messages)
    }
    ours = {name.replace("connection.", "self._stream.connection.", 1) for name in ours}
    assert theirs <= ours


def test_send_client_message_mirrors_grpclibs_client_send_message() -> None:
    theirs = assigned(grpclib.client.Stream.send_message)
    assert theirs == {
        "self._send_message_done",
        "self._messages_sent",
        "self._stream.connection.messages_sent",
        "self._stream.connection.last_message_sent",
        "self._end_done",  # only with end=True, which avaproto never passes
    }
    ours = {
        name.replace("stream.", "self.", 1)
        for name in assigned(_grpclib_private.send_client_message)
    }
    ours = {name.replace("connection.", "self._stream.connection.", 1) for name in ours}
    assert theirs - {"self._end_done"} <= ours
    source = inspect.getsource(grpclib.client.Stream.send_message)
    for guard in ("if not self._send_request_done:", "if self._end_done:", "with self._wrapper:"):
        assert guard in source


def test_send_data_is_grpclibs_send_data_loop() -> None:
    """The loop grpclib sends a message with, step by step, and its counters."""
    assert_steps(
        grpclib.protocol.Stream.send_data,
        "await self.connection.write_ready.wait()",
        "window = self._h2_connection.local_flow_control_window(self.id)",
        "if not window > 0:",
        "self.window_updated.clear()",
        "await self.window_updated.wait()",
        "max_frame_size = self._h2_connection.max_outbound_frame_size",
        "self._transport.write(self._h2_connection.data_to_send())",
        "self.data_sent += f_chunk_len",
        "self.connection.data_sent += f_chunk_len",
        "self.connection.data_send_process()",
    )
    ours = {name.replace("h2_stream.", "self.", 1) for name in assigned(_grpclib_private.send_data)}
    assert ours == {"self.data_sent", "connection.data_sent"}
    written = {
        name.replace("h2_stream.", "self.", 1) for name in assigned(_grpclib_private._write_frame)
    }
    assert written == {
        "self.data_sent",
        "connection.data_sent",
        "stream.outbound_flow_control_window",
        "machine.outbound_flow_control_window",
    }
    wrapper = inspect.getsource(grpclib.utils.Wrapper.__enter__)
    assert "if self._error is not None:" in wrapper and grpclib.utils.Wrapper._error is None


def test_send_data_changes_no_state_where_frames_are_written_directly() -> None:
    """h2's own tables: SEND_DATA is a row that keeps the state and calls nothing."""
    import h2.connection
    import h2.stream

    for state in _grpclib_private.DATA_STREAM_STATES:
        assert h2.stream._transitions[(state, h2.stream.StreamInputs.SEND_DATA)] == (None, state)
    table = h2.connection.H2ConnectionStateMachine._transitions
    for connection_state in _grpclib_private.DATA_CONNECTION_STATES:
        key = (connection_state, h2.connection.ConnectionInputs.SEND_DATA)
        assert table[key] == (None, connection_state)
    # And the bookkeeping h2 does for a DATA frame is the two windows it takes.
    connection_send = inspect.getsource(h2.connection.H2Connection.send_data)
    assert "self.outbound_flow_control_window -= frame_size" in connection_send
    stream_send = inspect.getsource(h2.stream.H2Stream.send_data)
    assert "self.outbound_flow_control_window -= df.flow_controlled_length" in stream_send


class _Transport:
    """Collects what is written (a fake: the socket is not what this test is about)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes | memoryview) -> None:
        self.written.append(bytes(data))


class _Counters:
    def __init__(self) -> None:
        self.data_sent = 0
        self.sends = 0

    def data_send_process(self) -> None:
        self.sends += 1


def _open_stream() -> Any:
    """A real h2 client connection with stream 1 open, as a grpclib stream holds it."""
    import h2.config
    import h2.connection

    machine = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    machine.initiate_connection()
    machine.send_headers(1, [(":method", "POST"), (":path", "/"), (":scheme", "http"),
                             (":authority", "a")])  # fmt: skip
    machine.data_to_send()

    class Holder:
        id = 1
        _h2_connection = machine
        _transport = _Transport()
        connection = _Counters()
        data_sent = 0

    return Holder()


@pytest.mark.parametrize("size", [5, 100, 16_384])
def test_a_frame_written_directly_is_the_frame_h2_writes(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    direct, through_h2 = _open_stream(), _open_stream()
    assert _grpclib_private._write_frame(direct, memoryview(payload), size)
    machine = through_h2._h2_connection
    machine.send_data(1, payload)
    assert b"".join(direct._transport.written) == machine.data_to_send()
    for holder in (direct, through_h2):
        assert holder._h2_connection.outbound_flow_control_window == 65535 - size
        assert holder._h2_connection.local_flow_control_window(1) == 65535 - size
    assert direct.data_sent == direct.connection.data_sent == size


@pytest.mark.parametrize("cuts", [[], [9], [9, 40_009], [3, 4, 20_000]])
def test_a_frame_written_in_pieces_is_the_frame_h2_writes(cuts: list[int]) -> None:
    """A DATA frame whose payload is pieces (the bytes around an embedded frame, and the
    frame): the bytes h2 writes for the joined payload, the frame's piece not copied."""
    payload = bytes(range(256)) * 200
    bounds = [0, *cuts, len(payload)]
    pieces = [memoryview(payload)[a:b] for a, b in itertools.pairwise(bounds)]
    direct, through_h2 = _open_stream(), _open_stream()
    for holder in (direct, through_h2):
        holder._h2_connection.max_outbound_frame_size = 1 << 20  # as a server may allow
    assert _grpclib_private._write_frame(direct, pieces, len(payload))
    machine = through_h2._h2_connection
    machine.send_data(1, payload)
    assert b"".join(direct._transport.written) == machine.data_to_send()
    assert direct._h2_connection.outbound_flow_control_window == 65535 - len(payload)
    assert direct.data_sent == len(payload)


def test_a_frame_h2_must_send_is_left_to_it() -> None:
    holder = _open_stream()
    machine = holder._h2_connection
    assert not _grpclib_private._write_frame(holder, b"x" * 70_000, 70_000)  # window
    machine.end_stream(1)  # half-closed (local): h2 refuses data, so must we
    assert not _grpclib_private._write_frame(holder, b"x", 1)
    assert holder._transport.written == [] and holder.data_sent == 0


def test_send_messages_follows_send_messages_order_of_work() -> None:
    source = inspect.getsource(grpclib.server.Stream.send_message)
    assert "if not self._send_initial_metadata_done:" in source
    assert "await self.send_initial_metadata()" in source
    stream_source = inspect.getsource(grpclib.stream.send_message)
    assert "struct.pack('?', False)" in stream_source and "struct.pack('>I'" in stream_source
    assert "await stream.send_data(reply_data, end_stream=end)" in stream_source


async def test_a_batch_arrives_as_separate_messages() -> None:
    """Eight samples answered at once reach a plain grpclib client as eight messages."""
    release = anyio.Event()
    entered = 0

    async def hold(frame: object) -> list[object]:
        nonlocal entered
        entered += 1
        if entered == 8:
            release.set()
        await release.wait()
        return []

    answers: list[MediaStreamMessage] = []
    with anyio.fail_after(TIMEOUT):
        async with running(hold, ServerConfig(port=0), grace=1) as server:
            channel = grpclib.client.Channel("127.0.0.1", server.port)
            try:

                async def requests() -> AsyncIterator[MediaStreamMessage]:
                    yield MediaStreamMessage(
                        sequence_number=1, media_stream_descriptor=pipeline_descriptor()
                    )
                    for number in range(2, 10):
                        yield MediaStreamMessage(
                            sequence_number=number,
                            media_sample=MediaSample(
                                content_bytes=ContentBytes(bytes=bytes(FRAME_BYTES))
                            ),
                        )
                    await release.wait()

                stub = MediaGraphExtensionStub(channel)
                async for message in stub.process_media_stream(requests()):
                    answers.append(message)
            finally:
                channel.close()
    assert isinstance(answers[0].media_stream_descriptor, MediaStreamDescriptor)
    assert [a.ack_sequence_number for a in answers[1:]] == list(range(2, 10))
    assert [a.sequence_number for a in answers] == list(range(1, 10))


def test_the_private_names_exist_where_they_are_used() -> None:
    """Each private name, looked up on the library's own classes and code."""
    server_source = inspect.getsource(grpclib.server.Server)
    assert "def _protocol_factory(self)" in server_source
    assert "self._protocol_factory" in inspect.getsource(grpclib.server.Server.start)
    assert "self._server: Optional[asyncio.AbstractServer] = None" in server_source
    assert "self._server = await self._loop.create_server(" in server_source
    for name in ("_process_grpc_status", "recv_initial_metadata"):
        assert callable(getattr(grpclib.client.Stream, name))
    for attribute in ("_recv_initial_metadata_done", "_end_done", "_send_request_done"):
        assert getattr(grpclib.client.Stream, attribute) is False  # class-level defaults
    assert grpclib.client.Stream._trailers_only is None
    assert "self._trailers_only = True" in inspect.getsource(
        grpclib.client.Stream.recv_initial_metadata
    )
    for stream_class in (grpclib.server.Stream, grpclib.client.Stream):
        assert "self._stream" in inspect.getsource(stream_class)
    protocol_stream = inspect.getsource(grpclib.protocol.Stream)
    for member in (
        "async def recv_data",
        "async def recv_trailers",
        "self.trailers",
        "self.headers",
    ):
        assert member in protocol_stream
    connection = inspect.getsource(grpclib.protocol.Connection)
    assert "self._connection = connection" in connection and "def flush" in connection
    import h2.connection
    import hyperframe.frame

    # h2 calls repr() in one place only, the trace of each received frame, and a
    # frame's str() is its repr(): deferring the call to the logger changes no text.
    h2_source = inspect.getsource(h2.connection)
    assert h2_source.count("repr(") == 1
    assert 'self.config.logger.trace("Received frame: %s", repr(frame))' in h2_source
    assert hyperframe.frame.Frame.__str__ is object.__str__


def test_the_names_a_held_answer_and_a_direct_frame_look_at_are_the_libraries() -> None:
    """``_write_frame`` holds an answer while its stream's ``Buffer._unacked`` queue has
    pieces not yet read, writes to the stream's ``_transport``, and leaves a frame to h2
    while ``H2Connection._data_to_send`` holds h2's own output; the end of a stream is
    ``Buffer._eof``."""
    import h2.connection

    buffer = grpclib.protocol.Buffer(lambda size: None)
    assert isinstance(buffer._unacked, asyncio.Queue) and buffer._unacked.qsize() == 0
    buffer.add(b"piece", 5)
    assert buffer._unacked.qsize() == 1 and buffer._eof is False
    buffer.eof()
    assert buffer._eof is True
    assert "self._transport = transport" in inspect.getsource(grpclib.protocol.Stream.__init__)
    assert "self.buffer = Buffer(" in inspect.getsource(grpclib.protocol.Stream.init_stream)
    machine = h2.connection.H2Connection()
    assert machine._data_to_send == bytearray()
    machine.initiate_connection()
    assert machine._data_to_send and machine.data_to_send() and not machine._data_to_send


def test_sent_so_far_reads_the_counts_grpclib_keeps() -> None:
    """CONN-19 earns back frames from them; avaproto's sending keeps them as grpclib does."""
    assert grpclib.protocol.Connection.data_sent == 0  # the class-level starts
    assert grpclib.protocol.Connection.messages_sent == 0
    send = inspect.getsource(grpclib.protocol.Stream.send_data)
    assert "self.connection.data_sent += f_chunk_len" in send
    send_message = inspect.getsource(grpclib.server.Stream.send_message)
    assert "self._stream.connection.messages_sent += 1" in send_message
    assert "self.connection = connection" in inspect.getsource(grpclib.protocol.EventsProcessor)
    assert "connection.data_sent += size" in inspect.getsource(_grpclib_private._write_frame)
    assert "connection.messages_sent += count" in inspect.getsource(_grpclib_private.send_messages)
    assert_steps(_grpclib_private.sent_so_far, "connection = protocol.processor.connection")


def test_grpclib_looks_methods_up_where_explain_unknown_methods_answers() -> None:
    """Its table is ``Server._mapping``, read with ``get`` only, and a handler raising
    GRPCError before reading anything ends the call with that status."""
    assert "self._mapping = mapping" in inspect.getsource(grpclib.server.Server.__init__)
    handler = inspect.getsource(grpclib.server.request_handler)
    assert "method = mapping.get(method_name)" in handler
    assert handler.count("mapping") == 2  # the parameter and that one look-up
    assert "self._mapping, self._codec" in inspect.getsource(grpclib.server.Server)


def test_a_reset_cancels_the_handler_through_the_wrapper_cancelled_by_reset_reads() -> None:
    """grpclib cancels a reset stream's handler through ``Stream.wrapper`` (its
    ``cancel`` sets ``cancelled``) and logs any ending but ``CancelledError`` as a
    failure: what ``cancelled_by_reset`` and the server's handler rely on."""
    assert "stream.__terminated__(msg)" in inspect.getsource(
        grpclib.protocol.EventsProcessor.process_stream_reset
    )
    assert "self.wrapper.cancel(StreamTerminatedError(reason))" in inspect.getsource(
        grpclib.protocol.Stream.__terminated__
    )
    assert "wrapper = _stream.wrapper = Wrapper()" in inspect.getsource(
        grpclib.server.request_handler
    )
    wrapper = grpclib.utils.Wrapper()
    assert not wrapper.cancelled
    wrapper.cancel(grpclib.exceptions.StreamTerminatedError("reset"))
    assert wrapper.cancelled
    assert "self.cancel_failed = exc_type is not asyncio.CancelledError" in inspect.getsource(
        _grpclib_private._WRAPPER_EXIT  # grpclib's own, which settle_call_cancellations wraps
    )

    class Reset:
        _stream = type("ProtocolStream", (), {"wrapper": wrapper})()

    assert _grpclib_private.cancelled_by_reset(Reset())  # type: ignore[arg-type]
    Reset._stream.wrapper = None
    assert not _grpclib_private.cancelled_by_reset(Reset())  # type: ignore[arg-type]


# --- empty DATA frames and messages cut short, on a real server ---------------------------


def test_grpclibs_buffer_still_takes_an_empty_entry_for_the_end() -> None:
    """Why keep_empty_data_frames_out exists: without it an empty DATA frame ends a read."""
    read = inspect.getsource(grpclib.protocol.Buffer.read)
    assert "if not ack_size:" in read and "break" in read
    assert "stream.buffer.add(" in inspect.getsource(_grpclib_private._PROCESS_DATA_RECEIVED)


@asynccontextmanager
async def raw_call(port: int) -> AsyncIterator[Any]:
    """A call whose DATA frames the test writes itself (a peer that splits its messages)."""
    from avaproto.transport.framing import WireCodec

    channel = grpclib.client.Channel("127.0.0.1", port, codec=WireCodec())
    try:
        async with channel.request(
            METHOD_PATH,
            grpclib.const.Cardinality.STREAM_STREAM,
            MediaStreamMessage,
            MediaStreamMessage,
        ) as call:
            await call.send_request()
            await call.send_message(
                MediaStreamMessage(sequence_number=1, media_stream_descriptor=pipeline_descriptor())
            )
            yield call
    finally:
        channel.close()


def framed_sample(number: int) -> bytes:
    from avaproto.codec import encode_framed

    return encode_framed(
        MediaStreamMessage(
            sequence_number=number,
            media_sample=MediaSample(content_bytes=ContentBytes(bytes=bytes(FRAME_BYTES))),
        )
    )


@pytest.mark.rule("WIRE-1")
async def test_an_empty_data_frame_inside_a_message_is_no_end() -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            running(lambda frame: [], ServerConfig(port=0), grace=1) as server,
            raw_call(server.port) as call,
        ):
            data = framed_sample(2)
            raw = _grpclib_private.http2_stream(call)
            await raw.send_data(data[:7])
            await raw.send_data(b"")  # a legal empty DATA frame, mid-message
            await raw.send_data(data[7:])
            await raw.send_data(b"")  # and one between messages
            await raw.send_data(framed_sample(3))
            await call.end()
            answers = [message async for message in call]
    assert [a.ack_sequence_number for a in answers] == [1, 2, 3]


@pytest.mark.rule("WIRE-1")
async def test_a_message_cut_short_by_the_end_of_the_stream_is_wire_1() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running(lambda frame: [], ServerConfig(port=0), grace=1) as server:
            with pytest.raises(grpclib.exceptions.GRPCError) as caught:
                async with raw_call(server.port) as call:
                    data = framed_sample(2)
                    raw = _grpclib_private.http2_stream(call)
                    await raw.send_data(data[:-10], end_stream=True)
                    call._end_done = True  # ended on the wire, behind grpclib's back
                    async for _ in call:
                        pass
    assert caught.value.status is grpclib.const.Status.INVALID_ARGUMENT
    assert "[WIRE-1]" in (caught.value.message or "")
    assert "ended inside a message" in (caught.value.message or "")


# --- what the connection guard hooks into (avaproto.transport.guard) -------------------


def test_the_guards_hooks_are_where_grpclib_and_h2_call_them() -> None:
    """Each hook of the guard, looked up in grpclib's and h2's own code."""
    import h2.connection
    import hpack

    made = inspect.getsource(grpclib.protocol.H2Protocol.connection_made)
    # h2_connection: the connection's state machine, kept as Connection._connection.
    assert "self.connection = Connection(\n            h2_conn," in made
    # watch_events: grpclib hands every event to processor.process, looked up each time.
    assert "self.processor = EventsProcessor(self.handler, self.connection)" in made
    received = inspect.getsource(grpclib.protocol.H2Protocol.data_received)
    assert "self.processor.process(event)" in received
    # watch_sent_headers: every header block grpclib sends goes through send_headers.
    assert "self._h2_connection = h2_connection" in inspect.getsource(grpclib.protocol.Stream)
    for sending in (grpclib.protocol.Stream.send_headers, grpclib.protocol.Stream.send_request):
        assert "self._h2_connection.send_headers(" in inspect.getsource(sending)
    create = inspect.getsource(grpclib.protocol.Connection.create_stream)
    assert "return Stream(self, self._connection, self._transport," in create
    # track_streams: one task per stream, and the stream released in its finally only.
    accept = inspect.getsource(grpclib.server.Handler.accept)
    assert "self._tasks[stream] = self.loop.create_task(request_handler(" in accept
    assert "self.status_details_codec, self.dispatch, release_stream," in accept
    assert list(inspect.signature(grpclib.server.Handler.accept).parameters) == [
        "self",
        "stream",
        "headers",
        "release_stream",
    ]
    assert inspect.getsource(grpclib.server.request_handler).endswith(
        "    finally:\n        release_stream()\n"
    )
    # ...which credits the stream's unread bytes back to the connection (CONN-11),
    register = inspect.getsource(grpclib.protocol.EventsProcessor.register)
    assert "self.connection.ack(stream.id, _stream.buffer.unacked_size())" in register
    assert "_stream = _streams.pop(stream.id)" in register  # once only: a second pop fails
    # ...and a peer's reset cancels the task (cancelled before its first step, it never
    # reaches that finally).
    reset = inspect.getsource(grpclib.protocol.EventsProcessor.process_stream_reset)
    assert "self.handler.cancel(stream)" in reset
    assert "task.cancel()" in inspect.getsource(grpclib.server.Handler.cancel)
    # close_connection, and the guard's handler.close(): every call of the connection ends.
    close = inspect.getsource(grpclib.protocol.EventsProcessor.close)
    assert "self.connection.close()" in close and "self.handler.close()" in close
    assert "task.cancel()" in inspect.getsource(grpclib.server.Handler.close)
    # h2 gives an advertised header-list limit to its decoder only once acknowledged,
    # so the guard sets the decoder's limit itself.
    acked = inspect.getsource(h2.connection.H2Connection._local_settings_acked)
    assert "self.decoder.max_header_list_size = setting.new_value" in acked
    decoder = h2.connection.H2Connection().decoder
    assert isinstance(decoder, hpack.Decoder) and hasattr(decoder, "max_header_list_size")


# --- reading DATA frames past h2's frame buffer -------------------------------------------


def _server_with_open_stream() -> Any:
    """A real h2 server connection on which the client opened stream 1."""
    import h2.config
    import h2.connection

    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, [(":method", "POST"), (":path", "/"), (":scheme", "http"),
                            (":authority", "a")])  # fmt: skip
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    server.data_to_send()
    return server


class _Protocol:
    """What receive_frames uses of grpclib's protocol (a stand-in: the socket and
    grpclib's event handling are not what this test is about)."""

    def __init__(self, machine: Any) -> None:
        outer = self
        self.events: list[Any] = []
        self.closed = ""

        class Connection:
            _connection = machine

            def flush(self) -> None:
                machine.data_to_send()

        class Processor:
            def process(self, event: Any) -> None:
                outer.events.append(event)

            def close(self, reason: str) -> None:
                outer.closed = reason

        self.connection, self.processor = Connection(), Processor()


@pytest.mark.parametrize("end_stream", [False, True])
def test_a_data_frame_given_as_an_object_is_the_frame_h2_parses(end_stream: bool) -> None:
    import hyperframe.frame

    payload = bytes(range(200)) * 3
    parsed = _server_with_open_stream()
    wire = hyperframe.frame.DataFrame(1, payload)
    if end_stream:
        wire.flags.add("END_STREAM")
    theirs = parsed.receive_data(wire.serialize())
    direct = _server_with_open_stream()
    protocol = _Protocol(direct)
    frame = _grpclib_private.data_frame(1, memoryview(payload), end_stream)
    _grpclib_private.receive_frames(protocol, [frame])
    assert [type(e) for e in protocol.events] == [type(e) for e in theirs]
    assert bytes(protocol.events[0].data) == theirs[0].data == payload
    assert protocol.events[0].flow_controlled_length == theirs[0].flow_controlled_length
    for machine in (parsed, direct):
        assert machine.remote_flow_control_window(1) == 65535 - len(payload)
    assert direct.streams[1].state_machine.state == parsed.streams[1].state_machine.state
    # What receive_data does around each frame it parsed, and grpclib with the result.
    source = inspect.getsource(type(parsed).receive_data)
    assert "events.extend(self._receive_frame(frame))" in source
    assert "self._terminate_connection(e.error_code)" in source
    assert_steps(
        grpclib.protocol.H2Protocol.data_received,
        "except ProtocolError:",
        "self.processor.close('Protocol error')",
        "self.connection.flush()",
        "self.processor.process(event)",
    )


@pytest.mark.parametrize("stream_id", [0, 1])
def test_a_window_update_given_as_an_object_is_the_frame_h2_parses(stream_id: int) -> None:
    import hyperframe.frame

    parsed, direct = _server_with_open_stream(), _server_with_open_stream()
    wire = hyperframe.frame.WindowUpdateFrame(stream_id, 1000)
    theirs = parsed.receive_data(wire.serialize())
    protocol = _Protocol(direct)
    _grpclib_private.receive_frames(protocol, [hyperframe.frame.WindowUpdateFrame(stream_id, 1000)])
    assert [(type(e), e.delta) for e in protocol.events] == [(type(e), e.delta) for e in theirs]
    for machine in (parsed, direct):
        assert machine.streams[1].outbound_flow_control_window == 65535 + (1000 if stream_id else 0)
        assert machine.outbound_flow_control_window == 65535 + (0 if stream_id else 1000)


def test_a_data_frame_h2_refuses_closes_the_connection_as_receive_data_does() -> None:
    machine = _server_with_open_stream()
    protocol = _Protocol(machine)
    too_much = memoryview(bytes(70_000))  # past the stream's window of 65,535
    _grpclib_private.receive_frames(protocol, [_grpclib_private.data_frame(1, too_much, False)])
    assert protocol.closed == "Protocol error"
    assert b"\x07" in machine.data_to_send()  # a GOAWAY (type 7) is queued


class _Buffered:
    """A grpclib Buffer under stream 1 of a real h2 connection, as read_message reads
    it; its acknowledgements go to h2 as grpclib's ``Connection.ack`` sends them."""

    id = 1

    def __init__(self, pieces: list[bytes | memoryview], eof: bool) -> None:
        self._h2_connection = machine = _server_with_open_stream()
        self.buffer = grpclib.protocol.Buffer(self._ack)
        for piece in pieces:
            self.buffer.add(piece, len(piece) + 1)  # flow-controlled length: padding too
        if eof:
            self.buffer.eof()
        self.sent = b""  # the WINDOW_UPDATEs h2 queued, as grpclib's flush writes them
        self.machine = machine

    def _ack(self, size: int) -> None:
        if size:  # grpclib.protocol.Connection.ack
            self.machine.acknowledge_received_data(size, self.id)
            self.sent += self.machine.data_to_send()

    def acknowledged(self) -> tuple[object, ...]:
        """What h2 made of the acknowledgements: counts, windows, frames sent."""
        connection = self.machine._inbound_flow_control_window_manager
        stream = self.machine.streams[self.id]._inbound_window_manager
        return (
            connection._bytes_processed,
            connection.current_window_size,
            stream._bytes_processed,
            stream.current_window_size,
            self.sent,
        )

    async def recv_data(self, size: int) -> bytes:
        return await self.buffer.read(size)


@pytest.mark.parametrize("consumed", [0, 30_000, 65_535])
def test_acknowledge_counts_and_updates_windows_as_connection_ack(consumed: int) -> None:
    """Read bytes acknowledged at once, or through grpclib's ``Connection.ack`` where h2
    has a WINDOW_UPDATE to send: h2's counts, windows and frames come out the same."""
    import random

    rng = random.Random(consumed)
    ours, theirs = _Buffered([], False), _Buffered([], False)
    for side in (ours, theirs):
        stream = side.machine.streams[1]
        for manager in (side.machine._inbound_flow_control_window_manager,
                        stream._inbound_window_manager):  # fmt: skip
            manager.current_window_size -= consumed  # bytes received, not yet read
    # Byte by byte first, through every threshold, then in steps of all sizes.
    sizes = [1] * 40_000 + [rng.choice([0, 1, 50, 1000, 5000, 20_000]) for _ in range(400)]
    for size in sizes:
        _grpclib_private.acknowledge(ours, size)  # type: ignore[arg-type]
        theirs._ack(size)
        assert ours.acknowledged() == theirs.acknowledged()
    assert bool(theirs.sent) == bool(consumed)  # updates fell due where bytes came in
    source = inspect.getsource(h2.windows.WindowManager._maybe_update_window)
    assert "self._bytes_processed >= (self.max_window_size // 2)" in source
    assert "(self.current_window_size == 0) and (" in source
    assert "self._bytes_processed > min(1024, self.max_window_size // 4))" in source
    assert_steps(grpclib.protocol.Connection.ack,
                 "self._connection.acknowledge_received_data(size, stream_id)",
                 "self.flush()")  # fmt: skip


@pytest.mark.parametrize(
    ("pieces", "reads", "eof"),
    [
        ([b"p" * 5 + b"a" * 100], [5, 100], False),  # one frame: prefix and body
        ([b"p" * 5 + b"a" * 100 + b"q" * 5 + b"b" * 7], [5, 100, 5, 7], False),
        ([b"p" * 3, b"pp" + b"a" * 10, b"a" * 20], [5, 30], False),  # bytes: joined
        ([b"p" * 5 + b"a" * 10], [5, 10, 5], True),  # then the end
        ([b"p" * 5 + b"a" * 4], [5, 10], True),  # cut short
    ],
)
async def test_receive_exactly_reads_what_buffer_read_reads(
    pieces: list[bytes], reads: list[int], eof: bool
) -> None:
    ours, theirs = _Buffered(pieces, eof), _Buffered(pieces, eof)

    async def outcome(read: Any, size: int) -> object:
        try:
            return bytes(await read(size))
        except AssertionError:
            return AssertionError

    for size in reads:
        mine = await outcome(
            lambda n: _grpclib_private.receive_exactly(ours, n),
            size,  # type: ignore[arg-type]
        )
        assert mine == await outcome(theirs.recv_data, size)
    assert ours.acknowledged() == theirs.acknowledged()


async def test_a_body_read_into_one_buffer_is_returned_as_a_view_of_it() -> None:
    whole = bytearray(b"P" * 5 + bytes(range(256)) * 40)
    view = memoryview(whole)
    pieces: list[bytes | memoryview] = [view[:3000], view[3000:7000], view[7000:]]
    stream = _Buffered(pieces, eof=False)
    assert bytes(await _grpclib_private.receive_exactly(stream, 5)) == b"P" * 5  # type: ignore[arg-type]
    body = await _grpclib_private.receive_exactly(stream, len(whole) - 5)  # type: ignore[arg-type]
    assert isinstance(body, memoryview) and body.obj is whole and bytes(body) == whole[5:]
    assert stream.acknowledged()[::2] == (
        3001 + 4001 + len(whole) - 7000 + 1,
        3001 + 4001 + len(whole) - 7000 + 1,
        b"",
    )
    # Buffer.read's own fields, which receive_exactly takes pieces from as it does.
    assert_steps(
        grpclib.protocol.Buffer.read,
        "data, data_size, ack_size = await self._unacked.get()",
        "self._acked.append(AckedData(memoryview(data), data_size))",
        "self._acked_size += data_size",
        "self._ack_callback(ack_size)",
        "self._acked_size -= size",
    )


# --- DATA and WINDOW_UPDATE frames taken without h2's objects -----------------------------


def _prefixed(body: bytes) -> bytes:
    return b"\x00" + len(body).to_bytes(4, "big") + body


class _GrpclibSide:
    """What take_data and take_window_update use of grpclib's protocol: its connection
    (the h2 machine, counters) and its processor (streams with a real grpclib Buffer).
    A stand-in: grpclib's own ``process_data_received`` and ``process_window_updated``
    run on it, so both paths are compared on the same objects."""

    def __init__(self, machine: Any, stream_ids: tuple[int, ...] = (1,)) -> None:
        _grpclib_private.keep_empty_data_frames_out()  # as every server does

        class Connection:
            _connection = machine
            data_received = 0
            last_data_received = 0.0

            def ack(self, stream_id: int, size: int) -> None:
                machine.acknowledge_received_data(size, stream_id)

        class Stream:
            def __init__(self) -> None:
                self.buffer = grpclib.protocol.Buffer(lambda size: None)
                self.data_received = 0
                self.window_updated = anyio.Event()

        class Processor:
            def __init__(self) -> None:
                self.connection = Connection()
                self.processors: dict[Any, Any] = {}
                self.streams = {stream_id: Stream() for stream_id in stream_ids}

        self.processor = Processor()
        self.connection = self.processor.connection

    def buffered(self, stream_id: int = 1) -> list[bytes]:
        if stream_id not in self.processor.streams:
            return []
        queue = self.processor.streams[stream_id].buffer._unacked
        return [bytes(item.data) for item in list(queue._queue)]  # type: ignore[attr-defined]

    def through_h2(self, frame: Any) -> None:
        """h2 parses the frame's bytes; grpclib's own processors take its events."""
        import h2.events

        for event in self.connection._connection.receive_data(frame.serialize()):
            if isinstance(event, h2.events.DataReceived):
                grpclib.protocol.EventsProcessor.process_data_received(self.processor, event)  # type: ignore[arg-type]
            elif isinstance(event, h2.events.WindowUpdated):
                grpclib.protocol.EventsProcessor.process_window_updated(self.processor, event)  # type: ignore[arg-type]


def _windows(machine: Any) -> tuple[int, ...]:
    stream = machine.streams[1]
    return (
        machine._inbound_flow_control_window_manager.current_window_size,
        stream._inbound_window_manager.current_window_size,
        stream._actual_content_length,
        machine.outbound_flow_control_window,
        stream.outbound_flow_control_window,
    )


def test_frames_are_taken_where_h2_changes_nothing_but_windows() -> None:
    """h2's own tables: in these states, RECV_DATA and RECV_WINDOW_UPDATE keep the state
    and only make their event; and the bookkeeping around them is what take_* do."""
    import h2.connection
    import h2.stream

    machine = h2.stream.H2StreamStateMachine
    for state in _grpclib_private.RECEIVE_DATA_STATES:
        key = (state, h2.stream.StreamInputs.RECV_DATA)
        assert h2.stream._transitions[key] == (machine.data_received, state)
    for state in _grpclib_private.WINDOW_UPDATE_STATES:
        key = (state, h2.stream.StreamInputs.RECV_WINDOW_UPDATE)
        assert h2.stream._transitions[key] == (machine.window_updated, state)
    table = h2.connection.H2ConnectionStateMachine._transitions
    for state in _grpclib_private.DATA_CONNECTION_STATES:
        for received in (h2.connection.ConnectionInputs.RECV_DATA,
                         h2.connection.ConnectionInputs.RECV_WINDOW_UPDATE):  # fmt: skip
            assert table[(state, received)] == (None, state)
    # The bookkeeping around those rows, line by line, as take_data and
    # take_window_update mirror it (grpclib's data processor as it was before
    # keep_empty_data_frames_out wrapped it).
    mirrored: list[tuple[object, tuple[str, ...]]] = [
        (machine.data_received, ("if not self.headers_received:",)),
        (
            h2.connection.H2Connection._receive_data_frame,
            ("self._inbound_flow_control_window_manager.window_consumed(",),
        ),
        (
            h2.stream.H2Stream.receive_data,
            (
                "self._inbound_window_manager.window_consumed(flow_control_len)",
                "self._track_content_length(len(data), end_stream)",
            ),
        ),
        (
            h2.stream.H2Stream._track_content_length,
            ("self._actual_content_length += length", "if expected is not None:"),
        ),
        (
            h2.stream.H2Stream.receive_window_update,
            ("self.outbound_flow_control_window = guard_increment_window(",),
        ),
        (
            h2.connection.H2Connection._receive_window_update_frame,
            ("self.outbound_flow_control_window = guard_increment_window(",),
        ),
        (
            _grpclib_private._PROCESS_DATA_RECEIVED,
            (
                "stream.buffer.add(",
                "stream.data_received += size",
                "self.connection.data_received += size",
                "self.connection.last_data_received = time.monotonic()",
            ),
        ),
        (
            grpclib.protocol.EventsProcessor.process_window_updated,
            (
                "for value in self.streams.values():",
                "value.window_updated.set()",
                "stream.window_updated.set()",
            ),
        ),
        (grpclib.protocol.EventsProcessor.close, ("del self.processors",)),
        # taking_frames: grpclib's close drops h2's frame table, which h2 then lacks.
        (grpclib.protocol.Connection.close, ("del self._connection._frame_dispatch_table",)),
        (h2.connection.H2Connection._receive_frame, ("self._frame_dispatch_table[",)),
    ]
    for function, steps in mirrored:
        assert_steps(function, *steps)


@pytest.mark.parametrize("size", [0, 37, 16_384])
def test_a_data_frame_taken_is_what_h2_and_grpclib_make_of_it(size: int) -> None:
    import hyperframe.frame

    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    theirs, ours = (
        _GrpclibSide(_server_with_open_stream()),
        _GrpclibSide(_server_with_open_stream()),
    )
    theirs.through_h2(hyperframe.frame.DataFrame(1, payload))
    taker = _grpclib_private.data_taker(ours, 1, len(payload))
    assert taker is not None
    _grpclib_private.take_data(ours, taker, payload)
    assert _windows(ours.connection._connection) == _windows(theirs.connection._connection)
    assert ours.buffered() == theirs.buffered()
    assert ours.buffered() == ([payload] if size else [])
    for side in (ours, theirs):
        assert side.processor.streams[1].data_received == side.connection.data_received == size
    assert (ours.connection.last_data_received > 0) == bool(size)


def test_a_data_frame_h2_may_refuse_is_left_to_it() -> None:
    def untouched(side: _GrpclibSide, stream_id: int, payload: bytes) -> bool:
        before = _windows(side.connection._connection)
        taker = _grpclib_private.data_taker(side, stream_id, len(payload))
        after = _windows(side.connection._connection)
        return taker is None and after == before and not side.buffered()

    side = _GrpclibSide(_server_with_open_stream())
    assert untouched(side, 1, bytes(70_000))  # past the windows: h2's FLOW_CONTROL_ERROR
    assert untouched(side, 3, b"x")  # a stream never opened: h2's PROTOCOL_ERROR
    assert untouched(_GrpclibSide(_server_with_open_stream(), stream_ids=()), 1, b"x")
    closed = _GrpclibSide(_server_with_open_stream())
    del closed.processor.processors  # grpclib closed the connection
    assert untouched(closed, 1, b"x")
    ended = _GrpclibSide(_server_with_open_stream())
    import hyperframe.frame

    last = hyperframe.frame.DataFrame(1, b"")
    last.flags.add("END_STREAM")
    ended.through_h2(last)  # half-closed (remote): more DATA is a stream error
    assert untouched(ended, 1, b"x")
    counted = _GrpclibSide(_server_with_open_stream())
    counted.connection._connection.streams[1]._expected_content_length = 10
    assert untouched(counted, 1, b"x")  # content-length: h2 counts against it


@pytest.mark.parametrize("stream_id", [0, 1])
def test_a_window_update_taken_is_what_h2_and_grpclib_make_of_it(stream_id: int) -> None:
    import hyperframe.frame

    theirs, ours = (
        _GrpclibSide(_server_with_open_stream()),
        _GrpclibSide(_server_with_open_stream()),
    )
    theirs.through_h2(hyperframe.frame.WindowUpdateFrame(stream_id, 1000))
    assert _grpclib_private.take_window_update(ours, stream_id, 1000)
    assert _windows(ours.connection._connection) == _windows(theirs.connection._connection)
    for side in (ours, theirs):
        assert side.processor.streams[1].window_updated.is_set()
    # Past the largest window h2 must refuse it (a connection or a stream error).
    assert not _grpclib_private.take_window_update(ours, stream_id, 2**31 - 1)
    assert _windows(ours.connection._connection) == _windows(theirs.connection._connection)
    assert not _grpclib_private.take_window_update(ours, 3, 1000)  # no such stream


@pytest.mark.parametrize(
    ("pieces", "eof"),
    [
        ([_prefixed(b"a" * 10)], False),  # one message, one piece: taken whole
        ([_prefixed(b"a" * 10) + _prefixed(b"bb")], False),  # two in one piece
        ([_prefixed(b"")], True),  # an empty message, then the end
        ([_prefixed(b"a" * 10)[:3], _prefixed(b"a" * 10)[3:]], False),  # a prefix cut
        ([_prefixed(b"a" * 10)[:8], b"a" * 7], False),  # a body cut
        ([_prefixed(b"a" * 10)[:8]], True),  # cut short by the end
        ([], True),  # the end alone
    ],
)
async def test_receive_whole_reads_what_buffer_read_reads(pieces: list[bytes], eof: bool) -> None:
    """Messages read with receive_whole first, as read_message does, are the bytes
    Buffer.read gives, and the acknowledgements the same."""
    ours, theirs = _Buffered(list(pieces), eof), _Buffered(list(pieces), eof)

    async def read_theirs() -> object:
        try:
            prefix = await theirs.recv_data(5)
            return bytes(prefix + await theirs.recv_data(int.from_bytes(prefix[1:], "big")))
        except AssertionError:
            return AssertionError

    async def read_ours() -> object:
        whole = await _grpclib_private.receive_whole(ours)  # type: ignore[arg-type]
        if whole is not None:
            return bytes(whole)
        try:
            prefix = await _grpclib_private.receive_exactly(ours, 5)  # type: ignore[arg-type]
            size = int.from_bytes(prefix[1:], "big")
            return bytes(prefix) + bytes(
                await _grpclib_private.receive_exactly(ours, size)  # type: ignore[arg-type]
            )
        except AssertionError:
            return AssertionError

    with anyio.fail_after(TIMEOUT):
        while eof or ours.buffer._acked or not ours.buffer._unacked.empty():
            mine = await read_ours()
            assert mine == await read_theirs()
            if mine in (b"", AssertionError):
                break
        assert ours.acknowledged() == theirs.acknowledged()


def test_a_read_of_whole_frames_is_taken_and_the_rest_left_to_h2_in_order() -> None:
    """Frames the direct path leaves to h2 (a WINDOW_UPDATE on a closed stream) go to
    h2 with the rest of the read from that frame on: what follows it arrives, after what
    came before it, as h2 takes it."""
    import h2.config
    import h2.connection
    import h2.events
    import hyperframe.frame

    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    request = [(":method", "POST"), (":path", "/"), (":scheme", "http"), (":authority", "a")]
    client.send_headers(1, request)
    client.send_headers(3, request, end_stream=True)
    machine = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    machine.initiate_connection()
    machine.receive_data(client.data_to_send())
    machine.send_headers(3, [(":status", "200")], end_stream=True)  # stream 3 closed
    machine.data_to_send()
    side = _GrpclibSide(machine)

    def process(event: Any) -> None:
        if isinstance(event, h2.events.DataReceived):
            grpclib.protocol.EventsProcessor.process_data_received(side.processor, event)  # type: ignore[arg-type]

    side.connection.flush = machine.data_to_send  # type: ignore[attr-defined]
    side.processor.process = process  # type: ignore[attr-defined]
    first, second = b"first" * 10, b"second" * 10
    read = b"".join(
        f.serialize()
        for f in (
            hyperframe.frame.DataFrame(1, first),
            hyperframe.frame.WindowUpdateFrame(3, 10),  # h2's: stream 3 is closed
            hyperframe.frame.DataFrame(1, second),
        )
    )
    assert _grpclib_private.take_whole_frames(side, read)
    assert side.buffered() == [first, second]
    # The first, far smaller than the read, was copied out: it does not keep the read.
    queued = list(side.processor.streams[1].buffer._unacked._queue)  # type: ignore[attr-defined]
    assert type(queued[0].data) is bytes
    assert not _grpclib_private.take_whole_frames(side, read[:20])  # a frame cut short


async def test_the_pipelines_connections_are_made_where_read_answers_directly_hooks_in() -> None:
    import h2.connection
    import h2.frame_buffer

    assert_steps(
        grpclib.client.Channel._protocol_factory,
        "return H2Protocol(Handler(), self._config, self._h2_config)",
    )
    assert "self._protocol_factory," in inspect.getsource(grpclib.client.Channel._create_connection)
    buffer = h2.connection.H2Connection().incoming_buffer
    assert isinstance(buffer, h2.frame_buffer.FrameBuffer)
    assert buffer._data == bytearray() and buffer._headers_buffer == []
    assert_steps(h2.frame_buffer.FrameBuffer.add_data, "self._data += data_view")
    channel = grpclib.client.Channel("127.0.0.1", 1)
    _grpclib_private.read_answers_directly(channel, ConnectionLimits())
    made = channel._protocol_factory()
    assert isinstance(made, grpclib.protocol.H2Protocol) and made.config is channel._config
    channel.close()


def test_the_pipelines_reading_does_what_grpclib_does_with_a_read() -> None:
    """``_AnswerReading.data_received`` is grpclib's own, with h2's refusal kept as the
    call's error (grpclib logs it at DEBUG and ends the calls as "Protocol error"); the
    pending frame's header is read where h2 buffers it, and a client connection that
    never asked for pushes still takes ENABLE_PUSH from the extension's SETTINGS."""
    import h2.connection
    import h2.frame_buffer
    import h2.settings

    assert_steps(
        grpclib.protocol.H2Protocol.data_received,
        "events = self.connection.feed(data)",
        "except ProtocolError:",
        "self.processor.close('Protocol error')",
        "self.connection.flush()",
        "for event in events:",
        "self.processor.process(event)",
    )
    assert_steps(grpclib.protocol.Connection.feed, "return self._connection.receive_data(data)")
    assert_steps(
        h2.frame_buffer.FrameBuffer.__next__,
        "if len(self._data) < length + 9:",
        "self._validate_frame_length(length)",
    )
    assert_steps(
        h2.connection.H2Connection.receive_data, "self._terminate_connection(e.error_code)"
    )
    assert h2.settings.SettingCodes.ENABLE_PUSH == 0x2


def test_the_goaway_hook_and_the_calls_guard_are_where_h2_and_grpclib_use_them() -> None:
    """``finish_after_goaway`` replaces h2's GOAWAY handler in the table h2 looks up per
    frame, and tells grpclib's channel through the flag it checks before reusing a
    connection; ``ended_with_call`` is the guard grpclib's own reads wait inside, which
    grpclib cancels when it ends a call."""
    import h2.connection
    import hyperframe.frame

    machine = h2.connection.H2Connection()
    handler = machine._frame_dispatch_table[hyperframe.frame.GoAwayFrame]
    assert handler == machine._receive_goaway_frame
    assert "self._frame_dispatch_table[frame.__class__](frame)" in inspect.getsource(
        h2.connection.H2Connection._receive_frame
    )
    assert "ConnectionInputs.RECV_GOAWAY" in inspect.getsource(
        h2.connection.H2Connection._receive_goaway_frame
    )
    assert "not self._protocol.handler.connection_lost" in inspect.getsource(grpclib.client.Channel)
    assert grpclib.client.Handler.connection_lost is False
    assert "self.wrapper.cancel(StreamTerminatedError(reason))" in inspect.getsource(
        grpclib.protocol.Stream.__terminated__
    )
    assert "with self._wrapper:" in inspect.getsource(grpclib.client.Stream.recv_message)
    assert "self._transport = transport" in inspect.getsource(grpclib.protocol.Connection)


def test_unknown_frames_are_ignored_where_grpclib_looks_up_its_handlers() -> None:
    """``ignore_unknown_frames`` adds handlers to the table grpclib looks each event up
    in, and h2 still makes the events it adds them for."""
    import h2.events

    assert "self.processors = {" in inspect.getsource(grpclib.protocol.EventsProcessor.__init__)
    assert "proc = self.processors[event.__class__]" in inspect.getsource(
        grpclib.protocol.EventsProcessor.process
    )
    assert "UnknownFrameReceived(frame=frame)" in inspect.getsource(h2.connection.H2Connection)
    for event in _grpclib_private._IGNORED_EVENTS:
        assert issubclass(event, h2.events.Event)


@pytest.mark.parametrize("settled", [False, True])
async def test_a_call_ended_while_waiting_leaves_its_task_uncancelled_once_settled(
    settled: bool,
) -> None:
    """Why settle_call_cancellations exists: grpclib's guard of a call cancels the task
    waiting in it, raises the call's error instead, and never takes the request back."""
    original = grpclib.utils.Wrapper.__exit__
    if settled:
        _grpclib_private.settle_call_cancellations()
    else:
        grpclib.utils.Wrapper.__exit__ = _grpclib_private._WRAPPER_EXIT  # type: ignore[method-assign]
    try:
        wrapper = grpclib.utils.Wrapper()

        async def waits() -> None:
            with wrapper:
                await asyncio.sleep(10)

        task = asyncio.ensure_future(waits())
        await asyncio.sleep(0)  # inside the guard, waiting
        wrapper.cancel(grpclib.exceptions.StreamTerminatedError("Connection lost"))
        with pytest.raises(grpclib.exceptions.StreamTerminatedError):
            await task
        assert task.cancelling() == (0 if settled else 1)
    finally:
        grpclib.utils.Wrapper.__exit__ = original  # type: ignore[method-assign]


@pytest.mark.rule("WIRE-2")
@pytest.mark.parametrize(("slice_", "interleaved"), [(0.0, True), (3600.0, False)])
async def test_decoding_messages_read_together_lets_other_work_run_once_it_took_its_slice(
    monkeypatch: pytest.MonkeyPatch, slice_: float, interleaved: bool
) -> None:
    """Three messages of inferences that arrived together, read by the server's reader:
    once decoding took its slice (here at once, or never), other tasks run before the
    next is decoded. A read of 150 such messages (9,000 inferences each, 51 bytes once
    compressed) held the event loop, every other stream, for 6 s."""
    from avaproto.codec import encode_framed
    from avaproto.transport import framing

    monkeypatch.setattr(framing, "PACING_SLICE", slice_)
    many = [Inference()] * 50
    framed = [
        encode_framed(
            MediaStreamMessage(sequence_number=n, media_sample=MediaSample(inferences=many))
        )
        for n in (2, 3, 4)
    ]
    stream, pacing, order = _Buffered(framed, True), framing.Pacing(), []

    async def read_all() -> None:
        for _ in framed:
            message = await framing.read_message(
                stream,
                1 << 20,
                limit_rule="SRV-5",
                pacing=pacing,  # type: ignore[arg-type]
            )
            assert message is not None
            order.append(message.sequence_number)

    async def other() -> None:
        for _ in framed:
            order.append("other")
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read_all)
            tasks.start_soon(other)
    readers_first = [2, 3, 4, "other", "other", "other"]
    assert (order != readers_first) is interleaved, order
    assert [n for n in order if n != "other"] == [2, 3, 4]


@pytest.mark.rule("WIRE-2")
async def test_a_large_message_that_is_not_a_plain_sample_is_decoded_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pacing yields between messages, never inside one: 20,000 map entries (279 bytes
    compressed, within the field budget) took a quarter of a second of the loop. Such a
    message is decoded in a thread; an embedded frame, however large, at once."""
    import threading

    from avaproto.codec import encode_framed
    from avaproto.transport import framing

    where: list[bool] = []
    decode = framing.decode_message

    def seen(data: Any) -> MediaStreamMessage:
        where.append(threading.current_thread() is threading.main_thread())
        return decode(data)

    monkeypatch.setattr(framing, "decode_message", seen)
    many = MediaSample(inferences=[Inference(subtype="x" * 100)] * 400)  # about 40 KB
    frame = MediaSample(content_bytes=ContentBytes(bytes=bytes(framing.APART_BYTES * 4)))
    # A frame with an upstream node's inference: not the usual layout, but its frame
    # costs nothing to read, and a thread for it was nine times the cost.
    noted = MediaSample(content_bytes=frame.content_bytes, inferences=[Inference(subtype="x")])
    framed = [
        encode_framed(MediaStreamMessage(sequence_number=2, media_sample=many)),
        encode_framed(MediaStreamMessage(sequence_number=3, media_sample=frame)),
        encode_framed(MediaStreamMessage(sequence_number=4, media_sample=MediaSample())),
        encode_framed(MediaStreamMessage(sequence_number=5, media_sample=noted)),
    ]
    stream, pacing = _Buffered(framed, True), framing.Pacing()
    with anyio.fail_after(TIMEOUT):
        numbers = []
        for _ in framed:
            message = await framing.read_message(
                stream,  # type: ignore[arg-type]
                1 << 20,
                limit_rule="SRV-5",
                pacing=pacing,
            )
            assert message is not None
            numbers.append(message.sequence_number)
    assert numbers == [2, 3, 4, 5]
    assert where == [False, True, True]  # the plain frame went past decode_message


@pytest.mark.rule("WIRE-2")
def test_event_loops_in_two_threads_each_decode_apart() -> None:
    """The thread that decodes such messages is one per event loop: one limiter shared
    by two loops in two threads was released from the wrong thread, and the other
    loop's decodes waited for ever."""
    import threading

    from avaproto.codec import encode_framed
    from avaproto.transport import framing

    many = MediaSample(inferences=[Inference(subtype="x" * 100)] * 400)
    framed = encode_framed(MediaStreamMessage(sequence_number=2, media_sample=many))
    decoded: list[int] = []

    async def decode_all() -> None:
        pacing = framing.Pacing()
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tasks:
                for _ in range(20):
                    tasks.start_soon(pacing.decode, framed[5:])
        decoded.append(20)

    threads = [threading.Thread(target=anyio.run, args=(decode_all,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 2)
    assert decoded == [20, 20]
