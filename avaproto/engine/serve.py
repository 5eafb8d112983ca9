"""The extension's side of one stream: receive, process concurrently, answer, release.

    runner ──► session.receive ──► workers (≤ max_in_flight at once) ──┐
      ▲  reads on only when a slot is free (backpressure, SRV-1)        │
      └── the worker at the head of the line: answer + ack, release ◄───┘

The extension is a handler on ``engine.stream.StreamRunner``, as the pipeline is: the
runner's one task group holds its receive loop and the workers, so nothing outlives
the stream. Every received sample is answered exactly once, after its
processing finished (ACK-1), by a message that carries its inferences and its
acknowledgement (ACK-6); its shared-memory lease is released right after that message
is sent (SRV-6). At the end of input everything in flight completes first (LIFE-2);
on a violation, a failing processor or cancellation, the task group cancels the rest
and ``finally`` releases every lease and mapping.
"""

from __future__ import annotations

import logging
from collections import deque

import anyio
import anyio.abc

from ..errors import InferenceError, ProtocolError
from ..media.inferences import validate
from ..messages import (
    Inference,
    MediaDescriptor,
    MediaSample,
    MediaStreamDescriptor,
    MediaStreamMessage,
)
from ..protocol.descriptor import StreamDescriptor
from ..protocol.events import DescriptorReceived, EmbeddedContent, Event, SampleReceived
from ..protocol.roles import Role
from ..status import Status
from .channel import MessageChannel
from .config import EngineConfig
from .extension import Extension, as_async_extension
from .frame import Frame
from .leases import Lease, Region
from .statistics import StreamStatistics
from .stream import StreamRunner

log = logging.getLogger("avaproto.serve")


#: The extension's name for its stream statistics (the server's closing log line).
StreamSummary = StreamStatistics


class _Job:
    """One sample on its way from the reader through a worker to the answerer."""

    __slots__ = ("done", "frame", "inferences", "lease", "sample")

    def __init__(self, sample: SampleReceived, frame: Frame, lease: Lease | None) -> None:
        self.sample = sample
        self.frame = frame
        self.lease = lease
        self.done = False
        self.inferences: list[Inference] = []


class _Queue:
    """Samples read and waiting for a worker; a worker with none to take parks on an event.

    Bounded by the slots (at most ``max_in_flight`` samples are unanswered), so a plain
    deque. Handing a sample to a working worker costs an append; only a worker that
    finds nothing waits, on an event of its own that the next sample sets. The event's
    class is taken from the running backend once per stream, so making one costs no
    backend lookup.
    """

    __slots__ = ("_closed", "_event", "_jobs", "_parked")

    def __init__(self) -> None:
        self._jobs: deque[_Job] = deque()
        self._parked: deque[anyio.Event] = deque()
        self._closed = False
        self._event = type(anyio.Event())

    def put(self, job: _Job) -> None:
        self._jobs.append(job)
        if self._parked:
            self._parked.popleft().set()

    def close(self) -> None:
        """No more samples: every parked worker wakes, finds none and stops."""
        self._closed = True
        while self._parked:
            self._parked.popleft().set()

    async def get(self) -> _Job | None:
        """The next sample, or None once closed and empty."""
        while not self._jobs:
            if self._closed:
                return None
            event = self._event()
            self._parked.append(event)
            try:
                await event.wait()
            finally:
                if event in self._parked:  # cancelled while parked
                    self._parked.remove(event)
        return self._jobs.popleft()


_DEFAULT_CONFIG = EngineConfig()


