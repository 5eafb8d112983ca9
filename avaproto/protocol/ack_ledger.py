"""The acknowledgement ledger: who still owes whom an acknowledgement (ACK rules).

Two books, one per direction:

* ``awaiting``: our messages that the peer must still acknowledge. An acknowledgement
  from the peer must name one of them (ACK-3) and may name each only once (ACK-4).
* ``owed``: the peer's messages that we must still acknowledge. We may acknowledge
  only those (ACK-1), once each.

Acknowledgements may come in any order (ACK-8): an extension that processes samples in
parallel may finish them out of order. Memory stays bounded by the messages in flight:
for messages already settled the ledger keeps only runs of sequence numbers with the
same "needed an acknowledgement" flag, which is what tells a repeated acknowledgement
(an error) from a harmless acknowledgement of a message that needed none.
"""

from __future__ import annotations

from bisect import bisect_right

from ..errors import LocalProtocolError, RemoteProtocolError
from ..status import Status


class _Runs:
    """Which of our sequence numbers needed an acknowledgement, as run starts.

    Our numbers are contiguous (1, 2, 3, …), so the flags compress to the numbers where
    the flag changes: a pipeline's stream is one run; an extension's is usually one run
    too (nothing needs an acknowledgement unless it refers to shared memory).
    """

    __slots__ = ("_flags", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._flags: list[bool] = []

    def append(self, number: int, needed: bool) -> None:
        if not self._flags or self._flags[-1] != needed:
            self._starts.append(number)
            self._flags.append(needed)

    def needed(self, number: int) -> bool:
        index = bisect_right(self._starts, number) - 1
        return index >= 0 and self._flags[index]


class AckLedger:
    """Both books of one stream; see the module docstring."""

    __slots__ = ("_awaiting", "_last_sent", "_owed", "_runs")

    def __init__(self) -> None:
        self._awaiting: set[int] = set()
        self._owed: set[int] = set()
        self._runs = _Runs()
        self._last_sent = 0

    # --- our messages -----------------------------------------------------------------

    def sent(self, number: int, needs_ack: bool) -> None:
        """Record a message we sent; ``number`` is larger than every earlier one."""
        self._runs.append(number, needs_ack)
        self._last_sent = number
        if needs_ack:
            self._awaiting.add(number)

    def peer_acknowledged(self, number: int) -> bool:
        """Settle our message ``number``; returns whether it needed the acknowledgement.

        Raises for a number we never sent (ACK-3) and for one already acknowledged
        (ACK-4): both mean the peer's book disagrees with ours, and trusting it could
        free shared memory that is still being read.
        """
        if number in self._awaiting:
            self._awaiting.remove(number)
            return True
        if not 0 < number <= self._last_sent:
            raise RemoteProtocolError(
                "ACK-3",
                Status.INVALID_ARGUMENT,
                f"ack_sequence_number {number} names no message we sent "
                f"(we sent 1 to {self._last_sent})"
                if self._last_sent
                else f"ack_sequence_number {number} names no message: we have sent none",
            )
        if self._runs.needed(number):
            raise RemoteProtocolError(
                "ACK-4",
                Status.INVALID_ARGUMENT,
                f"message {number} was already acknowledged",
            )
        return False

    @property
    def awaiting(self) -> frozenset[int]:
        """Our messages still waiting for the peer's acknowledgement."""
        return frozenset(self._awaiting)

    @property
    def awaiting_count(self) -> int:
        return len(self._awaiting)

    # --- the peer's messages ----------------------------------------------------------

    def received(self, number: int) -> None:
        """Record a peer's message that we must acknowledge."""
        self._owed.add(number)

    def acknowledge(self, number: int) -> None:
        """Settle a debt before we send an acknowledgement of ``number`` (ACK-1)."""
        if number not in self._owed:
            raise LocalProtocolError(
                "ACK-1",
                Status.INTERNAL,
                f"cannot acknowledge message {number}: it is not a received message "
                "awaiting an acknowledgement (never received, needs none, or already "
                "acknowledged)",
            )
        self._owed.remove(number)

    def owes(self, number: int) -> bool:
        return number in self._owed

    @property
    def owed(self) -> frozenset[int]:
        """The peer's messages we still have to acknowledge."""
        return frozenset(self._owed)

    @property
    def owed_count(self) -> int:
        return len(self._owed)

    @property
    def settled(self) -> bool:
        return not self._awaiting and not self._owed
