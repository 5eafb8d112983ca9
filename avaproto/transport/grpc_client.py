"""The pipeline's gRPC client: grpclib bound to the engine's ``PipelineStream``.

Answers are read as strictly as the server reads requests: size-checked from their
prefix (PIPE-5) and decoded by ``avaproto.codec``, so a malformed or truncated answer is
a precise WIRE-1 error, never a crash. The connection has a deadline (PIPE-3).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import grpclib.client
import grpclib.const
import h2.exceptions
from grpclib.exceptions import GRPCError, StreamTerminatedError

from ..codec import framed_pieces
from ..errors import ProtocolError, RemoteProtocolError, StreamFailed
from ..messages import METHOD_PATH, MediaStreamMessage
from ..status import Status
from ._grpclib_private import (
    connection_refusal,
    end_as_sent,
    end_sent,
    ended_with_call,
    error_name,
    extension_speaks_http2,
    goaway_error,
    grpc_status,
    holds_whole_message,
    http2_stream,
    keep_empty_data_frames_out,
    lost_before_the_call,
    quiet_frame_repr,
    read_answers_directly,
    receive_initial_metadata,
    receive_trailers,
    received_headers,
    reset_code,
    send_client_message,
    settle_call_cancellations,
    spoke_http2,
    trailers_only,
)
from .compression import check_encoding
from .framing import Pacing, WireCodec, read_message
from .limits import ConnectionLimits
from .tls import closed_at_once, explain_connection_failure

#: The largest answer accepted (PIPE-5): answers carry inferences, rarely a frame; a
#: 1080p RGB24 frame is 6.2 MB.
DEFAULT_MAX_ANSWER_BYTES = 16 * 1024 * 1024

_TARGET = re.compile(
    r"^(?:(?:tcp|grpc|http|https)://)?(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:/]+)):(?P<port>\d+)/?$"
)


def parse_target(target: str) -> tuple[str, int]:
    """``host:port``, ``[::1]:port`` or ``tcp://host:port`` (as pipelines write endpoints)."""
    match = _TARGET.match(target.strip())
    if not match:
        raise ValueError(f"target {target!r} is not host:port (or tcp://host:port)")
    host = match.group("v6") or match.group("host")
    port = int(match.group("port"))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} of target {target!r} is out of range")
    return host, port


#: gRPC's status for a stream reset without one, by RST_STREAM's error code
#: (PROTOCOL-HTTP2.md, "Errors"); every other code is INTERNAL.
_RESET_STATUS = {
    "REFUSED_STREAM": Status.UNAVAILABLE,
    "CANCEL": Status.CANCELLED,
    "ENHANCE_YOUR_CALM": Status.RESOURCE_EXHAUSTED,
    "INADEQUATE_SECURITY": Status.PERMISSION_DENIED,
}


def why_lost(
    stream: grpclib.client.Stream[Any, Any], error: StreamTerminatedError, *, tls: bool
) -> StreamFailed | ProtocolError:
    """Why the call's connection ended, the extension having sent no status: the
    pipeline refused it (PIPE-8, PIPE-9), the extension's GOAWAY, or the loss itself,
    with a hint when the extension never spoke HTTP/2 (a TLS mismatch, say)."""
    refused = connection_refusal(stream)
    if refused is not None:
        return refused
    message = goaway_error(stream) or f"connection lost: {error}"
    if received_headers(stream)[1] is None and not spoke_http2(stream):
        hint = explain_connection_failure(error, tls=tls)
        if hint:
            message += f"; {hint}"
    return StreamFailed(Status.UNAVAILABLE, message)


async def _spoken_to(stream: grpclib.client.Stream[Any, Any]) -> None:
    """Until the extension's SETTINGS came, or the call ended after them.

    An extension that ends the call at once (a refusal, or OK with nothing said) sends
    its SETTINGS, its status and a reset of our direction together; when one read
    brings them all, grpclib ends the wait with the reset though the SETTINGS came
    first. The call then ends as any other, by what the extension said.
    """
    try:
        with ended_with_call(stream):
            await extension_speaks_http2(stream)
    except StreamTerminatedError:
        if not spoke_http2(stream):
            raise


def _failed(error: GRPCError) -> StreamFailed:
    return StreamFailed(Status(error.status.value), error.message or "")