async def serve_stream(
    channel: MessageChannel, extension: Extension, config: EngineConfig = _DEFAULT_CONFIG
) -> StreamStatistics:
    """Serve one stream to its end; raise ``ProtocolError`` when it must end with a status."""
    runner = StreamRunner(Role.EXTENSION, channel, limits=config.limits)
    session, summary = runner.session, runner.statistics
    extension = as_async_extension(extension, limiter=config.thread_limiter)
    region: Region | None = None
    handler: ExtensionHandler | None = None
    opened = False
    try:
        with runner.outcome():
            first = await runner.receive()
            if first is None:
                return summary
            [event] = [e for e in first[1] if isinstance(e, DescriptorReceived)]
            descriptor = summary.descriptor = event.descriptor
            if descriptor.shared_memory is not None:
                from ..media.shared_memory import SharedMemoryRegion

                region = SharedMemoryRegion.open(
                    descriptor.shared_memory.handle_name,
                    descriptor.shared_memory.length_bytes,
                    directory=config.shm_directory,
                    access=config.shm_access,
                )
            log.info(
                "stream opened: peer %s, %s, %s",
                channel.peer,
                descriptor.video_format or "inferences only",
                f"shared memory {descriptor.shared_memory.handle_name}"
                if descriptor.shared_memory
                else "embedded",
            )
            opened = True
            await extension.open(descriptor)
            answer = MediaStreamDescriptor(
                extension_identifier=config.extension_identifier,
                media_descriptor=MediaDescriptor(timescale=descriptor.timescale),
            )
            await runner.send(session.send_descriptor(answer))
            handler = ExtensionHandler(runner, extension, descriptor, region, config)
            async with runner.running(handler):
                pass
            session.send_end()
            await channel.send_end()
            return summary
    finally:
        if handler is not None:
            handler.release_pending()
        with anyio.CancelScope(shield=True):
            if opened:
                await _close(extension)
        if region is not None:
            region.close(force=True)
        log.info(
            "stream closed: peer %s, %d frames in %.1f s (%.1f fps), %d inferences, %s%s%s",
            summary.peer,
            summary.frames,
            summary.seconds,
            summary.fps if summary.frames else 0.0,
            summary.inferences,
            summary.status.name,
            f": {summary.message}" if summary.message else "",
            f"; tolerated {summary.tolerated_text()}" if summary.tolerated else "",
        )


async def _close(extension: Extension) -> None:
    try:
        await extension.close()
    except Exception:
        log.exception("extension close() failed")


