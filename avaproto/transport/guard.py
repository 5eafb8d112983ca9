"""Each HTTP/2 connection of the server, defended against a hostile peer.

Anyone who reaches the port can make the server work before authentication is even
looked at: open connections and leave them silent, send header blocks that never end,
open streams and reset them at once (CVE-2023-44487, "rapid reset"), flood it with
frames that cost a parse each and carry nothing, or send PINGs while reading none of
the acknowledgements. grpclib and h2 bound none of this, so every connection the server
accepts goes through a ``ConnectionGuard``:

* it sees the bytes before h2 does, and reads the 9-byte frame headers off them as
  they arrive: a header block is counted while it is still arriving, so one four times
  larger than the advertised SETTINGS_MAX_HEADER_LIST_SIZE is refused before it is
  buffered, let alone decoded (CONN-7); empty frames and acknowledgements owed are
  counted there too (CONN-8, CONN-10);
* it sees h2's events before grpclib does: streams reset before the server answered
  them (CONN-6), DATA frames per message (CONN-9), and a request whose header list is
  past the advertised size, which it refuses alone (CONN-7);
* it runs the connection's clocks: the handshake and HTTP/2 preface (CONN-12), an
  unfinished header block (CONN-7), a connection without streams (CONN-13);
* ``ServerGuard`` counts the connections open at once and closes one past the limit as
  it is accepted (CONN-14).

A limit that trips logs one WARNING naming the peer and the limit (at most one a rule
every 10 s: a flood of connections is one line, and the next counts the others), sends
a GOAWAY whose error code and debug data say why (ENHANCE_YOUR_CALM, or NO_ERROR for an
idle connection), and closes the connection; every call on it is cancelled and releases
what it held. A peer that reads nothing is aborted instead: the GOAWAY could not reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import ssl
import struct
import time
from typing import Any, cast

import h2.events
import h2.exceptions
import hyperframe.frame
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from ..status import Status
from ._grpclib_private import (
    Taken,
    close_connection,
    h2_connection,
    ignore_unknown_frames,
    receive_bytes,
    sent_so_far,
    serve_on_after_goaway,
    take_frames,
    taking_frames,
    track_streams,
    update_local_settings,
    watch_events,
    watch_sent_headers,
    whole_frames,
)
from .addresses import UNKNOWN, peer_address
from .coalescing import CoalescingTransport
from .limits import ConnectionLimits
from .message_meter import StreamMeters
from .quiet_frames import QUIET_BYTES, QUIET_PER_FRAME, QuietFrames
from .tls import HTTP2_PREFACE, DiagnosedServerTLS

log = logging.getLogger("avaproto.server")

#: A frame header (RFC 9113, 4.1): 24-bit length, type, flags, 31-bit stream id.
_FRAME_HEAD = struct.Struct(">BHBBI")
_DATA, _HEADERS, _SETTINGS, _PUSH_PROMISE, _PING = 0x0, 0x1, 0x4, 0x5, 0x6
_WINDOW_UPDATE, _CONTINUATION = 0x8, 0x9
_STREAM_ID = 0x7FFFFFFF
_INCREMENT = struct.Struct(">L")
_END_STREAM, _ACK, _END_HEADERS = 0x1, 0x1, 0x4
#: Bytes asked of the socket per read, outside a large DATA frame (asyncio's own size).
READ_SIZE = 256 * 1024
#: Descriptors the server needs besides its connections (listener, event loop, logs,
#: shared-memory segments being mapped, worker threads' files).
FD_MARGIN = 64
#: Seconds a connection closed with a GOAWAY stays open for the peer to read it.
LINGER = 2.0
#: The opaque data of the keepalive's PING (CONN-16); the peer echoes it.
_KEEPALIVE_PING = b"CONN-16\0"
#: At most one line per rule in this many seconds: a flood of connections is one line
#: naming the first peer, and the next says how many more there were.
LOGGED_EVERY = 10.0


def check_open_file_limit(max_connections: int) -> None:
    """Warn when the open-file limit cannot hold ``max_connections`` (each is a descriptor):
    past it, accepting fails and the server stops accepting for a while instead of
    refusing one connection."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and max_connections + FD_MARGIN > soft:
        log.warning(
            "[CONN-14] up to %d connections are allowed (--max-connections), but the "
            "open-file limit is %d (ulimit -n) and the server needs about %d descriptors "
            "besides: raise the limit or lower --max-connections to %d",
            max_connections,
            soft,
            FD_MARGIN,
            max(1, soft - FD_MARGIN),
        )


class Throttled:
    """WARNING lines, at most one per rule in ``LOGGED_EVERY`` s: a flood is one line
    naming its first case, and the next line says how many more there were."""

    def __init__(self) -> None:
        self._logged: dict[str, tuple[float, int]] = {}  # rule: (last line, quiet since)

    def __call__(self, rule: str, line: str) -> None:
        now = time.monotonic()
        last, quiet = self._logged.get(rule, (-LOGGED_EVERY, 0))
        if now - last < LOGGED_EVERY:
            self._logged[rule] = (last, quiet + 1)
            return
        if quiet:
            line += f" ({quiet} more for [{rule}] since the last such line)"
        log.warning("%s", line)
        self._logged[rule] = (now, 0)


#: asyncio's report of a failed accept (out of descriptors or memory), per failure.
_ACCEPT_FAILED = "socket.accept() out of system resource"


