"""The bytes of frames the server holds until it has processed them (SRV-18).

SRV-13 bounds a message while it arrives; once whole, an embedded frame stays in memory
until its sample is processed, and a shared-memory frame is copied out of the sender's
segment when the processor first reads it and kept until then (SHM-7).
Each stream holds up to ``max_in_flight`` such frames, each as large as the limits allow
(a 64 MiB message, a 16384x16384 BGRA frame of 1 GiB in shared memory): without a
bound across streams, one pipeline opening a few streams of large frames, or a slow
extension under many honest ones, makes the server hold tens of gigabytes, and the
kernel ends the process.

So every sample's frame is counted once its message is read (an embedded frame's
bytes, inflated if compressed; a shared-memory reference's ``length_bytes``) until its
processing ended or its stream ends, per connection and for the whole server: an
answer waiting for the pipeline's window holds no frame. A stream
whose frame does not fit waits for others to be processed, reading nothing more (its
flow-control window closes, as a pipeline expects of a busy extension), the waiting
message still counted among the messages in flight (SRV-13); a frame larger than a
bound, or a wait longer than the timeout, ends the stream with RESOURCE_EXHAUSTED.
Waiters are served in the order they came, except that one held back by its own
connection's bound does not hold back the others. A frame is counted once read, not
from its length prefix: a stream that stopped inside a message would leave the rest in
the connection's flow-control window, where it could stall the body of a sibling stream
that holds the very memory the waiter needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio

from ..errors import RemoteProtocolError
from ..status import Status
from .budget import Holdings
from .guard import Throttled

log = logging.getLogger("avaproto.server")

_FLAGS = "--max-frame-memory, --max-frame-memory-per-connection"


@dataclass(eq=False)
class _Waiter:
    connection: object
    size: int
    peer: str
    granted: bool = False
    event: anyio.Event = field(default_factory=anyio.Event)


class FrameMemory:
    """Bytes of frames held until processed, per connection and in all."""

    def __init__(self, total: int, per_connection: int, timeout: float | None) -> None:
        self.total = total
        self.per_connection = per_connection
        self.timeout = timeout
        #: Bytes held now, in all.
        self.held = 0
        self._holdings = Holdings()
        self._waiters: list[_Waiter] = []
        self._warn = Throttled()

    def _fits(self, connection: object, size: int) -> bool:
        return (
            self.held + size <= self.total
            and self._holdings.of(connection) + size <= self.per_connection
        )

    def _add(self, connection: object, size: int, peer: str) -> None:
        self.held += size
        self._holdings.add(connection, size, peer)

    async def take(self, connection: object, size: int, peer: str) -> None:
        """Hold ``size`` bytes for ``connection``: at once if they fit and no one waits,
        else once others give theirs back; RESOURCE_EXHAUSTED if they never can, or not
        within the timeout."""
        if not self._waiters and self._fits(connection, size):
            self._add(connection, size, peer)
            return
        self.check_fits(size, peer, f"a frame of {size} bytes is")
        waiter = _Waiter(connection, size, peer)
        self._waiters.append(waiter)
        self._grant()
        if waiter.granted:
            return
        self._warn(
            "SRV-18",
            f"stream of {peer} waits for frame memory: [SRV-18] {self.held} bytes of "
            f"frames held in the server{self._holdings.largest()} "
            f"(limit {self.total}), "
            f"{self._holdings.of(connection)} on its connection (limit "
            f"{self.per_connection}); its frame of {size} bytes waits for others to be "
            f"processed ({_FLAGS})",
        )
        try:
            with anyio.move_on_after(self.timeout):
                await waiter.event.wait()
        except BaseException:
            self._withdraw(waiter)
            raise
        if not waiter.granted:
            self._withdraw(waiter)
            raise self._refused(
                peer,
                f"a frame of {size} bytes waited {self.timeout:g} s for the server's frame "
                f"memory ({self.held} bytes held of {self.total}"
                f"{self._holdings.largest()}, "
                f"{self._holdings.of(connection)} on this connection of "
                f"{self.per_connection}; {_FLAGS}, --frame-memory-timeout)",
            )

    def check_fits(self, size: int, peer: str, what: str) -> None:
        """RESOURCE_EXHAUSTED if a frame of ``size`` bytes could never be held (``what``
        names it): a stream of such frames is refused at its descriptor."""
        if size > self.per_connection or size > self.total:
            where = "for one connection" if self.per_connection <= self.total else "in all"
            raise self._refused(
                peer,
                f"{what} larger than the server holds {where} "
                f"({min(self.per_connection, self.total)} bytes; {_FLAGS})",
            )

    def give(self, connection: object, size: int) -> None:
        """Return ``size`` bytes ``connection`` held; waiters that now fit go on."""
        if not size:
            return
        self.held -= size
        self._holdings.give(connection, size)
        if self._waiters:
            self._grant()

    def _withdraw(self, waiter: _Waiter) -> None:
        """A waiter that leaves: its bytes back if it got them, its place freed if not."""
        if waiter.granted:
            self.give(waiter.connection, waiter.size)
        else:
            self._waiters.remove(waiter)
            self._grant()

    def _grant(self) -> None:
        """Let waiters go on in order: one that fits the server but not its connection is
        passed over; the first that does not fit the server stops the others."""
        for waiter in list(self._waiters):
            if self.held + waiter.size > self.total:
                return
            if self._holdings.of(waiter.connection) + waiter.size > self.per_connection:
                continue
            self._waiters.remove(waiter)
            self._add(waiter.connection, waiter.size, waiter.peer)
            waiter.granted = True
            waiter.event.set()

    def _refused(self, peer: str, detail: str) -> RemoteProtocolError:
        log.warning("stream of %s ended: [SRV-18] %s", peer, detail)
        return RemoteProtocolError("SRV-18", Status.RESOURCE_EXHAUSTED, detail)