class ClientChannel:
    """One call's messages on the pipeline's side."""

    def __init__(
        self,
        stream: grpclib.client.Stream[Any, Any],
        peer: str,
        max_message_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
        *,
        tls: bool = False,
    ) -> None:
        self._stream = stream
        self.peer = peer
        self._max = max_message_bytes
        self._tls = tls
        self._encoding: str | None = None  # the extension's grpc-encoding (WIRE-3)
        self._encoding_read = False
        # A message whose prefix was taken and whose body did not come: the stream's
        # bytes no longer start at a message, and nothing more may be read from it.
        self._cut = False
        self._pacing = Pacing()  # what decoding answers takes of the event loop (WIRE-2)

    async def receive(self) -> MediaStreamMessage | None:
        try:
            await receive_initial_metadata(self._stream)
            try:
                with ended_with_call(self._stream):  # a lost connection ends these waits
                    return await self._next()
            except StreamTerminatedError:
                # Answers that arrived before the reset (or the connection's end) are
                # still delivered, one per call, then the reason (PIPE-6); never the
                # rest of one cut short, read as if a message began there.
                if self._cut or not holds_whole_message(http2_stream(self._stream)):
                    raise
                return await self._next()  # waits for nothing: it is all here
        except GRPCError as error:
            raise _failed(error) from None
        except StreamTerminatedError as error:
            if self._ended_ok():
                return None  # the extension's OK, then a reset of our direction: the end
            raise self._why_reset(error) from None

    @contextmanager
    def _body(self, length: int) -> Iterator[None]:
        """While a message's body is read: left set if the read ends inside it."""
        self._cut = True
        yield
        self._cut = False

    async def _next(self) -> MediaStreamMessage | None:
        if not self._encoding_read:  # the extension's headers are in: read them once
            headers = received_headers(self._stream)[1] or ()
            named = [value for name, value in headers if name == "grpc-encoding"]
            if len(set(named)) > 1:
                raise RemoteProtocolError(
                    "WIRE-3",
                    Status.INVALID_ARGUMENT,
                    f"the extension's answer names two encodings: grpc-encoding {named!r}",
                )
            self._encoding = check_encoding(named[-1] if named else None)
            self._encoding_read = True
        message = await read_message(
            http2_stream(self._stream),
            self._max,
            limit_rule="PIPE-5",
            encoding=self._encoding,
            hold=self._body,
            pacing=self._pacing,
        )
        if message is not None:
            return message
        if trailers_only(self._stream):
            # Headers that carried an OK status and ended the stream: no trailers follow
            # (a non-OK one raised GRPCError above).
            return None
        if received_headers(self._stream)[0] is None:
            # The stream's end came on a DATA frame: no trailers can follow it.
            raise RemoteProtocolError(
                "PIPE-6",
                Status.UNKNOWN,
                "the extension ended its stream without a status (no trailers after "
                "its last answer)",
            )
        # The extension ended its stream. Its status is in the trailers, which grpclib
        # only reads after our side ended: read them off the HTTP/2 stream.
        status, detail = grpc_status(self._stream, await receive_trailers(self._stream))
        if status is not grpclib.const.Status.OK:
            raise StreamFailed(Status(status.value), detail or "")
        return None

    async def send(self, message: MediaStreamMessage) -> None:
        try:
            await send_client_message(self._stream, framed_pieces(message))
        except StreamTerminatedError as error:
            if self._ended_ok():
                return  # the extension ended the call first: what it said is read next
            raise self._why_reset(error) from None

    def _sent_status(self) -> tuple[grpclib.const.Status, str | None] | None:
        """The status the extension ended the call with, from its trailers or from
        headers that carried one (a trailers-only response); None if none came."""
        for headers in received_headers(self._stream):
            fields = dict(headers or ())
            if "grpc-status" in fields:
                return grpc_status(self._stream, fields)
        return None

    def _ended_ok(self) -> bool:
        """Whether the extension ended the call with OK (gRPC servers then reset the
        direction the pipeline still sends on, which grpclib reports as a reset)."""
        sent = self._sent_status()
        return sent is not None and sent[0] is grpclib.const.Status.OK

    def _why_reset(self, error: StreamTerminatedError) -> StreamFailed | ProtocolError:
        """The status an extension sent before resetting the stream (a refusal), if any,
        or why the pipeline ended the connection (PIPE-8, PIPE-9).

        A refusing extension answers with a trailers-only response, then resets the
        stream we are still sending on; grpclib then reports only the reset.
        """
        refused = connection_refusal(self._stream)
        if refused is not None:
            return refused
        sent = self._sent_status()
        if sent is not None and sent[0] is not grpclib.const.Status.OK:
            return StreamFailed(Status(sent[0].value), sent[1] or "")
        code = reset_code(self._stream) if sent is None else None
        if code is not None:  # a reset without a status: gRPC's mapping of its code
            name = error_name(code)
            return StreamFailed(
                _RESET_STATUS.get(name, Status.INTERNAL),
                f"the extension reset the stream (RST_STREAM {name}) without a status",
            )
        return why_lost(self._stream, error, tls=self._tls)

    async def send_batch(self, messages: list[MediaStreamMessage]) -> None:
        for message in messages:
            await self.send(message)

    def let_go(self, sequence_number: int) -> None:
        return None  # nothing is counted per frame here

    async def send_end(self) -> None:
        try:
            await self._stream.end()
        except (StreamTerminatedError, h2.exceptions.StreamClosedError) as error:
            if self._ended_ok():
                end_as_sent(self._stream)  # the extension ended the call with OK first
                return
            raise self._why_reset(StreamTerminatedError(str(error))) from None


