"""The extension's side of one stream: receive, process concurrently, answer, release.

    worker with the reading turn ──► runner.receive_one ──► its sample
      │  reads only when a slot is free (backpressure, SRV-1)
      ├── processes it; the moment that waits, the turn passes to a parked worker
      └── at the head of the line: answers every ready sample in one write, releases

The extension is a handler on ``engine.stream.StreamRunner``, as the pipeline is: the
runner's one task group holds the ``max_in_flight`` workers, so nothing outlives the
stream. Every received sample is answered exactly once, after its
processing finished (ACK-1), by a message that carries its inferences and its
acknowledgement (ACK-6); its frame (its shared-memory lease, or the bytes of its
message) is let go as soon as its processing ended, before that message waits for the
pipeline's window (SRV-7, SRV-18). At the end of input everything in flight
completes first (LIFE-2); on a violation, a failing processor or cancellation, the
task group cancels the rest and ``finally`` releases every lease and mapping.
"""

from __future__ import annotations

import logging
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, ClassVar

import anyio
import anyio.abc

from ..codec import decode_message, encode_message
from ..errors import InferenceError, ProtocolError, RemoteProtocolError, StreamFailed
from ..media.inferences import from_protoc, validate_or_mend
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
from .extension import Extension, Processing, as_async_extension
from .frame import Frame
from .leases import Lease, Region
from .statistics import StreamStatistics
from .stream import StreamRunner

log = logging.getLogger("avaproto.serve")


#: The extension's name for its stream statistics (the server's closing log line).
StreamSummary = StreamStatistics


class _Job:
    """One sample on its way from the reader through a worker to the answerer.

    Once processed it keeps only what its answer needs: its frame (the message's
    bytes, or its lease) is let go then, not when the answer leaves, so a pipeline
    that leaves its window shut holds no frame memory with its unsent answers (SRV-18).
    """

    __slots__ = ("done", "frame", "inferences", "lease", "number", "timestamp")

    def __init__(self, sample: SampleReceived, frame: Frame, lease: Lease | None) -> None:
        self.number = sample.sequence_number
        self.timestamp = sample.timestamp
        self.frame: Frame | None = frame
        self.lease = lease
        self.done = False
        self.inferences: list[Inference] = []


class _Turn:
    """Which worker reads the next message: one at a time, so the session sees them in order.

    The worker that holds the turn reads one message and processes its sample itself.
    Processing that completes without waiting (a no-op, a quick numpy step) never hands
    the turn over, so that worker reads on and a lone message costs no wake-up of another
    task; processing that waits (a model, a thread, a timer) passes the turn, the
    moment it waits, to the worker first in line (or leaves it free for the next one
    that comes back), so the stream keeps reading while it waits. ``_on_first_wait``
    tells when. The line is an ``_InOrder``; the end of input is passed along it.
    """

    __slots__ = ("_ended", "_holder", "_line")

    def __init__(self) -> None:
        self._holder: object | None = None
        self._ended = False
        self._line = _InOrder()

    async def take(self, worker: object) -> bool:
        """Wait for ``worker``'s turn to read; False once the input ended (it stops)."""
        if self._holder is worker:
            return True
        if self._ended:
            return False
        await self._line.acquire()
        if self._ended:
            self._line.release()  # the next in line learns it too
            return False
        self._holder = worker
        return True

    def end(self) -> None:
        """No more messages: every worker waiting for the turn wakes and stops."""
        self._ended = True
        self.pass_on(self._holder)

    def pass_on(self, worker: object) -> None:
        """``worker`` is about to wait: the turn, if it holds it, goes to the next."""
        if worker is not None and self._holder is worker:
            self._holder = None
            self._line.release()


@types.coroutine
def _on_first_wait(
    waits: Callable[[], None], coroutine: Coroutine[Any, Any, None]
) -> Generator[Any, Any, None]:
    """Await ``coroutine``, calling ``waits()`` just before it first suspends the task.

    ``await coroutine`` (``yield from``, PEP 380), with a look at its first step: a
    coroutine that finishes without suspending never calls ``waits``. The coroutine
    runs in the awaiting task, so its cancel scopes and context are that task's.
    """
    steps = coroutine.__await__()
    try:
        value = steps.send(None)
    except StopIteration:
        return
    waits()
    while True:
        try:
            sent = yield value
        except GeneratorExit:
            steps.close()
            raise
        except BaseException as error:
            try:
                value = steps.throw(error)
            except StopIteration:
                return
        else:
            try:
                value = steps.send(sent)
            except StopIteration:
                return


