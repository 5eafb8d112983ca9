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

A sample's clock starts once the extension has no reason left to wait: when the next
sample goes, the input ends, or the pipeline waits for the window. Some extensions
(Intel DL Streamer's) answer a sample only when the next one arrives; paced slower than
``ack_timeout``, such an extension is slow by one frame, not broken. Others (Intel
VA Serving's first server) hand out the answers their pipeline finished only when a
request arrives. With its window full the pipeline would never send what they wait
for, so when no answer came for a while one sample goes beyond the window (PIPE-2):
the first time the window stays one wider, later ones are lent until the next
answer.
The latest sample's clock starts at the latest one ``ack_timeout`` after its sending,
so its deadline is twice that: a caller that reads each answer before it sends the next
frame (or never sends one again) is not left waiting for an extension that dropped it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, TypeVarTuple

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream

from ..errors import LeaseError, ProtocolError, RemoteProtocolError, StreamFailed
from ..media.shared_memory import LeaseState, SentLease
from ..messages import (
    ContentBytes,
    ContentReference,
    Inference,
    MediaSample,
    MediaStreamDescriptor,
    MediaStreamMessage,
)
from ..protocol.descriptor import StreamDescriptor
from ..protocol.events import AckReceived, DescriptorReceived, Event, SampleReceived, Tolerated
from ..protocol.roles import Role
from ..protocol.video_format import VideoFormat
from ..status import Status
from .channel import MessageChannel
from .outcome import log_tolerated
from .statistics import StreamStatistics
from .stream import PEER_FAILURE_GRACE, StreamRunner

_Args = TypeVarTuple("_Args")

#: How long (seconds, at most half of ``ack_timeout``) a full window waits without an
#: answer before one sample goes beyond it (PIPE-2): long for an answer of a model at
#: video rates, short against the deadline that would otherwise end the stream.
HELD_ANSWER_WAIT = 1.0

if TYPE_CHECKING:
    from ..media.shared_memory import SharedMemoryArena


class _Signal:
    """A wake-up for the one task that may wait on it, costing nothing while none does."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def set(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self, timeout: float = math.inf) -> None:
        """Until ``set``, or at most ``timeout`` seconds."""
        event = self._event = anyio.Event()
        with anyio.move_on_after(timeout):
            await event.wait()
        self._event = None


class Window:
    """The samples that may be unacknowledged at once (PIPE-2), and its one tolerance.

    ``beyond`` lets one sample more go while every slot is taken, for an extension that
    answers only when another request arrives: the first time for the rest of the
    stream (one that answers each sample when the next arrives then runs one behind
    without waiting again), later ones lent, paid back by the next slot freed, and only
    once a slot was freed since the last: an extension that answers nothing gets one
    sample beyond its window, never more, before the deadline ends the stream.
    """

    __slots__ = ("_changed", "_slots", "freed", "lent", "size", "taken", "waiting", "widened")

    def __init__(self, size: int) -> None:
        self._slots = anyio.Semaphore(size)
        self.size = size
        self.widened = self.lent = False
        self.freed = True  # a slot was freed since a sample last went beyond
        self.waiting = 0  # senders waiting for a slot
        self.taken = 0  # answers the consumer took (each frees a slot)
        self._changed = _Signal()  # wakes a watcher of the two above

    def acquire_nowait(self) -> None:
        self._slots.acquire_nowait()

    @property
    def filling(self) -> bool:
        """Whether a sender waits for a slot: the window is full."""
        return self.waiting > 0

    async def acquire(self) -> None:
        """Wait for a slot, the window full meanwhile (``filling``)."""
        self.waiting += 1
        self._changed.set()
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1

    def free(self) -> None:
        self.taken += 1
        if not self.freed:  # the first since a sample went beyond: another may go
            self.freed = True
            self._changed.set()
        if self.lent:
            self.lent = False
        else:
            self._slots.release()

    @property
    def may_go_beyond(self) -> bool:
        return self.freed and not self.lent

    def beyond(self) -> None:
        if self.widened:
            self.lent = True
        else:
            self.widened = True
            self.size += 1
        self.freed = False
        self._slots.release()

    async def until_changed(self, timeout: float) -> None:
        """Until a sender starts to wait, or one may go beyond again; at most ``timeout``.

        Neither happens per message under load (a sender that waits wakes this once;
        a slot freed does only after a sample went beyond), so watching costs nothing
        per message.
        """
        await self._changed.wait(timeout)


def _free(slot: SentLease | None) -> None:
    """Give back a slot that was never sent (the arena may be closed: then it is gone)."""
    if slot is not None and slot.state is LeaseState.ALLOCATED:
        with contextlib.suppress(LeaseError):
            slot.cancel()


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
    #: The timestamp the acknowledged sample was sent with (None: acknowledges none).
    #: Extensions that answer without one (``timestamp`` 0) are many: this is the one
    #: to record the answer under.
    sample_timestamp: int | None = None


class Results:
    """The extension's answers in arrival order; taking one frees its sample's window slot.

    The buffer holds at most ``window`` answers, and a slot of the window is given back
    only when the consumer took the answer that acknowledged it, so a pipeline that
    stops reading its results stops sending too: nothing here grows without bound.
    Read the results while sending (a task beside the one that sends), as ``connect``'s
    example does; sending more than ``window`` samples without reading waits forever.

    An extension that ends the stream with a failure status has it raised here, as
    ``StreamFailed``, after every answer it sent before (PIPE-6).
    """

    def __init__(self, received: MemoryObjectReceiveStream[Result], window: Window):
        self._received = received
        self._window = window
        self._closed = False
        self._failure: StreamFailed | None = None
        # Set once the reader met the failure, or stopped reading.
        self._failure_seen: anyio.Event | None = None

    async def receive(self) -> Result:
        """The next answer; raises ``anyio.EndOfStream`` once the extension ended its
        stream, or ``StreamFailed`` once it ended it with a failure status."""
        try:
            try:
                result = self._received.receive_nowait()  # no trip around the event loop
            except anyio.WouldBlock:
                result = await self._received.receive()
        except anyio.EndOfStream:
            if self._failure is None or self._failure_seen is None:
                raise
            self._failure_seen.set()
            raise StreamFailed(self._failure.status, self._failure.detail) from None
        if result.acknowledged is not None:
            self._window.free()
        return result

    def __aiter__(self) -> Results:
        return self

    async def __anext__(self) -> Result:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Stop reading: later answers are still checked, then dropped."""
        self._closed = True
        self._received.close()
        if self._failure_seen is not None:
            self._failure_seen.set()

    def _fail(self, failure: StreamFailed) -> anyio.Event:
        """Raise ``failure`` to the reader once it has the answers before it; the event
        is set when the reader met it (or stopped reading)."""
        self._failure = failure
        self._failure_seen = anyio.Event()
        if self._closed:
            self._failure_seen.set()  # nobody reads: nothing to wait for
        return self._failure_seen


log = logging.getLogger("avaproto.client")

#: Seconds a sample may wait for the window, all of it answered and unread, before the
#: caller is told to read the results while sending.
UNREAD_WARNING = 5.0

#: Answers that acknowledge none of the pipeline's samples (the extension's own
#: inferences) taken per sample sent, and as many before the first (PIPE-10).
ANSWERS_PER_SAMPLE = 16


class PipelineStream:
    """The pipeline's end of one negotiated stream; open with ``PipelineStream.open``.

    It is the pipeline's handler on ``engine.stream.StreamRunner``: the runner reads
    the extension's messages into the session; this side settles acknowledgements,
    hands the answers to ``Results`` and watches the acknowledgement deadline.
    """

    #: The runner's receive loop reads the extension's messages.
    reads_itself: ClassVar[bool] = False

    def __init__(
        self,
        runner: StreamRunner,
        window: int,
        arena: SharedMemoryArena | None,
        ack_timeout: float | None = None,
        answers_per_sample: int = ANSWERS_PER_SAMPLE,
    ) -> None:
        self.runner = runner
        self.session = runner.session
        self.channel = runner.channel
        self.arena = arena
        self._window = Window(window)
        self._results, received = anyio.create_memory_object_stream[Result](window)
        self.results = Results(received, self._window)
        self._ack_timeout = ack_timeout
        self._watching = anyio.CancelScope()
        # Our unacknowledged samples and when each was sent, oldest first (dicts keep
        # insertion order): the first entry is what the acknowledgement deadline watches.
        self._sent_at: dict[int, float] = {}
        # When each unacknowledged sample's deadline clock started (module docstring):
        # absent for the latest sample while nothing was sent after it.
        self._clock_from: dict[int, float] = {}
        self._latest = 0  # the last sample sent
        self._told_unread = False  # that sending waits for answers nobody reads
        self._samples_sent = 0
        # Answers that acknowledged none of our samples, against their allowance (PIPE-10).
        self._unacknowledging = 0
        self._answers_per_sample = answers_per_sample
        # When an acknowledgement last came, or a sample last went beyond the window: a
        # full window waits from then before one more goes (PIPE-2).
        self._progress_at = 0.0
        self._moved = _Signal()  # wakes a watcher that waits for a clock
        self._timestamps: dict[int, int] = {}  # of the samples sent, until acknowledged
        self._leased: set[int] = set()
        self._ended = False
        self._ended_at = 0.0
        # A send met the stream the extension ended: nothing more goes out.
        self._peer_failed = False

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

    @property
    def statistics(self) -> StreamStatistics:
        return self.runner.statistics

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
        statistics: StreamStatistics | None = None,
        max_answers_per_sample: int = ANSWERS_PER_SAMPLE,
    ) -> AsyncIterator[tuple[PipelineStream, Results]]:
        """Negotiate, then yield the stream and its results.

        On leaving the block the input is ended (if it was not), every answer is awaited
        (answers not read by then are checked and dropped), and the extension's end of
        stream is checked: nothing may be left unacknowledged. ``descriptor_timeout``
        bounds the wait for the answer descriptor (PIPE-3), ``ack_timeout`` each
        sample's wait for its acknowledgement (PIPE-4); None waits forever. The stream's
        figures are kept in ``statistics`` (a new record if None) as it runs, whether
        or not the results are read. Answers that acknowledge none of our samples are
        taken up to ``max_answers_per_sample`` per sample sent (PIPE-10).
        """
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        if max_answers_per_sample < 1:
            raise ValueError(
                f"max_answers_per_sample must be at least 1, got {max_answers_per_sample}"
            )
        for name, value in (
            ("descriptor_timeout", descriptor_timeout),
            ("ack_timeout", ack_timeout),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive (or None), got {value}")
        runner = StreamRunner(Role.PIPELINE, channel, statistics=statistics)
        stream = cls(runner, window, arena, ack_timeout, max_answers_per_sample)
        with runner.outcome():
            await runner.send(
                runner.session.send_descriptor(descriptor),
                timeout=descriptor_timeout,
                rule="PIPE-3",
                awaited="open its flow-control window for our descriptor",
            )
            answer = await runner.receive(
                timeout=descriptor_timeout, rule="PIPE-3", awaited="answer our descriptor"
            )
            if answer is not None:
                assert any(isinstance(event, DescriptorReceived) for event in answer[1])
                runner.statistics.descriptor = runner.session.peer_descriptor
            async with runner.running(stream):
                try:
                    yield stream, stream.results
                    if not stream._ended:
                        await stream.end()
                finally:
                    stream.results.close()

    async def allocate(self, length: int) -> SentLease:
        """A slot of ``length`` bytes in the stream's segment, to write and then ``send``.

        Waits for acknowledgements to free one. For a producer that fills the slot
        itself (``lease.write``), or knows it holds the frame already: ``send`` then
        copies nothing. Raises ``ValueError`` on a stream without shared memory.
        """
        if self.arena is None:
            raise ValueError("this stream sends its frames embedded: it has no segment")
        self._start_clock()  # a full segment frees up only with an answer
        return await self.arena.allocate_async(length)

    def _takes(self, slot: SentLease) -> SentLease:
        """``slot``, if ``send`` can send it; else it stays the caller's and this raises."""
        if slot.arena is not self.arena:
            raise ValueError(
                f"{slot!r} is not a slot of this stream's segment"
                + ("" if self.arena else ": this stream sends its frames embedded")
            )
        if slot.state is not LeaseState.ALLOCATED:
            raise ValueError(f"{slot!r} cannot be sent: only a slot allocated and unsent can")
        fmt = self.format
        if fmt is not None and fmt.is_raw and slot.length != fmt.frame_bytes:
            raise ValueError(
                f"{slot!r} holds {slot.length} bytes; a {fmt} frame is {fmt.frame_bytes}"
            )
        return slot

    async def send(
        self,
        content: bytes | bytearray | memoryview | SentLease | None,
        *,
        timestamp: int,
        inferences: Sequence[Inference] = (),
    ) -> int:
        """Send one sample of ``content`` (already in the stream's format); returns its number.

        Waits while ``window`` samples are unacknowledged or their answers unread. With
        shared memory the bytes are copied into an arena slot (waiting for one to be
        freed by an acknowledgement if the arena is full) and the message carries a
        reference to it; a slot from ``allocate`` is sent as it is, and is the
        stream's from then on (freed by its acknowledgement, or at once if the send
        fails); one that cannot be sent (another stream's, sent already, not a frame's
        length) raises ``ValueError`` and stays the caller's. Once the extension ended
        the stream with a failure, a sample goes nowhere (its slot is freed): the
        failure is raised from ``results``, after the answers it sent before (PIPE-6).
        """
        lease = None
        if isinstance(content, SentLease):
            lease, content = self._takes(content), None
        try:
            try:
                self._window.acquire_nowait()  # sending the message is the checkpoint
            except anyio.WouldBlock:
                self._start_clock()  # nothing more goes until an answer comes
                await self._window_slot()
        except BaseException:
            _free(lease)
            raise
        self._start_clock()  # this sample goes now (its slot may wait for an answer first)
        try:
            sample = MediaSample(timestamp=timestamp, inferences=list(inferences))
            if lease is not None:
                if lease.state is not LeaseState.ALLOCATED:  # sent by another send meanwhile
                    raise ValueError(f"{lease!r} was sent already: a slot goes once")
                sample.content_reference = ContentReference(
                    address_offset=lease.offset, length_bytes=lease.length
                )
            elif content is not None and self.arena is not None:
                view = memoryview(content).cast("B")
                lease = await self.arena.allocate_async(len(view))
                lease.write(view)  # pwrite: a segment the peer shrank raises SHM-15
                sample.content_reference = ContentReference(
                    address_offset=lease.offset, length_bytes=len(view)
                )
            elif content is not None:
                sample.content_bytes = ContentBytes(bytes=content)  # type: ignore[arg-type]
            message = self.session.send_sample(sample)
            if lease is not None:
                lease.mark_sent(message.sequence_number)
                self._leased.add(message.sequence_number)
                lease = None  # the acknowledgement frees it now
            self._latest = message.sequence_number
            self._samples_sent += 1
            self._sent_at[message.sequence_number] = time.monotonic()
            self._timestamps[message.sequence_number] = timestamp
        except BaseException:
            try:
                _free(lease)  # never sent: the slot is free again at once
            finally:
                self._window.free()
            raise
        number = message.sequence_number
        if await self._unless_ended(self._send, message, f"sample {number}"):
            self.runner.statistics.sent += 1
        else:
            self._settle(number)  # the extension ended the stream first: none will come
        return message.sequence_number

    async def end(self) -> None:
        """End the input: no more samples; the answers still come."""
        self.session.send_end()
        self._ended = True
        self._ended_at = time.monotonic()
        self._start_clock()
        self._wake()
        await self._unless_ended(self.channel.send_end)

    async def _send(self, message: MediaStreamMessage, what: str) -> None:
        """Send ``message`` within the acknowledgement deadline: an extension that keeps
        its flow-control window shut takes nothing, and would acknowledge nothing (PIPE-4)."""
        await self.runner.send(
            message,
            timeout=self._ack_timeout,
            rule="PIPE-4",
            awaited=f"open its flow-control window for {what}",
        )

    async def _unless_ended(
        self, sending: Callable[[*_Args], Awaitable[None]], *args: *_Args
    ) -> bool:
        """``sending(*args)``, unless the extension ended the stream; whether it went out.

        A send that meets the ended stream records it, and nothing more goes out. The
        extension's status is raised from ``results`` after every answer it sent before
        (PIPE-6); raised here, it would cancel a reader still taking them, or leave a
        reader that comes after the sends waiting in vain.
        """
        if self._peer_failed:
            return False
        try:
            await sending(*args)
        except StreamFailed:
            self._peer_failed = True
            return False
        return True

    async def _window_slot(self) -> None:
        """A slot of the window, for as long as it takes; a caller that sends without
        reading the results waits for ever, told why once, past ``UNREAD_WARNING``
        seconds with every answer of the window waiting to be read."""
        with anyio.move_on_after(UNREAD_WARNING):
            await self._window.acquire()
            return
        waiting = self._results.statistics()
        unread = waiting.current_buffer_used
        # Every answer the results can hold is there, and none was ever taken: a slow
        # reader has taken some, and is no more told than a slow extension's sender.
        if unread >= waiting.max_buffer_size and not self._window.taken and not self._told_unread:
            self._told_unread = True
            log.warning(
                "%s: sending has waited %g s for the window, which %d answers nobody has "
                "read fill: read results() while sending (a task beside the one that sends)",
                self.runner.peer,
                UNREAD_WARNING,
                unread,
            )
        await self._window.acquire()

    # The handler's side, called by the runner.

    def start(self, tasks: anyio.abc.TaskGroup) -> None:
        if self._ack_timeout is not None:
            tasks.start_soon(self._watch_acknowledgements, self._ack_timeout)

    async def before_receive(self) -> None:
        return None

    async def on_message(self, message: MediaStreamMessage, events: list[Event]) -> None:
        acknowledged: int | None = None
        latency: float | None = None
        sent_with: int | None = None
        answer: SampleReceived | None = None
        for event in events:
            if isinstance(event, AckReceived) and event.needed:
                acknowledged = event.acknowledged
                sent_with = self._timestamps.get(acknowledged)
                latency = self._settle(acknowledged)
            elif isinstance(event, SampleReceived):
                answer = event
        if answer is not None and answer.requires_ack:
            # The extension referred to shared memory of its own: nothing here reads
            # it, so it is acknowledged at once.
            # Once the extension ended the stream, this answer and those after it still
            # go to the results, then its status (PIPE-6).
            await self._unless_ended(
                self._send,
                self.session.send_sample(None, ack=answer.sequence_number),
                f"our acknowledgement of its message {answer.sequence_number}",
            )
        if acknowledged is None:
            if answer is None:
                return
            self._count_unacknowledging()
        result = Result(
            acknowledged=acknowledged,
            sequence_number=message.sequence_number,
            timestamp=answer.timestamp if answer else 0,
            inferences=list(answer.inferences) if answer else [],
            latency=latency,
            sample_timestamp=sent_with,
        )
        self.runner.statistics.add(result)
        try:
            try:
                self._results.send_nowait(result)
            except anyio.WouldBlock:
                await self._results.send(result)
        except anyio.BrokenResourceError:
            # Nobody reads results any more (the block was left); the window slot the
            # consumer would have freed is given back here.
            if acknowledged is not None:
                self._window.free()

    def _count_unacknowledging(self) -> None:
        """An answer that acknowledges none of our samples (inferences of the
        extension's own): a result like any other, within its allowance (PIPE-10)."""
        self._unacknowledging += 1
        allowed = self._answers_per_sample * (self._samples_sent + 1)
        if self._unacknowledging > allowed:
            raise RemoteProtocolError(
                "PIPE-10",
                Status.RESOURCE_EXHAUSTED,
                f"the extension sent {self._unacknowledging} answers that acknowledge none "
                f"of our {self._samples_sent} samples; at most {self._answers_per_sample} "
                "per sample sent are taken (max_answers_per_sample)",
            )

    def on_end(self) -> None:
        self._results.close()
        self._watching.cancel()

    async def on_failure(self, failure: StreamFailed) -> None:
        """The extension ended the stream with a failure: the answers it sent before are
        the reader's, and the failure reaches it after them, from ``results``. The
        stream ends once the reader met it, stopped reading, or read nothing for
        ``PEER_FAILURE_GRACE``."""
        self._watching.cancel()
        self._peer_failed = True
        seen = self.results._fail(failure)
        self._results.close()  # after the answers already in it, the reader finds the end
        with anyio.move_on_after(PEER_FAILURE_GRACE):
            await seen.wait()

    def _start_clock(self) -> None:
        """The latest sample's deadline starts now, if it had not (module docstring)."""
        latest = self._latest
        if latest in self._sent_at and latest not in self._clock_from:
            self._clock_from[latest] = time.monotonic()
            self._wake()

    def _wake(self) -> None:
        """Wake the watcher if it waits for a clock to start, or for the end."""
        self._moved.set()

    def _send_beyond_window(self, number: int, waited: float) -> None:
        """Let one sample more than the window go: the extension may be holding its
        answers until another request comes (PIPE-2's tolerance)."""
        window = self._window
        in_flight = len(self._sent_at)
        window.beyond()
        self._progress_at = time.monotonic()
        tolerated = self.session.tolerated
        tolerated["PIPE-2"] += 1
        if tolerated["PIPE-2"] > 1:
            return  # warned once per stream, counted each time
        detail = (
            f"sample {number}, the oldest of {in_flight} in flight, was not acknowledged "
            f"and no answer came for {waited:g} s; one more goes beyond the window of "
            f"{window.size - 1}, and again whenever that happens, in case the extension "
            "answers only when another request arrives (as Intel DL Streamer's and VA "
            "Serving's do)"
        )
        log_tolerated([Tolerated("PIPE-2", detail, first=True)], self.channel.peer)

    async def _watch_acknowledgements(self, timeout: float) -> None:
        """End the stream once the oldest unacknowledged sample's clock (module docstring)
        has run ``timeout`` s (PIPE-4).

        Sleeps until the oldest sample's deadline, then looks again: acknowledgements
        that arrived meanwhile moved the oldest on. Costs nothing per message.
        """
        with self._watching:
            while True:
                now = time.monotonic()
                if self._sent_at:
                    number = next(iter(self._sent_at))
                    started = self._clock_from.get(number)
                    if started is None:  # the latest, and the input goes on
                        # Until the clock starts, or at the latest twice the timeout
                        # from its sending: a caller that waits for this very answer
                        # before it sends again (or never sends again) starts no clock.
                        latest = self._sent_at[number] + 2 * timeout
                        if now < latest:
                            await self._moved.wait(latest - now)
                            continue
                        started = latest - timeout
                    due = started + timeout
                    if self._window.filling and self._window.may_go_beyond:
                        waited = min(timeout / 2, HELD_ANSWER_WAIT)
                        quiet = max(started, self._progress_at) + waited
                        if now >= quiet:
                            self._send_beyond_window(number, waited)
                            continue
                        due = min(due, quiet)
                    if now >= started + timeout:
                        raise ProtocolError(
                            "PIPE-4",
                            Status.DEADLINE_EXCEEDED,
                            f"sample {number} was not acknowledged within {timeout:g} s "
                            f"({len(self._sent_at)} unacknowledged); the extension at "
                            f"{self.channel.peer} is slower than that, or drops frames it "
                            "fails on (ack_timeout, --ack-timeout: longer, or none to wait "
                            "for ever)",
                        )
                elif self._ended:
                    due = self._ended_at + timeout
                    if now >= due:
                        raise ProtocolError(
                            "PIPE-4",
                            Status.DEADLINE_EXCEEDED,
                            f"the extension at {self.channel.peer} acknowledged everything "
                            f"but did not end its stream within {timeout:g} s of our end",
                        )
                else:  # nothing in flight, and the input goes on
                    await self._moved.wait()
                    continue
                window = self._window
                if self._sent_at and not (window.filling and window.may_go_beyond):
                    # Until a sample may go beyond the window (module docstring).
                    await window.until_changed(due - now)
                else:
                    await anyio.sleep(due - now)

    def _settle(self, number: int) -> float | None:
        if number in self._leased:
            assert self.arena is not None
            self._leased.discard(number)
            self.arena.ack(number)  # the only way a sent lease is freed
        self._timestamps.pop(number, None)
        self._clock_from.pop(number, None)
        sent = self._sent_at.pop(number, None)
        if sent is None:
            return None
        now = self._progress_at = time.monotonic()
        return now - sent
