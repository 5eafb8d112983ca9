"""Every use of grpclib's, h2's and hyperframe's private names, in one place.

Each function here names what it needs of a library's internals and why; each is
guarded by tests/transport/test_grpclib_private.py, which checks against the library's
own objects (its classes, its code), so an upgrade that changes them fails a test, not
a user's stream. The uses:

* sending: grpclib's public API sends one message per call, one DATA frame and one
  socket write each, after one more copy of the message to prepend gRPC's prefix, and
  h2 copies each frame three times more; the engine answers a window at once and the
  pipeline sends frames of megabytes (from the caller's buffer, in pieces), so both
  write DATA frames to the transport themselves, doing h2's bookkeeping of them (its
  two flow-control windows);
* receiving: messages are read off the HTTP/2 stream, size first (or whole, when one
  arrived in one piece), a body that arrived in one piece (or in one buffer, see below)
  taken as a view rather than joined, the bytes read counted in h2's windows at once
  where no WINDOW_UPDATE is due, and the extension's trailers as soon as it ends its
  direction;
* frames read past h2's frame buffer, by the server's guard and the pipeline's
  connections: a DATA frame or WINDOW_UPDATE on a stream open for it is taken with
  h2's and grpclib's bookkeeping done at once (``take_data``, ``take_window_update``),
  any other goes to h2, as a frame object or as the bytes it came in;
* the server: its listener (the port chosen, closed on drain) and its connections
  (HTTP/2 settings, TLS diagnostics, and the hooks ``avaproto.transport.guard`` defends
  them with: each connection's h2 object, its events, the headers it sends, and the
  release of every stream it accepted);
* the pipeline's connections: a GOAWAY without an error lets the calls the extension
  took finish (h2 would close the connection on it), and reads made off the HTTP/2
  stream wait inside grpclib's guard of the call, so a lost connection ends them;
* the repr h2 builds of every frame it receives, for a log that is off;
* empty DATA frames, which grpclib's buffer would take for the end of the stream;
* the cancellation grpclib's guard of a call delivers when the call ends, which it
  never takes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, cast

import anyio
import grpclib.client
import grpclib.const
import grpclib.exceptions
import grpclib.protocol
import grpclib.server
import grpclib.utils
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import hyperframe.frame

from ..errors import RemoteProtocolError
from .addresses import peer_address
from .answer_guard import AnswerGuard
from .coalescing import CoalescingTransport
from .limits import ConnectionLimits

# --- sending DATA frames ------------------------------------------------------------------

#: A DATA frame's header: 24-bit length and type 0 (one big-endian word), flags, stream.
_DATA_HEAD = struct.Struct(">IBI")
#: Where h2's state machines take SEND_DATA without changing state or emitting events
#: (tests/transport/test_grpclib_private.py reads it off h2's own tables).
DATA_STREAM_STATES = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE)
DATA_CONNECTION_STATES = (
    h2.connection.ConnectionState.CLIENT_OPEN,
    h2.connection.ConnectionState.SERVER_OPEN,
)
#: Payloads up to this size are joined to their header (one write); larger ones are
#: written after it without being copied, but for this much of their start.
_JOIN_BELOW = 16 * 1024


def _write_frame(
    h2_stream: grpclib.protocol.Stream, chunk: bytes | memoryview | list[memoryview], size: int
) -> bool:
    """Write ``chunk`` (or the pieces of one) as one DATA frame (END_STREAM unset)
    straight to the transport.

    h2 would copy it three times (into a frame, the frame into its output buffer, the
    buffer out again, and once more first for a memoryview); its bookkeeping of such a
    frame is the two flow-control windows the frame takes, since SEND_DATA changes
    neither state machine in ``DATA_STREAM_STATES`` and ``DATA_CONNECTION_STATES``.
    False, having done nothing, where that does not hold (a stream not open, a window
    or the frame size too small, h2's own output pending): h2 must then send it.
    """
    machine = h2_stream._h2_connection
    stream_id = h2_stream.id
    stream = machine.streams.get(stream_id) if stream_id is not None else None
    if (
        stream is None
        or stream.state_machine.state not in DATA_STREAM_STATES
        or machine.state_machine.state not in DATA_CONNECTION_STATES
        or machine._data_to_send
        or size > machine.max_outbound_frame_size
        or size > stream.outbound_flow_control_window
        or size > machine.outbound_flow_control_window
    ):
        return False
    stream.outbound_flow_control_window -= size
    machine.outbound_flow_control_window -= size
    head = _DATA_HEAD.pack(size << 8, 0, stream_id)
    transport = h2_stream._transport
    if size < _JOIN_BELOW and not isinstance(chunk, list):
        # An answer, or a reference to shared memory; an answer with more of its
        # stream's samples waiting to be read leaves with theirs (``coalescing``).
        if isinstance(transport, CoalescingTransport) and h2_stream.buffer._unacked.qsize():
            transport.write_later(head + chunk)
        else:
            transport.write(head + chunk)
    else:
        # Small pieces go with what precedes them, large ones as they are (not copied)
        # but for their first _JOIN_BELOW bytes, which go with what precedes them: a
        # receiver that reads a header alone cannot tell how to read its frame
        # (avaproto's guard reads one into a buffer of its own only once 16 KiB of it
        # came with its header).
        pending = bytearray(head)
        for piece in chunk if isinstance(chunk, list) else [memoryview(chunk)]:
            if len(piece) < _JOIN_BELOW:
                pending += piece
                continue
            pending += piece[:_JOIN_BELOW]
            transport.write(pending)
            transport.write(piece[_JOIN_BELOW:])
            pending = bytearray()
        if pending:
            transport.write(pending)
    h2_stream.data_sent += size
    connection = h2_stream.connection
    connection.data_sent += size
    connection.data_send_process()
    return True


def _send_now(h2_stream: grpclib.protocol.Stream, data: bytes) -> bool:
    """Send ``data`` as one DATA frame if nothing needs waiting for; False if something does.

    A small message (an answer, a reference to shared memory) that fits the
    flow-control window and one frame leaves at once, without an await.
    """
    if h2_stream.id is None or not h2_stream.connection.write_ready.is_set():
        return False
    return _write_frame(h2_stream, data, len(data))


async def send_data(
    h2_stream: grpclib.protocol.Stream,
    data: bytes | memoryview | Sequence[bytes | bytearray | memoryview],
    *,
    window_timeout: float | None = None,
) -> None:
    """``grpclib.protocol.Stream.send_data`` (END_STREAM unset), without copying ``data``.

    The same loop: wait until the connection may write and the stream's window is
    open, send what fits in one frame, again until all is sent. Each frame is a slice
    of ``data`` (or of its pieces, in order: a message whose frame is a piece of its
    own) written as it is (``_write_frame``); grpclib's reads each frame out of a
    ``BytesIO`` first, and h2 copies it three more times. Data not all sent within
    ``window_timeout`` seconds, the peer's window shut or opened a byte at a time,
    raises ``TimeoutError`` (None: wait for ever).
    """
    assert h2_stream.id is not None
    pieces = (
        [memoryview(data)]
        if isinstance(data, bytes | memoryview)
        else [memoryview(p) for p in data]
    )
    machine = h2_stream._h2_connection
    connection = h2_stream.connection
    index, offset = 0, 0  # where the next frame begins: which piece, how far into it
    left = sum(len(piece) for piece in pieces)
    deadline = math.inf if window_timeout is None else anyio.current_time() + window_timeout
    while left:
        await connection.write_ready.wait()
        window = machine.local_flow_control_window(h2_stream.id)
        if not window > 0:  # it can become negative
            h2_stream.window_updated.clear()
            with anyio.fail_after(deadline - anyio.current_time()):
                await h2_stream.window_updated.wait()
            continue  # others may have sent meanwhile: look again
        size = min(window, machine.max_outbound_frame_size, left)
        chunks: list[memoryview] = []
        wanted = size
        while wanted:
            piece = pieces[index]
            take = min(len(piece) - offset, wanted)
            chunks.append(piece[offset : offset + take])
            wanted -= take
            offset += take
            if offset == len(piece):
                index, offset = index + 1, 0
        chunk: memoryview | list[memoryview] = chunks[0] if len(chunks) == 1 else chunks
        if not _write_frame(h2_stream, chunk, size):
            machine.send_data(h2_stream.id, b"".join(chunks))
            h2_stream._transport.write(machine.data_to_send())
            h2_stream.data_sent += size
            connection.data_sent += size
            connection.data_send_process()
        left -= size


async def send_messages(
    stream: grpclib.server.Stream[Any, Any],
    framed: Sequence[bytes],
    *,
    window_timeout: float | None = None,
) -> None:
    """Send messages (each with its gRPC prefix) on a server stream as one DATA frame.

    What ``grpclib.server.Stream.send_message`` does for each message: initial metadata
    first, then the data, then the stream's counters. ``window_timeout`` is
    ``send_data``'s.
    """
    if not stream._send_initial_metadata_done:
        await stream.send_initial_metadata()
    data = framed[0] if len(framed) == 1 else b"".join(framed)
    if not _send_now(stream._stream, data):
        await send_data(stream._stream, data, window_timeout=window_timeout)
    count = len(framed)
    stream._send_message_done = True
    stream._messages_sent += count
    connection = stream._stream.connection
    connection.messages_sent += count
    connection.last_message_sent = time.monotonic()


async def send_client_message(
    stream: grpclib.client.Stream[Any, Any], framed: Sequence[bytes | bytearray | memoryview]
) -> None:
    """Send one message (with its gRPC prefix) on a client stream, as grpclib would.

    ``grpclib.client.Stream.send_message`` encodes the message, then copies it once more
    to prepend the prefix; here it is one buffer, or pieces (``codec.framed_pieces``)
    whose largest, an embedded frame, is the caller's own, never copied.
    """
    if not stream._send_request_done:
        await stream.send_request()
    if stream._end_done:
        raise grpclib.exceptions.ProtocolError("Stream is ended")
    one = framed[0] if len(framed) == 1 else None
    if isinstance(one, bytes) and stream._wrapper._error is None and _send_now(stream._stream, one):
        # Nothing was awaited, so nothing for grpclib's wrapper to cancel.
        stream._send_message_done = True
        stream._messages_sent += 1
        connection = stream._stream.connection
        connection.messages_sent += 1
        connection.last_message_sent = time.monotonic()
        return
    with stream._wrapper:
        await send_data(stream._stream, framed)
        stream._send_message_done = True
        stream._messages_sent += 1
        connection = stream._stream.connection
        connection.messages_sent += 1
        connection.last_message_sent = time.monotonic()


# --- receiving DATA frames ----------------------------------------------------------------

log = logging.getLogger("avaproto.server")
pipeline_log = logging.getLogger("avaproto.client")


def data_frame(stream_id: int, payload: bytes | memoryview, end_stream: bool) -> Any:
    """A received DATA frame as hyperframe parses one, its payload left as it is.

    A view stays a view: h2 hands it on as the event's data, and hyperframe copies one
    only to serialize it, which a received frame never is.
    """
    frame = hyperframe.frame.DataFrame(stream_id, cast(bytes, payload))
    if end_stream:
        frame.flags.add("END_STREAM")
    return frame


#: Where h2 takes a received DATA frame without END_STREAM into the same state with a
#: ``DataReceived`` event, and a WINDOW_UPDATE with a ``WindowUpdated`` event, as its only
#: effects besides the flow-control windows (tests/transport/test_grpclib_private.py
#: reads it off h2's own tables).
RECEIVE_DATA_STATES = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_LOCAL)
WINDOW_UPDATE_STATES = (
    h2.stream.StreamState.OPEN,
    h2.stream.StreamState.HALF_CLOSED_LOCAL,
    h2.stream.StreamState.HALF_CLOSED_REMOTE,
)
#: The largest flow-control window there is (RFC 9113, 6.9.1); h2 refuses an increment past it.
_LARGEST_WINDOW = 2**31 - 1


def data_taker(protocol: Any, stream_id: int, size: int) -> tuple[Any, Any] | None:
    """Where ``take_data`` would take a DATA frame of ``size`` bytes (unpadded,
    END_STREAM unset): h2's stream and grpclib's, if the frame is on a stream open for
    it and fits both windows; None if not (h2 must then take it, and may refuse it).
    Changes nothing, so a limit can be checked between the two.
    """
    machine = protocol.connection._connection
    stream = machine.streams.get(stream_id)
    if stream is None or machine.state_machine.state not in DATA_CONNECTION_STATES:
        return None
    states = stream.state_machine
    processor = protocol.processor
    target = processor.streams.get(stream_id)
    if (
        states.state not in RECEIVE_DATA_STATES
        or not states.headers_received
        or stream._expected_content_length is not None
        or size > machine._inbound_flow_control_window_manager.current_window_size
        or size > stream._inbound_window_manager.current_window_size
        or target is None
        or not hasattr(processor, "processors")  # grpclib closed the connection
    ):
        return None
    return stream, target


def take_data(protocol: Any, taker: tuple[Any, Any], payload: bytes | memoryview) -> None:
    """Take a DATA frame where ``data_taker`` found it may be taken, as h2 and grpclib
    would.

    What h2 does with such a frame (``_receive_data_frame``, ``H2Stream.receive_data``)
    is to shrink the connection's and the stream's inbound windows and count the body's
    length, then hand grpclib a ``DataReceived`` event, which grpclib adds to the
    stream's buffer (``EventsProcessor.process_data_received``). A small message costs
    a few dozen calls that way, frame and event objects and two state machines that do
    not change state: this is the same bookkeeping, done at once.
    """
    size = len(payload)
    if not size:
        return  # an empty frame: nothing to count (keep_empty_data_frames_out)
    stream, target = taker
    protocol.connection._connection._inbound_flow_control_window_manager.current_window_size -= size
    stream._inbound_window_manager.current_window_size -= size
    stream._actual_content_length += size
    target.buffer.add(payload, size)
    target.data_received += size
    connection = protocol.processor.connection
    connection.data_received += size
    connection.last_data_received = time.monotonic()


def sent_so_far(protocol: Any) -> tuple[int, int]:
    """The bytes of DATA and the messages the connection sent so far (grpclib's counts,
    which ``_write_frame`` and ``send_messages`` keep too)."""
    connection = protocol.processor.connection
    return connection.data_sent, connection.messages_sent


def taking_frames(protocol: Any) -> bool:
    """Whether h2 may still be given frames: grpclib drops h2's frame table when it
    closes the connection (after the peer's GOAWAY, or h2's refusal of a frame), and
    a frame given to h2 after that, in the same read, fails with AttributeError."""
    return hasattr(protocol.connection._connection, "_frame_dispatch_table")


def take_window_update(protocol: Any, stream_id: int, increment: int) -> bool:
    """Take a WINDOW_UPDATE (its increment already checked positive) as h2 and grpclib
    would, for the connection or for a stream open for it; False, having done nothing,
    if not (h2 must then take it, and may refuse it).

    h2 (``_receive_window_update_frame``, ``H2Stream.receive_window_update``) widens
    the window and hands grpclib a ``WindowUpdated`` event, on which grpclib wakes the
    stream's senders, or every stream's for the connection's window
    (``EventsProcessor.process_window_updated``).
    """
    machine = protocol.connection._connection
    processor = protocol.processor
    if machine.state_machine.state not in DATA_CONNECTION_STATES or not hasattr(
        processor, "processors"
    ):
        return False
    if not stream_id:
        window = machine.outbound_flow_control_window + increment
        if window > _LARGEST_WINDOW:
            return False
        machine.outbound_flow_control_window = window
        for target in processor.streams.values():
            target.window_updated.set()
        return True
    stream = machine.streams.get(stream_id)
    if stream is None or stream.state_machine.state not in WINDOW_UPDATE_STATES:
        return False
    window = stream.outbound_flow_control_window + increment
    if window > _LARGEST_WINDOW:
        return False
    stream.outbound_flow_control_window = window
    target = processor.streams.get(stream_id)
    if target is not None:
        target.window_updated.set()
    return True


def h2_refusal(error: h2.exceptions.ProtocolError) -> str:
    """What h2 refused, in words: some of its errors carry only a stream id."""
    if isinstance(error, h2.exceptions.NoSuchStreamError):
        return f"a frame on stream {error.stream_id}, which is not open"
    return str(error) or type(error).__name__


def receive_bytes(protocol: Any, data: bytes, refused: Callable[[str], None]) -> None:
    """``grpclib.protocol.H2Protocol.data_received``, but for h2's refusal of a frame.

    grpclib logs the refusal at DEBUG and closes every call without sending the GOAWAY
    h2 queued; here the GOAWAY is sent and ``refused`` is told why, in words, to log
    it and end the connection.
    """
    connection = protocol.connection
    try:
        events = connection.feed(data)
    except h2.exceptions.ProtocolError as error:
        connection.flush()  # h2's GOAWAY
        refused(h2_refusal(error))
        return
    except UnicodeDecodeError:  # a header h2 decodes as UTF-8 is not (it raises no more)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            connection._connection.close_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
        connection.flush()
        refused("a header that is not UTF-8")
        return
    _deliver(protocol, events)


def _deliver(protocol: Any, events: list[Any]) -> None:
    """What grpclib does with h2's events of a read: flush, process each, flush."""
    connection = protocol.connection
    connection.flush()
    for event in events:
        protocol.processor.process(event)
    flush_if_open(connection)


def receive_frames(
    protocol: Any, frames: list[Any], refused: Callable[[str], None] | None = None
) -> None:
    """Have a connection take frames read outside h2's frame buffer, in order.

    What ``grpclib.protocol.H2Protocol.data_received`` does with the frames h2 parses
    out of received bytes (``h2.connection.H2Connection.receive_data``: each frame to
    ``_receive_frame``; a protocol error queues a GOAWAY, and grpclib closes every
    call): h2 checks each frame and does its bookkeeping (state, flow control, events)
    as for one it parsed.
    """
    machine = protocol.connection._connection
    events: list[Any] = []
    try:
        try:
            for frame in frames:
                events.extend(machine._receive_frame(frame))
        except h2.exceptions.ProtocolError as error:
            machine._terminate_connection(error.error_code)
            raise
    except h2.exceptions.ProtocolError as error:
        log.debug("Protocol error", exc_info=True)
        if refused is not None:
            protocol.connection.flush()  # h2's GOAWAY
            refused(h2_refusal(error))
        else:
            protocol.processor.close("Protocol error")
        return
    _deliver(protocol, events)


def flush_if_open(connection: grpclib.protocol.Connection) -> None:
    """grpclib's ``Connection.flush``, unless the connection was closed meanwhile (a
    limit that tripped on one of the events just handled): grpclib drops its
    transport then, and a flush would raise in the middle of a read."""
    if hasattr(connection, "_transport"):
        connection.flush()


# --- frames read past h2's frame buffer, by the server's guard and the pipeline ----------

_FRAME_HEAD = struct.Struct(">BHBBI")
_DATA, _WINDOW_UPDATE, _END_STREAM = 0x0, 0x8, 0x1
#: A frame to take: a DATA frame as (stream id, payload, END_STREAM), a WINDOW_UPDATE as
#: (stream id, increment).
Taken = tuple[int, bytes | memoryview, bool] | tuple[int, int]


def whole_frames(
    data: bytes | memoryview,
    largest: int,
    payload: Callable[[int, int], bytes | memoryview],
) -> list[Taken] | None:
    """The frames of ``data`` to take, if it is nothing but whole DATA frames (with no
    flag but END_STREAM, on a stream, not empty) and WINDOW_UPDATEs (their increment as
    hyperframe accepts it), none larger than ``largest``; else None. A DATA frame's
    payload is ``payload(start, stop)`` of ``data``: a view, or a copy of one that must
    not keep the read alive; nothing is taken out before the whole read qualified.
    """
    frames: list[tuple[int, int, int, int, bool]] = []
    n, i = len(data), 0
    while i < n:
        if n - i < 9:
            return None
        high, low, kind, flags, stream_id = _FRAME_HEAD.unpack_from(data, i)
        length = high << 16 | low
        stop = i + 9 + length
        if stop > n or not length or length > largest:
            return None
        stream_id &= 0x7FFFFFFF  # the reserved bit is ignored (RFC 9113, 4.1)
        if kind == _DATA:
            if flags & ~_END_STREAM or not stream_id:
                return None
            frames.append((stream_id, i + 9, stop, 0, bool(flags)))
        elif kind == _WINDOW_UPDATE and length == 4:
            increment = int.from_bytes(data[i + 9 : stop], "big")
            if not 0 < increment < 1 << 31:
                return None  # hyperframe refuses it: h2's to say
            frames.append((stream_id, i + 9, stop, increment, False))
        else:
            return None
        i = stop
    return [
        (stream_id, increment) if increment else (stream_id, payload(start, stop), end_stream)
        for stream_id, start, stop, increment, end_stream in frames
    ]


def take_frames(
    protocol: Any,
    frames: Sequence[Taken],
    admit: Callable[[int, bytes | memoryview], bool] | None = None,
    refused: Callable[[str], None] | None = None,
) -> None:
    """Have frames read past h2's frame buffer taken, in order.

    Those on a stream open for them, within the windows, are taken at once
    (``take_data``, ``take_window_update``: h2's and grpclib's bookkeeping without
    their objects), the others by h2 as frame objects (``receive_frames``); once one
    goes to h2, so do those after it, whose events must follow its own. ``admit``, if
    given, sees each DATA frame about to be taken: False stops there (the connection
    is being closed), neither it nor those after being taken. ``refused``, if given,
    is told why h2 refused a frame, and ends the connection itself.
    """
    to_h2: list[Any] = []
    for frame in frames:
        if len(frame) == 2:
            stream_id, increment = frame
            if to_h2 or not take_window_update(protocol, stream_id, increment):
                to_h2.append(hyperframe.frame.WindowUpdateFrame(stream_id, increment))
            continue
        stream_id, payload, end_stream = frame
        taker = None if to_h2 or end_stream else data_taker(protocol, stream_id, len(payload))
        if taker is None:
            to_h2.append(data_frame(stream_id, payload, end_stream))
        elif admit is None or admit(stream_id, payload):
            take_data(protocol, taker, payload)
        else:
            return
    if to_h2 and taking_frames(protocol):
        receive_frames(protocol, to_h2, refused)


def take_whole_frames(
    protocol: Any,
    data: bytes,
    admit: Callable[[int, bytes | memoryview], bool] | None = None,
    refused: Callable[[str], None] | None = None,
) -> bool:
    """Take a client connection's read ``data`` if it is nothing but whole DATA frames
    and WINDOW_UPDATEs (``whole_frames``), and h2 holds nothing of an earlier read (a
    frame cut short, a header block); False, having done nothing, if not (h2 must read
    it). An answer is one small DATA frame, which h2 would otherwise buffer, parse into
    an object and turn into an event for grpclib. ``admit`` and ``refused`` are
    ``take_frames``'.
    """
    machine = protocol.connection._connection
    incoming = machine.incoming_buffer
    if incoming._data or incoming._headers_buffer or not taking_frames(protocol):
        return False
    view, n = memoryview(data), len(data)

    def payload(start: int, stop: int) -> bytes | memoryview:
        # A view keeps the whole read alive while the answer waits to be read: one much
        # smaller than the read is copied out of it (answers are small).
        return view[start:stop] if 2 * (stop - start) >= n else data[start:stop]

    taken = whole_frames(data, machine.max_inbound_frame_size, payload)
    if taken is None:
        return False
    take_frames(protocol, taken, admit, refused)
    return True


class _AnswerReading(grpclib.protocol.H2Protocol):
    """grpclib's protocol for a client connection: reading answers past h2 where it can,
    letting its calls finish when the extension is going away, and bounding what the
    extension can make it hold (``avaproto.transport.answer_guard``)."""

    def __init__(self, *args: Any, limits: ConnectionLimits) -> None:
        super().__init__(*args)
        self._limits = limits
        self._guard: AnswerGuard | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        finish_after_goaway(self)
        ignore_unknown_frames(self)
        peer = peer_address(transport.get_extra_info("peername"))
        self._guard = guard = AnswerGuard(
            self._limits, peer, self._refuse, lambda: sent_so_far(self)
        )
        connection: Any = self.connection
        connection.avaproto_guard = guard
        watch_events(self, guard.event)
        # A gRPC server never pushes; h2 then refuses a PUSH_PROMISE itself.
        update_local_settings(self, {h2.settings.SettingCodes.ENABLE_PUSH: 0})

    def data_received(self, data: bytes) -> None:
        guard = self._guard
        assert guard is not None
        if not guard.read(data):
            return
        if not take_whole_frames(self, data, guard.data_frame, guard.broken):
            # grpclib's own data_received, but for h2's refusal: the refusal's reason
            # is the call's error, where grpclib logs it at DEBUG ("Protocol error").
            receive_bytes(self, data, guard.broken)
            if guard.refusal is None and taking_frames(self):
                # Only h2's buffer can hold a frame not yet whole: a read taken whole
                # leaves it empty. h2 checks such a frame's length only once it is in.
                machine = self.connection._connection
                pending = machine.incoming_buffer._data
                if len(pending) >= 3:
                    length = int.from_bytes(pending[:3], "big")
                    guard.frame_announced(length, machine.max_inbound_frame_size)
        if guard.control_owed and guard.refusal is None and taking_frames(self):
            transport = self.connection._transport
            guard.unread(0 if transport.is_closing() else transport.get_write_buffer_size())

    def _refuse(self, error: RemoteProtocolError, code: h2.errors.ErrorCodes) -> None:
        """End the connection for ``error``: GOAWAY with ``code`` and its text (unless
        h2 ended it already), then every call, which reports ``error`` (PIPE-8, PIPE-9)."""
        reason = f"[{error.rule}] {error.detail}"
        machine = self.connection._connection
        transport = self.connection._transport
        with contextlib.suppress(h2.exceptions.ProtocolError):
            machine.close_connection(error_code=code, additional_data=reason.encode())
        unread = transport.get_write_buffer_size()
        if not unread:
            transport.write(machine.data_to_send())
        # The calls first, each woken once with the reason: grpclib's close closes the
        # transport before it ends them, and the loss of the connection then wakes them
        # a second time, leaving a cancellation pending in the task that made the call.
        processor = self.processor
        streams, processor.streams = processor.streams, {}
        for stream in streams.values():
            stream.__terminated__(reason)
        processor.close(reason)
        processor.streams = streams
        if unread:
            transport.abort()  # it reads nothing: no GOAWAY would reach it


def _connection_of(stream: grpclib.client.Stream[Any, Any]) -> Any:
    """grpclib's connection under the call, once it is made (else None)."""
    return getattr(getattr(stream, "_stream", None), "connection", None)


def answer_guard(stream: grpclib.client.Stream[Any, Any]) -> AnswerGuard | None:
    """The guard of the call's connection (``_AnswerReading``), once it is made."""
    return cast("AnswerGuard | None", getattr(_connection_of(stream), "avaproto_guard", None))


def connection_refusal(stream: grpclib.client.Stream[Any, Any]) -> RemoteProtocolError | None:
    """Why the pipeline ended the call's connection, if it did."""
    guard = answer_guard(stream)
    return guard.refusal if guard is not None else None


def reset_code(stream: grpclib.client.Stream[Any, Any]) -> int | None:
    """The error code of the extension's RST_STREAM of the call, if it reset it."""
    guard, stream_id = answer_guard(stream), getattr(stream._stream, "id", None)
    return guard.resets.get(stream_id) if guard is not None and stream_id is not None else None


def spoke_http2(stream: grpclib.client.Stream[Any, Any]) -> bool:
    """Whether the extension sent its SETTINGS on the call's connection."""
    guard = answer_guard(stream)
    return guard is not None and guard.settings.is_set()


async def extension_speaks_http2(stream: grpclib.client.Stream[Any, Any]) -> None:
    """Until the extension's first SETTINGS frame arrived: the HTTP/2 connection is up."""
    guard = answer_guard(stream)
    assert guard is not None  # the connection is made
    await guard.settings.wait()


def finish_after_goaway(protocol: Any) -> None:
    """Have a client connection take a GOAWAY without an error as RFC 9113 (6.8) means
    it: the streams the extension took (up to its last stream id) carry on to their end,
    and no new one starts on the connection.

    A server going away gracefully sends one (grpc-core's on ``server.stop(grace)``, on
    ``max_connection_age``, in two steps), then finishes its streams within its grace.
    h2 instead closes the whole connection on it (python-hyper/h2#1181): every frame
    after it, the answers still due included, is a protocol error, and grpclib ends the
    calls. So h2 is not given such a GOAWAY (``H2Connection._frame_dispatch_table``,
    read per frame, maps each frame class to its handler): grpclib's channel is told to
    open a new connection for its next call (``Handler.connection_lost``), and a stream
    the extension never took ends now, as connection lost. A GOAWAY with an error code
    goes to h2 as before (the connection ends).
    """
    machine = protocol.connection._connection
    table = machine._frame_dispatch_table
    closing = table[hyperframe.frame.GoAwayFrame]

    def receive_goaway(frame: hyperframe.frame.GoAwayFrame) -> tuple[list[Any], list[Any]]:
        if frame.error_code != h2.errors.ErrorCodes.NO_ERROR:
            # Kept for the call's error: grpclib names only a lost connection, at the end.
            protocol.connection.avaproto_goaway = (frame.error_code, frame.additional_data)
            return cast(tuple[list[Any], list[Any]], closing(frame))
        last = frame.last_stream_id
        # grpc-core sends two (the second naming the last stream): one line for both.
        report = pipeline_log.debug if protocol.handler.connection_lost else pipeline_log.info
        protocol.handler.connection_lost = True  # grpclib's channel: no new call here
        report(
            "the extension at %s is going away (GOAWAY, last stream %d): calls it took finish",
            _peer(protocol),
            last,
        )
        for stream_id, stream in list(protocol.processor.streams.items()):
            if stream_id > last:
                stream.__terminated__(f"the extension went away before taking stream {stream_id}")
        return [], []

    table[hyperframe.frame.GoAwayFrame] = receive_goaway


def serve_on_after_goaway(protocol: Any, going: Callable[[int], None]) -> None:
    """Have a server connection take a pipeline's GOAWAY without an error as RFC 9113
    (6.8) means it: no stream of ours (a gRPC server opens none) goes on there, and the
    pipeline's own streams carry on to their end.

    grpc-java's channel, shut down gracefully while a call runs, sends one at once and
    waits for its calls to finish. h2 takes any GOAWAY as the end of the connection
    (every frame after it a protocol error) and grpclib ends every call on it, so the
    running streams ended CANCELLED. Such a GOAWAY is not given to h2
    (``finish_after_goaway`` does the same on the pipeline's side); ``going(last
    stream id)`` is told. One with an error code goes to h2 as before.
    """
    machine = protocol.connection._connection
    table = machine._frame_dispatch_table
    closing = table[hyperframe.frame.GoAwayFrame]

    def receive_goaway(frame: hyperframe.frame.GoAwayFrame) -> tuple[list[Any], list[Any]]:
        if frame.error_code != h2.errors.ErrorCodes.NO_ERROR:
            return cast(tuple[list[Any], list[Any]], closing(frame))
        going(frame.last_stream_id)
        return [], []

    table[hyperframe.frame.GoAwayFrame] = receive_goaway


def goaway_error(stream: grpclib.client.Stream[Any, Any]) -> str | None:
    """How the extension ended the call's connection, if with a GOAWAY carrying an error
    (``finish_after_goaway``): its error code and the text it gave."""
    got = getattr(_connection_of(stream), "avaproto_goaway", None)
    if got is None:
        return None
    code, data = got
    text = bytes(data).decode("utf-8", "replace").strip()
    return f"the extension ended the connection (GOAWAY {error_name(code)}" + (
        f": {text})" if text else ")"
    )


def error_name(code: int) -> str:
    """An HTTP/2 error code (of a GOAWAY, a RST_STREAM) by its name, if it has one."""
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"error code {code}"


def _peer(protocol: Any) -> str:
    transport = protocol.connection._transport
    return peer_address(transport.get_extra_info("peername") if transport is not None else None)


def lost_before_the_call(error: BaseException, channel: grpclib.client.Channel) -> bool:
    """Whether ``error`` is grpclib meeting a connection the extension closed between its
    connecting and the call's stream: ``Connection.close`` deletes ``_transport``, and
    ``create_stream`` then raises AttributeError (an extension that refuses connections
    past a limit of its own closes them as they open)."""
    protocol = channel._protocol
    return (
        isinstance(error, AttributeError)
        and protocol is not None
        and not hasattr(protocol.processor.connection, "_transport")
    )


def read_answers_directly(channel: grpclib.client.Channel, limits: ConnectionLimits) -> None:
    """Have the connection ``channel`` makes read whole DATA frames and WINDOW_UPDATEs
    past h2 (``take_whole_frames``) within ``limits``; grpclib makes it with
    ``_protocol_factory``."""

    # grpclib's client takes headers as ASCII, so an extension's status whose message is
    # UTF-8 (not percent-encoded, as gRPC asks) read as a connection's protocol error,
    # and the status was lost: headers are UTF-8 here, as the server takes them.
    channel._h2_config.header_encoding = "utf-8"

    def protocol() -> grpclib.protocol.H2Protocol:
        return _AnswerReading(
            grpclib.client.Handler(), channel._config, channel._h2_config, limits=limits
        )

    channel._protocol_factory = protocol  # type: ignore[method-assign]


# --- the HTTP/2 stream under a call -------------------------------------------------------


def http2_stream(stream: grpclib.server.Stream[Any, Any] | grpclib.client.Stream[Any, Any]) -> Any:
    """The call's ``grpclib.protocol.Stream``: read before grpclib buffers a message."""
    return stream._stream


class _Explained(dict[str, Any]):
    """grpclib's table of methods, with an answer for a path it does not hold."""

    def __init__(self, mapping: dict[str, Any], unknown: Callable[[str], str]) -> None:
        super().__init__(mapping)
        self._unknown = unknown

    def get(self, path: str, default: Any = None) -> Any:
        found = super().get(path)
        if found is not None:
            return found
        message = self._unknown(path)

        async def refuse(stream: Any) -> None:
            raise grpclib.exceptions.GRPCError(grpclib.const.Status.UNIMPLEMENTED, message)

        return grpclib.const.Handler(refuse, grpclib.const.Cardinality.UNARY_UNARY, None, None)


def explain_unknown_methods(server: grpclib.server.Server, unknown: Callable[[str], str]) -> None:
    """Answer a call of a method the server does not serve with ``unknown(path)``.

    grpclib answers UNIMPLEMENTED "Method not found", which names neither the path
    asked for nor what is served; it looks the path up with ``mapping.get``.
    """
    server._mapping = _Explained(server._mapping, unknown)


def cancelled_by_reset(stream: grpclib.server.Stream[Any, Any]) -> bool:
    """Whether grpclib is cancelling the call's handler: the peer reset its stream.

    grpclib then expects the handler to end with ``CancelledError``; any other ending
    (an error met while answering on the closed stream) it logs as "Failed to handle
    cancellation", with a traceback, at ERROR.
    """
    wrapper = stream._stream.wrapper
    return wrapper is not None and bool(wrapper.cancelled)


def _quiet_after(manager: Any, size: int) -> bool:
    """Whether h2's window manager sends no WINDOW_UPDATE once ``size`` more bytes are
    processed (``WindowManager._maybe_update_window``'s condition, not met)."""
    processed = manager._bytes_processed + size
    largest = manager.max_window_size
    return processed < largest // 2 and not (
        manager.current_window_size == 0 and processed > min(1024, largest // 4)
    )


def acknowledge(h2_stream: grpclib.protocol.Stream, size: int) -> None:
    """What a stream's buffer does for ``size`` bytes read (``Connection.ack``): h2
    counts them in the connection's and the stream's windows, and queues a
    WINDOW_UPDATE where its window manager says one is due, which grpclib then writes.

    Where neither manager would (nearly every small message), the bytes are counted at
    once: h2's call, its checks and a flush of nothing cost more than the message.
    """
    machine = h2_stream._h2_connection
    stream = machine.streams.get(h2_stream.id) if h2_stream.id is not None else None
    connection_window = machine._inbound_flow_control_window_manager
    if (
        stream is not None
        and stream.open
        and not machine._data_to_send
        and _quiet_after(connection_window, size)
        and _quiet_after(stream._inbound_window_manager, size)
    ):
        connection_window._bytes_processed += size
        stream._inbound_window_manager._bytes_processed += size
        return
    h2_stream.buffer._ack_callback(size)


def window_shut(h2_stream: grpclib.protocol.Stream) -> bool:
    """Whether the peer may send no more of the stream for now because a window of ours
    is at 0: the connection's, which its other streams' unread bytes can take, or the
    stream's own."""
    machine = h2_stream._h2_connection
    if machine._inbound_flow_control_window_manager.current_window_size <= 0:
        return True
    stream = machine.streams.get(h2_stream.id) if h2_stream.id is not None else None
    return stream is not None and stream._inbound_window_manager.current_window_size <= 0


def received_bytes(h2_stream: grpclib.protocol.Stream) -> int:
    """Bytes of the stream read off HTTP/2 and not yet taken by a message: after a
    message's prefix, how much of its body came."""
    return h2_stream.buffer._acked_size


async def _next_piece(h2_stream: grpclib.protocol.Stream) -> tuple[memoryview, int] | None:
    """The next piece of the stream's buffer, acknowledged, as ``Buffer.read`` pulls one
    in (waiting for it); None at the end of the stream, left for ``Buffer.read`` to find."""
    queue = h2_stream.buffer._unacked
    data, data_size, ack_size = queue.get_nowait() if queue.qsize() else await queue.get()
    if not ack_size:
        queue.put_nowait(grpclib.protocol.UnackedData(data, data_size, 0))
        return None
    acknowledge(h2_stream, ack_size)
    return memoryview(data), data_size


async def receive_whole(h2_stream: grpclib.protocol.Stream) -> memoryview | None:
    """The next gRPC message (prefix and body) as a view, if it lies whole in the first
    piece of the stream's buffer; else None, the buffer read as far as ``Buffer.read``
    would have read it for the prefix (at most one piece more, acknowledged).

    A small message arrives in one DATA frame, which is one piece: reading its prefix
    with ``Buffer.read`` and its body with ``receive_exactly`` costs two reads, a join
    of the prefix, and a hold on the budget of incomplete messages it is not part of.
    Waits for the first piece if there is none, as ``Buffer.read`` does.
    """
    buffer = h2_stream.buffer
    acked = buffer._acked
    if not acked:
        if buffer._eof and buffer._unacked.empty():
            return None
        piece = await _next_piece(h2_stream)
        if piece is None:
            return None
        view, data_size = piece
        if data_size >= 5 and data_size == 5 + int.from_bytes(view[1:5], "big"):
            return view  # one message in one piece, read as Buffer.read would leave it
        acked.append(grpclib.protocol.AckedData(view, data_size))
        buffer._acked_size += data_size
    view, size = acked[0]
    if size < 5:
        return None
    total = 5 + int.from_bytes(view[1:5], "big")
    if size < total:
        return None
    if size == total:
        acked.popleft()
    else:
        acked[0] = grpclib.protocol.AckedData(data=view[total:], data_size=size - total)
    buffer._acked_size -= total
    return view[:total]


def holds_whole_message(h2_stream: grpclib.protocol.Stream) -> bool:
    """Whether the stream's buffer already holds the whole next message, or its end
    after the trailers came: reading it then waits for nothing, so it may be read after
    grpclib ended the call (a reset or a lost connection right behind the answers)."""
    buffer = h2_stream.buffer
    pieces: list[tuple[Any, int]] = [(view, size) for view, size in buffer._acked]
    ended = False
    for item in list(buffer._unacked._queue):  # type: ignore[attr-defined]
        if not item.ack_size:  # the end of the stream: nothing follows it
            ended = True
            break
        pieces.append((item.data, item.data_size))
    if not pieces:
        return ended and h2_stream.trailers is not None
    head, have = b"", 0
    for data, size in pieces:
        if len(head) < 5:
            head += bytes(memoryview(data)[: 5 - len(head)])
        have += size
    return len(head) == 5 and have >= 5 + int.from_bytes(head[1:5], "big")


async def receive_exactly(h2_stream: grpclib.protocol.Stream, size: int) -> bytes | memoryview:
    """``h2_stream.recv_data(size)``, as a view instead of a copy where that is possible.

    grpclib's ``Buffer.read`` joins the pieces it returns into new bytes, even one: a
    copy of every message body. This pulls pieces in (acknowledging each) exactly as
    ``Buffer.read`` does, then returns, without copying, a body that is one piece, or
    that is the rest of one buffer all its pieces are views of: the buffer
    ``avaproto.transport.guard`` reads a message arriving in several DATA frames into
    (its prefix, already read, then this body). Anything else is read by ``Buffer.read``.
    """
    buffer = h2_stream.buffer
    acked = buffer._acked
    if size > 0 and (not buffer._eof or not buffer._unacked.empty()):
        while buffer._acked_size < size:
            piece = await _next_piece(h2_stream)
            if piece is None:
                break
            acked.append(grpclib.protocol.AckedData(*piece))
            buffer._acked_size += piece[1]
        if acked and buffer._acked_size >= size:
            first = acked[0]
            if first.data_size >= size:
                if first.data_size == size:
                    acked.popleft()
                else:
                    acked[0] = grpclib.protocol.AckedData(
                        data=first.data[size:], data_size=first.data_size - size
                    )
                buffer._acked_size -= size
                return first.data[:size]
            whole = first.data.obj
            if isinstance(whole, bytearray) and len(whole) == size + 5:
                taken = 0
                for piece in acked:
                    if piece.data.obj is not whole or taken >= size:
                        break
                    taken += piece.data_size
                if taken == size:  # the pieces are its bytes after the prefix, in order
                    while taken:
                        taken -= acked.popleft().data_size
                    buffer._acked_size -= size
                    return memoryview(whole)[5:]
    return await h2_stream.recv_data(size)


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


def ended_with_call(stream: grpclib.client.Stream[Any, Any]) -> AbstractContextManager[None]:
    """grpclib's guard of a call's waits (``Stream._wrapper``): what waits inside it is
    cancelled, and ``StreamTerminatedError`` raised, the moment grpclib ends the call
    (the connection lost, or closed on a protocol error). grpclib's own reads wait
    inside it; reads made off the HTTP/2 stream directly must too, or they wait on for
    data that will never come. It is not reentrant: nothing inside may enter it again.
    """
    return cast(AbstractContextManager[None], stream._wrapper)


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


def end_as_sent(stream: grpclib.client.Stream[Any, Any]) -> None:
    """Count our direction as ended when the extension ended the call first (its OK,
    then a reset of our direction): there is no stream left to end, and grpclib would
    otherwise refuse to finish the call for want of our end."""
    stream._end_done = True


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


# --- what a connection's guard hooks into -------------------------------------------------


def h2_connection(protocol: Any) -> h2.connection.H2Connection:
    """The h2 state machine of a connection grpclib made (after its ``connection_made``)."""
    return cast("h2.connection.H2Connection", protocol.connection._connection)


def watch_events(protocol: Any, watch: Callable[[Any], bool]) -> None:
    """Show ``watch`` each h2 event of the connection before grpclib handles it; an event
    for which it returns False is not handled (the connection is being closed)."""
    processor = protocol.processor
    process = processor.process

    def watched(event: Any) -> None:
        if watch(event):
            process(event)

    processor.process = watched


#: h2's events for frames grpclib has no handler for, and raises NotImplementedError
#: on (dropping the connection, with a traceback in the log): a frame of a type HTTP/2
#: does not define, which receivers must ignore (RFC 9113, 5.5), and ALTSVC (RFC 7838),
#: which a gRPC peer may ignore.
_IGNORED_EVENTS = (h2.events.UnknownFrameReceived, h2.events.AlternativeServiceAvailable)


def ignore_unknown_frames(protocol: Any) -> None:
    """Have grpclib ignore the frames of ``_IGNORED_EVENTS`` on this connection, as HTTP/2
    says, instead of dropping it (``EventsProcessor.processors`` maps each h2 event class
    to its handler)."""
    processors = protocol.processor.processors
    for event in _IGNORED_EVENTS:
        processors.setdefault(event, _ignore)


def _ignore(event: Any) -> None:
    return None


def watch_sent_headers(protocol: Any, sent: Callable[[int], None]) -> None:
    """Call ``sent(stream_id)`` whenever the server sends headers on a stream (its answer
    begins, or a trailers-only refusal)."""
    connection = h2_connection(protocol)
    send_headers = connection.send_headers

    def watched(stream_id: int, *args: Any, **kw: Any) -> None:
        sent(stream_id)
        send_headers(stream_id, *args, **kw)

    connection.send_headers = watched  # type: ignore[method-assign]


def track_streams(
    protocol: Any, accepted: Callable[[int], None], released: Callable[[int], None]
) -> None:
    """Have each stream the connection accepts released once its handler task is done,
    and report both moments.

    grpclib releases a stream (drops it and credits its unread bytes back to the
    connection's flow-control window) in the ``finally`` of its handler task. A task
    cancelled before its first step never runs that ``finally``: a peer that sends
    HEADERS, DATA and RST_STREAM in one write leaks the stream, its buffer, and the
    window its data took, until the connection stalls (CONN-6, CONN-11). The task's
    done callback releases what the ``finally`` did not.
    """
    handler = protocol.handler
    accept = handler.accept

    def tracked(stream: Any, headers: Any, release_stream: Callable[[], Any]) -> None:
        done = False

        def release_once(*_: Any) -> None:
            nonlocal done
            if not done:
                done = True
                try:
                    release_stream()
                finally:
                    released(stream.id)

        accept(stream, headers, release_once)
        accepted(stream.id)
        handler._tasks[stream].add_done_callback(release_once)

    handler.accept = tracked


def close_connection(protocol: Any, reason: str) -> None:
    """End every call of the connection now (grpclib's own path on a lost connection)."""
    protocol.processor.close(reason)


# --- h2's frame reprs ---------------------------------------------------------------------


def _deferred_repr(frame: object) -> object:
    """The frame itself: a logger that formats its message makes the same text of it.

    h2 builds ``repr(frame)`` of every frame it receives, as an argument of a trace log
    that is off unless a logger is configured; for a DATA frame that is a hex dump of
    its payload. ``"%s" % frame`` gives the same text (hyperframe's frames define
    ``__repr__`` and no ``__str__``), so handing the frame itself over costs nothing
    when nothing logs, and changes nothing when something does.
    """
    return frame


def quiet_frame_repr() -> None:
    """Defer h2's per-frame repr to the logger (idempotent)."""
    h2.connection.repr = _deferred_repr  # type: ignore[attr-defined]


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


# --- the cancellation grpclib's guard of a call delivers ------------------------------------

_WRAPPER_EXIT = grpclib.utils.Wrapper.__exit__


def _wrapper_exit(
    self: grpclib.utils.Wrapper,
    kind: type[BaseException] | None,
    value: BaseException | None,
    traceback: Any,
) -> None:
    if self._error is not None and kind is asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()  # the request ``cancel`` made: answered by the error raised
    _WRAPPER_EXIT(self, kind, value, traceback)


def settle_call_cancellations() -> None:
    """Take back the cancellation grpclib's guard of a call delivers (idempotent).

    When a call ends (its connection lost, its stream reset), ``Wrapper.cancel`` cancels
    every task waiting inside the guard, and ``__exit__`` raises the call's error in
    place of the ``CancelledError``, but never calls ``Task.uncancel``: the task stays
    "being cancelled" (``Task.cancelling()`` > 0) for as long as it lives, and anyio's
    next cancel scope to exit in it raises ``CancelledError``. A program that kept
    running after a failed ``connect`` (one that retries) was cancelled at random later.
    """
    grpclib.utils.Wrapper.__exit__ = _wrapper_exit  # type: ignore[method-assign]
