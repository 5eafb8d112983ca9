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

from collections.abc import AsyncIterator, Iterable

import anyio
import grpclib.const
from grpclib.exceptions import GRPCError

from .._generated.grpc.health.v1 import (
    HealthBase,
    HealthCheckRequest,
    HealthCheckResponse,
)
from .._generated.grpc.health.v1 import (
    HealthCheckResponseServingStatus as ServingStatus,
)
from ..messages import PACKAGE

#: The extension's service as health clients name it (fully qualified, no method).
EXTENSION_SERVICE = f"{PACKAGE}.MediaGraphExtension"

__all__ = ["EXTENSION_SERVICE", "HealthService", "ServingStatus"]


class HealthService(HealthBase):
    """``Check`` and ``Watch`` for the server as a whole and the services it names."""

    def __init__(self, services: Iterable[str] = (EXTENSION_SERVICE,)) -> None:
        self._services = frozenset({"", *services})
        self._status = ServingStatus.SERVING
        # Replaced on every change, so each watcher wakes once per change it has not seen.
        self._changed = anyio.Event()

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
