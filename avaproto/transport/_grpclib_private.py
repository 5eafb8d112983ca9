"""Every use of grpclib's, h2's and hyperframe's private names, in one place.

Each function here names what it needs of a library's internals and why; each is
guarded by tests/transport/test_grpclib_private.py, which checks against the library's
own objects (its classes, its code), so an upgrade that changes them fails a test, not
a user's stream. The uses:

* sending: grpclib's public API sends one message per call, one DATA frame and one
  socket write each, after one more copy of the message to prepend gRPC's prefix; the
  engine answers a window at once and the pipeline sends frames of megabytes, so both
  write to the call's HTTP/2 stream themselves;
* receiving: messages are read off the HTTP/2 stream, size first, before grpclib
  buffers them, and the extension's trailers as soon as it ends its direction;
* the server: its listener (the port chosen, closed on drain) and its connections
  (HTTP/2 settings, TLS diagnostics);
* hyperframe's frame reprs, which h2 builds for every frame it receives;
* empty DATA frames, which grpclib's buffer would take for the end of the stream.
"""

from __future__ import annotations

import asyncio
import binascii
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import grpclib.client
import grpclib.const
import grpclib.exceptions
import grpclib.protocol
import grpclib.server
import hyperframe.frame


async def send_messages(stream: grpclib.server.Stream[Any, Any], framed: Sequence[bytes]) -> None:
    """Send messages (each with its gRPC prefix) on a server stream as one DATA frame.

    What ``grpclib.server.Stream.send_message`` does for each message: initial metadata
    first, then the data, then the stream's counters.
    """
    if not stream._send_initial_metadata_done:
        await stream.send_initial_metadata()
    await stream._stream.send_data(framed[0] if len(framed) == 1 else b"".join(framed))
    count = len(framed)
    stream._send_message_done = True
    stream._messages_sent += count
    connection = stream._stream.connection
    connection.messages_sent += count
    connection.last_message_sent = time.monotonic()


async def send_client_message(stream: grpclib.client.Stream[Any, Any], framed: bytes) -> None:
    """Send one message (with its gRPC prefix) on a client stream, as grpclib would.

    ``grpclib.client.Stream.send_message`` encodes the message, then copies it once more
    to prepend the prefix; an embedded frame already is one buffer with its prefix.
    """
    if not stream._send_request_done:
        await stream.send_request()
    if stream._end_done:
        raise grpclib.exceptions.ProtocolError("Stream is ended")
    with stream._wrapper:
        await stream._stream.send_data(framed)
        stream._send_message_done = True
        stream._messages_sent += 1
        connection = stream._stream.connection
        connection.messages_sent += 1
        connection.last_message_sent = time.monotonic()


# --- the HTTP/2 stream under a call -------------------------------------------------------


def http2_stream(stream: grpclib.server.Stream[Any, Any] | grpclib.client.Stream[Any, Any]) -> Any:
    """The call's ``grpclib.protocol.Stream``: read before grpclib buffers a message."""
    return stream._stream


async def receive_initial_metadata(stream: grpclib.client.Stream[Any, Any]) -> None:
    """Receive the extension's headers once, as ``recv_message`` does before its first read."""
    if not stream._recv_initial_metadata_done:
        await stream.recv_initial_metadata()


def grpc_status(
    stream: grpclib.client.Stream[Any, Any], headers: Any
) -> tuple[grpclib.const.Status, str | None]:
    """The gRPC status and message in trailers (or a trailers-only response)."""
    status, message, _ = stream._process_grpc_status(dict(headers))
    return status, message


async def receive_trailers(stream: grpclib.client.Stream[Any, Any]) -> Any:
    """The extension's trailers. grpclib reads them only after our side ended; a
    pipeline needs them as soon as the extension ends its direction."""
    return await stream._stream.recv_trailers()


def received_headers(stream: grpclib.client.Stream[Any, Any]) -> tuple[Any, Any]:
    """(trailers, headers) received so far on the call, each None when none came."""
    return stream._stream.trailers, stream._stream.headers


