"""The extension's gRPC server: grpclib bound to the engine.

One ``ProcessMediaStream`` call is one engine stream. Before reading a single message
the server checks the stream limit and the ``x-ms-authentication`` header (AUTH-3);
every message is then read with its size checked from its 5-byte gRPC prefix, so an
oversized one is refused with RESOURCE_EXHAUSTED before it is buffered (SRV-5), and
decoded without copying the frame (``avaproto.codec``). A ``ProtocolError`` from the
engine ends the call with its status and a message naming the rule.

A stream holds a slot of ``max_streams`` from its first byte, so one that never sends
its descriptor ends with DEADLINE_EXCEEDED after ``descriptor_timeout`` (SRV-12); and
every message body is read within the server's budget of incomplete messages (SRV-13,
``avaproto.transport.budget``). The connections themselves are guarded by
``avaproto.transport.guard``, with the limits of ``ServerConfig.limits``.

Shutdown is graceful: ``drain`` stops accepting connections and refuses new streams
with UNAVAILABLE, lets the running streams finish for a grace period, then cancels what
is left, which releases every lease, mapping and file descriptor.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import grpclib.const
import grpclib.server
from grpclib.config import Configuration
from grpclib.exceptions import GRPCError

from ..codec import encode_framed
from ..engine.config import EngineConfig
from ..engine.extension import Processing
from ..engine.outcome import protocol_errors
from ..engine.serve import StreamStop, serve_stream
from ..errors import ProtocolError, RemoteProtocolError, bounded
from ..messages import METHOD_PATH, MediaStreamDescriptor, MediaStreamMessage
from ..protocol.auth import AUTH_HEADER, Credentials, check_authentication
from ..protocol.descriptor import check_descriptor
from ..protocol.roles import Role
from ..protocol.session import overruns_tolerably
from ..protocol.video_format import FrameLimits, VideoFormat
from ..status import Status
from ._grpclib_private import (
    cancelled_by_reset,
    explain_unknown_methods,
    http2_stream,
    listener,
    send_messages,
)
from .addresses import peer_address
from .budget import MessageBudget, subtract
from .frame_memory import FrameMemory
from .framing import Arrival, Pacing, WireCodec, read_message
from .guard import ServerGuard, Throttled, check_open_file_limit, quiet_accept_failures
from .health import DEFAULT_MAX_WATCHES, HealthService, ServingStatus
from .http2 import tune_server
from .limits import ConnectionLimits
from .request_headers import header_values, request_deadline, request_encoding

log = logging.getLogger("avaproto.server")

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: The largest first message (the descriptor) accepted (SRV-19): a stream keeps its
#: descriptor for its whole life, outside every other bound.
DEFAULT_MAX_DESCRIPTOR_BYTES = 1024 * 1024

#: Makes a stream's extension: anything with ``process(frame)``, plain or async.
ExtensionFactory = Callable[[], Processing]


@dataclass(frozen=True)
class ServerConfig:
    """Everything that shapes the server, in one place."""

    host: str = "127.0.0.1"
    #: 0 picks a free port; ``ExtensionServer.port`` tells which.
    port: int = 5001
    engine: EngineConfig = field(default_factory=EngineConfig)
    #: Require these credentials in ``x-ms-authentication`` (None: no authentication).
    credentials: Credentials | None = None
    #: TLS: the server's context (see ``avaproto.transport.tls.server_context``).
    ssl: ssl.SSLContext | None = None
    #: Largest message accepted; a larger one ends its stream with RESOURCE_EXHAUSTED.
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: Largest descriptor (a stream's first message) accepted (SRV-19).
    max_descriptor_bytes: int = DEFAULT_MAX_DESCRIPTOR_BYTES
    #: Streams served at once; one more is refused with RESOURCE_EXHAUSTED.
    max_streams: int = 64
    #: Streams one connection may have served at once (None: half of ``max_streams``),
    #: so that one peer's connection never takes every slot (SRV-6).
    max_streams_per_connection: int | None = None
    #: Serve the standard gRPC health service (``avaproto.transport.health``) beside it.
    health: bool = True
    #: Its Watch calls open at once; one more is refused with RESOURCE_EXHAUSTED (SRV-9).
    max_health_watches: int = DEFAULT_MAX_WATCHES
    #: What one peer may make the server hold (``avaproto.transport.limits``).
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    #: Log when the event loop is blocked longer than this many seconds, naming the
    #: extension serving at the time (SRV-14; None: no watch).
    loop_lag_warning: float | None = 0.25


#: Seconds the streams cut at the end of a drain have to send their status.
STOP_GRACE = 1.0


@dataclass(frozen=True)
class OpenStream:
    """A stream being served, as the loop-lag watch names it."""

    peer: str
    extension: str


class _ServerChannel:
    """One call's messages, read with a size limit and decoded without copying frames."""

    def __init__(
        self,
        stream: grpclib.server.Stream[Any, Any],
        max_bytes: int,
        budget: MessageBudget,
        frame_memory: FrameMemory,
        limits: FrameLimits,
        descriptor_timeout: float | None,
        encoding: str | None = None,
        send_timeout: float | None = None,
        max_descriptor_bytes: int = DEFAULT_MAX_DESCRIPTOR_BYTES,
        message_timeout: float | None = None,
    ) -> None:
        self._stream = stream
        self._max_descriptor = max_descriptor_bytes
        self._send_timeout = send_timeout
        self._encoding = encoding  # the pipeline's grpc-encoding, checked (WIRE-3)
        self.peer = peer_address(stream.peer.addr())
        self._raw = http2_stream(stream)  # read before grpclib buffers a message
        # Each body is read within the budget of incomplete messages (SRV-13).
        self._hold = partial(budget.holding, self._raw.connection, self.peer)
        # ... and must arrive whole in time once announced (SRV-20).
        self._arrival = (
            None
            if message_timeout is None
            else Arrival(message_timeout, self.peer, frame_memory.timeout or 0.0)
        )
        # Each sample's frame is held in the server's frame memory until processed
        # (SRV-18), by sequence number.
        self._memory = frame_memory
        self._limits = limits
        self._held: dict[int, int] = {}
        # The length of the segment the descriptor declared (0: none yet, or none), and
        # its checked media format (None: none yet, or none).
        self._segment = 0
        self._video: VideoFormat | None = None
        self._max = max_bytes
        self._descriptor_timeout: float | None = descriptor_timeout
        self._first = True
        self._pacing = Pacing()  # what decoding the stream's messages takes of the loop

    async def receive(self) -> MediaStreamMessage | None:
        if not self._first:
            return await self._read()
        self._first = False
        with anyio.move_on_after(self._descriptor_timeout):
            if self._max_descriptor < self._max:
                return await self._read(self._max_descriptor, "SRV-19")
            return await self._read()
        message = (
            f"no descriptor within {self._descriptor_timeout:g} s of the stream's start: "
            "a stream holds one of the server's stream slots from its first byte; send "
            "the MediaStreamDescriptor first, at once (--descriptor-timeout)"
        )
        log.warning("stream of %s ended: [SRV-12] %s", self.peer, message)
        raise RemoteProtocolError("SRV-12", Status.DEADLINE_EXCEEDED, message)

    async def _read(self, max_bytes: int = 0, rule: str = "SRV-5") -> MediaStreamMessage | None:
        return await read_message(
            self._raw,
            max_bytes or self._max,
            limit_rule=rule,
            hold=self._hold,
            settle=self._settle,
            encoding=self._encoding,
            arrival=self._arrival,
            pacing=self._pacing,
        )

    async def _settle(self, message: MediaStreamMessage) -> None:
        """Hold a sample's frame until it is processed (SRV-18), once its message is read.

        A sample that does not fit waits here, its message still counted in the budget
        of messages in flight (SRV-13) if it came in more than one DATA frame. It is
        held at the size of its content (inflated, if compressed), or of the
        shared-memory bytes it refers to; a reference that does not lie inside the
        segment the stream's descriptor declared is left to the session, which refuses
        it by the rule it breaks (SHM-1, SHM-4), at once.
        """
        sample = message.media_sample
        if sample is None:
            if message.media_stream_descriptor is not None:
                self._described(message.media_stream_descriptor)
            return
        embedded, reference = sample.content_bytes, sample.content_reference
        if reference is None:
            size = len(embedded.bytes) if embedded is not None else 0
        else:
            start, size, video = reference.address_offset, reference.length_bytes, self._video
            if video is not None and video.is_raw:  # read from the start (SHM-14)
                size = min(size, video.frame_bytes)
            if start + reference.length_bytes > self._segment and not (
                video is not None
                and overruns_tolerably(start, reference.length_bytes, self._segment, video)
            ):
                return
        if size:
            await self._memory.take(self._raw.connection, size, self.peer)
            number = message.sequence_number
            self._held[number] = self._held.get(number, 0) + size

    def _described(self, described: MediaStreamDescriptor) -> None:
        """What the pipeline's descriptor says of the bytes its references hold."""
        segment = described.shared_memory_buffer_transfer_properties
        self._segment = segment.length_bytes if segment is not None else 0
        try:
            checked = check_descriptor(
                described, Role.PIPELINE, self._limits, tolerate=lambda *_: None
            )
        except ProtocolError:
            return  # the session refuses it: no sample follows
        video = self._video = checked.video_format
        if video is not None and video.is_raw:
            size = video.frame_bytes
            self._memory.check_fits(size, self.peer, f"its {video} frames of {size} bytes are")

    async def send(self, message: MediaStreamMessage) -> None:
        await self.send_batch([message])

    async def send_batch(self, messages: list[MediaStreamMessage]) -> None:
        framed = [encode_framed(m) for m in messages]
        try:
            await send_messages(self._stream, framed, window_timeout=self._send_timeout)
        except TimeoutError:
            message = (
                f"the pipeline left its HTTP/2 flow-control window shut for "
                f"{self._send_timeout:g} s: it reads none of the answers, and its stream "
                "held a slot and its answers meanwhile (--send-timeout)"
            )
            log.warning("stream of %s ended: [SRV-17] %s", self.peer, message)
            raise RemoteProtocolError("SRV-17", Status.DEADLINE_EXCEEDED, message) from None

    def let_go(self, sequence_number: int) -> None:
        size = self._held.pop(sequence_number, 0)
        if size:
            self._memory.give(self._raw.connection, size)

    async def send_end(self) -> None:
        await self._stream.send_trailing_metadata()

    def close(self) -> None:
        """The stream ended: every frame it held is let go (SRV-18)."""
        held = sum(self._held.values())
        self._held.clear()
        self._memory.give(self._raw.connection, held)


