"""The pipeline's side of one stream: send frames within a window, collect answers.

``PipelineStream`` is what the pipeline simulator and ``avaproto send`` drive. It checks
the extension's side of the protocol as strictly as the extension checks ours (the
answer descriptor first, acknowledgements only of numbers actually sent, nothing left
unacknowledged at the end) and raises the same precise errors.

At most ``window`` samples are unacknowledged at once: ``send`` waits for a free slot.
With shared memory, each frame is written into a slot of the arena and the slot is
freed only when its acknowledgement arrives (SHM rules); the arena never hands out a
slot that an unacknowledged message refers to.

Every wait on the extension has a deadline (PIPE-3, PIPE-4): its answer descriptor, each
sample's acknowledgement, and the end of its stream once all is acknowledged. An
extension that drops a frame without a word then ends the stream with
DEADLINE_EXCEEDED instead of hanging the pipeline once its window is full.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import LocalProtocolError, ProtocolError
from ..messages import (
    ContentBytes,
    ContentReference,
    Inference,
    MediaSample,
    MediaStreamDescriptor,
)
from ..protocol.descriptor import StreamDescriptor
from ..protocol.events import AckReceived, DescriptorReceived, SampleReceived, Tolerated
from ..protocol.roles import Role
from ..protocol.session import Session
from ..protocol.video_format import VideoFormat
from ..status import Status
from .channel import MessageChannel
from .outcome import log_tolerated, protocol_errors

if TYPE_CHECKING:
    from ..media.shared_memory import SharedMemoryArena


@dataclass(frozen=True, slots=True)
class Result:
    """One answer of the extension."""

    #: The number of our sample that this answer acknowledges (None: acknowledges nothing).
    acknowledged: int | None
    #: The answer's own sequence number.
    sequence_number: int
    #: The timestamp the answer carries (the sample's, from extensions that echo it).
    timestamp: int
    inferences: list[Inference] = field(default_factory=list)
    #: Seconds from sending the acknowledged sample to receiving this answer.
    latency: float | None = None


class PipelineStream:
    """The pipeline's end of one negotiated stream; open with ``PipelineStream.open``."""

    def __init__(
        self,
        session: Session,
        channel: MessageChannel,
        window: int,
        arena: SharedMemoryArena | None,
        results: MemoryObjectSendStream[Result],
        ack_timeout: float | None = None,
    ) -> None:
        self.session = session
        self.channel = channel
        self.arena = arena
        self._window = anyio.Semaphore(window)
        self._results = results
        self._ack_timeout = ack_timeout
        # Our unacknowledged samples and when each was sent, oldest first (dicts keep
        # insertion order): the first entry is what the acknowledgement deadline watches.
        self._sent_at: dict[int, float] = {}
        self._leased: set[int] = set()
        self._ended = False
        self._ended_at = 0.0

    @property
    def extension(self) -> StreamDescriptor:
        """The extension's answer descriptor."""
        assert self.session.peer_descriptor is not None
        return self.session.peer_descriptor

    @property
    def format(self) -> VideoFormat | None:
        assert self.session.own_descriptor is not None
        return self.session.own_descriptor.video_format

    @property
    def in_flight(self) -> int:
        return self.session.ledger.awaiting_count

    @property
    def tolerated(self) -> dict[str, int]:
        """The extension's deviations accepted so far, by rule (see spec/ ``field`` notes)."""
        return dict(self.session.tolerated)

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        channel: MessageChannel,
        descriptor: MediaStreamDescriptor,
        *,
        window: int = 8,
        arena: SharedMemoryArena | None = None,
        descriptor_timeout: float | None = None,
        ack_timeout: float | None = None,
    ) -> AsyncIterator[tuple[PipelineStream, MemoryObjectReceiveStream[Result]]]:
        """Negotiate, then yield the stream and the stream of its results.

        On leaving the block the input is ended (if it was not), every answer is awaited,
        and the extension's end of stream is checked: nothing may be left unacknowledged.
        ``descriptor_timeout`` bounds the wait for the answer descriptor (PIPE-3),
        ``ack_timeout`` each sample's wait for its acknowledgement (PIPE-4); None waits
        forever.
        """
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        for name, value in (
            ("descriptor_timeout", descriptor_timeout),
            ("ack_timeout", ack_timeout),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive (or None), got {value}")
        session = Session(Role.PIPELINE)
        await channel.send(session.send_descriptor(descriptor))
        with anyio.move_on_after(descriptor_timeout) as waited:
            answer = await channel.receive()
        if waited.cancelled_caught:
            raise ProtocolError(
                "PIPE-3",
                Status.DEADLINE_EXCEEDED,
                f"the extension at {channel.peer} did not answer our descriptor within "
                f"{descriptor_timeout:g} s",
            )
        if answer is None:
            session.receive_end()  # raises: the extension ended without answering
        else:
            events = session.receive(answer)
            log_tolerated(events, f"extension {channel.peer}")
            assert any(isinstance(event, DescriptorReceived) for event in events)
        results_in, results_out = anyio.create_memory_object_stream[Result](math.inf)
        stream = cls(session, channel, window, arena, results_in, ack_timeout)
        with protocol_errors():
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(stream._receive_and_watch)
                async with results_out:
                    yield stream, results_out
                    if not stream._ended:
                        await stream.end()

    async def send(
        self,
        content: bytes | bytearray | memoryview | None,
        *,
        timestamp: int,
        inferences: Sequence[Inference] = (),
    ) -> int:
        """Send one sample of ``content`` (already in the stream's format); returns its number.

        Waits while ``window`` samples are unacknowledged. With shared memory the bytes
        are copied into an arena slot (waiting for one to be freed by an acknowledgement
        if the arena is full) and the message carries a reference to it.
        """
        await self._window.acquire()
        try:
            sample = MediaSample(timestamp=timestamp, inferences=list(inferences))
            lease = None
            if content is not None and self.arena is not None:
                view = memoryview(content).cast("B")
                lease = await self.arena.allocate_async(len(view))
                lease.view[:] = view
                sample.content_reference = ContentReference(
                    address_offset=lease.offset, length_bytes=len(view)
                )
            elif content is not None:
                sample.content_bytes = ContentBytes(bytes=content)  # type: ignore[arg-type]
            try:
                message = self.session.send_sample(sample)
            except ProtocolError:
                if lease is not None:
                    lease.cancel()
                raise
            if lease is not None:
                lease.mark_sent(message.sequence_number)
                self._leased.add(message.sequence_number)
            self._sent_at[message.sequence_number] = time.monotonic()
        except BaseException:
            self._window.release()
            raise
        try:
            await self.channel.send(message)
        except BaseException:
            # Numbered but perhaps not delivered: the two books can no longer agree.
            self.session.fail(
                LocalProtocolError(
                    "LIFE-3",
                    Status.CANCELLED,
                    f"sending sample {message.sequence_number} was interrupted",
                )
            )
            raise
        return message.sequence_number

    async def end(self) -> None:
        """End the input: no more samples; the answers still come."""
        self.session.send_end()
        self._ended = True
        self._ended_at = time.monotonic()
        await self.channel.send_end()

    async def _receive_and_watch(self) -> None:
        async with anyio.create_task_group() as watching:
            if self._ack_timeout is not None:
                watching.start_soon(self._watch_acknowledgements, self._ack_timeout)
            await self._receive_all()
            watching.cancel_scope.cancel()

    async def _watch_acknowledgements(self, timeout: float) -> None:
        """End the stream once the oldest unacknowledged sample is ``timeout`` s old (PIPE-4).

        Sleeps until the oldest sample's deadline, then looks again: acknowledgements
        that arrived meanwhile moved the oldest on. Costs nothing per message.
        """
        while True:
            now = time.monotonic()
            if self._sent_at:
                number, sent = next(iter(self._sent_at.items()))
                due = sent + timeout
                if now >= due:
                    raise ProtocolError(
                        "PIPE-4",
                        Status.DEADLINE_EXCEEDED,
                        f"sample {number} was not acknowledged within {timeout:g} s "
                        f"({len(self._sent_at)} unacknowledged); the extension at "
                        f"{self.channel.peer} may drop frames it fails on",
                    )
            elif self._ended:
                due = self._ended_at + timeout
                if now >= due:
                    raise ProtocolError(
                        "PIPE-4",
                        Status.DEADLINE_EXCEEDED,
                        f"the extension at {self.channel.peer} acknowledged everything but "
                        f"did not end its stream within {timeout:g} s of our end",
                    )
            else:
                due = now + timeout
            await anyio.sleep(due - now)

    async def _receive_all(self) -> None:
        async with self._results:
            while True:
                message = await self.channel.receive()
                if message is None:
                    self.session.receive_end()
                    return
                acknowledged: int | None = None
                latency: float | None = None
                answer: SampleReceived | None = None
                for event in self.session.receive(message):
                    if isinstance(event, AckReceived) and event.needed:
                        acknowledged = event.acknowledged
                        latency = self._settle(acknowledged)
                    elif isinstance(event, SampleReceived):
                        answer = event
                    elif isinstance(event, Tolerated) and event.first:
                        log_tolerated([event], f"extension {self.channel.peer}")
                if answer is not None and answer.requires_ack:
                    # The extension referred to shared memory of its own: nothing here
                    # reads it, so it is acknowledged at once.
                    await self.channel.send(
                        self.session.send_sample(None, ack=answer.sequence_number)
                    )
                if acknowledged is None and answer is None:
                    continue
                await self._results.send(
                    Result(
                        acknowledged=acknowledged,
                        sequence_number=message.sequence_number,
                        timestamp=answer.timestamp if answer else 0,
                        inferences=list(answer.inferences) if answer else [],
                        latency=latency,
                    )
                )

    def _settle(self, number: int) -> float | None:
        if number in self._leased:
            assert self.arena is not None
            self._leased.discard(number)
            self.arena.ack(number)  # the only way a sent lease is freed
        self._window.release()
        sent = self._sent_at.pop(number, None)
        return time.monotonic() - sent if sent is not None else None
