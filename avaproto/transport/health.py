"""The standard gRPC health service (``grpc.health.v1.Health``), served beside the extension.

Load balancers, orchestrators and probes ask this service, not the extension protocol,
whether a server takes new streams. It is compiled from ``protos/grpc/health/v1`` like
the extension's own messages, so it needs no protobuf runtime and is part of every
install.

The server serves one thing, so one status answers for the server as a whole (service
``""``) and for ``MediaGraphExtension``: SERVING from the start, NOT_SERVING as soon as
a drain begins, so that a balancer stops sending new streams during the grace period
instead of learning about the drain from refused calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import anyio
import grpclib.const
import grpclib.server
from grpclib.exceptions import GRPCError

from .._generated.grpc.health.v1 import (
    HealthBase,
    HealthCheckRequest,
    HealthCheckResponse,
)
from .._generated.grpc.health.v1 import (
    HealthCheckResponseServingStatus as ServingStatus,
)
from ..errors import ProtocolError
from ..messages import PACKAGE
from ._grpclib_private import http2_stream
from .addresses import peer_address
from .budget import subtract
from .framing import read
from .guard import Throttled
from .request_headers import request_encoding

#: The extension's service as health clients name it (fully qualified, no method).
EXTENSION_SERVICE = f"{PACKAGE}.MediaGraphExtension"
#: A request names a service: anything longer is not a health check (SRV-5).
MAX_REQUEST_BYTES = 64 << 10
#: Watch calls open at once: a balancer or an orchestrator keeps one or a few.
DEFAULT_MAX_WATCHES = 100
#: Watch calls one connection may hold: one per service a client watches, so that no
#: one peer holds every one of the server's.
WATCHES_PER_CONNECTION = 10
#: Seconds a call has to send its request (the server's --descriptor-timeout): a call
#: that sends none would otherwise be held, with its memory, for as long as its
#: connection lasts.
DEFAULT_REQUEST_TIMEOUT = 10.0

__all__ = ["EXTENSION_SERVICE", "HealthService", "ServingStatus"]


class HealthService(HealthBase):
    """``Check`` and ``Watch`` for the server as a whole and the services it names."""

    def __init__(
        self,
        services: Iterable[str] = (EXTENSION_SERVICE,),
        *,
        max_watches: int = DEFAULT_MAX_WATCHES,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self._services = frozenset({"", *services})
        self._status = ServingStatus.SERVING
        # Replaced on every change, so each watcher wakes once per change it has not seen.
        self._changed = anyio.Event()
        # Watch calls open, and Check calls awaiting their request, each bounded apart:
        # one past ``max_watches`` is refused (SRV-9), and one past
        # ``WATCHES_PER_CONNECTION`` on its connection. Apart, so that watches filling
        # their bound never refuse a balancer's checks.
        self._watches = _Calls("health watch", "health watches", "open", max_watches)
        self._checks = _Calls(
            "health check", "health checks", "awaiting their request", max_watches
        )
        self._warn = Throttled()
        self._request_timeout = request_timeout

    @property
    def status(self) -> ServingStatus:
        return self._status

    def set_status(self, status: ServingStatus) -> None:
        """Report ``status`` from now on, to new checks and to every open ``Watch``."""
        if status is self._status:
            return
        self._status = status
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        """The generated handlers' paths, served by handlers that read requests as the
        extension's are read: bounded, and inflated when compressed (WIRE-3), as grpcio
        sends them on a channel made with compression (grpclib reads no compressed
        message: it fails the call with a traceback in the log)."""
        served = {"Check": self._serve_check, "Watch": self._serve_watch}
        return {
            path: handler._replace(func=served[path.rpartition("/")[2]])
            for path, handler in super().__mapping__().items()
        }

    async def _serve_check(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        # Counted until its request came: 300 connections of 100 checks that sent none
        # held 500 MB.
        with self._checks.held(stream, self._warn):
            request = await self._request(stream)
        await stream.send_message(await self.check(request))

    async def _serve_watch(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        # A Watch stays open, outside the extension's --max-streams: each one held about
        # 16 KB, and nothing else bounded how many a peer opened.
        with self._watches.held(stream, self._warn):
            async for response in self.watch(await self._request(stream)):
                await stream.send_message(response)

    async def _request(self, stream: grpclib.server.Stream[Any, Any]) -> HealthCheckRequest:
        with anyio.move_on_after(self._request_timeout):
            return await _request(stream)
        raise GRPCError(
            grpclib.const.Status.DEADLINE_EXCEEDED,
            f"[SRV-9] no health request within {self._request_timeout:g} s of the call's "
            "start (--descriptor-timeout)",
        )

    @property
    def watching(self) -> int:
        """Watch calls open now."""
        return self._watches.open

    async def check(self, message: HealthCheckRequest) -> HealthCheckResponse:
        if message.service not in self._services:
            # The standard's answer for an unknown service, so that a probe with a
            # mistyped name fails instead of passing.
            raise GRPCError(
                grpclib.const.Status.NOT_FOUND,
                f"unknown service {message.service!r}; this server answers for "
                f"{sorted(self._services)}",
            )
        return HealthCheckResponse(status=self._status)

    async def watch(self, message: HealthCheckRequest) -> AsyncIterator[HealthCheckResponse]:
        if message.service not in self._services:
            # The standard keeps the call open: the service might become known later.
            # Here it never does; the call ends when the client or the server closes it.
            yield HealthCheckResponse(status=ServingStatus.SERVICE_UNKNOWN)
            await anyio.sleep_forever()
            return
        sent: ServingStatus | None = None
        while True:
            # Taken before sending: a change while the answer is on its way sets this
            # event, so the loop comes round again instead of missing it.
            changed = self._changed
            if self._status is not sent:
                sent = self._status
                yield HealthCheckResponse(status=sent)
            await changed.wait()


class _Calls:
    """Health calls of one kind held at once, in all and per connection (SRV-9)."""

    def __init__(self, one: str, many: str, state: str, limit: int) -> None:
        self.one, self.many, self.state, self.limit = one, many, state, limit
        self.open = 0
        self._by_connection: dict[object, int] = {}

    @contextlib.contextmanager
    def held(self, stream: grpclib.server.Stream[Any, Any], warn: Throttled) -> Iterator[None]:
        connection = http2_stream(stream).connection
        if self.open >= self.limit:
            message = (
                f"[SRV-9] {self.open} {self.many} already {self.state}; the limit is "
                f"{self.limit} (--max-health-watches)"
            )
        elif self._by_connection.get(connection, 0) >= WATCHES_PER_CONNECTION:
            message = (
                f"[SRV-9] {WATCHES_PER_CONNECTION} {self.many} already {self.state} on this "
                "connection, the most one connection may hold"
            )
        else:
            message = ""
        if message:
            warn("SRV-9", f"refused a {self.one} of {peer_address(stream.peer.addr())}: {message}")
            raise GRPCError(grpclib.const.Status.RESOURCE_EXHAUSTED, message)
        self.open += 1
        self._by_connection[connection] = self._by_connection.get(connection, 0) + 1
        try:
            yield
        finally:
            self.open -= 1
            subtract(self._by_connection, connection, 1)


async def _parsed(data: bytes | bytearray | memoryview) -> HealthCheckRequest:
    return HealthCheckRequest.parse(bytes(data))


async def _request(stream: grpclib.server.Stream[Any, Any]) -> HealthCheckRequest:
    """The call's one request, read off its HTTP/2 stream; a bad one ends the call."""
    try:
        request = await read(
            http2_stream(stream),
            MAX_REQUEST_BYTES,
            _parsed,
            limit_rule="SRV-5",
            encoding=request_encoding(stream),
        )
    except ProtocolError as error:
        raise GRPCError(grpclib.const.Status(int(error.status)), str(error)) from None
    if request is None:
        raise GRPCError(
            grpclib.const.Status.INVALID_ARGUMENT,
            "[WIRE-1] the health request ended before its message",
        )
    return request