def quiet_accept_failures(loop: asyncio.AbstractEventLoop) -> None:
    """Have ``loop`` log failed accepts in one WARNING per ``LOGGED_EVERY`` s, with
    their count, instead of asyncio's ERROR and traceback for each: out of descriptors,
    a listener logged them about 1,900 times a second while peers held every
    descriptor. Everything else goes to the handler the loop had (CONN-14)."""
    previous = loop.get_exception_handler()
    if getattr(previous, "quiets_accept_failures", False):
        return
    warn = Throttled()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _ACCEPT_FAILED:
            if previous is None:
                loop.default_exception_handler(context)
            else:
                previous(loop, context)
            return
        warn(
            "CONN-14",
            f"[CONN-14] a connection could not be accepted: {context.get('exception')} "
            "(raise ulimit -n, or lower --max-connections)",
        )

    handler.quiets_accept_failures = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


#: Where a request's ``grpc-timeout`` is moved before grpclib reads the headers, for the
#: server to enforce (SRV-15): grpclib's own deadline answers UNKNOWN and logs a
#: traceback when it has already passed, and otherwise cancels the call with no message.
DEADLINE_HEADER = "x-avaproto-grpc-timeout"
#: The most the server's HPACK encoder keeps of the headers it sent (HTTP/2's default),
#: whatever larger table the peer allows (SETTINGS_HEADER_TABLE_SIZE).
HEADER_TABLE_BYTES = 4096
#: A header list past the advertised limit (``max_header_list_bytes``) ends its stream;
#: one this many times it, counted compressed as it arrives or decoded, its connection
#: (grpc-core's soft and hard metadata limits, 8 and 16 KiB).
HEADER_LIST_HARD = 4

#: Where a request's ``grpc-encoding`` is moved, for the server to read (grpclib keeps
#: no ``grpc-`` header in a call's metadata, and reads no compressed message).
ENCODING_HEADER = "x-avaproto-grpc-encoding"
_MOVED: dict[str | bytes, str] = {
    "grpc-timeout": DEADLINE_HEADER,
    b"grpc-timeout": DEADLINE_HEADER,
    "grpc-encoding": ENCODING_HEADER,
    b"grpc-encoding": ENCODING_HEADER,
}


#: What gRPC names its requests' content-type, as grpclib's router compares it.
_GRPC = "application/grpc"


def _as_grpclib_reads(headers: list[tuple[Any, Any]]) -> tuple[list[tuple[Any, Any]], str]:
    """A request's headers as grpclib's router reads them, and what of them was read
    otherwise than sent, or will be refused ("" if nothing; CONN-21).

    grpclib reads the last of a repeated name, compares content-type exactly and
    refuses a request without ``te: trailers`` (HTTP 415 or 400, with nothing logged).
    A media type is compared without case and its parameters mean nothing to gRPC
    (``application/grpc; charset=utf-8``, as HTTP libraries and proxies write it); a
    proxy may drop ``te``. These are served, as grpc-go and
    grpc-java serve them; another content-type, or none, is left for grpclib to refuse,
    and said.
    """
    notes: list[str] = []
    kept = [(_MOVED.get(name, name), value) for name, value in headers if name not in _READ]
    given = dict(headers)  # the last of each, as grpclib reads them
    sent = given.get("content-type")
    media = sent.partition(";")[0].strip().lower() if isinstance(sent, str) else None
    if media in (_GRPC, _GRPC + "+proto"):
        kept.append(("content-type", media))
        if media != sent:
            notes.append(f"content-type {sent!r} read as {media!r}")
    elif sent is None:
        notes.append("no content-type: refused (HTTP 415)")
    else:
        kept.append(("content-type", sent))
        notes.append(f"content-type {sent!r} is not gRPC's: refused (HTTP 415)")
    te = given.get("te")  # HTTP/2 allows it "trailers" alone (h2 refuses any other)
    kept.append(("te", "trailers"))
    if te is None:
        notes.append("no te: trailers (a proxy between may not carry trailers)")
    return kept, "; ".join(notes)


#: The headers ``_as_grpclib_reads`` gives grpclib once, as it reads them.
_READ = frozenset(("content-type", "te"))


class ServerGuard:
    """The connections of one server: counted, each made with its own guard."""

    def __init__(self, limits: ConnectionLimits, max_frame_size: int) -> None:
        self.limits = limits
        self.max_frame_size = max_frame_size
        #: Connections open now (accepted and not yet lost).
        self.open = 0
        #: Seconds the event loop spent reading HTTP/2 (parsing frames, handling events),
        #: so that the loop-lag watch does not blame an extension for a flood of frames.
        self.reading = 0.0
        #: Bytes read from every connection (after TLS), for diagnostics.
        self.received = 0
        #: Bytes of buffers sized from headers for bytes still arriving, in all
        #: connections: a header alone asks for one, so past ``max_read_buffers_bytes``
        #: h2 reads the frame instead, buffering only what arrives (and as slowly).
        self.direct_bytes = 0
        #: The connections open now, for a GOAWAY to each when the server drains.
        self.connections: set[ConnectionGuard] = set()
        #: Where every connection's bytes are read to outside a large DATA frame: a read
        #: is taken in full (copied out, or given to h2) before the next, whichever
        #: connection's that is, so one buffer serves them all. One each, made as a
        #: connection was accepted, cost the server 256 KiB per connection before a byte
        #: came: 1,000 idle connections, 270 MB.
        self.scratch = memoryview(bytearray(READ_SIZE))
        self._warn = Throttled()

    def going_away(self, reason: str) -> None:
        """Tell every connection that no new stream will be served (the server drains)."""
        for connection in list(self.connections):
            connection.going_away(reason)

    def protocol(self, h2_protocol: Any, tls: ssl.SSLContext | None) -> asyncio.BaseProtocol:
        """The protocol asyncio runs for one accepted connection, around grpclib's."""
        guard = ConnectionGuard(self, h2_protocol, outermost=tls is None)
        if tls is None:
            return guard
        return _GuardedTLS(asyncio.get_running_loop(), guard, tls)

    def admit(self, peer: str) -> bool:
        if self.open < self.limits.max_connections:
            self.open += 1
            return True
        self.warn(
            "CONN-14",
            f"refused the connection of {peer}: [CONN-14] {self.limits.max_connections} "
            "connections are open, the limit (--max-connections)",
        )
        return False

    def warn(self, rule: str, line: str) -> None:
        """Log ``line``, unless one for ``rule`` was logged in the last LOGGED_EVERY s."""
        self._warn(rule, line)

    def release(self) -> None:
        self.open -= 1

    def reserve_direct(self, size: int) -> bool:
        if self.direct_bytes + size > self.limits.max_read_buffers_bytes:
            return False
        self.direct_bytes += size
        return True

    def release_direct(self, size: int) -> None:
        self.direct_bytes -= size