class ExtensionHandler:
    """The extension's role on the runner: a fixed set of workers that also answer.

    No task is spawned per frame: ``max_in_flight`` workers (one for a sequential
    extension, which then sees its frames in order) take samples from a bounded stream,
    and the runner reads on only when a slot is free (SRV-1). The worker that completes
    the head of the line sends every answer that is ready in one write
    (``MessageChannel.send_batch``): under load a whole window of acknowledgements
    leaves in one HTTP/2 frame, and no task wakes up only to answer.
    """

    def __init__(
        self,
        runner: StreamRunner,
        extension: Extension,
        descriptor: StreamDescriptor,
        region: Region | None,
        config: EngineConfig,
    ) -> None:
        self.session = runner.session
        self.channel = runner.channel
        self.extension = extension
        self.descriptor = descriptor
        self.region = region
        self.config = config
        self.summary = runner.statistics
        self.slots = anyio.Semaphore(config.max_in_flight)
        # Samples read and not yet answered, in request order (the answerer's queue).
        self.pending: deque[_Job] = deque()
        # A worker is sending answers: one that finishes meanwhile leaves its answer to it.
        self.sending = False
        # A stateful extension (a tracker, a motion detector) sees its frames one at a
        # time and in order; the engine still reads ahead up to max_in_flight.
        self.sequential = extension.sequential
        self.timeout = config.frame_timeout
        self.jobs = _Queue()

    def start(self, tasks: anyio.abc.TaskGroup) -> None:
        for _ in range(1 if self.sequential else self.config.max_in_flight):
            tasks.start_soon(self._work)

    async def before_receive(self) -> None:
        # The wait for the message that follows is the checkpoint; anyio's acquire()
        # would add one more trip around the event loop per sample.
        try:
            self.slots.acquire_nowait()
        except anyio.WouldBlock:
            await self.slots.acquire()

    async def on_message(self, message: MediaStreamMessage, events: list[Event]) -> None:
        started = False
        for event in events:
            if isinstance(event, SampleReceived):
                job = self._job(event)
                self.pending.append(job)
                self.jobs.put(job)
                started = True
        if not started:
            self.slots.release()  # an acknowledgement alone takes no slot

    def on_end(self) -> None:
        self.jobs.close()  # the workers finish what is queued, then stop

    def release_pending(self) -> None:
        """After a failure: the leases of samples never answered end with the stream."""
        self.jobs.close()
        for job in self.pending:
            _release(job)
        self.pending.clear()

    def _job(self, event: SampleReceived) -> _Job:
        lease = None
        data: memoryview | Lease | None = None
        content = event.content
        if isinstance(content, EmbeddedContent):
            data = memoryview(content.data)
        elif content is not None:
            assert self.region is not None  # the session checked SHM-1
            lease = self.region.lease(event.sequence_number, content.offset, content.length)
            data = lease  # read on the processor's first use of frame.data (SHM-15)
        frame = Frame(
            sequence_number=event.sequence_number,
            timestamp=event.timestamp,
            data=data,
            format=self.descriptor.video_format if data is not None else None,
            descriptor=self.descriptor,
            inferences=event.inferences,
        )
        return _Job(event, frame, lease)

    async def _work(self) -> None:
        while (job := await self.jobs.get()) is not None:
            await self._process(job)
            job.done = True
            # In request order, only the head of the line unblocks answers.
            if not self.config.ordered or job is self.pending[0]:
                await self._answer_ready()

    async def _process(self, job: _Job) -> None:
        number = job.sample.sequence_number
        timeout = self.timeout
        try:
            if timeout:
                with anyio.fail_after(timeout):
                    result = await self.extension.process(job.frame)
            else:
                result = await self.extension.process(job.frame)
            job.inferences = _checked(result, number)
        except TimeoutError:
            raise ProtocolError(
                "SRV-4",
                Status.DEADLINE_EXCEEDED,
                f"processing sample {number} took longer than the frame timeout of {timeout} s",
            ) from None
        except ProtocolError:
            raise
        except Exception as error:
            raise ProtocolError(
                "SRV-3",
                Status.INTERNAL,
                f"the extension failed on sample {number}: {type(error).__name__}: {error}",
            ) from error

    def _ready(self) -> list[_Job]:
        """The jobs that may be answered now: the done head of the line, or all done ones."""
        pending = self.pending
        ready: list[_Job] = []
        if self.config.ordered:
            while pending and pending[0].done:
                ready.append(pending.popleft())
        elif pending:
            ready = [job for job in pending if job.done]
            if ready:
                self.pending = deque(job for job in pending if not job.done)
        return ready

    async def _answer_ready(self) -> None:
        """Send every answer that is ready, in one write per batch.

        The worker that finished the head of the line sends; one that finishes while
        that send is under way leaves its answer to the sender, which looks again before
        it stops (no await between its last look and clearing ``sending``, so no answer
        is left behind). No answerer task, and no wake-up, per sample.
        """
        if self.sending:
            return
        self.sending = True
        try:
            session = self.session
            while ready := self._ready():
                messages = [
                    session.send_sample(
                        MediaSample(timestamp=job.sample.timestamp, inferences=job.inferences),
                        ack=job.sample.sequence_number,
                    )
                    for job in ready
                ]
                try:
                    await self.channel.send_batch(messages)
                finally:
                    # Sent or not (a failure ends the stream), these leases end now (SRV-6).
                    for job in ready:
                        _release(job)
                for job in ready:
                    self.slots.release()
                    self.summary.count_answer(job.inferences)
        finally:
            self.sending = False


def _checked(result: object, number: int) -> list[Inference]:
    if result is None:
        return []
    try:
        inferences: list[object] = list(result)  # type: ignore[call-overload]
    except TypeError:
        raise ProtocolError(
            "SRV-3",
            Status.INTERNAL,
            f"the extension returned {type(result).__name__} for sample {number}; "
            "expected inferences (an iterable of Inference) or None",
        ) from None
    for index, inference in enumerate(inferences):
        if not isinstance(inference, Inference):
            raise ProtocolError(
                "SRV-3",
                Status.INTERNAL,
                f"the extension returned a {type(inference).__name__} among the inferences "
                f"of sample {number}; expected Inference",
            )
        try:
            validate(inference, f"inferences[{index}]")
        except InferenceError as error:
            raise ProtocolError(
                "SRV-3",
                Status.INTERNAL,
                f"the extension returned an invalid inference for sample {number}: {error}",
            ) from None
    return inferences  # type: ignore[return-value]  # every item checked above


def _release(job: _Job) -> None:
    if job.lease is None:
        return
    try:
        job.lease.release()
    except ProtocolError as error:
        log.warning("sample %d: %s", job.sample.sequence_number, error)
