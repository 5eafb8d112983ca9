"""gRPC's length-prefixed messages read off one HTTP/2 stream, bounded and without copies.

Both ends read the same way: the 5-byte prefix first, so a message over the limit is
refused before a byte of it is buffered; then exactly the announced length, which
``avaproto.codec`` decodes leaving an embedded frame a view of the received buffer. A
stream that ends inside a message is a malformed message (WIRE-1), never a crash.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
import grpclib.protocol
from grpclib.encoding.base import CodecBase

from ..codec import decode_message, decode_usual, embedded_bytes, encode_message
from ..errors import RemoteProtocolError
from ..messages import MediaStreamMessage
from ..status import Status
from ._grpclib_private import receive_exactly, receive_whole, received_bytes, window_shut
from .compression import inflate

_PREFIX = struct.Struct(">BI")
_Message = TypeVar("_Message")
log = logging.getLogger("avaproto.server")


def _truncated(what: str) -> RemoteProtocolError:
    return RemoteProtocolError("WIRE-1", Status.INVALID_ARGUMENT, f"the stream ended inside {what}")


#: Seconds of decoding one stream's messages may take of the event loop before it lets
#: the others run (WIRE-2).
PACING_SLICE = 0.005
#: Bytes, besides an embedded frame, from which a message that is not a plain sample is
#: decoded in a thread (one at a time per event loop), not on the event loop: within
#: the field budget one message can still cost a quarter of a second (20,000 map
#: entries, 279 bytes compressed), and no pacing between messages shortens one.
APART_BYTES = 16 * 1024
#: The one thread that decodes them, per event loop (a limiter belongs to its loop, and
#: one shared by two loops in two threads left one waiting for ever).
_apart: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar("avaproto_apart")


def _apart_limiter() -> anyio.CapacityLimiter:
    try:
        return _apart.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(1)
        _apart.set(limiter)
        return limiter


class Pacing:
    """The time one stream's messages have kept the event loop decoding since they last
    let other work run (WIRE-2).

    Messages that arrived together are read one after the other without a trip around
    the event loop, which is what makes a stream in full flow cheap. But the field
    budget lets one message cost tens of milliseconds to decode (thousands of
    inferences, a few dozen bytes once compressed), and a read of a hundred of them
    held every other stream, keepalive and deadline for seconds. So the decoding is
    timed, and once it passes ``PACING_SLICE`` the reader yields once.
    """

    __slots__ = ("spent",)

    def __init__(self) -> None:
        self.spent = 0.0

    async def decode(self, data: bytes | bytearray | memoryview) -> MediaStreamMessage:
        if len(data) >= APART_BYTES:
            usual = decode_usual(data)  # an embedded frame, at once
            if usual is not None:
                return usual
            if len(data) - embedded_bytes(data) >= APART_BYTES:  # a frame costs nothing
                limiter = _apart_limiter()
                return await anyio.to_thread.run_sync(decode_message, data, limiter=limiter)
        started = time.perf_counter()
        try:
            return decode_message(data)
        finally:
            self.spent += time.perf_counter() - started

    async def let_others_run(self) -> None:
        """Yield once if decoding took its slice (never cancelled there: the message
        read is the caller's)."""
        if self.spent >= PACING_SLICE:
            self.spent = 0.0
            await anyio.lowlevel.cancel_shielded_checkpoint()


async def read_message(
    stream: grpclib.protocol.Stream,
    max_bytes: int,
    *,
    limit_rule: str,
    hold: Callable[[int], AbstractContextManager[object]] | None = None,
    settle: Callable[[MediaStreamMessage], Awaitable[None]] | None = None,
    encoding: str | None = None,
    arrival: Arrival | None = None,
    pacing: Pacing | None = None,
) -> MediaStreamMessage | None:
    """The next extension message on ``stream``, or None at its clean end (``read``);
    with ``pacing``, the decoding of the stream's messages is paced (``Pacing``)."""
    message = await read(
        stream,
        max_bytes,
        _decoded if pacing is None else pacing.decode,
        limit_rule=limit_rule,
        hold=hold,
        settle=settle,
        encoding=encoding,
        arrival=arrival,
    )
    if pacing is not None:
        await pacing.let_others_run()
    return message


async def _decoded(data: bytes | bytearray | memoryview) -> MediaStreamMessage:
    return decode_message(data)


class Arrival:
    """How long a message's body may take to arrive once its prefix came (SRV-20).

    The budget of incomplete messages (SRV-13) bounds how many bytes announced
    messages may hold, not for how long: a peer that sends a byte of each now and then
    keeps its connection alive (CONN-16) and the budget taken. ``peer`` names it in the
    warning logged when the deadline passes. ``held_back`` is how long, at most, the
    deadline may be put off in all while the server itself held the body back (a sibling
    waiting for frame memory, ``--frame-memory-timeout``): a peer that shuts a window of
    ours on purpose holds the budget no longer than that.
    """

    __slots__ = ("held_back", "peer", "timeout")

    def __init__(self, timeout: float, peer: str, held_back: float = 0.0) -> None:
        self.timeout, self.peer, self.held_back = timeout, peer, held_back

    def exceeded(self, length: int, came: int, waited: float) -> RemoteProtocolError:
        put_off = (
            f", put off to {waited:.3g} s in all while the server held its bytes back"
            if waited > 2 * self.timeout
            else ""
        )
        detail = (
            f"a message of {length} bytes did not arrive whole within {self.timeout:g} s of "
            f"its length prefix ({came} of its bytes came{put_off}): an announced message "
            "holds the server's budget of incomplete messages until it is whole "
            "(--message-timeout)"
        )
        log.warning("stream of %s ended: [SRV-20] %s", self.peer, detail)
        return RemoteProtocolError("SRV-20", Status.DEADLINE_EXCEEDED, detail)


async def read(
    stream: grpclib.protocol.Stream,
    max_bytes: int,
    decode: Callable[[bytes | bytearray | memoryview], Awaitable[_Message]],
    *,
    limit_rule: str,
    hold: Callable[[int], AbstractContextManager[object]] | None = None,
    settle: Callable[[_Message], Awaitable[None]] | None = None,
    encoding: str | None = None,
    arrival: Arrival | None = None,
) -> _Message | None:
    """The next message on ``stream``, decoded by ``decode``, or None at its clean end.

    A message larger than ``max_bytes`` raises RESOURCE_EXHAUSTED under ``limit_rule``
    (the server's SRV-5, the pipeline's PIPE-5) before it is read. ``hold(length)``, if
    given, is entered while the body announced by the prefix is read: the server's
    budget of incomplete messages (``avaproto.transport.budget``, SRV-13).
    ``settle(message)``, if given, is awaited once the message is decoded, before it is
    returned, still inside ``hold``: the server's frame memory (SRV-18), where a sample
    may wait for room, counted meanwhile as a message in flight. A message flagged
    compressed is inflated as the stream's ``encoding`` says, to at most ``max_bytes``
    (``avaproto.transport.compression``, WIRE-3), its inflated bytes held likewise.
    With ``arrival``, a body that does not arrive in time ends the stream (SRV-20).
    """

    whole = await receive_whole(stream)
    if whole is not None:  # the common case: a message that arrived in one DATA frame
        _check_prefix(whole[0], len(whole) - 5, max_bytes, limit_rule)
        if whole[0]:
            return await _inflated(whole[5:], decode, encoding, max_bytes, limit_rule, hold, settle)
        message = await decode(whole[5:])
        if settle is not None:
            await settle(message)
        return message
    try:
        prefix = await stream.recv_data(5)
    except AssertionError:  # grpclib's buffer: fewer bytes than asked before the end
        raise _truncated("a message prefix") from None
    if not prefix:
        return None
    if len(prefix) != 5:
        raise _truncated("a message prefix")
    compressed, length = _PREFIX.unpack(prefix)
    _check_prefix(compressed, length, max_bytes, limit_rule)
    with hold(length) if hold is not None else contextlib.nullcontext():
        try:
            if arrival is None:
                data = await receive_exactly(stream, length)
            else:
                data = await _arriving(stream, length, arrival)
        except AssertionError:
            raise _truncated(f"a message of {length} bytes") from None
        if len(data) != length:
            raise _truncated(f"a message of {length} bytes")
        if compressed:
            return await _inflated(data, decode, encoding, max_bytes, limit_rule, hold, settle)
        message = await decode(data)
        if settle is not None:
            await settle(message)  # the message still counted in the budget of ``hold``
        return message


async def _arriving(
    stream: grpclib.protocol.Stream, length: int, arrival: Arrival
) -> bytes | memoryview:
    """The body, within the arrival deadline (SRV-20), which starts again while the
    pipeline could not send: a window of ours at 0 (its other streams' bytes unread,
    one of them waiting for frame memory, SRV-18) is the server's doing, not its; for
    ``held_back`` seconds at most."""
    began = anyio.current_time()
    while True:
        with anyio.move_on_after(arrival.timeout):
            return await receive_exactly(stream, length)  # resumes where a wait stopped
        waited = anyio.current_time() - began
        if not (window_shut(stream) and waited < arrival.timeout + arrival.held_back):
            raise arrival.exceeded(length, received_bytes(stream), waited)


async def _inflated(
    data: bytes | memoryview,
    decode: Callable[[bytes | bytearray | memoryview], Awaitable[_Message]],
    encoding: str | None,
    max_bytes: int,
    limit_rule: str,
    hold: Callable[[int], AbstractContextManager[object]] | None,
    settle: Callable[[_Message], Awaitable[None]] | None,
) -> _Message:
    """A compressed message decoded and settled, its inflated bytes counted until then
    (WIRE-3)."""
    async with inflate(data, encoding, max_bytes, limit_rule=limit_rule, hold=hold) as body:
        message = await decode(body)
        if settle is not None:
            await settle(message)
        return message


def _check_prefix(compressed: int, length: int, max_bytes: int, limit_rule: str) -> None:
    if compressed > 1:
        raise RemoteProtocolError(
            "WIRE-1",
            Status.INVALID_ARGUMENT,
            f"a message's compressed flag is {compressed:#04x}; gRPC defines 0 and 1",
        )
    if length > max_bytes:
        raise RemoteProtocolError(
            limit_rule,
            Status.RESOURCE_EXHAUSTED,
            f"message of {length} bytes exceeds the limit of {max_bytes} bytes",
        )


class WireCodec(CodecBase):
    """grpclib's codec for every call avaproto makes or serves.

    ``MediaStreamMessage`` goes through ``avaproto.codec``, whose sample encoder writes
    the official runtime's bytes without the generic serializer; other messages (the
    health service's) are betterproto2's. Incoming extension messages never reach this
    codec: ``read_message`` reads them off the stream itself, size first.
    """

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, MediaStreamMessage):
            return encode_message(message)
        if not isinstance(message, message_type):
            raise TypeError(f"expected {message_type.__name__}, got {type(message).__name__}")
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if message_type is MediaStreamMessage:
            return decode_message(data)
        return message_type.parse(data)
