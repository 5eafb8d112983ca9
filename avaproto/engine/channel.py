"""What the engine needs of a transport: whole messages in and out, and each end.

The engine never sees HTTP/2: the grpclib transports and the in-memory one both
present a stream of ``MediaStreamMessage`` as this small protocol.
"""

from __future__ import annotations

from typing import Protocol

from ..messages import MediaStreamMessage


class MessageChannel(Protocol):
    """One side of one ``ProcessMediaStream`` call."""

    #: Who is at the other end, for log lines ("ipv4:127.0.0.1:50123", "memory").
    peer: str

    async def receive(self) -> MediaStreamMessage | None:
        """The peer's next message, or None once it has ended its direction."""
        ...

    async def send(self, message: MediaStreamMessage) -> None:
        """Send one message; waits while the transport applies backpressure."""
        ...

    async def send_batch(self, messages: list[MediaStreamMessage]) -> None:
        """Send several messages in order, in as few writes as the transport can.

        The answerer hands over every answer that is ready at once, so that a window of
        acknowledgements costs one write rather than one each.
        """
        ...

    def let_go(self, sequence_number: int) -> None:
        """The sample ``sequence_number`` was processed: the engine holds its frame no more.

        A transport that bounds the frames held (the server's frame memory, SRV-18)
        counts this one's bytes as free from now, not from when its answer is sent.
        """
        ...

    async def send_end(self) -> None:
        """End our direction: nothing more will be sent."""
        ...
