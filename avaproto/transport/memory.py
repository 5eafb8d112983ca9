"""An in-memory transport: two channels joined by anyio memory object streams.

Messages cross as serialized bytes and are read back with the same decoder the network
transports use, so the engine runs exactly as it does over HTTP/2, on asyncio or trio,
without a socket. Bounded streams give the same backpressure a flow-control window does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..codec import decode_message, encode_message
from ..engine.config import EngineConfig
from ..engine.extension import Extension
from ..engine.serve import serve_stream
from ..engine.statistics import StreamStatistics
from ..errors import ProtocolError, StreamFailed
from ..messages import MediaStreamMessage
from ..status import Status


@dataclass(frozen=True)
class _Trailer:
    """How a stream ends with a status, as gRPC trailers end an HTTP/2 stream."""

    status: Status
    message: str


_Item = bytes | _Trailer


class _Ending:
    """How one direction of a stream ended with a status, for the other side's sends."""

    trailer: _Trailer | None = None


class MemoryChannel:
    """One end of an in-memory stream (see ``channel_pair``)."""

    def __init__(
        self,
        send: MemoryObjectSendStream[_Item],
        receive: MemoryObjectReceiveStream[_Item],
        peer: str = "memory",
        *,
        own_ending: _Ending | None = None,
        peer_ending: _Ending | None = None,
    ) -> None:
        self._send = send
        self._receive = receive
        self.peer = peer
        self._own_ending = own_ending or _Ending()
        self._peer_ending = peer_ending or _Ending()

    async def receive(self) -> MediaStreamMessage | None:
        try:
            item = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return None
        if isinstance(item, _Trailer):
            raise StreamFailed(item.status, item.message)
        return decode_message(item)

    async def send(self, message: MediaStreamMessage) -> None:
        """Send ``message``; on a stream the other side ended with a status (``abort``),
        fail with that status (``StreamFailed``), as a gRPC call's send does once the
        call ended. The messages it sent before stay readable, in order.
        """
        try:
            await self._send.send(encode_message(message))
        except anyio.BrokenResourceError:
            trailer = self._peer_ending.trailer
            if trailer is None:
                raise
            raise StreamFailed(trailer.status, trailer.message) from None

    async def send_batch(self, messages: list[MediaStreamMessage]) -> None:
        for message in messages:
            await self.send(message)

    def let_go(self, sequence_number: int) -> None:
        return None  # nothing is counted per frame here

    async def send_end(self) -> None:
        await self._send.aclose()

    async def abort(
        self, status: Status, message: str, *, last: Sequence[MediaStreamMessage] = ()
    ) -> None:
        """End the stream with a status: the other side's ``receive`` raises ``StreamFailed``.

        ``last`` are sent first, all at once with the status and the close, as one read
        over HTTP/2 can carry a stream's last DATA frames, its trailers and its reset:
        the other side finds them queued when its next send fails. What does not fit the
        channel's capacity waits for the reader, one second at most in all.
        """
        trailer = _Trailer(status, message)
        self._own_ending.trailer = trailer
        items: list[_Item] = [*(encode_message(each) for each in last), trailer]
        try:
            with anyio.move_on_after(1):  # a reader that reads nothing: no wait past this
                for item in items:
                    try:
                        self._send.send_nowait(item)
                    except anyio.WouldBlock:
                        await self._send.send(item)  # in order, or not at all
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the other side is gone: nobody to tell
        await self.aclose()

    async def aclose(self) -> None:
        """Drop both directions, as a disconnect would."""
        await self._send.aclose()
        await self._receive.aclose()


def channel_pair(capacity: int = 4) -> tuple[MemoryChannel, MemoryChannel]:
    """Two connected channels: (the pipeline's end, the extension's end)."""
    to_extension, from_pipeline = anyio.create_memory_object_stream[_Item](capacity)
    to_pipeline, from_extension = anyio.create_memory_object_stream[_Item](capacity)
    pipeline_ending, extension_ending = _Ending(), _Ending()
    return (
        MemoryChannel(
            to_extension,
            from_extension,
            "memory:extension",
            own_ending=pipeline_ending,
            peer_ending=extension_ending,
        ),
        MemoryChannel(
            to_pipeline,
            from_pipeline,
            "memory:pipeline",
            own_ending=extension_ending,
            peer_ending=pipeline_ending,
        ),
    )


async def serve(
    channel: MemoryChannel, extension: Extension, config: EngineConfig | None = None
) -> StreamStatistics:
    """Serve one in-memory stream; a protocol error ends it with its status, then re-raises."""
    try:
        return await serve_stream(channel, extension, config or EngineConfig())
    except ProtocolError as error:
        await channel.abort(error.status, str(error))
        raise