@asynccontextmanager
async def open_channel(
    target: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    connect_timeout: float | None = None,
    max_message_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    limits: ConnectionLimits | None = None,
) -> AsyncIterator[ClientChannel]:
    """One ``ProcessMediaStream`` call to ``target``, as a ``MessageChannel``.

    ``connect_timeout`` bounds the connection (TCP, TLS, and HTTP/2 up to the
    extension's SETTINGS). ``limits`` (None: the defaults) bounds what the extension
    can make the pipeline hold (``avaproto.transport.answer_guard``: its DATA frames per answer, the
    acknowledgements it leaves unread).
    """
    host, port = parse_target(target)
    quiet_frame_repr()
    keep_empty_data_frames_out()
    settle_call_cancellations()
    channel = grpclib.client.Channel(host, port, ssl=ssl_context, codec=WireCodec())
    read_answers_directly(channel, limits or ConnectionLimits())
    client: ClientChannel | None = None
    try:
        stream = channel.request(
            METHOD_PATH,
            grpclib.const.Cardinality.STREAM_STREAM,
            MediaStreamMessage,
            MediaStreamMessage,
            metadata=list(metadata),
        )
        try:
            async with stream:
                connected = False
                try:
                    with anyio.fail_after(connect_timeout):
                        await stream.send_request()
                        connected = True
                        if connect_timeout is not None:  # else the descriptor's deadline
                            await _spoken_to(stream)
                except TimeoutError:
                    raise ProtocolError(
                        "PIPE-3",
                        Status.DEADLINE_EXCEEDED,
                        f"connected to {host}:{port}, but it sent no HTTP/2 (no SETTINGS "
                        f"frame) within {connect_timeout:g} s: is it a gRPC server"
                        + ("?" if ssl_context is not None else ", or does it expect TLS?")
                        if connected
                        else f"could not connect to {host}:{port}"
                        + (", TLS handshake included," if ssl_context is not None else "")
                        + f" within {connect_timeout:g} s",
                    ) from None
                except GRPCError as error:
                    raise _failed(error) from None
                except AttributeError as error:
                    if not lost_before_the_call(error, channel):
                        raise
                    raise StreamFailed(
                        Status.UNAVAILABLE,
                        f"cannot reach {host}:{port}: it closed the connection as it opened; "
                        + closed_at_once(tls=ssl_context is not None),
                    ) from None
                except (ConnectionError, OSError) as error:
                    hint = explain_connection_failure(error, tls=ssl_context is not None)
                    raise StreamFailed(
                        Status.UNAVAILABLE,
                        f"cannot reach {host}:{port}: {str(error) or type(error).__name__}"
                        + (f"; {hint}" if hint else ""),
                    ) from None
                client = ClientChannel(
                    stream, f"{host}:{port}", max_message_bytes, tls=ssl_context is not None
                )
                yield client
                if not end_sent(stream):
                    await client.send_end()
        except GRPCError as error:
            raise _failed(error) from None
        except StreamTerminatedError as error:
            # grpclib finishes the call through its guard, which keeps the reset that
            # followed the extension's OK: the call ended as the extension said.
            if client is None:  # lost before the extension spoke HTTP/2
                raise why_lost(stream, error, tls=ssl_context is not None) from None
            if not client._ended_ok():
                raise client._why_reset(error) from None
    finally:
        channel.close()