class _InOrder:
    """One holder at a time, in the order they asked: a sequential extension's ``process``.

    A worker asks right after reading its sample, before anything can wait, so the
    order of asking is the order of the samples. Ownership passes straight from the
    holder to the next in line.
    """

    __slots__ = ("_busy", "_event", "_parked")

    def __init__(self) -> None:
        self._busy = False
        self._parked: deque[anyio.Event] = deque()
        self._event = type(anyio.Event())

    async def acquire(self) -> None:
        if not self._busy:
            self._busy = True
            return
        event = self._event()
        self._parked.append(event)
        try:
            await event.wait()
        except BaseException:
            if event in self._parked:
                self._parked.remove(event)
            elif event.is_set():
                self.release()  # it was handed over as this waiter was cancelled
            raise

    def release(self) -> None:
        if self._parked:
            self._parked.popleft().set()
        else:
            self._busy = False


_DEFAULT_CONFIG = EngineConfig()


class StreamStop:
    """Ends a stream from outside, with a status, wherever it is (a server's drain)."""

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.error: ProtocolError | None = None

    def __call__(self, error: ProtocolError) -> None:
        self.error = error
        self.scope.cancel()


@contextmanager
def _stoppable(stop: StreamStop | None) -> Iterator[None]:
    if stop is None:
        yield
        return
    with stop.scope:
        yield
    if stop.scope.cancelled_caught and stop.error is not None:
        raise stop.error


async def serve_stream(
    channel: MessageChannel,
    extension: Processing,
    config: EngineConfig = _DEFAULT_CONFIG,
    *,
    deadline: float | None = None,
    deadline_text: str = "",
    stop: StreamStop | None = None,
) -> StreamStatistics:
    """Serve one stream to its end; raise ``ProtocolError`` when it must end with a status.

    ``deadline``: seconds the pipeline gave the whole call (gRPC's grpc-timeout, which
    ``deadline_text`` quotes); past it the stream ends with DEADLINE_EXCEEDED (SRV-15),
    recorded in its closing line like any other end. ``stop``, called with an error,
    ends the stream with that error likewise (the server's drain, SRV-8).
    """
    runner = StreamRunner(Role.EXTENSION, channel, limits=config.limits)
    session, summary = runner.session, runner.statistics
    extension = as_async_extension(extension, limiter=config.thread_limiter)
    region: Region | None = None
    handler: ExtensionHandler | None = None
    opened = False
    try:
        with runner.outcome(), _stoppable(stop), _pipeline_deadline(deadline, deadline_text):
            first = await runner.receive()
            if first is None:
                return summary
            [event] = [e for e in first[1] if isinstance(e, DescriptorReceived)]
            descriptor = summary.descriptor = event.descriptor
            if descriptor.shared_memory is not None:
                from ..media.shared_memory import SharedMemoryRegion

                try:
                    region = SharedMemoryRegion.open(
                        descriptor.shared_memory.handle_name,
                        descriptor.shared_memory.length_bytes,
                        directory=config.shm_directory,
                        access=config.shm_access,
                        max_mapped_bytes=config.max_mapped_bytes,
                    )
                except ProtocolError as error:
                    if error.status is Status.RESOURCE_EXHAUSTED:  # a bound, tripped
                        log.warning("stream of %s refused: %s", channel.peer, error)
                    raise
            log.info(
                "stream opened: peer %s, %s, %s",
                channel.peer,
                descriptor.video_format or "inferences only",
                f"shared memory {descriptor.shared_memory.handle_name}"
                if descriptor.shared_memory
                else "embedded",
            )
            opened = True
            try:
                await extension.open(descriptor)
            except ProtocolError:
                raise  # ExtensionRefused: the extension's own word (CFG-3)
            except Exception as error:
                raise ProtocolError(
                    "SRV-3",
                    Status.INTERNAL,
                    f"the extension failed to open the stream: {type(error).__name__}: {error}",
                ) from error
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
        if opened:
            await _close(extension, config.close_timeout, summary.peer)
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


@contextmanager
def _pipeline_deadline(seconds: float | None, text: str) -> Iterator[None]:
    with anyio.move_on_after(seconds) as scope:
        yield
    if scope.cancelled_caught:
        raise RemoteProtocolError(
            "SRV-15", Status.DEADLINE_EXCEEDED, f"the pipeline's deadline passed ({text})"
        )


