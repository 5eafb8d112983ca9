"""The answers of one read written together: one socket write, not one per answer.

A stream in full flow brings several samples in one read, and the extension answers
each as soon as it is done. Each answer written at once is a system call, and on
loopback the pipeline woken, per answer: 18 % of the server's samples in a py-spy
profile of ``avaproto serve`` under the benchmark's shared-memory load were that
``write``. So an answer written while more of its stream's data waits to be read (the
next samples, usually; the start of one still arriving, sometimes) is held
(``write_later``), and leaves with the answers after it: with the first write that is
not held (the last sample's answer, say), or at the start of the event loop's next
turn, whichever comes first. A lone sample's answer, with nothing behind it, is written
at once: holding it would add a turn of the loop to its latency.

Every other write on the connection (h2's frames: headers, trailers, window updates,
pings; the guard's) sends what is held first, so bytes leave in the order they were
written, whoever wrote them; so do closing the transport and the end of the pipeline's
direction (``flush``, which the guard calls when the peer ends its side, before asyncio
closes the transport), while an abort drops them with the connection. What is held is
the answers of the samples taken in one turn, which the server's windows bound, and
nothing is held past that turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

#: A write of at least this many bytes after held ones goes as a write of its own
#: rather than be copied to join them.
JOIN_BELOW = 4096


class CoalescingTransport:
    """The transport a connection's HTTP/2 is written to, holding answers for a turn.

    Whatever writes or ends the transport is defined here, in order after what is held;
    everything else (``get_extra_info``, ``is_closing``, ``pause_reading`` ...) is the
    wrapped transport's.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` after whatever is held."""
        held = self._held
        if held:
            if len(data) < JOIN_BELOW:
                held.append(bytes(data))
                data = b"".join(held)
                held.clear()
            else:
                self.flush()
        self._transport.write(data)

    def write_later(self, data: bytes) -> None:
        """Hold ``data`` until the next write, or the loop's next turn at the latest."""
        held = self._held
        if not held:
            self._loop.call_soon(self.flush)
        held.append(data)

    def writelines(self, pieces: Iterable[bytes | bytearray | memoryview]) -> None:
        self.flush()
        self._transport.writelines(pieces)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        """Close once what is held is written (asyncio sends what it buffered first)."""
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        """Close at once, dropping what is held with what asyncio buffered."""
        self._held.clear()
        self._transport.abort()

    @property
    def holding(self) -> int:
        """Bytes held, not yet written."""
        return sum(len(data) for data in self._held)

    def flush(self) -> None:
        """Write what is held now."""
        held = self._held
        if held:
            data = held[0] if len(held) == 1 else b"".join(held)
            held.clear()
            self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
