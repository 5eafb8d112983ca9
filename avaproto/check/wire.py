"""Raw ``ProcessMediaStream`` calls: any message, well formed or not, and how the stream ended.

avaproto's own pipeline (``PipelineStream``) refuses to send a violation; a probe must.
A ``Call`` sends whatever it is given (a ``MediaStreamMessage`` of any numbering, or
bytes with a gRPC prefix that may lie about their length), reads the answers as
strictly as the pipeline does (``ClientChannel``), and ``finish`` reports how the
extension ended the stream: its gRPC status and message, and every answer before it.

Sending never raises once the extension has refused the stream: the refusal is what
the probe is after, and it is read from the stream's status.
"""

from __future__ import annotations

import contextlib
import ssl
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpclib.client
import grpclib.const
import grpclib.exceptions
import h2.exceptions

from ..codec import encode_framed
from ..errors import AvaprotoError, ProtocolError, RemoteProtocolError, StreamFailed
from ..messages import METHOD_PATH, MediaStreamMessage
from ..status import Status
from ..transport._grpclib_private import (
    ended_with_call,
    extension_speaks_http2,
    keep_empty_data_frames_out,
    lost_before_the_call,
    quiet_frame_repr,
    read_answers_directly,
    receive_initial_metadata,
    send_client_message,
    settle_call_cancellations,
    spoke_http2,
)
from ..transport.framing import WireCodec
from ..transport.grpc_client import ClientChannel, parse_target, why_lost
from ..transport.limits import ConnectionLimits
from ..transport.tls import closed_at_once, explain_connection_failure

#: What sending on a stream the extension has refused, reset or closed can raise.
_SEND_ERRORS = (
    AvaprotoError,
    grpclib.exceptions.StreamTerminatedError,
    grpclib.exceptions.ProtocolError,
    h2.exceptions.ProtocolError,
    OSError,
)
_PREFIX = struct.Struct(">?I")
#: The answers a probe reads at most on one stream, so that an extension answering
#: forever is bounded (each is kept until the probe judges them).
MAX_ANSWERS = 1000


def framed(payload: bytes, *, length: int | None = None) -> bytes:
    """``payload`` with a gRPC prefix announcing ``length`` bytes (default: its own)."""
    return _PREFIX.pack(False, len(payload) if length is None else length) + payload


@dataclass(frozen=True)
class Target:
    """Where the extension is and how to reach it."""

    address: str
    ssl: ssl.SSLContext | None = None
    #: Request metadata of every call (the credentials), unless a probe gives its own.
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_target(self.address)