async def _close(extension: Extension, timeout: float | None, peer: str) -> None:
    """The extension's ``close()``, whatever ended the stream (shielded), but for at most
    ``timeout`` seconds: one that never returns held the server's drain for ever."""
    with anyio.move_on_after(timeout, shield=True) as waited:
        try:
            await extension.close()
        except Exception:
            log.exception("%s: the extension's close() failed", peer)
    if waited.cancelled_caught:
        log.warning(
            "%s: the extension's close() did not return within %g s; the stream ended "
            "without it (--close-timeout)",
            peer,
            timeout,
        )


class ExtensionHandler:
    """The extension's role on the runner: a fixed set of workers that read, process, answer.

    No task is spawned per frame, and no task only reads: ``max_in_flight`` workers take
    turns reading (``_Turn``), each processes the sample it read (a sequential extension
    one at a time, in the samples' order, while the others read ahead: ``_InOrder``),
    and a message is read only when a slot is free (SRV-1). A sample whose processing
    does not wait is read, processed and answered by one task without a wake-up in
    between. The worker that completes
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
        self.runner = runner
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
        # time and in order; the other workers still read ahead (SRV-10).
        self.sequential = extension.sequential
        self.one_at_a_time = _InOrder() if extension.sequential else None
        self.timeout = config.frame_timeout
        self.turn = _Turn()
        # The sample the message just read carried, for the worker that read it.
        self.received: _Job | None = None
        # Inferences of the extension's mended as they went out (INF-3, INF-4).
        self.mended = 0
        self.failure_logged = False  # a processor's traceback, logged once per stream

    #: The workers read the stream themselves (the runner starts no receive loop).
    reads_itself: ClassVar[bool] = True

    def start(self, tasks: anyio.abc.TaskGroup) -> None:
        for _ in range(self.config.max_in_flight):
            tasks.start_soon(self._work)

    async def before_receive(self) -> None:
        # The wait for the message that follows is the checkpoint; anyio's acquire()
        # would add one more trip around the event loop per sample.
        try:
            self.slots.acquire_nowait()
        except anyio.WouldBlock:
            await self.slots.acquire()

    async def on_message(self, message: MediaStreamMessage, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, SampleReceived):
                job = self.received = self._job(event)
                self.pending.append(job)
                return
        self.slots.release()  # an acknowledgement alone takes no slot

    def on_end(self) -> None:
        self.turn.end()  # the workers finish what they process, then stop

    async def on_failure(self, failure: StreamFailed) -> None:
        return None  # the workers read themselves: the runner's loop never runs here

    def release_pending(self) -> None:
        """After a failure: the leases of samples never answered end with the stream."""
        self.turn.end()
        for job in self.pending:
            _release(job)
        self.pending.clear()

    def _job(self, event: SampleReceived) -> _Job:
        lease = None
        data: memoryview | Lease | None = None
        content = event.content
        if isinstance(content, EmbeddedContent):
            data = memoryview(content.data).toreadonly()  # as a lease's view is
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
        me = object()
        turn, receive_one = self.turn, self.runner.receive_one
        waits = partial(turn.pass_on, me)
        while await turn.take(me):
            if not await receive_one(self):
                return  # the end of input (on_end ended every worker's turn)
            job, self.received = self.received, None
            if job is None:
                continue  # no sample in that message: read the next one
            await _on_first_wait(waits, self._serve(job))

    async def _serve(self, job: _Job) -> None:
        """Process ``job``'s sample, then answer what is ready."""
        if (in_order := self.one_at_a_time) is None:
            await self._process(job)
        else:
            await in_order.acquire()
            try:
                await self._process(job)
            finally:
                in_order.release()
        job.done = True
        _release(job)
        self.channel.let_go(job.number)
        # In request order, only the head of the line unblocks answers.
        if not self.config.ordered or job is self.pending[0]:
            await self._answer_ready()

    async def _process(self, job: _Job) -> None:
        number, frame = job.number, job.frame
        assert frame is not None  # let go only once processed
        timeout = self.timeout
        try:
            if timeout:
                with anyio.fail_after(timeout):
                    result = await self.extension.process(frame)
            else:
                result = await self.extension.process(frame)
            job.inferences = _checked(result, number, self._mended)
        except TimeoutError:
            raise ProtocolError(
                "SRV-4",
                Status.DEADLINE_EXCEEDED,
                f"processing sample {number} took longer than the frame timeout of {timeout} s",
            ) from None
        except InferenceError as error:  # avaproto.media.inferences refused what it made
            hint = _BUILDER_HINTS.get(error.rule, "")
            raise ProtocolError(
                "SRV-3",
                Status.INTERNAL,
                f"the extension failed on sample {number}: {error}{hint}",
            ) from error
        except ProtocolError:
            raise  # the sample's own fault (its shared memory, SHM-15), not the extension's
        except Exception as error:
            # The stream ends with the error's text; its author needs where it came from,
            # once: the other workers' failures meanwhile are the same stream's end.
            if not self.failure_logged:
                self.failure_logged = True
                log.warning(
                    "%s: the extension failed on sample %d",
                    self.runner.peer,
                    number,
                    exc_info=error,
                )
            raise ProtocolError(
                "SRV-3",
                Status.INTERNAL,
                f"the extension failed on sample {number}: {type(error).__name__}: {error}",
            ) from error

    def _mended(self, number: int, detail: str) -> None:
        """An inference of the extension's was mended: one warning per stream."""
        self.mended += 1
        if self.mended == 1:
            log.warning(
                "%s: an inference of the extension's was mended as it went out "
                "(warned once per stream): sample %d: %s",
                self.runner.peer,
                number,
                detail,
            )

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
                        MediaSample(timestamp=job.timestamp, inferences=job.inferences),
                        ack=job.number,
                    )
                    for job in ready
                ]
                await self.channel.send_batch(messages)
                for job in ready:
                    self.slots.release()
                    self.summary.count_answer(job.inferences)
        finally:
            self.sending = False


