"""The guards of ``avaproto.transport._grpclib_private``: grpclib's private names it uses.

Each test compares with grpclib's own objects (its code, its classes), so an upgrade of
grpclib that renames or changes what avaproto mirrors fails here first.
"""

from __future__ import annotations

import ast
import inspect
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
import pytest

from avaproto.messages import (
    METHOD_PATH,
    ContentBytes,
    MediaGraphExtensionStub,
    MediaSample,
    MediaStreamDescriptor,
    MediaStreamMessage,
)
from avaproto.server import running
from avaproto.transport import _grpclib_private
from avaproto.transport.grpc_server import ServerConfig
from tests.builders import FRAME_BYTES, pipeline_descriptor

pytestmark = pytest.mark.anyio
TIMEOUT = 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
    import hyperframe.frame

    assert callable(hyperframe.frame.Frame._body_repr)
    assert "DataFrame" in dir(hyperframe.frame)


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
