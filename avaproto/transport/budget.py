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
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import RemoteProtocolError
from ..status import Status


class BudgetRefused(RemoteProtocolError):
    """SRV-13's refusal; ``over`` says which bound was reached, for a caller that words
    the refusal its own way (a message refused while it inflates)."""

    def __init__(self, size: int, over: str) -> None:
        self.size, self.over = size, over
        message = f"a message of {size} bytes refused: {over}; send smaller messages"
        super().__init__("SRV-13", Status.RESOURCE_EXHAUSTED, message)

    def __reduce__(self) -> tuple[type[BudgetRefused], tuple[int, str]]:  # type: ignore[override]
        return (type(self), (self.size, self.over))


log = logging.getLogger("avaproto.server")


class MessageBudget:
    """Bytes of incomplete messages, per connection and in all."""

    def __init__(self, total: int, per_connection: int) -> None:
        self.total = total
        self.per_connection = per_connection
        #: Bytes taken now, in all.
        self.held = 0
        self._holdings = Holdings()

    def take(self, connection: object, size: int, peer: str) -> None:
        """Take ``size`` bytes for ``connection``, or refuse with RESOURCE_EXHAUSTED."""
        mine = self._holdings.of(connection)
        if mine + size > self.per_connection:
            over = (
                f"{mine} bytes of incomplete messages already on this connection; "
                f"the limit is {self.per_connection} (--max-incomplete-bytes-per-connection)"
            )
        elif self.held + size > self.total:
            over = (
                f"{self.held} bytes of incomplete messages already in the server"
                f"{self._holdings.largest()}; "
                f"the limit is {self.total} (--max-incomplete-bytes)"
            )
        else:
            self._holdings.add(connection, size, peer)
            self.held += size
            return
        refused = BudgetRefused(size, over)
        log.warning("stream of %s refused a message: [SRV-13] %s", peer, refused.detail)
        raise refused

    @contextmanager
    def holding(self, connection: object, peer: str, size: int) -> Iterator[None]:
        """Hold ``size`` bytes for ``connection`` while a message body is read."""
        self.take(connection, size, peer)
        try:
            yield
        finally:
            self.give(connection, size)

    def give(self, connection: object, size: int) -> None:
        self.held -= size
        self._holdings.give(connection, size)


def subtract(counts: dict[object, int], key: object, size: int) -> None:
    """Take ``size`` off ``counts[key]``, dropping the key at 0 so that the map holds
    only connections that hold something."""
    left = counts[key] - size
    if left:
        counts[key] = left
    else:
        del counts[key]


class Holdings:
    """What each connection holds of a server-wide bound, and whose connection it is:
    the line saying the bound was reached names the peer holding the most, since the
    one refused is seldom the one holding it."""

    __slots__ = ("_counts", "_peers")

    def __init__(self) -> None:
        self._counts: dict[object, int] = {}
        self._peers: dict[object, str] = {}

    def of(self, connection: object) -> int:
        return self._counts.get(connection, 0)

    def add(self, connection: object, size: int, peer: str) -> None:
        self._counts[connection] = self.of(connection) + size
        self._peers[connection] = peer

    def give(self, connection: object, size: int) -> None:
        subtract(self._counts, connection, size)
        if connection not in self._counts:
            self._peers.pop(connection, None)

    def largest(self) -> str:
        """`` (the most, N, by a connection of PEER)``, or "" when none holds any."""
        if not self._counts:
            return ""
        connection, most = max(self._counts.items(), key=lambda item: item[1])
        return f" (the most, {most}, by a connection of {self._peers.get(connection, 'a peer')})"