#: A DATA frame that continues in later reads is read into a buffer of its own (or its
#: message's) only once this much of it arrived with its header (a header alone asks
#: for nothing); what all such buffers hold is bounded by ``max_read_buffers_bytes``.
DIRECT_FROM = 16 * 1024
#: A message that arrives over several DATA frames is read into one buffer of its size,
#: so that its reader gets it without joining them, if its first frame holds at least
#: this share of it: a 1080p RGB frame in 1 MiB frames is one sixth, a 4K one a
#: twenty-fourth. Senders of frames of 16 KiB (the least there is) get no such buffer
#: for messages over half a MiB; what all these buffers hold is bounded, as above.
BODY_SHARE = 32


class _DirectFrame:
    """A DATA frame read past h2's frame buffer (see ``ConnectionGuard._direct``)."""

    __slots__ = ("end_stream", "filled", "payload", "reserved", "stream_id", "view")

    def __init__(self, stream_id: int, flags: int) -> None:
        self.stream_id = stream_id
        self.end_stream = bool(flags & _END_STREAM)
        self.payload: bytes | memoryview = b""
        #: Where a frame that arrives over several reads is read into, else None.
        self.view: memoryview | None = None
        self.filled = 0
        #: Bytes of the server's budget its own buffer holds (0: none, or a message's).
        self.reserved = 0

    def into(self, view: memoryview, first: memoryview) -> None:
        """Read the frame into ``view``: what arrived, then the reads that follow."""
        self.payload = self.view = view
        view[: len(first)] = first
        self.filled = len(first)


class _Body:
    """A gRPC message (prefix and body) arriving over several DATA frames: one buffer,
    each frame's payload a view of its part, so the reader can take the body whole."""

    __slots__ = ("filled", "view")

    def __init__(self, size: int) -> None:
        self.view = memoryview(bytearray(size))
        self.filled = 0

    @property
    def left(self) -> int:
        return len(self.view) - self.filled

    def take(self, length: int) -> memoryview:
        part = self.view[self.filled : self.filled + length]
        self.filled += length
        return part


