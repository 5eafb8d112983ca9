"""The extension's side of one stream: receive, process concurrently, answer, release.

    reader ──► session.receive ──► start processing (≤ max_in_flight at once) ──┐
      ▲  waits for a free slot before reading on (backpressure, SRV-1)         │
      └──────────── answerer: in request order, answer + ack, release lease ◄──┘

One task group holds the reader, the answerer and every processing task, so nothing
outlives the stream. Every received sample is answered exactly once, after its
processing finished (ACK-1), by a message that carries its inferences and its
acknowledgement (ACK-6); its shared-memory lease is released right after that message
is sent (SRV-6). At the end of input everything in flight completes first (LIFE-2);
on a violation, a failing processor or cancellation, the task group cancels the rest
and ``finally`` releases every lease and mapping.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import InferenceError, ProtocolError
from ..media.inferences import validate
from ..messages import Inference, MediaDescriptor, MediaSample, MediaStreamDescriptor
from ..protocol.descriptor import StreamDescriptor
from ..protocol.events import DescriptorReceived, EmbeddedContent, SampleReceived, Tolerated
from ..protocol.roles import Role
from ..protocol.session import Session
from ..status import Status
from .channel import MessageChannel
from .config import EngineConfig
from .extension import Extension, as_async_extension
from .frame import Frame
from .leases import Lease, Region
from .outcome import log_tolerated, protocol_errors
from .statistics import StreamStatistics

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


_DEFAULT_CONFIG = EngineConfig()


async def serve_stream(
    channel: MessageChannel, extension: Extension, config: EngineConfig = _DEFAULT_CONFIG
) -> StreamStatistics:
    """Serve one stream to its end; raise ``ProtocolError`` when it must end with a status."""
    session = Session(Role.EXTENSION, limits=config.limits)
    summary = StreamStatistics(channel.peer)
    summary.tolerated = session.tolerated
    extension = as_async_extension(extension, limiter=config.thread_limiter)
    region: Region | None = None
    opened = False
    try:
        first = await channel.receive()
        if first is None:
            session.receive_end()
            return summary
        events = session.receive(first)
        log_tolerated(events, f"pipeline {channel.peer}")
        [event] = [e for e in events if isinstance(e, DescriptorReceived)]
        descriptor = summary.descriptor = event.descriptor
        if descriptor.shared_memory is not None:
            from ..media.shared_memory import SharedMemoryRegion

            region = SharedMemoryRegion.open(
                descriptor.shared_memory.handle_name,
                descriptor.shared_memory.length_bytes,
                directory=config.shm_directory,
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
        await channel.send(session.send_descriptor(answer))
        await _Pump(session, channel, extension, descriptor, region, config, summary).run()
        session.send_end()
        await channel.send_end()
        return summary
    except ProtocolError as error:
        if not session.failed:
            session.fail(error)
        summary.status, summary.message = error.status, str(error)
        raise
    except anyio.get_cancelled_exc_class():
        summary.status, summary.message = Status.CANCELLED, "cancelled"
        raise
    finally:
        summary.ended = time.monotonic()
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


class _Pump:
    """The reader, a fixed set of workers and the answerer of one stream.

    No task is spawned per frame: ``max_in_flight`` workers (one for a sequential
    extension, which then sees its frames in order) take samples from a bounded stream.
    The answerer waits on one event per batch, not per sample, and sends every answer
    that is ready in one write (``MessageChannel.send_batch``): under load a whole
    window of acknowledgements leaves in one HTTP/2 frame.
    """

    def __init__(
        self,
        session: Session,
        channel: MessageChannel,
        extension: Extension,
        descriptor: StreamDescriptor,
        region: Region | None,
        config: EngineConfig,
        summary: StreamStatistics,
    ) -> None:
        self.session = session
        self.channel = channel
        self.extension = extension
        self.descriptor = descriptor
        self.region = region
        self.config = config
        self.summary = summary
        self.slots = anyio.Semaphore(config.max_in_flight)
        # Samples read and not yet answered, in request order (the answerer's queue).
        self.pending: deque[_Job] = deque()
        self.reading = True
        self.answerer_idle: anyio.Event | None = None
        # A stateful extension (a tracker, a motion detector) sees its frames one at a
        # time and in order; the engine still reads ahead up to max_in_flight.
        self.sequential = extension.sequential
        self.timeout = config.frame_timeout

    async def run(self) -> None:
        workers = 1 if self.sequential else self.config.max_in_flight
        send, receive = anyio.create_memory_object_stream[_Job](self.config.max_in_flight)
        try:
            with protocol_errors():
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._answer_all)
                    async with receive:
                        for _ in range(workers):
                            tasks.start_soon(self._work, receive.clone())
                    await self._read_all(send)
        finally:
            for job in self.pending:  # only after a failure: answered jobs left the queue
                _release(job)

    def _wake(self) -> None:
        if self.answerer_idle is not None:
            self.answerer_idle.set()
            self.answerer_idle = None

    async def _read_all(self, jobs: MemoryObjectSendStream[_Job]) -> None:
        try:
            async with jobs:
                while True:
                    await self.slots.acquire()
                    message = await self.channel.receive()
                    if message is None:
                        self.session.receive_end()
                        return
                    started = False
                    for event in self.session.receive(message):
                        if isinstance(event, SampleReceived):
                            job = self._job(event)
                            self.pending.append(job)
                            await jobs.send(job)
                            started = True
                        elif isinstance(event, Tolerated) and event.first:
                            log_tolerated([event], f"pipeline {self.channel.peer}")
                    if not started:
                        self.slots.release()  # an acknowledgement alone takes no slot
        finally:
            self.reading = False
            self._wake()

    def _job(self, event: SampleReceived) -> _Job:
        lease = None
        data: memoryview | None = None
        content = event.content
        if isinstance(content, EmbeddedContent):
            data = memoryview(content.data)
        elif content is not None:
            assert self.region is not None  # the session checked SHM-1
            lease = self.region.lease(event.sequence_number, content.offset, content.length)
            data = lease.view
        frame = Frame(
            sequence_number=event.sequence_number,
            timestamp=event.timestamp,
            data=data,
            format=self.descriptor.video_format if data is not None else None,
            descriptor=self.descriptor,
            inferences=event.inferences,
        )
        return _Job(event, frame, lease)

    async def _work(self, jobs: MemoryObjectReceiveStream[_Job]) -> None:
        async with jobs:
            async for job in jobs:
                await self._process(job)
                job.done = True
                if self.config.ordered:
                    if job is self.pending[0]:
                        self._wake()  # only the head of the line unblocks answers
                else:
                    self._wake()

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

    async def _answer_all(self) -> None:
        session = self.session
        while True:
            ready = self._ready()
            if not ready:
                if not self.reading and not self.pending:
                    return
                self.answerer_idle = anyio.Event()
                await self.answerer_idle.wait()
                continue
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
