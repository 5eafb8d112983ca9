"""Sequence numbers: one counter per direction (SEQ rules).

Ours start at 1 and go up by one; the peer's must increase. Zero is never a sequence
number, because ``ack_sequence_number`` = 0 means "acknowledges nothing" (ACK-2): a
message numbered 0 could never be acknowledged.
"""

from __future__ import annotations

from ..errors import LocalProtocolError, RemoteProtocolError
from ..status import Status

UINT64_MAX = (1 << 64) - 1


class OutgoingSequence:
    """Numbers for the messages we send: 1, 2, 3, … (SEQ-1)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = 0

    @property
    def last(self) -> int:
        """The number of the last message sent; 0 before the first."""
        return self._last

    def peek(self) -> int:
        """The number the next message will carry."""
        if self._last == UINT64_MAX:
            raise LocalProtocolError(
                "SEQ-6", Status.OUT_OF_RANGE, "sequence numbers exhausted at 2^64-1"
            )
        return self._last + 1

    def advance(self) -> int:
        self._last = self.peek()
        return self._last

    def was_sent(self, number: int) -> bool:
        return 0 < number <= self._last


class IncomingSequence:
    """Checks the numbers of the messages we receive (SEQ-2 to SEQ-4)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = 0

    @property
    def last(self) -> int:
        return self._last

    def check(self, number: int) -> None:
        """Raise unless ``number`` may follow the last one; does not record it."""
        if number == 0:
            raise RemoteProtocolError(
                "SEQ-4",
                Status.INVALID_ARGUMENT,
                "sequence_number is 0 (unset); messages are numbered from 1",
            )
        if number <= self._last:
            raise RemoteProtocolError(
                "SEQ-3",
                Status.INVALID_ARGUMENT,
                f"sequence_number {number} does not increase: the previous message was "
                f"{self._last}",
            )

    def record(self, number: int) -> None:
        self._last = number
