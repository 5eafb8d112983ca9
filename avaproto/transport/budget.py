"""The bytes of messages the server has been promised but not yet received (SRV-13).

A message is read whole before it is decoded, and grpclib credits each chunk back to
the peer's flow-control window as the read pulls it in: while a message is incomplete,
its sender may keep sending up to its announced length (64 MiB by default, SRV-5). A
peer that announces a large message on every stream it may open, and trickles the
bytes, makes the server hold gigabytes without ever finishing one. Every message body
is therefore read against a budget, per connection and for the whole server, taken
from its length prefix before a byte of it is buffered and returned once it is whole.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from ..errors import RemoteProtocolError
from ..status import Status

log = logging.getLogger("avaproto.server")

_PREFIX = struct.Struct(">?I")


class MessageBudget:
    """Bytes of incomplete messages, per connection and in all."""

    def __init__(self, total: int, per_connection: int) -> None:
        self.total = total
        self.per_connection = per_connection
        #: Bytes taken now, in all.
        self.held = 0
        self._by_connection: dict[object, int] = {}

    def take(self, connection: object, size: int, peer: str) -> None:
        """Take ``size`` bytes for ``connection``, or refuse with RESOURCE_EXHAUSTED."""
        mine = self._by_connection.get(connection, 0)
        if mine + size > self.per_connection:
            over = (
                f"{mine} bytes of incomplete messages already on this connection; "
                f"the limit is {self.per_connection} (--max-incomplete-bytes-per-connection)"
            )
        elif self.held + size > self.total:
            over = (
                f"{self.held} bytes of incomplete messages already in the server; "
                f"the limit is {self.total} (--max-incomplete-bytes)"
            )
        else:
            self._by_connection[connection] = mine + size
            self.held += size
            return
        message = f"a message of {size} bytes refused: {over}; send smaller messages"
        log.warning("stream of %s refused a message: [SRV-13] %s", peer, message)
        raise RemoteProtocolError("SRV-13", Status.RESOURCE_EXHAUSTED, message)

    def give(self, connection: object, size: int) -> None:
        self.held -= size
        left = self._by_connection[connection] - size
        if left:
            self._by_connection[connection] = left
        else:
            del self._by_connection[connection]


class BudgetedStream:
    """A call's HTTP/2 stream whose message bodies are read within a ``MessageBudget``.

    ``avaproto.transport.framing.read_message`` reads each message as a 5-byte prefix
    and then the body it announces: the read after a prefix, of the length it gives,
    is the body; everything else passes through.
    """

    def __init__(self, stream: Any, budget: MessageBudget, peer: str) -> None:
        self._stream = stream
        self._budget = budget
        self._connection = stream.connection
        self._peer = peer
        self._body: int | None = None

    async def recv_data(self, size: int) -> bytes:
        if size != self._body:
            data: bytes = await self._stream.recv_data(size)
            self._body = _PREFIX.unpack(data)[1] if size == len(data) == 5 else None
            return data
        self._body = None
        self._budget.take(self._connection, size, self._peer)
        try:
            body: bytes = await self._stream.recv_data(size)
        finally:
            self._budget.give(self._connection, size)
        return body