class ConnectionGuard(asyncio.BufferedProtocol):
    """One connection's defences, around grpclib's protocol for it (see the module).

    It also reads the connection's bytes for h2, into buffers of its own: a large DATA
    frame is read straight into a buffer of its size, so an embedded video frame is
    copied once on its way in (by the kernel), where h2's frame buffer and hyperframe's
    parser would copy it three times more. A DATA frame or WINDOW_UPDATE on a stream
    open for it is taken with h2's and grpclib's bookkeeping done at once (``_give``),
    other DATA frames go to h2 as frame objects whose payload is a view of what was
    read, and every other frame, and every byte h2 must see whole (the preface, header
    blocks), goes to h2 as received.
    """

    def __init__(self, server: ServerGuard, h2_protocol: Any, *, outermost: bool) -> None:
        self._server = server
        self._limits = server.limits
        self._protocol = h2_protocol
        self._outermost = outermost
        self.peer = UNKNOWN
        self._raw: asyncio.Transport | None = None  # the socket's transport
        self._transport: asyncio.Transport | None = None  # what HTTP/2 is written to
        # The same, holding the answers of one read for one write (``coalescing``).
        self._writer: CoalescingTransport | None = None
        self._transports: tuple[asyncio.Transport, ...] = ()
        self._h2: Any = None
        self._admitted = False
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        # The frame headers, read as the bytes arrive.
        self._preface_left = len(HTTP2_PREFACE)
        self._bytes_in = 0  # this connection's, read by the keepalive (CONN-16)
        self._bytes_seen = 0  # its value when the keepalive last looked
        self._head = bytearray()
        self._body_left = 0
        self._framed = False
        self._ends_block = False
        self._in_block = False
        self._block_bytes = 0
        self._empty_run = 0
        self._control_owed = 0
        # Frames without a message the connection may still send (CONN-19).
        self._quiet_frames = QuietFrames(
            self._limits.max_frames_without_data, lambda: sent_so_far(self._protocol)
        )
        # Where the socket's bytes are read to: the server's buffer, reused read after
        # read, or the buffer of the DATA frame being read (``_reading``).
        self._scratch = server.scratch
        self._reading: _DirectFrame | None = None
        self._bodies: dict[int, _Body] = {}
        self._direct_bytes = 0  # of max_read_buffers_bytes, held by this connection
        # Streams.
        self._active = 0
        self._opened = 0
        # The last stream id of the GOAWAY sent when the server drains (none before).
        self._last_stream = 2**31 - 1
        self._premature = 0
        self._unanswered: set[int] = set()
        self._headers_noted = False  # a request's headers read otherwise than sent (CONN-21)
        self._going = False  # the peer said GOAWAY without an error (CONN-20)
        self._meters = StreamMeters(self._limits.frames_per_message)

    # --- the socket: accepted and lost ------------------------------------------------

    def accepted(self, transport: asyncio.BaseTransport) -> bool:
        """A connection was accepted: count it, or refuse it past the limit (CONN-14)."""
        self._raw = cast(asyncio.Transport, transport)
        self.peer = peer_address(transport.get_extra_info("peername"))
        if not self._server.admit(self.peer):
            return False
        self._admitted = True
        self._server.connections.add(self)
        if self._limits.handshake_timeout is not None:
            self._handshake_timer = self._loop.call_later(
                self._limits.handshake_timeout, self._handshake_expired
            )
        return True

    def released(self) -> None:
        """The socket is closed."""
        self._closing = True
        # Every buffer this connection was given back: those of frames it was reading,
        # of messages, and of frames read but never given to h2 (a limit tripped).
        self._reading = None
        self._bodies.clear()
        if self._direct_bytes:
            self._server.release_direct(self._direct_bytes)
            self._direct_bytes = 0
        timers = (
            self._handshake_timer,
            self._header_timer,
            self._idle_timer,
            self._keepalive_timer,
            self._linger,
        )
        for timer in timers:
            if timer is not None:
                timer.cancel()
        if self._admitted:
            self._admitted = False
            self._server.release()
            self._server.connections.discard(self)
        if self._transport is None:
            # grpclib keeps each connection's handler until it is closed, which its
            # protocol does only for a connection it was given.
            self._protocol.handler.close()

    # --- asyncio's protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._outermost and not self.accepted(transport):
            cast(asyncio.Transport, transport).abort()
            return
        self._transport = cast(asyncio.Transport, transport)
        # The socket's, and the TLS transport over it if there is one.
        self._transports = tuple(t for t in {self._raw, self._transport} if t is not None)
        self._writer = CoalescingTransport(self._transport)
        self._protocol.connection_made(cast(asyncio.Transport, self._writer))
        self._h2 = h2_connection(self._protocol)
        limit = self._limits.max_header_list_bytes
        settings: dict[int, int] = {
            SettingCodes.MAX_FRAME_SIZE: self._server.max_frame_size,
            SettingCodes.MAX_HEADER_LIST_SIZE: limit,
        }
        update_local_settings(self._protocol, settings)
        # h2 applies an advertised limit only once the peer acknowledges it. A list past
        # the advertised one is decoded up to HEADER_LIST_HARD times it, so that the
        # connection's HPACK state stays whole and only its stream is refused.
        self._h2.decoder.max_header_list_size = HEADER_LIST_HARD * limit
        track_streams(self._protocol, self._stream_accepted, self._stream_released)
        watch_events(self._protocol, self._event)
        ignore_unknown_frames(self._protocol)
        serve_on_after_goaway(self._protocol, self._peer_going)
        watch_sent_headers(self._protocol, self._unanswered.discard)
        self._arm_idle()

    def get_buffer(self, sizehint: int) -> memoryview:
        reading = self._reading
        if reading is not None and reading.view is not None:
            return reading.view[reading.filled :]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        if self._closing:
            return
        began = time.perf_counter()
        self._server.received += nbytes
        self._bytes_in += nbytes
        try:
            reading = self._reading
            if reading is not None and reading.view is not None:
                # Read straight into the frame's buffer (get_buffer gave it).
                reading.filled += nbytes
                self._body_left -= nbytes
                if not self._body_left:
                    self._reading = None
                    self._frame_received()
                    self._give([self._received(reading)])
                control = 0
            elif (
                self._framed
                and not (self._head or self._body_left or self._in_block or self._bodies)
                and self._feed_whole(self._scratch[:nbytes])
            ):
                control = 0
            else:
                control = self._feed(self._scratch[:nbytes])
            if not self._closing:
                self._check_unread(control)
        finally:
            self._server.reading += time.perf_counter() - began

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._protocol.pause_writing()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._protocol.resume_writing()

    def eof_received(self) -> None:
        """The pipeline ended its side (a TCP FIN, TLS's close_notify): asyncio closes the
        transport on return, so the answers held for this turn go out first."""
        if self._writer is not None:
            self._writer.flush()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.released()
        if self._transport is not None:
            self._protocol.connection_lost(exc)

    # --- frame headers, before h2 parses them -----------------------------------------

    def _feed_whole(self, data: memoryview) -> bool:
        """Take ``data`` if it is nothing but whole DATA frames and WINDOW_UPDATEs that
        ``_feed`` would read past h2 (what nearly every read of a stream in full flow
        is); False, having done nothing, if it holds anything else.

        The same frames, checks and bookkeeping as ``_feed``, without its cases: no
        header cut by the read, no frame body continuing into the next, no header block,
        no frame of no bytes (CONN-8 counts those), no message being read into one
        buffer. A DATA frame's payload is copied out of the read buffer, which the next
        read reuses.
        """
        taken = whole_frames(
            data, self._h2.max_inbound_frame_size, lambda start, stop: bytes(data[start:stop])
        )
        if taken is None:
            return False
        updates = earned = 0
        for frame in taken:
            if len(frame) == 2:
                updates += 1
            else:
                earned += QUIET_PER_FRAME + len(frame[1]) // QUIET_BYTES  # (CONN-19)
        if earned:
            self._empty_run = 0  # a DATA frame with a payload (CONN-8)
            self._quiet_frames.earn(earned)
        if updates and not self._quiet(updates):
            return True  # the connection is being closed: nothing more is taken
        self._give(taken)
        return True

    def _feed(self, data: memoryview) -> int:
        """Read the frames in ``data`` for h2, in order; return the acknowledgements they
        ask for. Frames read past h2's frame buffer (``_direct``) go to it as objects,
        those that arrived whole together; the other bytes go to it as received, in
        runs between them."""
        i, n, control = 0, len(data), 0
        start = 0  # the first byte not yet given to h2
        end = n  # the last, unless a header cut by the end of the read is held back
        # Frames read past h2, complete, not yet taken (see _give).
        whole: list[Taken] = []
        if self._preface_left:
            i = min(self._preface_left, n)
            self._preface_left -= i  # h2 checks its bytes
        while i < n:
            if self._body_left:
                take = min(self._body_left, n - i)
                self._body_left -= take
                i += take
                if self._body_left:
                    break
                self._frame_received()
                continue
            held = b""
            if self._head or n - i < 9:
                # A header cut by the end of a read is held back from h2 until it is
                # whole and it is known who reads its frame. Its end opens this read.
                take = min(9 - len(self._head), n - i)
                self._head += data[i : i + take]
                i += take
                if len(self._head) < 9:
                    end = i - take
                    break
                held = bytes(self._head)
                self._head.clear()
                high, low, kind, flags, stream_id = _FRAME_HEAD.unpack(held)
                stream_id &= _STREAM_ID  # the reserved bit is ignored (RFC 9113, 4.1)
                start = i  # its end is in ``held``; nothing of this read came before it
            else:
                high, low, kind, flags, stream_id = _FRAME_HEAD.unpack_from(data, i)
                stream_id &= _STREAM_ID
                i += 9
            length = high << 16 | low
            if not self._frame_begins(kind, flags, length):
                return 0
            if kind in (_PING, _SETTINGS) and not flags & _ACK:
                control += 1
            frame: _DirectFrame | None = None
            if self._direct(kind, flags, length, stream_id, n - i):
                if i - 9 > start and not held:
                    self._to_h2(data[start : i - 9])  # first what came before, in order
                    start = i - 9
                    if self._closing:
                        return 0
                if kind == _WINDOW_UPDATE:
                    increment: int = _INCREMENT.unpack_from(data, i)[0]
                    if 0 < increment < 1 << 31:  # else hyperframe refuses it: h2's to say
                        whole.append((stream_id, increment))
                        i += 4
                        start = i
                        self._frame_received()
                        continue
                else:
                    take = min(length, n - i)
                    if take < length and whole:
                        # It may begin a message read into one buffer, decided from
                        # the stream's messages so far: h2 must have seen the others.
                        self._give(whole)
                        whole = []
                        if self._closing:
                            return 0
                    frame = self._direct_frame(stream_id, flags, length, data[i : i + take])
            if frame is not None:
                take = min(length, n - i)
                i += take
                start = i
                self._body_left = length - take
                if self._body_left:
                    self._reading = frame
                    continue
                self._frame_received()
                whole.append(self._received(frame))
                continue
            # h2 reads this frame: its header (held back, or in the run) and its body,
            # after the frames read past it so far.
            if whole:
                self._give(whole)
                whole = []
                if self._closing:
                    return 0
            if held:
                self._to_h2(held)
                if self._closing:
                    return 0
            if kind == _DATA and stream_id in self._bodies:
                self._end_body(stream_id)  # h2 reads a part of it: the reader joins them
            self._body_left = length
            if not length:
                self._frame_received()
                if kind == _SETTINGS and flags & _ACK and start < i:
                    # h2 applies the settings this acknowledges (the larger frame size
                    # advertised) from its next read only: a frame after it in this read
                    # would be judged by the old ones, a larger one refused as overlong.
                    self._to_h2(data[start:i])
                    start = i
                    if self._closing:
                        return 0
        if whole:
            self._give(whole)
        if start < end and not self._closing:
            self._to_h2(data[start:end])
        if self._in_block and self._header_timer is None and not self._closing:
            timeout = self._limits.header_timeout
            if timeout is not None:
                self._header_timer = self._loop.call_later(timeout, self._header_expired)
        return control

    def _direct(self, kind: int, flags: int, length: int, stream_id: int, arrived: int) -> bool:
        """Whether a frame whose header just arrived whole is read past h2's frame buffer
        (``arrived``: how many bytes of this read follow its header).

        A DATA frame without padding, on a stream, and a WINDOW_UPDATE that arrived
        whole (whose increment ``_feed`` checks as hyperframe would), both outside a
        header block (where h2 must see that they are out of place), no larger than h2
        accepts (or h2 refuses them whole), are given to h2 as frame objects: h2 checks
        everything else about them as it does for frames it parsed. A DATA frame that
        continues in later reads gets a buffer of its length (or of its message's) once
        enough of it came with its header (``DIRECT_FROM``); the server's total is
        bounded (``max_read_buffers_bytes``).
        """
        if self._in_block or length > self._h2.max_inbound_frame_size:
            return False
        if kind == _DATA:
            return not flags & ~_END_STREAM and stream_id > 0
        return kind == _WINDOW_UPDATE and length == 4 and arrived >= 4

    def _direct_frame(
        self, stream_id: int, flags: int, length: int, first: memoryview
    ) -> _DirectFrame | None:
        """The frame read past h2, with ``first`` (what arrived of it) in; None when a
        buffer for the rest is not to be had (h2 reads it then)."""
        frame = _DirectFrame(stream_id, flags)
        body = self._bodies.get(stream_id)
        if body is not None:
            if length <= body.left:
                frame.into(body.take(length), first)
                if not body.left:  # the last part: the frame holds the budget till it is in
                    del self._bodies[stream_id]
                    frame.reserved = len(body.view)
                return frame
            self._end_body(stream_id)  # it runs past its message: a frame like any other
        if len(first) == length:
            frame.payload = bytes(first)  # out of the buffer the next read reuses
            return frame
        if len(first) < DIRECT_FROM:
            return None
        body = self._begin_body(stream_id, length, first)
        if body is not None:
            frame.into(body.take(length), first)
            return frame
        if not self._reserve(length):
            return None
        frame.reserved = length
        frame.into(memoryview(bytearray(length)), first)
        return frame

    def _begin_body(self, stream_id: int, length: int, first: memoryview) -> _Body | None:
        """A buffer for the message this frame begins, if it begins one that runs on."""
        meter = self._meters.get(stream_id)
        if (meter is not None and (meter.remaining >= 0 or meter.prefix)) or len(first) < 5:
            return None  # not at the start of a message, or its length not here yet
        size = 5 + int.from_bytes(first[1:5], "big")
        if not length < size <= BODY_SHARE * length or not self._reserve(size):
            return None
        body = self._bodies[stream_id] = _Body(size)
        return body

    def _end_body(self, stream_id: int) -> None:
        body = self._bodies.pop(stream_id, None)
        if body is not None:
            self._unreserve(len(body.view))

    def _reserve(self, size: int) -> bool:
        """Take ``size`` bytes of buffers asked for by headers (``max_read_buffers_bytes``)."""
        if not self._server.reserve_direct(size):
            return False
        self._direct_bytes += size
        return True

    def _unreserve(self, size: int) -> None:
        self._direct_bytes -= size
        self._server.release_direct(size)

    def _to_h2(self, data: bytes | memoryview) -> None:
        if taking_frames(self._protocol):  # else grpclib closed the connection meanwhile
            receive_bytes(self._protocol, bytes(data), self._broken)

    def _broken(self, reason: str) -> None:
        """h2 refused a frame of the peer's and queued its GOAWAY (sent): say so, close.

        A frame after the peer's own GOAWAY (h2 takes the connection as closed then, and
        RFC 9113 lets a peer reset its streams after one) is no fault: logged at INFO.
        """
        if self._closing:
            return
        self._closing = True
        line = f"closing the connection of {self.peer}: [CONN-17] it broke HTTP/2: {reason}"
        if "in state ConnectionState.CLOSED" in reason:
            log.info("closing the connection of %s, which went away: %s", self.peer, reason)
        else:
            self._server.warn("CONN-17", line)
        self._close_after_goaway(f"[CONN-17] the peer broke HTTP/2: {reason}")

    def _give(self, frames: list[Taken]) -> None:
        """Have frames read past h2's frame buffer taken, in order (``take_frames``), each
        DATA frame followed through its stream's messages first (CONN-9)."""
        take_frames(self._protocol, frames, self._metered, self._broken)

    def _received(self, frame: _DirectFrame) -> Taken:
        """A DATA frame read whole, to be taken; its buffer leaves the server's bound."""
        if frame.reserved:
            self._unreserve(frame.reserved)
            frame.reserved = 0
        return frame.stream_id, frame.payload, frame.end_stream

    def _frame_begins(self, kind: int, flags: int, length: int) -> bool:
        """A frame header arrived (its body may not have); False once a limit tripped."""
        if not self._framed:
            self._framed = True  # the preface and the first frame: HTTP/2 is spoken
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
                self._handshake_timer = None
        if not self._quiet_frames.frame(kind, length):
            self._trip_quiet()
            return False
        if kind in (_DATA, _HEADERS, _CONTINUATION):
            if length == 0 and not (flags & _END_STREAM and kind != _CONTINUATION):
                self._empty_run += 1
                if self._empty_run > self._limits.max_empty_frames:
                    self._trip(
                        "CONN-8",
                        f"{self._empty_run} consecutive frames without payload; the limit "
                        f"is {self._limits.max_empty_frames} (--max-empty-frames)",
                    )
                    return False
            else:
                self._empty_run = 0
        if kind in (_HEADERS, _PUSH_PROMISE, _CONTINUATION):
            # PUSH_PROMISE opens a header block too (h2 then expects CONTINUATION frames).
            if kind != _CONTINUATION and not self._in_block:
                self._in_block, self._block_bytes = True, 0
            self._block_bytes += length
            self._ends_block = bool(flags & _END_HEADERS)
            hard = HEADER_LIST_HARD * self._limits.max_header_list_bytes
            if self._block_bytes > hard:
                before = self._block_bytes - length
                size = f"{before} bytes and {length} more" if before else f"{length} bytes"
                self._trip(
                    "CONN-7",
                    f"a header block of {size}; the limit is {hard} "
                    f"({HEADER_LIST_HARD} x --max-header-list-bytes)",
                )
                return False
        return True

    def _quiet(self, frames: int) -> bool:
        """Count ``frames`` that carry no message (CONN-19); False once past the limit."""
        if self._quiet_frames.spend(frames):
            return True
        self._trip_quiet()
        return False

    def _trip_quiet(self) -> None:
        self._trip(
            "CONN-19",
            f"more than {self._limits.max_frames_without_data} frames that carry no "
            "message (every frame but DATA, HEADERS and CONTINUATION: PING, PRIORITY, "
            "SETTINGS entries, WINDOW_UPDATE, RST_STREAM, unknown types) beyond what its "
            "messages and ours earn back (--max-frames-without-data)",
        )

    def _peer_going(self, last_stream: int) -> None:
        """The pipeline said GOAWAY without an error (its channel shuts down, CONN-20):
        its streams go on to their end; once none is left, the idle timeout closes.
        Said once per connection: a peer may repeat it (grpc-core sends two)."""
        if self._going:
            return
        self._going = True
        log.info(
            "%s is going away (GOAWAY NO_ERROR, last stream %d): its streams finish",
            self.peer,
            last_stream,
        )

    def _frame_received(self) -> None:
        if self._ends_block:
            self._ends_block = self._in_block = False
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

    # --- h2's events, before grpclib handles them -------------------------------------

    def _event(self, event: Any) -> bool:
        if self._closing:
            return False
        if isinstance(event, h2.events.DataReceived):
            self._metered(event.stream_id, event.data)
        elif isinstance(event, h2.events.RequestReceived):
            if event.stream_id > self._last_stream:  # opened after our GOAWAY was sent
                # The peer may have reset it in the same read: then it is closed already.
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self._h2.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
                assert self._writer is not None
                self._writer.write(self._h2.data_to_send())
                return False
            self._opened += 1
            headers = event.headers
            size = sum(len(name) + len(value) + 32 for name, value in headers)
            if size > self._limits.max_header_list_bytes:
                self._refuse_headers(event.stream_id, size)
                return False
            self._unanswered.add(event.stream_id)
            read, note = _as_grpclib_reads(headers)
            event.headers = cast(Any, read)
            if note and not self._headers_noted:  # once per connection: a proxy's habit
                self._headers_noted = True
                log.warning(
                    "request of %s: [CONN-21] %s (warned once per connection)", self.peer, note
                )
        elif isinstance(event, h2.events.StreamReset):
            self._meters.forget(event.stream_id)
            self._end_body(event.stream_id)
            if event.remote_reset and event.stream_id in self._unanswered:
                self._unanswered.discard(event.stream_id)
                self._premature += 1
                self._check_resets()
        elif isinstance(event, h2.events.StreamEnded):
            self._meters.forget(event.stream_id)
            self._end_body(event.stream_id)
        elif isinstance(event, h2.events.SettingsAcknowledged):
            # h2 set its decoder to the advertised limit: decode past it again.
            limit = self._limits.max_header_list_bytes
            self._h2.decoder.max_header_list_size = HEADER_LIST_HARD * limit
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            table = event.changed_settings.get(SettingCodes.HEADER_TABLE_SIZE)
            if table is not None and table.new_value > HEADER_TABLE_BYTES:
                # HPACK lets an encoder use less than the peer allows (CONN-18): a table
                # of 4 GiB would keep every distinct grpc-message, each costing the next.
                self._h2.encoder.header_table_size = HEADER_TABLE_BYTES
        return not self._closing

    def _refuse_headers(self, stream_id: int, size: int) -> None:
        """End a stream whose header list is past the advertised limit, and only it:
        trailers-only RESOURCE_EXHAUSTED naming the rule, then RST_STREAM NO_ERROR so
        that its sender stops sending (CONN-7)."""
        limit = self._limits.max_header_list_bytes
        message = (
            f"[CONN-7] a header list of {size} bytes; the limit is {limit}, advertised "
            "as SETTINGS_MAX_HEADER_LIST_SIZE (--max-header-list-bytes)"
        )
        self._server.warn("CONN-7", f"refused a stream of {self.peer}: {message}")
        trailers = [
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", str(Status.RESOURCE_EXHAUSTED.value)),
            ("grpc-message", message),
        ]
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self._h2.send_headers(stream_id, trailers, end_stream=True)
            self._h2.reset_stream(stream_id, ErrorCodes.NO_ERROR)
        assert self._writer is not None
        self._writer.write(self._h2.data_to_send())

    def _metered(self, stream_id: int, payload: bytes | memoryview) -> bool:
        """Follow a DATA frame through its stream's messages; False once CONN-9 tripped."""
        excess = self._meters.excess(stream_id, payload)
        if excess is None:
            return True
        self._trip("CONN-9", f"{excess} (--frames-per-message)")
        return False

    def _check_resets(self) -> None:
        threshold = self._limits.premature_reset_streams
        if self._opened >= threshold and 2 * self._premature > self._opened:
            self._trip(
                "CONN-6",
                f"{self._premature} of the {self._opened} streams it opened were reset "
                "before the server answered them (rapid reset); the limit is half, "
                f"judged from {threshold} streams on (--premature-reset-streams)",
            )

    def _stream_accepted(self, stream_id: int) -> None:
        self._active += 1
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._keepalive_timer is None:
            self._arm_keepalive()

    def _stream_released(self, stream_id: int) -> None:
        self._active -= 1
        self._unanswered.discard(stream_id)
        self._meters.forget(stream_id)
        self._end_body(stream_id)
        if not self._active:
            self._arm_idle()

    # --- what the peer leaves unread --------------------------------------------------

    def _unread(self) -> int:
        unread = 0
        for transport in self._transports:
            if not transport.is_closing():
                unread += transport.get_write_buffer_size()
        return unread

    def _check_unread(self, control: int) -> None:
        unread = self._unread()
        if not unread:
            self._control_owed = 0
            return
        self._control_owed += control
        if self._control_owed > self._limits.max_control_frames:
            why = (
                f"{self._control_owed} acknowledgements (PING, SETTINGS) queued while it "
                f"reads nothing; the limit is {self._limits.max_control_frames} "
                "(--max-control-frames)"
            )
        elif unread > self._limits.max_unread_bytes:
            why = (
                f"{unread} bytes queued that it does not read; the limit is "
                f"{self._limits.max_unread_bytes} (--max-unread-bytes)"
            )
        else:
            return
        self._trip("CONN-10", why)

    # --- clocks -----------------------------------------------------------------------

    def _arm_idle(self) -> None:
        timeout = self._limits.idle_timeout
        if timeout is not None and not self._closing:
            self._idle_timer = self._loop.call_later(timeout, self._idle_expired)

    def _arm_keepalive(self) -> None:
        interval = self._limits.keepalive_time
        if interval is not None and not self._closing:
            self._bytes_seen = self._bytes_in
            self._keepalive_timer = self._loop.call_later(interval, self._keepalive_due)

    def _keepalive_due(self) -> None:
        """Nothing read for a whole interval with a stream open: ask for a byte back.

        Looked at once per interval rather than re-armed on every read, which would put
        a timer's cost on every read of a stream in full flow; a peer gone silent is
        asked between one and two intervals after its last byte.
        """
        self._keepalive_timer = None
        if self._closing or not self._active:
            return  # no stream: the idle timeout (CONN-13) watches the connection
        if self._bytes_in != self._bytes_seen or self._writer is None:
            self._arm_keepalive()
            return
        try:
            self._h2.ping(_KEEPALIVE_PING)
        except h2.exceptions.ProtocolError:
            return  # the peer's GOAWAY closed it: the connection is ending anyway
        self._writer.write(self._h2.data_to_send())
        timeout = self._limits.keepalive_timeout
        if timeout is None:
            self._arm_keepalive()  # PINGs that keep middleboxes' state, and no verdict
        else:
            self._keepalive_timer = self._loop.call_later(timeout, self._keepalive_expired)

    def _keepalive_expired(self) -> None:
        self._keepalive_timer = None
        if self._closing or not self._active:
            return  # its streams ended meanwhile: nothing is held
        if self._bytes_in != self._bytes_seen:
            self._arm_keepalive()  # the acknowledgement, or anything else, came back
            return
        interval, timeout = self._limits.keepalive_time, self._limits.keepalive_timeout
        assert interval is not None and timeout is not None
        self._trip(
            "CONN-16",
            f"nothing received for {interval + timeout:g} s with {self._active} stream(s) open, "
            f"not even the acknowledgement of a PING sent {timeout:g} s "
            "ago: the peer is gone (--keepalive-time, --keepalive-timeout)",
            ErrorCodes.NO_ERROR,
        )

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if self._closing:
            return
        stage = "TLS handshake and HTTP/2 preface" if self._transport is None else "HTTP/2 preface"
        self._server.warn(
            "CONN-12",
            f"closing the connection of {self.peer}: [CONN-12] no {stage} within "
            f"{self._limits.handshake_timeout:g} s (--handshake-timeout)",
        )
        self._closing = True
        if self._raw is not None:
            self._raw.abort()

    def _header_expired(self) -> None:
        self._header_timer = None
        self._trip(
            "CONN-7",
            f"a header block unfinished after {self._limits.header_timeout:g} s (--header-timeout)",
        )

    def _idle_expired(self) -> None:
        self._idle_timer = None
        if not self._active:
            self._trip(
                "CONN-13",
                f"no stream for {self._limits.idle_timeout:g} s (--idle-timeout)",
                ErrorCodes.NO_ERROR,
                routine=True,  # an idle channel is no one's fault
            )

    # --- closing ----------------------------------------------------------------------

    def going_away(self, reason: str) -> None:
        """GOAWAY NO_ERROR naming the last stream the server took: the client opens no
        new stream here, and those it has go on. A stream it opened before it read this
        (its number is higher) is refused with REFUSED_STREAM, which tells the client
        that nothing of it was processed, so grpc-core retries it on another connection.
        Written past h2, whose state machine would refuse every frame after its own
        GOAWAY, the answers of the running streams included."""
        if self._closing or self._writer is None or self._writer.is_closing():
            return
        last = self._h2.highest_inbound_stream_id
        self._last_stream = last
        frame = hyperframe.frame.GoAwayFrame(
            0, last_stream_id=last, error_code=0, additional_data=reason.encode()
        )
        self._writer.write(frame.serialize())

    def _trip(
        self,
        rule: str,
        why: str,
        code: ErrorCodes = ErrorCodes.ENHANCE_YOUR_CALM,
        *,
        routine: bool = False,
    ) -> None:
        """Log once (at INFO when ``routine``), send GOAWAY with ``code`` and the
        reason, close, end every call."""
        if self._closing:
            return
        self._closing = True
        reason = f"[{rule}] {why}"
        if routine:
            log.info("closing the connection of %s: %s", self.peer, reason)
        else:
            self._server.warn(rule, f"closing the connection of {self.peer}: {reason}")
        assert self._writer is not None
        with contextlib.suppress(h2.exceptions.ProtocolError):  # h2 already closed it
            self._h2.close_connection(
                error_code=code,
                additional_data=reason.encode(),
                # A GOAWAY's last stream never rises above one sent before (a drain's).
                last_stream_id=min(self._last_stream, self._h2.highest_inbound_stream_id),
            )
            self._writer.write(self._h2.data_to_send())
        self._close_after_goaway(reason)

    def _close_after_goaway(self, reason: str) -> None:
        """End every call; close the socket once the GOAWAY may have been read."""
        assert self._raw is not None
        if self._unread():
            self._raw.abort()  # it reads nothing: no GOAWAY would reach it
            close_connection(self._protocol, reason)
            return
        # Closing a socket with bytes unread sends a TCP reset, which can destroy the
        # GOAWAY before the peer reads it. So every call ends now, and the socket stays
        # open (what arrives is dropped unread) until the peer closes it or LINGER ends.
        self._protocol.handler.close()
        self._linger = self._loop.call_later(LINGER, close_connection, self._protocol, reason)


class _GuardedTLS(DiagnosedServerTLS):
    """TLS around a guarded connection: counted and timed from the moment it is accepted."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, guard: ConnectionGuard, context: ssl.SSLContext
    ) -> None:
        super().__init__(loop, guard, context)
        self._guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._guard.accepted(transport):
            cast(asyncio.Transport, transport).abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self._guard.released()