class ExtensionService:
    """The ``MediaGraphExtension`` service: a grpclib servable."""

    def __init__(self, factory: ExtensionFactory, config: ServerConfig) -> None:
        self._factory = factory
        self._config = config
        engine = config.engine
        if engine.limits.max_encoded_bytes is None:
            # An encoded sample in shared memory is bounded as an embedded one is (SHM-16).
            frames = replace(engine.limits, max_encoded_bytes=config.max_message_bytes)
            engine = replace(engine, limits=frames)
        self._engine = engine
        self.active = 0
        #: Streams served, by connection (SRV-6).
        self.active_by_connection: dict[object, int] = {}
        self._per_connection = config.max_streams_per_connection or max(1, config.max_streams // 2)
        self.draining = False
        self._idle = anyio.Event()
        self._idle.set()
        limits = config.limits
        #: Bytes of incomplete messages, per connection and in all (SRV-13).
        self.budget = MessageBudget(
            limits.max_incomplete_bytes, limits.max_incomplete_bytes_per_connection
        )
        #: Bytes of frames held until processed, per connection and in all (SRV-18).
        self.frame_memory = FrameMemory(
            limits.max_frame_memory,
            limits.max_frame_memory_per_connection,
            limits.frame_memory_timeout,
        )
        #: The streams being served, for the loop-lag watch (SRV-14).
        self.streams: dict[int, OpenStream] = {}
        # How to end each stream from outside, when a drain's grace ends (SRV-8).
        self._stops: dict[int, StreamStop] = {}
        self._warn = Throttled()

    def stop_all(self, reason: str) -> None:
        """End every stream still open with UNAVAILABLE and ``reason`` (SRV-8)."""
        for stop in list(self._stops.values()):
            stop(ProtocolError("SRV-8", Status.UNAVAILABLE, reason))

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            METHOD_PATH: grpclib.const.Handler(
                self._handle,
                grpclib.const.Cardinality.STREAM_STREAM,
                MediaStreamMessage,
                MediaStreamMessage,
            )
        }

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def _made(self, stream: grpclib.server.Stream[Any, Any]) -> Processing:
        """The stream's extension, from the factory; one that fails ends the stream
        INTERNAL (SRV-3) with what it raised, and its traceback logged once."""
        try:
            made = self._factory()
            if not callable(getattr(made, "process", None)):
                kind = type(made)
                raise TypeError(
                    f"the factory gave a {kind.__module__}.{kind.__qualname__}, which has no "
                    "process(frame) method"
                )
            return made
        except ProtocolError as error:  # a refusal of the factory's own, with its status
            raise GRPCError(grpclib.const.Status(int(error.status)), str(error)) from None
        except Exception as error:
            message = (
                f"[SRV-3] the extension could not be made for this stream: "
                f"{type(error).__name__}: {error}"
            )
            log.warning(
                "stream of %s refused: %s",
                peer_address(stream.peer.addr()),
                message,
                exc_info=error,
            )
            raise GRPCError(grpclib.const.Status.INTERNAL, message) from None

    async def _handle(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        if self.draining:
            raise GRPCError(
                grpclib.const.Status.UNAVAILABLE,
                "[SRV-8] the server is shutting down: it takes no new stream",
            )
        if self.active >= self._config.max_streams:
            message = (
                f"[SRV-6] {self.active} streams already open; the limit is "
                f"{self._config.max_streams}"
            )
            self._warn(
                "SRV-6",
                f"refused a stream of {peer_address(stream.peer.addr())}: {message} "
                "(--max-streams)",
            )
            raise GRPCError(grpclib.const.Status.RESOURCE_EXHAUSTED, message)
        connection = http2_stream(stream).connection
        mine = self.active_by_connection.get(connection, 0)
        if mine >= self._per_connection:
            message = (
                f"[SRV-6] {mine} streams already open on this connection; the limit is "
                f"{self._per_connection}: open another connection"
            )
            self._warn(
                "SRV-6",
                f"refused a stream of {peer_address(stream.peer.addr())}: {message} "
                "(--max-streams-per-connection)",
            )
            raise GRPCError(grpclib.const.Status.RESOURCE_EXHAUSTED, message)
        try:
            check_authentication(header_values(stream, AUTH_HEADER), self._config.credentials)
        except ProtocolError as error:
            log.warning("stream of %s refused: %s", peer_address(stream.peer.addr()), error)
            raise GRPCError(grpclib.const.Status(int(error.status)), str(error)) from None
        timeout, given = request_deadline(stream)
        encoding = request_encoding(stream)
        self.active += 1
        self.active_by_connection[connection] = mine + 1
        self._idle = anyio.Event() if self.active == 1 else self._idle
        channel: _ServerChannel | None = None
        extension: Processing | None = None
        try:
            channel = _ServerChannel(
                stream,
                self._config.max_message_bytes,
                self.budget,
                self.frame_memory,
                self._engine.limits,
                self._config.limits.descriptor_timeout,
                encoding,
                self._config.limits.send_timeout,
                self._config.max_descriptor_bytes,
                self._config.limits.message_timeout,
            )
            extension = self._made(stream)
            self.streams[id(stream)] = OpenStream(channel.peer, _name(extension))
            stop = self._stops[id(stream)] = StreamStop()
            with protocol_errors((Exception,)):
                # In a task of its own: grpclib ends a call whose stream was reset by
                # cancelling this task natively (Task.cancel), which no cancel scope
                # shields from, and the extension's close() was cut short (its model
                # left loaded, the stream's closing line never logged). The task group
                # turns it into anyio's cancellation of the stream, whose close() and
                # cleanup run shielded to their end.
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(
                        partial(
                            serve_stream,
                            channel,
                            extension,
                            self._engine,
                            deadline=timeout,
                            deadline_text=f"grpc-timeout {given}",
                            stop=stop,
                        )
                    )
        except BaseException as error:
            if cancelled_by_reset(stream):
                # The pipeline reset the stream (a cancelled call, a closed channel), or
                # the connection closed: an answer sent meanwhile met the closed stream.
                # The call ends as grpclib ends a cancelled one, with one line at INFO.
                log.debug("a call ended by its stream's reset met %r", error)
                # grpclib keeps the error the reset raised (the stream's cancellation
                # wrapper holds it) until it next collects its finished calls, and with
                # its traceback the frames of the stream and what they held: a
                # descriptor of megabytes, the last message.
                _drop_tracebacks(error)
                raise asyncio.CancelledError from None
            if isinstance(error, ProtocolError):
                raise GRPCError(grpclib.const.Status(int(error.status)), str(error)) from None
            raise
        finally:
            if channel is not None:
                channel.close()
            # An error this call raised may outlive it (see above), and this frame with
            # it: it holds the extension (and its model) and the channel no more.
            extension = channel = None
            self.streams.pop(id(stream), None)
            self._stops.pop(id(stream), None)
            self.active -= 1
            subtract(self.active_by_connection, connection, 1)
            if self.active == 0:
                self._idle.set()


def _drop_tracebacks(error: BaseException) -> None:
    """Drop the tracebacks of ``error`` and of the errors linked to it (its group's, its
    cause, its context), and with them the frames they hold. Only the references go:
    a frame may belong to a task still running (an error passed on from a worker), and
    clearing the frame itself would finalize that task's coroutine."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def _unknown_method(health: bool, path: str) -> str:
    served = METHOD_PATH + (
        " and the health service's /grpc.health.v1.Health/Check and Watch" if health else ""
    )
    return bounded(f"[CONN-1] no method {path!r} here: this server serves {served}")


def _name(extension: Processing) -> str:
    """The extension's class, or the function a ``FunctionExtension`` wraps."""
    processor = getattr(extension, "_processor", None)
    if processor is not None:
        return str(getattr(processor, "__qualname__", type(processor).__qualname__))
    return type(extension).__qualname__


class ExtensionServer:
    """A running server; use ``start_server`` to get one."""

    def __init__(
        self,
        server: grpclib.server.Server,
        service: ExtensionService,
        health: HealthService | None = None,
        guard: ServerGuard | None = None,
    ) -> None:
        self._server = server
        self.service = service
        self.health = health
        #: The connections' guard (``avaproto.transport.guard``): how many are open.
        self.guard = guard
        # The grace of a drain under way, which ``cut_short`` ends.
        self._grace: anyio.CancelScope | None = None
        self._cut = False

    @property
    def port(self) -> int:
        listening = listener(self._server)
        if listening is None or not listening.sockets:
            raise RuntimeError("the server is not listening")
        return int(listening.sockets[0].getsockname()[1])

    async def drain(self, grace: float) -> None:
        """Stop accepting, let running streams finish for ``grace`` seconds, cancel the rest."""
        self.service.draining = True
        if self.health is not None:
            # Before anything else, so balancers stop sending streams during the grace.
            self.health.set_status(ServingStatus.NOT_SERVING)
        listening = listener(self._server)
        if listening is not None:
            listening.close()  # stop listening; connections stay
        # One turn of the loop: each health Watch, woken by the change, writes its
        # NOT_SERVING before the GOAWAY, which some clients take as the end of every
        # stream of the connection (grpclib's does).
        await anyio.lowlevel.checkpoint()
        if self.guard is not None:
            self.guard.going_away(
                f"[SRV-8] the server is shutting down; streams open have {grace:g} s"
            )
        with anyio.move_on_after(grace) as self._grace:
            if self._cut:
                self._grace.cancel()
            await self.service.wait_idle()
        if self.service.active:
            active = self.service.active
            if self._cut:  # a second signal: the grace did not run out, it was ended
                log.warning("cancelling %d stream%s still open", active, _s(active))
                why = "the server stopped at once, asked twice (a second Ctrl-C or SIGTERM)"
            else:
                log.warning(
                    "cancelling %d stream%s still open after %.1f s", active, _s(active), grace
                )
                why = f"the server stopped: its grace of {grace:g} s for open streams ended"
            self.service.stop_all(why)
            with anyio.move_on_after(STOP_GRACE):  # each ends with its status, then closes
                await self.service.wait_idle()
        await self.close()

    def cut_short(self) -> None:
        """End a drain's grace now (or the next one's at once): its open streams end
        UNAVAILABLE (SRV-8), as when the grace runs out. A second Ctrl-C."""
        self._cut = True
        if self._grace is not None:
            self._grace.cancel()

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()


async def start_server(factory: ExtensionFactory, config: ServerConfig) -> ExtensionServer:
    """Start listening; the caller must ``close`` (or ``drain``) the returned server."""
    service = ExtensionService(factory, config)
    handlers: list[Any] = [service]
    health = (
        HealthService(
            max_watches=config.max_health_watches,
            request_timeout=config.limits.descriptor_timeout,
        )
        if config.health
        else None
    )
    if health is not None:
        handlers.append(health)
    # grpclib's own keepalive (a PING after 2 hours, a silent close) gives way to the
    # guard's, which is configured, logged and looks at every byte (CONN-16).
    server = grpclib.server.Server(
        handlers, codec=WireCodec(), config=Configuration(_keepalive_time=None)
    )
    explain_unknown_methods(server, partial(_unknown_method, health is not None))
    guard = tune_server(server, config.limits)
    check_open_file_limit(config.limits.max_connections)
    quiet_accept_failures(asyncio.get_running_loop())
    await server.start(config.host, config.port, ssl=config.ssl)
    running = ExtensionServer(server, service, health, guard)
    log.info(
        "serving %s on %s:%d%s%s",
        config.engine.extension_identifier,
        f"[{config.host}]" if ":" in config.host else config.host,  # an address to paste
        running.port,
        " with TLS" if config.ssl else "",
        " with authentication" if config.credentials else "",
    )
    return running


def _s(count: int) -> str:
    return "" if count == 1 else "s"