def _checked(result: object, number: int, mended: Callable[[int, str], None]) -> list[Inference]:
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
            kind = type(inference)
            named = f"{kind.__module__}.{kind.__qualname__}"
            read = from_protoc(inference)
            if read is None:
                raise ProtocolError(
                    "SRV-3",
                    Status.INTERNAL,
                    f"the extension returned a value of type {named} among the inferences "
                    f"of sample {number}; expected avaproto.messages.Inference (made by "
                    "the functions of avaproto.media.inferences)",
                )
            mended(
                number, f"inferences[{index}] was protoc's {named}, read as avaproto's Inference"
            )
            inference = read
        try:
            # A box reaching past the image's left or top (a detector that does not
            # clip) is cut to the image, a confidence below 0 (a tracker's "none") read
            # as none, rather than end the stream (INF-4's and INF-3's field notes).
            inferences[index], detail = validate_or_mend(inference, f"inferences[{index}]")
        except InferenceError as error:
            raise ProtocolError(
                "SRV-3",
                Status.INTERNAL,
                f"the extension returned an invalid inference for sample {number}: {error}",
            ) from None
        if detail:
            mended(number, detail)
    if len(inferences) > _LARGE_ANSWER:
        _check_fits_an_answer(inferences, number)  # type: ignore[arg-type]
    return inferences  # type: ignore[return-value]  # every item checked above


#: Inferences an answer may hold before it is checked against the pipeline's budget of
#: fields (WIRE-2): the heaviest usual ones (entities with a tag, a box and three
#: attributes) fit about 920 to a message.
_LARGE_ANSWER = 800


def _check_fits_an_answer(inferences: list[Inference], number: int) -> None:
    """Refuse (SRV-3) an answer a pipeline would refuse for its fields (WIRE-2), as
    avaproto's own does: the stream ends with the extension's fault named, not with the
    pipeline's refusal, once the answer went out."""
    message = MediaStreamMessage(media_sample=MediaSample(inferences=inferences))
    try:
        decode_message(encode_message(message))
    except RemoteProtocolError as error:
        raise ProtocolError(
            "SRV-3",
            Status.INTERNAL,
            f"the extension's answer to sample {number} ({len(inferences)} inferences) is "
            f"larger than a pipeline takes: {error.detail}",
        ) from None


#: What to do about a refusal of avaproto.media.inferences' functions, by rule.
_BUILDER_HINTS = {
    "INF-4": " (a box is fractions of the frame, in [0, 1]: divide pixels by its width and "
    "height; inferences.rectangle(..., clip=True) cuts a detector's box to the image)",
    "INF-3": " (a confidence is in [0, 1]: a score in percent is divided by 100)",
}


def _release(job: _Job) -> None:
    """The job's frame forgets its bytes, then its lease ends (once)."""
    frame, job.frame = job.frame, None
    if frame is not None:
        frame._let_go()
    lease, job.lease = job.lease, None
    if lease is None:
        return
    try:
        lease.release()
    except ProtocolError as error:
        log.warning("sample %d: %s", job.number, error)