def trailers_only(stream: grpclib.client.Stream[Any, Any]) -> bool:
    """Whether the extension answered with headers that carried its status (and ended).

    grpclib takes such headers for the trailers too; no other trailers will come.
    """
    return bool(stream._trailers_only)


def end_sent(stream: grpclib.client.Stream[Any, Any]) -> bool:
    return bool(stream._end_done)


# --- the server's listener and connections ------------------------------------------------


def listener(server: grpclib.server.Server) -> asyncio.Server | None:
    """The asyncio server grpclib listens with (None before ``start``, after ``close``)."""
    return cast("asyncio.Server | None", server._server)


def wrap_connections(server: grpclib.server.Server, wrap: Callable[[Any], Any]) -> None:
    """Have every connection ``server`` accepts made by ``wrap(grpclib's protocol)``."""
    make_protocol: Any = server._protocol_factory
    server._protocol_factory = lambda: wrap(make_protocol())  # type: ignore[method-assign]


def update_local_settings(protocol: Any, settings: dict[int, int]) -> None:
    """Advertise ``settings`` on a connection grpclib just made, and send them now."""
    protocol.connection._connection.update_settings(settings)
    protocol.connection.flush()


# --- hyperframe's frame reprs ---------------------------------------------------------------

_SHOWN_BYTES = 10  # hyperframe shows 20 hex digits
#: hyperframe's own functions, kept before ``quiet_frame_repr`` replaces them: the
#: replacements must give their text (tests/transport/test_http2.py compares).
LIBRARY_RAW_DATA_REPR = hyperframe.frame._raw_data_repr
LIBRARY_DATA_BODY_REPR = hyperframe.frame.DataFrame._body_repr


def _raw_data_repr(data: bytes | None) -> str:
    """hyperframe's ``_raw_data_repr``, same output, without hexlifying what it drops."""
    if not data:
        return "None"
    shown = binascii.hexlify(data[: _SHOWN_BYTES + 1]).decode("ascii")
    if len(shown) > 2 * _SHOWN_BYTES:
        shown = shown[: 2 * _SHOWN_BYTES] + "..."
    return "<hex:" + shown + ">"


def _data_body_repr(frame: hyperframe.frame.DataFrame) -> str:
    """What ``Frame._body_repr`` shows of a DATA frame, without serializing its body.

    The generic method serializes the whole body (a copy of the payload, padding
    included) to show its first bytes; h2 asks for it on every frame it receives, for
    a trace log that is off. Only the first bytes are built here: the text is the same.
    """
    head = frame.data[: _SHOWN_BYTES + 1]
    if "PADDED" in frame.flags:
        head = bytes([frame.pad_length]) + head
        if len(head) < _SHOWN_BYTES + 1:
            head += b"\0" * frame.pad_length
    return _raw_data_repr(head[: _SHOWN_BYTES + 1])


def quiet_frame_repr() -> None:
    """Install the payload-independent frame reprs (idempotent)."""
    hyperframe.frame._raw_data_repr = _raw_data_repr
    hyperframe.frame.DataFrame._body_repr = _data_body_repr  # type: ignore[method-assign,assignment]


# --- empty DATA frames --------------------------------------------------------------------

_PROCESS_DATA_RECEIVED = grpclib.protocol.EventsProcessor.process_data_received


def _process_data_received(self: Any, event: Any) -> None:
    if not event.data and not event.flow_controlled_length:
        return  # an empty DATA frame: nothing to read, nothing to acknowledge
    _PROCESS_DATA_RECEIVED(self, event)


def keep_empty_data_frames_out() -> None:
    """Stop an empty DATA frame from reading as the end of a message (idempotent).

    HTTP/2 allows DATA frames of no bytes anywhere in a stream. grpclib queues one as
    data of size 0, and its buffer takes an entry of size 0 for the end of the stream:
    a message split around such a frame was cut short. The end of a stream arrives as an
    event of its own, so dropping the empty frame loses nothing.
    """
    grpclib.protocol.EventsProcessor.process_data_received = _process_data_received  # type: ignore[method-assign]
