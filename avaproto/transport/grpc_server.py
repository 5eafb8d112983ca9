"""The extension's gRPC server: grpclib bound to the engine.

One ``ProcessMediaStream`` call is one engine stream. Before reading a single message
the server checks the stream limit and the ``x-ms-authentication`` header (AUTH-3);
every message is then read with its size checked from its 5-byte gRPC prefix, so an
oversized one is refused with RESOURCE_EXHAUSTED before it is buffered (SRV-5), and
decoded without copying the frame (``avaproto.codec``). A ``ProtocolError`` from the
engine ends the call with its status and a message naming the rule.

Shutdown is graceful: ``drain`` stops accepting connections and refuses new streams
with UNAVAILABLE, lets the running streams finish for a grace period, then cancels what
is left, which releases every lease, mapping and file descriptor.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import grpclib.const
import grpclib.server
from grpclib.exceptions import GRPCError

from ..codec import encode_framed
from ..engine.config import EngineConfig
from ..engine.extension import Extension
from ..engine.serve import serve_stream
from ..errors import ProtocolError
from ..messages import METHOD_PATH, MediaStreamMessage
from ..protocol.auth import AUTH_HEADER, Credentials, check_authentication
from ._grpclib_private import http2_stream, listener, send_messages
from .framing import WireCodec, read_message
from .health import HealthService, ServingStatus
from .http2 import tune_server

if TYPE_CHECKING:
    pass

log = logging.getLogger("avaproto.server")

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

ExtensionFactory = Callable[[], Extension]


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
    #: Streams served at once; one more is refused with RESOURCE_EXHAUSTED.
    max_streams: int = 64
    #: Serve the standard gRPC health service (``avaproto.transport.health``) beside it.
    health: bool = True


class _ServerChannel:
    """One call's messages, read with a size limit and decoded without copying frames."""

    def __init__(self, stream: grpclib.server.Stream[Any, Any], max_bytes: int) -> None:
        self._stream = stream
        self._raw = http2_stream(stream)  # read before grpclib buffers a message
        self._max = max_bytes
        addr = stream.peer.addr()
        self.peer = f"{addr[0]}:{addr[1]}" if addr else "unknown"

    async def receive(self) -> MediaStreamMessage | None:
        return await read_message(self._raw, self._max, limit_rule="SRV-5")

    async def send(self, message: MediaStreamMessage) -> None:
        await self._stream.send_message(message)

    async def send_batch(self, messages: list[MediaStreamMessage]) -> None:
        await send_messages(self._stream, [encode_framed(m) for m in messages])

    async def send_end(self) -> None:
        await self._stream.send_trailing_metadata()


class ExtensionService:
    """The ``MediaGraphExtension`` service: a grpclib servable."""

    def __init__(self, factory: ExtensionFactory, config: ServerConfig) -> None:
        self._factory = factory
        self._config = config
        self.active = 0
        self.draining = False
        self._idle = anyio.Event()
        self._idle.set()

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

    async def _handle(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        if self.draining:
            raise GRPCError(grpclib.const.Status.UNAVAILABLE, "the extension is shutting down")
        if self.active >= self._config.max_streams:
            raise GRPCError(
                grpclib.const.Status.RESOURCE_EXHAUSTED,
                f"[SRV-6] {self.active} streams already open; the limit is "
                f"{self._config.max_streams}",
            )
        values = stream.metadata.getall(AUTH_HEADER, []) if stream.metadata else []
        try:
            check_authentication(
                [v if isinstance(v, str) else v.decode("latin-1") for v in values],
                self._config.credentials,
            )
        except ProtocolError as error:
            log.warning("stream refused: %s", error)
            raise GRPCError(grpclib.const.Status(int(error.status)), str(error)) from None
        self.active += 1
        self._idle = anyio.Event() if self.active == 1 else self._idle
        try:
            channel = _ServerChannel(stream, self._config.max_message_bytes)
            await serve_stream(channel, self._factory(), self._config.engine)
        except ProtocolError as error:
            raise GRPCError(grpclib.const.Status(int(error.status)), str(error)) from None
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()


class ExtensionServer:
    """A running server; use ``start_server`` to get one."""

    def __init__(
        self,
        server: grpclib.server.Server,
        service: ExtensionService,
        health: HealthService | None = None,
    ) -> None:
        self._server = server
        self.service = service
        self.health = health

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
        with anyio.move_on_after(grace):
            await self.service.wait_idle()
        if self.service.active:
            log.warning("cancelling %d streams still open after %.1f s", self.service.active, grace)
        await self.close()

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()


async def start_server(factory: ExtensionFactory, config: ServerConfig) -> ExtensionServer:
    """Start listening; the caller must ``close`` (or ``drain``) the returned server."""
    service = ExtensionService(factory, config)
    handlers: list[Any] = [service]
    health = _health() if config.health else None
    if health is not None:
        handlers.append(health)
    server = grpclib.server.Server(handlers, codec=WireCodec())
    tune_server(server)
    await server.start(config.host, config.port, ssl=config.ssl)
    running = ExtensionServer(server, service, health)
    log.info(
        "serving %s on %s:%d%s%s",
        config.engine.extension_identifier,
        config.host,
        running.port,
        " with TLS" if config.ssl else "",
        " with authentication" if config.credentials else "",
    )
    return running


def _health() -> HealthService:
    return HealthService()