@dataclass
class Ending:
    """How a stream ended, seen from the pipeline's side."""

    #: The extension's status: OK for a clean end; None when its answers were malformed.
    status: Status | None
    detail: str = ""
    answers: list[MediaStreamMessage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def describe(self) -> str:
        """The end as a person reads it: ``INVALID_ARGUMENT: [SEQ-3] ...``."""
        if self.status is None:
            return f"answered with a malformed message: {self.detail}"
        name = "ended the stream OK" if self.ok else self.status.name
        return f"{name}: {self.detail}" if self.detail else name


def summarize(answers: Sequence[MediaStreamMessage]) -> str:
    """What the extension sent, in a few words: ``a descriptor and 2 answers``."""
    descriptors = sum(a.media_stream_descriptor is not None for a in answers)
    others = len(answers) - descriptors
    parts = []
    if descriptors:
        parts.append("a descriptor" if descriptors == 1 else f"{descriptors} descriptors")
    if others:
        parts.append("an answer" if others == 1 else f"{others} answers")
    return " and ".join(parts) if parts else "nothing"


class Call:
    """One ``ProcessMediaStream`` call, from the pipeline's side, with no rule enforced."""

    def __init__(self, stream: grpclib.client.Stream[Any, Any], peer: str, *, tls: bool) -> None:
        self._stream = stream
        self.channel = ClientChannel(stream, peer, tls=tls)
        #: Set once a send failed: the extension refused or reset the stream.
        self.send_failed = False
        self.received: list[MediaStreamMessage] = []

    async def send(self, message: MediaStreamMessage | bytes) -> bool:
        """Send a message, or bytes already framed; False once the stream is refused."""
        if self.send_failed:
            return False
        try:
            framed = message if isinstance(message, bytes) else encode_framed(message)
            await send_client_message(self._stream, [framed])
        except _SEND_ERRORS:
            self.send_failed = True
        return not self.send_failed

    async def receive(self) -> MediaStreamMessage | None:
        """The next answer, or None at a clean end; a non-OK end raises ``StreamFailed``."""
        try:
            await receive_initial_metadata(self._stream)
        except grpclib.exceptions.GRPCError as error:
            raise StreamFailed(Status(error.status.value), error.message or "") from None
        except grpclib.exceptions.StreamTerminatedError:
            pass  # the channel says why, from what was received before the reset
        if self._stream.trailing_metadata is not None:
            # A trailers-only answer with status OK: the extension ended the stream
            # without a message. Its trailers came with its headers: none will follow.
            return None
        message = await self.channel.receive()
        if message is not None:
            if len(self.received) == MAX_ANSWERS:
                raise RemoteProtocolError(
                    "PIPE-10",
                    Status.RESOURCE_EXHAUSTED,
                    f"the extension sent more than {MAX_ANSWERS} answers on one of the "
                    "check's streams, which sends a few samples",
                )
            self.received.append(message)
        return message

    async def end(self) -> None:
        """End our direction (no more messages), unless the stream is over already."""
        if self.send_failed:
            return
        try:
            await self._stream.end()
        except _SEND_ERRORS:
            self.send_failed = True

    async def finish(self, *, end: bool = True) -> Ending:
        """End our direction (with ``end``) and read every answer until the stream ends."""
        if end:
            await self.end()
        answers: list[MediaStreamMessage] = []
        try:
            while (message := await self.receive()) is not None:  # at most MAX_ANSWERS
                answers.append(message)
        except StreamFailed as failed:
            return Ending(failed.status, failed.detail, answers)
        except ProtocolError as error:
            return Ending(None, str(error), answers)
        return Ending(Status.OK, "", answers)


class Unreachable(AvaprotoError):
    """The target could not be reached at all: no probe can run."""


@asynccontextmanager
async def connection(target: Target) -> AsyncIterator[grpclib.client.Channel]:
    """An HTTP/2 connection to the target, closed on the way out."""
    host, port = target.host_port
    quiet_frame_repr()
    keep_empty_data_frames_out()
    settle_call_cancellations()
    channel = grpclib.client.Channel(host, port, ssl=target.ssl, codec=WireCodec())
    # What the extension can make the probe hold is bounded as for any pipeline
    # (PIPE-8, PIPE-9): a probe reads answers from a process it does not trust.
    read_answers_directly(channel, ConnectionLimits())
    try:
        yield channel
    finally:
        channel.close()


@asynccontextmanager
async def call(
    channel: grpclib.client.Channel,
    target: Target,
    metadata: Sequence[tuple[str, str]] | None = None,
) -> AsyncIterator[Call]:
    """One ``ProcessMediaStream`` call on ``channel``, with the target's metadata by default.

    A target that cannot be reached raises ``Unreachable``.
    """
    host, port = target.host_port
    stream = channel.request(
        METHOD_PATH,
        grpclib.const.Cardinality.STREAM_STREAM,
        MediaStreamMessage,
        MediaStreamMessage,
        metadata=list(target.metadata if metadata is None else metadata),
    )
    await stream.__aenter__()
    try:
        try:
            await stream.send_request()
            with ended_with_call(stream):
                await extension_speaks_http2(stream)
        except (ConnectionError, OSError) as error:
            hint = explain_connection_failure(error, tls=target.ssl is not None)
            raise Unreachable(
                f"cannot reach {host}:{port}: {str(error) or type(error).__name__}"
                + (f"; {hint}" if hint else "")
            ) from None
        except AttributeError as error:
            if not lost_before_the_call(error, channel):
                raise
            raise Unreachable(
                f"cannot reach {host}:{port}: it closed the connection as it opened; "
                + closed_at_once(tls=target.ssl is not None)
            ) from None
        except grpclib.exceptions.StreamTerminatedError as error:
            # Its SETTINGS and a refusal of the call (a status, then a reset) can come in
            # one read: then the call ended, and its status says why. Without SETTINGS
            # the connection ended before HTTP/2 began (HTTP/1, TLS, a refusal: PIPE-9).
            if not spoke_http2(stream):
                lost = why_lost(stream, error, tls=target.ssl is not None)
                raise Unreachable(f"{host}:{port}: {lost}") from None
        yield Call(stream, f"{host}:{port}", tls=target.ssl is not None)
    finally:
        # Leave as a failed call does: reset the stream if it is still open, without
        # waiting for anything more from the extension.
        with contextlib.suppress(*_SEND_ERRORS, grpclib.exceptions.GRPCError):
            await stream.__aexit__(_Left, _Left(), None)


class _Left(Exception):
    """The probe is done with the call, whatever state the stream is in."""
