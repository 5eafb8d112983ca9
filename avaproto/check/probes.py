"""The probes of ``avaproto check``: each drives the extension through one behaviour.

A probe opens its own connection (so that nothing one probe does to a connection can
spoil the next), sends what a pipeline would, or exactly the violation it is about, and
returns findings on the rules it checks. Three kinds:

* healthy streams, in both transfer modes and several pixel formats: driven by the
  pipeline's own ``Session``, which checks the extension's side of every rule (its
  descriptor first, its numbering, each sample acknowledged once, a clean end) and
  records what it tolerates under a ``field`` note;
* violations the extension must refuse, each with the status its rule names;
* deviations the spec says an extension accepts (numbering that starts elsewhere,
  ``"{}"`` as configuration, references a byte longer than the frame), and streams that
  end abruptly.

Every probe runs under a deadline (``CheckOptions.timeout``): an extension that hangs
is a FAIL naming the wait, never a hung check.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import anyio
import grpclib.client
import grpclib.const
import grpclib.exceptions
import numpy as np
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._generated.grpc.health.v1 import HealthCheckRequest, HealthCheckResponse
from .._generated.grpc.health.v1 import HealthCheckResponseServingStatus as ServingStatus
from ..engine.drive import HELD_ANSWER_WAIT
from ..engine.outcome import protocol_errors
from ..errors import InferenceError, ProtocolError, StreamFailed, bounded
from ..media.images import ENCODED, synthetic_image
from ..media.inferences import box_overflows, mended_by_rule
from ..media.shared_memory import SharedMemoryArena
from ..messages import (
    METHOD_PATH,
    ContentBytes,
    ContentReference,
    Dimensions,
    Encoding,
    GraphIdentifier,
    Inference,
    MediaDescriptor,
    MediaSample,
    MediaStreamDescriptor,
    MediaStreamMessage,
    PixelFormat,
    SharedMemoryBufferTransferProperties,
    VideoFrameSampleFormat,
)
from ..protocol.auth import AUTH_HEADER, Credentials
from ..protocol.events import AckReceived, DescriptorReceived, SampleReceived
from ..protocol.roles import Role
from ..protocol.sequence import UINT64_MAX
from ..protocol.session import Session
from ..protocol.video_format import VideoFormat
from ..status import Status
from ..transport._grpclib_private import (
    ended_with_call,
    http2_stream,
    receive_initial_metadata,
    received_headers,
)
from ..transport.compression import check_encoding
from ..transport.framing import read
from .report import Finding, Outcome, deviation
from .rules import PROBED
from .wire import Call, Ending, Target, call, connection, framed, summarize

#: Frames of this size: small, even (YUV420P), quick over any link.
FRAME_SIZE = (64, 48)
#: Frames per healthy stream, all sent before the first acknowledgement is awaited.
FRAMES = 4
TIMESCALE = 90000
STEP = TIMESCALE // 30
#: Pixel formats of the healthy streams, unless told otherwise.
DEFAULT_FORMATS = ("RGB24", "BGR24", "YUV420P")
DEFAULT_TIMEOUT = 5.0
#: A message length no extension accepts: the largest a gRPC prefix can announce.
HUGE = (1 << 32) - 1
#: Fields in the message that WIRE-2 refuses: one more than it allows.
TOO_MANY_FIELDS = 100_001
_NO_SHM = "--no-shm: shared memory is not probed (for a target on another host)"
_NO_CREDENTIALS = (
    "no credentials given: --username and --password (the extension's own) check authentication"
)

Probing = Callable[["Context"], Awaitable[list[Finding]]]


#: The extension_configuration of every probe's descriptor but those about it (CFG-1):
#: ``CheckOptions.configuration``, for the run that ``run_check`` makes.
CONFIGURATION: contextvars.ContextVar[str] = contextvars.ContextVar("configuration", default="")


@dataclass(frozen=True)
class CheckOptions:
    """How to check: what to send, where shared memory lives, how long to wait."""

    formats: tuple[str, ...] = DEFAULT_FORMATS
    #: The frames' width and height, every format's.
    size: tuple[int, int] = FRAME_SIZE
    #: False: leave shared memory out (a target on another host cannot map our segments).
    shm: bool = True
    shm_directory: str = "/dev/shm"
    #: The segments' permissions (SHM-9): 0o640, 0o644 or 0o660 for a target of another user.
    shm_mode: int = 0o600
    #: Seconds each probe may take, connecting included.
    timeout: float = DEFAULT_TIMEOUT
    credentials: Credentials | None = None
    tls: ssl.SSLContext | None = None
    #: The extension_configuration the probes send (an extension that needs one).
    configuration: str = ""


@dataclass
class Context:
    target: Target
    options: CheckOptions
    formats: list[VideoFormat] = field(default_factory=list)
    #: How each healthy stream that failed ended (``StreamFailed``'s text), in order.
    healthy_failures: list[str] = field(default_factory=list)

    @property
    def fmt(self) -> VideoFormat:
        """The format of the probes that need one: the first asked for."""
        return self.formats[0]


@dataclass(frozen=True)
class Probe:
    name: str
    rules: tuple[str, ...]
    run: Probing
    #: What the probe needs to run: "shm", "credentials", "no-credentials", "raw" (a
    #: RAW first format).
    needs: tuple[str, ...] = ()
    #: A healthy stream: what a pipeline sends, no rule broken.
    healthy: bool = False


def video_format(name: str, size: tuple[int, int] = FRAME_SIZE) -> VideoFormat:
    """A pixel format's RAW frames, or an encoding's images, of ``size``."""
    width, height = size
    if name.upper() in ENCODED:
        return VideoFormat.checked(Encoding[name.upper()], PixelFormat.NONE, width, height)
    return VideoFormat.checked(Encoding.RAW, PixelFormat[name.upper()], width, height)


def skip_reason(probe: Probe, options: CheckOptions) -> str | None:
    needs = probe.needs
    if "shm" in needs and not options.shm:
        return _NO_SHM
    if "raw" in needs and options.formats[0].upper() in ENCODED:
        return (
            f"the first of --formats is {options.formats[0].upper()}: the sizes of RAW "
            "frames are probed with RAW frames (put a pixel format first)"
        )
    if "credentials" in needs and options.credentials is None:
        return _NO_CREDENTIALS
    if "no-credentials" in needs and options.credentials is not None:
        return "credentials given: the rule is about an extension configured without them"
    return None


# --- messages ------------------------------------------------------------------------


def frame(fmt: VideoFormat, index: int) -> bytes:
    """A frame of ``fmt``: noise that differs from frame to frame (a motion detector sees
    it), or an encoded test image that does."""
    if not fmt.is_raw:
        return synthetic_image(fmt.width, fmt.height, fmt.encoding, index)
    rng = np.random.default_rng(index)
    return rng.integers(0, 256, fmt.frame_bytes, dtype=np.uint8).tobytes()


def content_bytes(fmt: VideoFormat) -> int:
    """A RAW frame's size; for an encoded one, at most what its image takes (BMP's)."""
    if fmt.is_raw:
        return fmt.frame_bytes
    return (3 * fmt.width + 3) * fmt.height + 1024


def descriptor(
    sample_format: VideoFrameSampleFormat | None,
    *,
    shm: tuple[str, int] | None = None,
    graph: bool = True,
    configuration: str | None = None,
    extension_identifier: str | None = None,
) -> MediaStreamDescriptor:
    """A pipeline's descriptor (a graph identifier unless ``graph`` is False), with the
    check's ``--config`` unless ``configuration`` says otherwise."""
    built = MediaStreamDescriptor(
        extension_configuration=CONFIGURATION.get() if configuration is None else configuration,
        media_descriptor=MediaDescriptor(
            timescale=TIMESCALE, video_frame_sample_format=sample_format
        ),
    )
    if extension_identifier is not None:
        built.extension_identifier = extension_identifier
    elif graph:
        built.graph_identifier = GraphIdentifier(
            graph_instance_name="avaproto-check", graph_node_name="grpcExtension"
        )
    if shm is not None:
        built.shared_memory_buffer_transfer_properties = SharedMemoryBufferTransferProperties(
            handle_name=shm[0], length_bytes=shm[1]
        )
    return built


def opening(
    fmt: VideoFormat | None,
    number: int = 1,
    *,
    shm: tuple[str, int] | None = None,
    graph: bool = True,
    configuration: str | None = None,
    extension_identifier: str | None = None,
) -> MediaStreamMessage:
    """The pipeline's first message: its descriptor for frames of ``fmt``."""
    built = descriptor(
        fmt.to_message() if fmt is not None else None,
        shm=shm,
        graph=graph,
        configuration=configuration,
        extension_identifier=extension_identifier,
    )
    return MediaStreamMessage(sequence_number=number, media_stream_descriptor=built)


def sample(
    number: int,
    content: bytes | None = None,
    *,
    reference: tuple[int, int] | None = None,
    ack: int = 0,
) -> MediaStreamMessage:
    """A sample numbered ``number``: embedded ``content``, a reference, or neither."""
    media = MediaSample(timestamp=(number % TIMESCALE) * STEP)  # inside uint64, always
    if content is not None:
        media.content_bytes = ContentBytes(bytes=content)
    if reference is not None:
        media.content_reference = ContentReference(
            address_offset=reference[0], length_bytes=reference[1]
        )
    return MediaStreamMessage(sequence_number=number, ack_sequence_number=ack, media_sample=media)


def acknowledged(answers: Sequence[MediaStreamMessage]) -> list[int]:
    """The numbers the extension's answers (not its descriptor) acknowledge, in order."""
    return [
        answer.ack_sequence_number
        for answer in answers
        if answer.media_stream_descriptor is None and answer.ack_sequence_number
    ]


@contextlib.contextmanager
def segment(ctx: Context, size: int) -> Iterator[SharedMemoryArena]:
    """A real segment in the shared-memory directory, removed after the probe."""
    arena = SharedMemoryArena.create(
        size, directory=ctx.options.shm_directory, mode=ctx.options.shm_mode
    )
    try:
        yield arena
    finally:
        arena.close()


def segment_bytes(fmt: VideoFormat, frames: int) -> int:
    slot = -(-content_bytes(fmt) // 64) * 64
    return slot * (frames + 1)


# --- exchanges -----------------------------------------------------------------------


@dataclass
class Exchange:
    ending: Ending
    #: False when the stream ended before the messages after the descriptor were sent.
    reached: bool = True


@asynccontextmanager
async def stream(
    ctx: Context, metadata: Sequence[tuple[str, str]] | None = None
) -> AsyncIterator[Call]:
    """A call of its own, on a connection of its own."""
    async with connection(ctx.target) as channel, call(channel, ctx.target, metadata) as opened:
        yield opened


async def exchange(
    ctx: Context,
    first: MediaStreamMessage | bytes,
    rest: Sequence[MediaStreamMessage | bytes] = (),
    *,
    wait: bool = True,
    metadata: Sequence[tuple[str, str]] | None = None,
) -> Exchange:
    """Send ``first``; with ``wait``, await the answer before sending ``rest``; end; read all."""
    async with stream(ctx, metadata) as opened:
        await opened.send(first)
        if wait:
            try:
                answer = await opened.receive()
            except StreamFailed as failed:
                return Exchange(Ending(failed.status, failed.detail, opened.received), False)
            except ProtocolError as error:
                return Exchange(Ending(None, str(error), opened.received), False)
            if answer is None:
                return Exchange(Ending(Status.OK, "", opened.received), False)
        for message in rest:
            await opened.send(message)
        ending = await opened.finish()
        ending.answers = list(opened.received)
        return Exchange(ending)


#: Ends of a stream that are no refusal of what it was sent: none read (malformed
#: answers), the connection lost, a handler that crashed (grpcio's and grpclib's status
#: for an uncaught exception), a cancelled or timed-out call.
_NOT_REFUSALS = (
    None,
    Status.UNAVAILABLE,
    Status.UNKNOWN,
    Status.CANCELLED,
    Status.DEADLINE_EXCEEDED,
)


#: The refusals that guard the extension itself: serving the violation anyway means
#: reading outside what it was given (a handle that leaves the shared-memory
#: directory, a reference past the segment, a symbolic link, a file shorter than
#: announced, a frame of another size), parsing a malformed or oversized message, or a
#: stream without the credentials it was said to require. Every other violation is a
#: rule the text sets for the pipeline, or a bound of avaproto's own, and says nothing
#: of what the extension does with it: serving it is lenient (WARN), as the published
#: samples are.
_GUARDS = frozenset({"SHM-3", "SHM-4", "SHM-5", "SHM-6", "MEDIA-6", "WIRE-1", "SRV-5", "AUTH-3"})


def refusal(rule: str, expected: Status, what: str, done: Exchange) -> Finding:
    """The finding of a violation that avaproto ends the stream for with ``expected``.

    The violations are the pipeline's. Unless the refusal guards the extension itself
    (``_GUARDS``), an extension that serves one anyway is lenient, as the published
    samples are: a WARN, not a FAIL.
    """
    ending = done.ending
    if not done.reached:
        return Finding(
            rule,
            Outcome.SKIP,
            f"{what}: the stream ended before the violation was sent: {ending.describe()}",
        )
    if ending.status is expected:
        return Finding(rule, Outcome.PASS, f"{what}: refused with {expected.name}")
    if ending.ok:
        seen = f"accepted (answered {summarize(ending.answers)}, then ended the stream OK)"
        if rule not in _GUARDS:
            return Finding(
                rule,
                Outcome.WARN,
                f"{what}: {seen}; avaproto refuses it with {expected.name}, but the text "
                "sets this rule for the pipeline (or avaproto its own bound), not what the "
                "extension does when it is broken",
            )
    elif ending.status not in _NOT_REFUSALS:
        # Refused, with another status: the text names no status, and grpcio itself
        # ends a call whose bytes it cannot parse with INTERNAL, before any handler.
        return Finding(
            rule,
            Outcome.WARN,
            f"{what}: refused, with {ending.describe()}; avaproto's status for it is "
            f"{expected.name}",
        )
    else:
        seen = f"ended it with {ending.describe()}"
    return deviation(rule, f"{what}: {seen}; expected {expected.name}")


def acceptance(
    rule: str, what: str, done: Exchange, acks: Sequence[int], *, field: bool = False
) -> Finding:
    """The finding of a stream the extension must serve, acknowledging ``acks``."""
    ending = done.ending
    if ending.ok and acknowledged(ending.answers) == list(acks):
        return Finding(rule, Outcome.PASS, f"{what}: served")
    if ending.ok:
        seen = f"acknowledged {acknowledged(ending.answers) or 'nothing'}, expected {list(acks)}"
    else:
        seen = f"refused: {ending.describe()}"
    found = deviation(rule, f"{what}: {seen}")
    return Finding(found.rule, found.outcome, found.detail, field)


def expect(rule: str, expected: Status, what: str) -> Callable[[Exchange], list[Finding]]:
    return lambda done: [refusal(rule, expected, what, done)]


# --- healthy streams -------------------------------------------------------------------

#: What every healthy stream checks.
HEALTHY = (
    "CONN-1", "CONN-2", "CONN-3", "DESC-1", "DESC-4", "DESC-5", "DESC-7", "SEQ-1",
    "SEQ-3", "SEQ-4", "ACK-1", "ACK-3", "ACK-4", "SRV-2", "LIFE-2", "LIFE-4", "MEDIA-4",
    "INF-1", "INF-3", "INF-4", "AUTH-2", "TLS-1",
)  # fmt: skip


class _Healthy:
    """One stream as a pipeline sends it, every answer checked by the pipeline's session."""

    def __init__(self, ctx: Context, fmt: VideoFormat, arena: SharedMemoryArena | None) -> None:
        self.ctx = ctx
        self.fmt = fmt
        self.arena = arena
        self.what = f"{fmt} {'shared memory' if arena else 'embedded'}"
        self.session = Session(Role.PIPELINE)
        self.numbers: list[int] = []
        self.sent: list[int] = []
        self.acked: list[int] = []
        self.leased: set[int] = set()
        self.inferences: list[Inference] = []
        self.identifier: str | None = None
        self.descriptor_ack = 0
        #: How long no answer came while our direction was open, before it ended with
        #: samples unacknowledged (0: none was).
        self.held = 0.0
        self.acked_after_end: list[int] = []
        self.ended = False  # our direction

    def pipeline_descriptor(self) -> MediaStreamDescriptor:
        shm = (self.arena.handle_name, self.arena.length_bytes) if self.arena else None
        return descriptor(self.fmt.to_message(), shm=shm)

    async def run(self, opened: Call) -> None:
        session = self.session
        await opened.send(session.send_descriptor(self.pipeline_descriptor()))
        first = await opened.receive()
        if first is None:
            session.receive_end()  # raises: the extension ended without answering
            return
        self.numbers.append(first.sequence_number)
        for event in session.receive(first):
            if isinstance(event, DescriptorReceived):
                self.identifier = event.descriptor.extension_identifier
                self.descriptor_ack = first.ack_sequence_number
        for index in range(FRAMES):
            await self._send_frame(opened, frame(self.fmt, index))
        # One task reads the answers, whole, into a stream: the wait for the next may
        # time out (below) without cutting a message that was arriving.
        sending, answers = anyio.create_memory_object_stream[MediaStreamMessage | None](
            len(self.sent) + 1
        )
        with protocol_errors():
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._read, opened, sending)
                await self._answers_while_open(opened, answers)
                session.send_end()
                await opened.end()
                self.ended = True
                open_acked = len(self.acked)
                while (answer := await answers.receive()) is not None:
                    await self._answer(opened, answer)
        session.receive_end()
        self.acked_after_end = self.acked[open_acked:]

    @staticmethod
    async def _read(
        opened: Call, sending: MemoryObjectSendStream[MediaStreamMessage | None]
    ) -> None:
        async with sending:
            while True:
                answer = await opened.receive()
                await sending.send(answer)
                if answer is None:
                    return

    async def _answers_while_open(
        self, opened: Call, answers: MemoryObjectReceiveStream[MediaStreamMessage | None]
    ) -> None:
        """Every acknowledgement, our direction open; or until the answers stop coming
        (``held``: once some came, twice the longest wait between them; before any, or
        at most, half the probe's time): an extension may answer a sample only when the
        next arrives (Intel DL Streamer's does), or hand out what it finished only when
        a request arrives and the rest when our direction ends (Intel VA Serving's first
        server does), and that is no reason to fail every rule this stream shows. Ending
        our direction with samples in flight is what pipelines do at the end of their
        input."""
        last = time.monotonic()
        longest = 0.0  # the longest wait for an answer so far
        most = self.ctx.options.timeout / 2  # the rest of the probe's time is the answers'
        while len(self.acked) < len(self.sent):
            self.held = min(max(HELD_ANSWER_WAIT, 2 * longest), most) if self.acked else most
            with anyio.move_on_after(self.held) as waited:
                answer = await answers.receive()
            if waited.cancelled_caught:
                return  # the rest come, if at all, once our direction ends
            if answer is None:
                self.session.receive_end()  # raises LIFE-2: samples left unacknowledged
                raise AssertionError("receive_end returned with samples unacknowledged")
            now = time.monotonic()
            longest, last = max(longest, now - last), now
            await self._answer(opened, answer)
        self.held = 0.0

    async def _send_frame(self, opened: Call, content: bytes | None) -> None:
        media = MediaSample(timestamp=len(self.sent) * STEP)
        lease = None
        if content is not None and self.arena is not None:
            lease = self.arena.try_allocate(len(content))
            assert lease is not None  # the segment holds every frame of the stream
            lease.write(content)
            media.content_reference = ContentReference(
                address_offset=lease.offset, length_bytes=len(content)
            )
        elif content is not None:
            media.content_bytes = ContentBytes(bytes=content)
        message = self.session.send_sample(media)
        if lease is not None:
            lease.mark_sent(message.sequence_number)
            self.leased.add(message.sequence_number)
        self.sent.append(message.sequence_number)
        await opened.send(message)

    async def _answer(self, opened: Call, answer: MediaStreamMessage) -> None:
        self.numbers.append(answer.sequence_number)
        for event in self.session.receive(answer):
            if isinstance(event, AckReceived) and event.needed:
                self.acked.append(event.acknowledged)
                if event.acknowledged in self.leased:
                    assert self.arena is not None
                    self.leased.discard(event.acknowledged)
                    self.arena.ack(event.acknowledged)  # the slot is free again
            elif isinstance(event, SampleReceived):
                self.inferences.extend(event.inferences)
                if event.requires_ack:  # the extension's own shared memory: not read here
                    await opened.send(self.session.send_sample(None, ack=event.sequence_number))

    def findings(self) -> list[Finding]:
        """Once the stream closed cleanly: what it showed of each rule."""
        what = self.what
        found = [
            Finding("CONN-1", Outcome.PASS, f"{what}: ProcessMediaStream is served"),
            Finding("CONN-2", Outcome.PASS, f"at {METHOD_PATH}"),
            Finding("CONN-3", Outcome.PASS, f"{what}: answered while our direction was open"),
            Finding("DESC-1", Outcome.PASS, f"{what}: its first message is its descriptor"),
            Finding(
                "DESC-5",
                Outcome.PASS,
                f"{what}: its descriptor acknowledges "
                + ("ours" if self.descriptor_ack else "nothing (0)"),
            ),
            Finding("DESC-7", Outcome.PASS, f"{what}: its answers match its descriptor"),
            self._acknowledged(),
            Finding("ACK-3", Outcome.PASS, f"{what}: it acknowledged only samples we sent"),
            Finding("ACK-4", Outcome.PASS, f"{what}: no sample acknowledged twice"),
            Finding("LIFE-2", Outcome.PASS, f"{what}: it ended after acknowledging everything"),
            Finding("LIFE-4", Outcome.PASS, f"{what}: the stream closed cleanly (OK)"),
            Finding("MEDIA-4", Outcome.PASS, f"{what}: stride_bytes 0 (packed rows) accepted"),
        ]
        if self.identifier:
            found.append(Finding("DESC-4", Outcome.PASS, f"it names itself {self.identifier!r}"))
        else:
            found.append(
                Finding("DESC-4", Outcome.WARN, "its descriptor has no extension_identifier", True)
            )
        if self.acked == self.sent:
            found.append(Finding("SRV-2", Outcome.PASS, f"{what}: answers in request order"))
        else:
            found.append(deviation("SRV-2", f"{what}: acknowledged {self.acked} in that order"))
        expected = list(range(1, len(self.numbers) + 1))
        if self.numbers == expected:
            found.append(Finding("SEQ-1", Outcome.PASS, f"{what}: numbered 1 to {len(expected)}"))
        else:
            found.append(deviation("SEQ-1", f"{what}: numbered {_listed(self.numbers)}"))
        tolerated = self.session.tolerated
        for rule, how in (("SEQ-3", "numbered without increasing"), ("SEQ-4", "numbered 0")):
            if tolerated.get(rule):
                found.append(
                    Finding(
                        rule,
                        Outcome.WARN,
                        f"{what}: {tolerated[rule]} answers {how}, accepted as they need no "
                        "acknowledgement",
                        True,
                    )
                )
            else:
                found.append(Finding(rule, Outcome.PASS, f"{what}: its numbers increase"))
        if self.arena is not None:
            found += [
                Finding("SHM-1", Outcome.PASS, f"{what}: frames read from our segment"),
                Finding("ACK-5", Outcome.PASS, f"{what}: every referring sample acknowledged"),
            ]
        return found + self._inference_findings() + self._connection_findings()

    def _acknowledged(self) -> Finding:
        what = self.what
        if not self.acked_after_end:
            return Finding(
                "ACK-1", Outcome.PASS, f"{what}: {len(self.sent)} samples, each acknowledged"
            )
        return Finding(
            "ACK-1",
            Outcome.WARN,
            f"{what}: {len(self.sent)} samples, each acknowledged, but "
            f"{_listed(self.acked_after_end)} only after our direction ended, with no answer "
            f"for {self.held:.3g} s before: a pipeline that waits for that answer before "
            "sending again stalls (avaproto send sends one more, PIPE-2)",
            True,
        )

    def unanswered(self, waited: float) -> list[Finding]:
        """The stream outlived the probe's time: what it showed before, and which samples
        no answer acknowledged (an extension that drops frames it fails on), rather than
        a failure of every rule a healthy stream shows."""
        what = self.what
        missing = [number for number in self.sent if number not in self.acked]
        if missing:
            ended = ", our direction ended" if self.ended else ""
            detail = (
                f"{what}: {len(self.sent)} samples, {_listed(missing)} never acknowledged "
                f"(waited {waited:.3g} s{ended})"
            )
        else:
            detail = f"{what}: every sample acknowledged, but the stream never ended"
        return [*self.served(), deviation("ACK-1" if missing else "LIFE-2", detail)]

    def served(self) -> list[Finding]:
        """What any stream the extension answered shows, whatever came after."""
        if not self.numbers:
            return []
        return [
            Finding("CONN-1", Outcome.PASS, f"{self.what}: ProcessMediaStream is served"),
            Finding("CONN-2", Outcome.PASS, f"at {METHOD_PATH}"),
        ]

    def _inference_findings(self) -> list[Finding]:
        if not self.inferences:
            reason = "the extension returned no inferences to check"
            return [Finding(rule, Outcome.SKIP, reason) for rule in ("INF-1", "INF-3", "INF-4")]
        found = []
        for index, inference in enumerate(self.inferences):
            where = f"{self.what}: answer inference {index}"
            try:
                inference, mended = mended_by_rule(inference, where)
            except InferenceError as error:
                found.append(deviation(error.rule, error.detail))
            else:  # what real detectors send, which avaproto's pipeline and server mend
                for rule, detail in mended.items():
                    found.append(Finding(rule, Outcome.WARN, detail, True))
            overflow = box_overflows(inference, where)
            if overflow:
                found.append(Finding("INF-4", Outcome.WARN, overflow, True))
        checked = f"{self.what}: {len(self.inferences)} inferences well formed"
        return found + [
            Finding(rule, Outcome.PASS, checked) for rule in ("INF-1", "INF-3", "INF-4")
        ]

    def _connection_findings(self) -> list[Finding]:
        options = self.ctx.options
        if options.credentials is None:
            auth = Finding("AUTH-2", Outcome.SKIP, _NO_CREDENTIALS)
        else:
            auth = Finding("AUTH-2", Outcome.PASS, f"{self.what}: the credentials given work")
        if options.tls is None:
            tls = Finding("TLS-1", Outcome.SKIP, "plaintext: --tls or --tls-ca checks over TLS")
        else:
            tls = Finding("TLS-1", Outcome.PASS, f"{self.what}: served over TLS")
        return [auth, tls]


def _listed(numbers: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(map(str, numbers[:limit]))
    return shown + (", ..." if len(numbers) > limit else "")


async def healthy(ctx: Context, fmt: VideoFormat, shm: bool) -> list[Finding]:
    arena = (
        SharedMemoryArena.create(
            segment_bytes(fmt, FRAMES + 1),
            directory=ctx.options.shm_directory,
            mode=ctx.options.shm_mode,
        )
        if shm
        else None
    )
    driven = _Healthy(ctx, fmt, arena)
    try:
        # Short of the probe's own deadline, to say what the stream showed before it.
        with anyio.move_on_after(ctx.options.timeout * 0.9) as waited:
            async with stream(ctx) as opened:
                await driven.run(opened)
        if waited.cancelled_caught:
            if not driven.numbers:  # nothing answered: every rule it shows is failed
                raise TimeoutError
            return driven.unanswered(ctx.options.timeout * 0.9)
    except ProtocolError as error:
        # A bound of the pipeline's own (its answers, PIPE-10) is no rule of the
        # extension's: the stream it ended is the one a pipeline sends (LIFE-4).
        if error.rule in PROBED:
            return [deviation(error.rule, f"{driven.what}: {error.detail}"), *driven.served()]
        return [deviation("LIFE-4", f"{driven.what}: {error}"), *driven.served()]
    except StreamFailed as failed:
        return _refused(driven.what, failed, ctx, shm)
    finally:
        if arena is not None:
            arena.close()
    return driven.findings()


def _refused(what: str, failed: StreamFailed, ctx: Context, shm: bool) -> list[Finding]:
    ctx.healthy_failures.append(str(failed))
    seen = f"{what}: a stream as a pipeline sends it ended with {failed}"
    if failed.status is Status.UNAUTHENTICATED and ctx.options.credentials is not None:
        return [deviation("AUTH-2", seen)]
    if failed.status is Status.FAILED_PRECONDITION and shm:
        seen += " (a target on another host cannot map this host's segments: --no-shm)"
    elif failed.status is Status.INVALID_ARGUMENT and "configuration" in failed.detail.lower():
        seen += " (an extension that needs a configuration: give it with --config)"
    elif failed.status is Status.INVALID_ARGUMENT:
        seen += " (an extension that does not take this format: leave it out of --formats)"
    return [deviation("LIFE-4", seen)]


# --- descriptors and numbering -----------------------------------------------------------


async def without_content(ctx: Context) -> list[Finding]:
    """A sample with inferences only, after one with a frame: a stream of its own, so
    that an extension that refuses it fails this rule, not every rule a healthy stream
    shows."""
    done = await exchange(ctx, opening(ctx.fmt), [sample(2, frame(ctx.fmt, 0)), sample(3)])
    return [acceptance("EMB-3", "a sample without content, after one with", done, [2, 3])]


async def sample_first(ctx: Context) -> list[Finding]:
    done = await exchange(ctx, sample(1, frame(ctx.fmt, 0)), wait=False)
    return [refusal("DESC-1", Status.FAILED_PRECONDITION, "a sample as the first message", done)]


async def empty_first(ctx: Context) -> list[Finding]:
    done = await exchange(ctx, MediaStreamMessage(sequence_number=1), wait=False)
    what = "a first message without a payload"
    return [refusal("DESC-1", Status.FAILED_PRECONDITION, what, done)]


async def second_descriptor(ctx: Context) -> list[Finding]:
    done = await exchange(ctx, opening(ctx.fmt), [opening(ctx.fmt, 2)])
    return [refusal("DESC-2", Status.FAILED_PRECONDITION, "a second descriptor", done)]


async def wrong_identifier(ctx: Context) -> list[Finding]:
    message = opening(ctx.fmt, extension_identifier="avaproto-check")
    done = await exchange(ctx, message, wait=False)
    what = "a pipeline descriptor carrying extension_identifier"
    return [refusal("DESC-3", Status.INVALID_ARGUMENT, what, done)]


async def content_without_format(ctx: Context) -> list[Finding]:
    done = await exchange(ctx, opening(None), [sample(2, frame(ctx.fmt, 0))])
    what = "content after a descriptor without a media format"
    return [refusal("DESC-7", Status.INVALID_ARGUMENT, what, done)]


async def numbering_of_our_own(ctx: Context) -> list[Finding]:
    """Numbers from 7, with gaps, and no graph identifier: all of it must be served."""
    ours = [7, 10, 20]
    first = opening(ctx.fmt, ours[0], graph=False)
    done = await exchange(ctx, first, [sample(n, frame(ctx.fmt, n)) for n in ours[1:]])
    what = f"numbers {_listed(ours)} and no graph_identifier"
    found = [
        acceptance("SEQ-5", what, done, ours[1:]),
        acceptance("DESC-3", "a pipeline descriptor without graph_identifier", done, ours[1:]),
    ]
    if done.ending.ok:
        theirs = [answer.sequence_number for answer in done.ending.answers]
        if theirs == ours:
            found.append(
                deviation("SEQ-2", f"it numbered its messages {_listed(theirs)}, as ours were")
            )
        else:
            found.append(
                Finding("SEQ-2", Outcome.PASS, f"its own numbers {_listed(theirs)} to our {what}")
            )
    return found


async def repeated_number(ctx: Context) -> list[Finding]:
    content = frame(ctx.fmt, 0)
    done = await exchange(ctx, opening(ctx.fmt), [sample(2, content), sample(2, content)])
    return [refusal("SEQ-3", Status.INVALID_ARGUMENT, "a repeated sequence number", done)]


async def decreasing_number(ctx: Context) -> list[Finding]:
    content = frame(ctx.fmt, 0)
    done = await exchange(ctx, opening(ctx.fmt), [sample(3, content), sample(2, content)])
    return [refusal("SEQ-3", Status.INVALID_ARGUMENT, "a decreasing sequence number", done)]


async def zero_number(ctx: Context) -> list[Finding]:
    done = await exchange(ctx, opening(ctx.fmt), [sample(0, frame(ctx.fmt, 0))])
    return [refusal("SEQ-4", Status.INVALID_ARGUMENT, "a sample numbered 0", done)]


async def largest_numbers(ctx: Context) -> list[Finding]:
    first = opening(ctx.fmt, UINT64_MAX - 1)
    done = await exchange(ctx, first, [sample(UINT64_MAX, frame(ctx.fmt, 0))])
    return [acceptance("SEQ-6", "numbers 2^64-2 and 2^64-1", done, [UINT64_MAX])]


# --- acknowledgements ----------------------------------------------------------------------


async def ack_never_sent(ctx: Context) -> list[Finding]:
    done = await exchange(
        ctx, opening(ctx.fmt), [MediaStreamMessage(sequence_number=2, ack_sequence_number=999)]
    )
    what = "an acknowledgement of message 999, never sent"
    return [refusal("ACK-3", Status.INVALID_ARGUMENT, what, done)]


async def ack_alone(ctx: Context) -> list[Finding]:
    """An acknowledgement alone, of the extension's descriptor (which needed none)."""
    async with stream(ctx) as opened:
        await opened.send(opening(ctx.fmt))
        try:
            answer = await opened.receive()
        except (StreamFailed, ProtocolError) as error:
            return [Finding("ACK-7", Outcome.SKIP, f"our descriptor was refused: {error}")]
        number = answer.sequence_number if answer is not None else 0
        await opened.send(MediaStreamMessage(sequence_number=2, ack_sequence_number=number))
        await opened.send(sample(3, frame(ctx.fmt, 0)))
        ending = await opened.finish()
        ending.answers = list(opened.received)
    what = f"an acknowledgement alone, of its descriptor ({number})"
    done = Exchange(ending)
    return [
        acceptance("ACK-7", what, done, [3]),
        acceptance("ACK-3", f"{what}, which needed none", done, [3]),
    ]


# --- shared memory --------------------------------------------------------------------------


async def reference_without_shm(ctx: Context) -> list[Finding]:
    reference = (0, content_bytes(ctx.fmt))
    done = await exchange(ctx, opening(ctx.fmt), [sample(2, reference=reference)])
    what = "a content reference after a descriptor without shared memory"
    return [refusal("SHM-1", Status.FAILED_PRECONDITION, what, done)]


async def announced(
    ctx: Context,
    rule: str,
    expected: Status,
    what: str,
    handle: Callable[[SharedMemoryArena], tuple[str, int]],
) -> list[Finding]:
    """A descriptor announcing shared memory as ``handle`` makes of a real segment."""
    with segment(ctx, segment_bytes(ctx.fmt, 1)) as arena:
        done = await exchange(ctx, opening(ctx.fmt, shm=handle(arena)), wait=False)
    return [refusal(rule, expected, what, done)]


async def referring(
    ctx: Context,
    reference: Callable[[SharedMemoryArena], tuple[int, int]],
    check: Callable[[Exchange], list[Finding]],
) -> list[Finding]:
    """A sample referring to ``reference`` of a real segment (of zeros: any RAW frame)."""
    fmt = ctx.fmt
    with segment(ctx, segment_bytes(fmt, 1)) as arena:
        first = opening(fmt, shm=(arena.handle_name, arena.length_bytes))
        done = await exchange(ctx, first, [sample(2, reference=reference(arena))])
    return check(done)


async def symlinked_segment(ctx: Context) -> list[Finding]:
    with segment(ctx, segment_bytes(ctx.fmt, 1)) as arena:
        name = f"avaproto-check-{os.getpid()}-{secrets.token_hex(8)}"
        link = os.path.join(ctx.options.shm_directory, name)
        os.symlink(arena.path, link)
        try:
            first = opening(ctx.fmt, shm=(name, arena.length_bytes))
            done = await exchange(ctx, first, wait=False)
        finally:
            os.unlink(link)
    what = "a handle naming a symbolic link to a segment"
    return [refusal("SHM-5", Status.FAILED_PRECONDITION, what, done)]


def _missing(arena: SharedMemoryArena) -> tuple[str, int]:
    return f"avaproto-check-{os.getpid()}-{secrets.token_hex(8)}", arena.length_bytes


# --- media formats ---------------------------------------------------------------------------


async def described(
    ctx: Context,
    rule: str,
    what: str,
    sample_format: VideoFrameSampleFormat,
    expected: Status | None,
) -> list[Finding]:
    """A descriptor of ``sample_format``: refused with ``expected``, or (None) served."""
    first = MediaStreamMessage(sequence_number=1, media_stream_descriptor=descriptor(sample_format))
    done = await exchange(ctx, first, wait=expected is None)
    if expected is not None:
        return [refusal(rule, expected, what, done)]
    return [acceptance(rule, what, done, [])]


def raw(
    pixel_format: PixelFormat, width: int, height: int, stride: int = 0
) -> VideoFrameSampleFormat:
    return VideoFrameSampleFormat(
        encoding=Encoding.RAW,
        pixel_format=pixel_format,
        dimensions=Dimensions(width=width, height=height),
        stride_bytes=stride,
    )


async def content_size(ctx: Context, difference: int) -> list[Finding]:
    fmt = ctx.fmt
    content = frame(fmt, 0)
    content = content[:difference] if difference < 0 else content + bytes(difference)
    done = await exchange(ctx, opening(fmt), [sample(2, content)])
    what = f"an embedded frame of {len(content)} bytes, where {fmt} needs {fmt.frame_bytes}"
    return [refusal("MEDIA-6", Status.INVALID_ARGUMENT, what, done)]


# --- the wire -----------------------------------------------------------------------------


async def oversized(ctx: Context) -> list[Finding]:
    message = framed(bytes(1024), length=HUGE)
    done = await exchange(ctx, opening(ctx.fmt), [message])
    what = f"a message announcing {HUGE} bytes"
    return [refusal("SRV-5", Status.RESOURCE_EXHAUSTED, what, done)]


async def malformed(ctx: Context) -> list[Finding]:
    done = await exchange(ctx, opening(ctx.fmt), [framed(b"\x08")])  # a varint cut short
    what = "a message that ends inside a varint"
    return [refusal("WIRE-1", Status.INVALID_ARGUMENT, what, done)]


async def too_many_fields(ctx: Context) -> list[Finding]:
    # sequence_number 2, then field 15 (unknown) set to 0, over and over.
    payload = b"\x08\x02" + b"\x78\x00" * TOO_MANY_FIELDS
    done = await exchange(ctx, opening(ctx.fmt), [framed(payload)])
    what = f"a message of {TOO_MANY_FIELDS + 1} fields"
    return [refusal("WIRE-2", Status.RESOURCE_EXHAUSTED, what, done)]


# --- authentication --------------------------------------------------------------------------

_WRONG_PASSWORD = "avaproto-check-not-the-password"


async def authentication(ctx: Context) -> list[Finding]:
    credentials = ctx.options.credentials
    assert credentials is not None
    wrong = Credentials(credentials.username, _WRONG_PASSWORD)
    right = credentials.header_value()
    cases = [
        ("no x-ms-authentication header", []),
        ("a wrong password", list(wrong.metadata())),
        ("a header that is not Basic", [(AUTH_HEADER, "Bearer avaproto-check")]),
        ("the right header twice", [(AUTH_HEADER, right), (AUTH_HEADER, right)]),
    ]
    found = []
    for what, metadata in cases:
        done = await exchange(ctx, opening(ctx.fmt), wait=False, metadata=metadata)
        found.append(refusal("AUTH-3", Status.UNAUTHENTICATED, f"a stream with {what}", done))
        if metadata and metadata[0][1] == wrong.header_value():
            secrets_sent = (_WRONG_PASSWORD, wrong.header_value().split()[1])
            leaked = [text for text in secrets_sent if text in done.ending.detail]
            if done.ending.ok or done.ending.status is None:
                found.append(
                    Finding("AUTH-4", Outcome.SKIP, "it refused no credentials: nothing to read")
                )
            elif leaked:
                found.append(deviation("AUTH-4", "its refusal repeats the credentials it was sent"))
            else:
                found.append(
                    Finding("AUTH-4", Outcome.PASS, "its refusal does not repeat the credentials")
                )
    return found


async def header_ignored(ctx: Context) -> list[Finding]:
    header = Credentials("avaproto-check", "anything").metadata()
    done = await exchange(ctx, opening(ctx.fmt), [sample(2, frame(ctx.fmt, 0))], metadata=header)
    what = "a stream with an x-ms-authentication header it does not need"
    return [acceptance("AUTH-1", what, done, [2])]


# --- configuration, streams, health ----------------------------------------------------------


async def empty_configuration(ctx: Context) -> list[Finding]:
    first = opening(ctx.fmt, configuration="{}")
    done = await exchange(ctx, first, [sample(2, frame(ctx.fmt, 0))])
    return [acceptance("CFG-1", 'extension_configuration "{}"', done, [2], field=True)]


async def vanishing_client(ctx: Context) -> list[Finding]:
    """Two streams on one connection; a third client vanishes; then a new stream."""
    fmt = ctx.fmt
    target = ctx.target
    try:
        async with (
            connection(target) as shared,
            call(shared, target) as first,
            call(shared, target) as second,
        ):
            sessions = (Session(Role.PIPELINE), Session(Role.PIPELINE))
            for session, opened in zip(sessions, (first, second), strict=True):
                await opened.send(session.send_descriptor(descriptor(fmt.to_message())))
            for session, opened in zip(sessions, (first, second), strict=True):
                answer = await opened.receive()
                if answer is None:
                    session.receive_end()
                    return []
                session.receive(answer)
            await _vanish(ctx)
            expected: list[list[int]] = [[], []]
            for count, session, opened, numbers in zip(
                (1, 2), sessions, (first, second), expected, strict=True
            ):
                for index in range(count):
                    message = session.send_sample(
                        MediaSample(
                            timestamp=index, content_bytes=ContentBytes(bytes=frame(fmt, index))
                        )
                    )
                    numbers.append(message.sequence_number)
                    await opened.send(message)
            for session, opened, numbers in zip(sessions, (first, second), expected, strict=True):
                # Our direction ends first: an extension may answer a sample only when
                # the next request, or the end, arrives (ACK-1's field note).
                session.send_end()
                await opened.end()
                seen: list[int] = []
                while (answer := await opened.receive()) is not None:
                    if len(seen) == len(numbers):
                        return [deviation("CONN-3", "an answer after the last acknowledgement")]
                    seen += [
                        event.acknowledged
                        for event in session.receive(answer)
                        if isinstance(event, AckReceived)
                    ]
                session.receive_end()  # LIFE-2 if a sample of this stream went unanswered
    except ProtocolError as error:
        rule = "CONN-3" if error.rule in ("ACK-3", "ACK-4") else error.rule
        return [deviation(rule, f"two streams on one connection: {error.detail}")]
    except StreamFailed as failed:
        return [deviation("SRV-6", f"a stream beside a client that vanished ended with {failed}")]
    done = await exchange(ctx, opening(fmt), [sample(2, frame(fmt, 0))])
    if not done.ending.ok:
        return [
            deviation("SRV-6", f"after a client vanished, a new stream {done.ending.describe()}")
        ]
    return [
        Finding("CONN-3", Outcome.PASS, "two streams on one connection answered independently"),
        Finding(
            "SRV-6",
            Outcome.PASS,
            "a client vanishing mid-stream left the other streams and new ones served",
        ),
    ]


async def _vanish(ctx: Context) -> None:
    """A client that sends a few frames and disappears, without ending its stream."""
    async with connection(ctx.target) as lone, call(lone, ctx.target) as opened:
        await opened.send(opening(ctx.fmt))
        await opened.receive()
        for number in (2, 3):
            await opened.send(sample(number, frame(ctx.fmt, number)))
        lone.close()  # the TCP connection closes under the open stream


#: The longest answer of grpc.health.v1.Health/Check read: its message is a status of a
#: byte or two, and a longer one is no answer of the health service's.
HEALTH_ANSWER_BYTES = 1024
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"


async def health(ctx: Context) -> list[Finding]:
    from grpclib.exceptions import GRPCError

    async with connection(ctx.target) as channel:
        try:
            answer = await _health_check(channel, ctx.target)
        except GRPCError as error:
            if error.status.name == "UNIMPLEMENTED":
                return [Finding("SRV-9", Outcome.SKIP, "no health service (it is optional)")]
            detail = bounded(f"Check answered {error.status.name}: {error.message}")
            return [deviation("SRV-9", detail)]
        except ProtocolError as error:
            return [deviation("SRV-9", f"grpc.health.v1.Health answers {error.detail}")]
        except grpclib.exceptions.StreamTerminatedError as error:
            return [deviation("SRV-9", f"Check ended before its answer: {error}")]
    if answer is None:
        return [deviation("SRV-9", "grpc.health.v1.Health answered no message")]
    raw = answer.status  # betterproto2 keeps what the bytes held, an enum or not
    number = int(raw) if isinstance(raw, int) else None
    status = {member.value: member for member in ServingStatus}.get(number)
    if status is None:
        what = (
            f"status {number}, which grpc.health.v1 does not define"
            if number is not None
            else "a message whose status field is malformed"
        )
        return [deviation("SRV-9", f"grpc.health.v1.Health answers {what}")]
    if status is ServingStatus.SERVING:
        return [Finding("SRV-9", Outcome.PASS, "grpc.health.v1.Health answers SERVING")]
    return [deviation("SRV-9", f"grpc.health.v1.Health answers {status.name} while serving")]


async def _health_check(
    channel: grpclib.client.Channel, target: Target
) -> HealthCheckResponse | None:
    """The answer of grpc.health.v1.Health/Check for the whole server, read as answers
    are: bounded before it is read (``HEALTH_ANSWER_BYTES``) and decoded off grpclib's
    own reader, which takes any length and decodes it on the event loop."""
    stream = channel.request(
        _HEALTH_CHECK,
        grpclib.const.Cardinality.UNARY_UNARY,
        HealthCheckRequest,
        HealthCheckResponse,
        metadata=list(target.metadata) or None,
    )
    async with stream:
        await stream.send_message(HealthCheckRequest(service=""), end=True)
        await receive_initial_metadata(stream)
        named = [
            value for name, value in received_headers(stream)[1] or () if name == "grpc-encoding"
        ]
        with ended_with_call(stream):  # a lost connection or a reset ends the read
            return await read(
                http2_stream(stream),
                HEALTH_ANSWER_BYTES,
                _health_answer,
                limit_rule="PIPE-5",
                encoding=check_encoding(named[-1] if named else None),
            )


async def _health_answer(data: bytes | bytearray | memoryview) -> HealthCheckResponse:
    return HealthCheckResponse.parse(bytes(data))


# --- the list ---------------------------------------------------------------------------------


def probes(ctx: Context) -> list[Probe]:
    """Every probe, in the order they run: healthy streams first, the stream killers last."""
    fmt = ctx.fmt
    frame_bytes = content_bytes(fmt)
    width, height = ctx.options.size
    rgb = PixelFormat.RGB24
    listed: list[Probe] = []
    for each in ctx.formats:
        listed.append(
            Probe(
                f"{each} embedded",
                HEALTHY,
                partial(healthy, fmt=each, shm=False),
                healthy=True,
            )
        )
    for each in ctx.formats:
        listed.append(
            Probe(
                f"{each} shared memory",
                (*HEALTHY, "SHM-1", "ACK-5"),
                partial(healthy, fmt=each, shm=True),
                needs=("shm",),
                healthy=True,
            )
        )
    shm = partial(announced, ctx)
    refer = partial(referring, ctx)
    listed += [
        Probe("sample without content", ("EMB-3",), without_content),
        Probe("sample first", ("DESC-1",), sample_first),
        Probe("empty first message", ("DESC-1",), empty_first),
        Probe("second descriptor", ("DESC-2",), second_descriptor),
        Probe("extension identifier from the pipeline", ("DESC-3",), wrong_identifier),
        Probe("content without a format", ("DESC-7",), content_without_format),
        Probe("numbers of our own", ("SEQ-5", "DESC-3", "SEQ-2"), numbering_of_our_own),
        Probe("repeated number", ("SEQ-3",), repeated_number),
        Probe("decreasing number", ("SEQ-3",), decreasing_number),
        Probe("number 0", ("SEQ-4",), zero_number),
        Probe("largest numbers", ("SEQ-6",), largest_numbers),
        Probe("acknowledgement of nothing sent", ("ACK-3",), ack_never_sent),
        Probe("acknowledgement alone", ("ACK-7", "ACK-3"), ack_alone),
        Probe("reference without shared memory", ("SHM-1",), reference_without_shm),
        Probe(
            "segment of length 0",
            ("SHM-2",),
            lambda _: shm(
                "SHM-2",
                Status.INVALID_ARGUMENT,
                "shared memory of length_bytes 0",
                lambda arena: (arena.handle_name, 0),
            ),
            needs=("shm",),
        ),
        Probe(
            "empty handle",
            ("SHM-2",),
            lambda _: shm(
                "SHM-2",
                Status.INVALID_ARGUMENT,
                "an empty handle_name",
                lambda arena: ("", arena.length_bytes),
            ),
            needs=("shm",),
        ),
        Probe(
            "handle leaving the directory",
            ("SHM-3",),
            lambda _: shm(
                "SHM-3",
                Status.INVALID_ARGUMENT,
                "handle_name '../NAME'",
                lambda arena: (f"../{arena.handle_name}", arena.length_bytes),
            ),
        ),
        Probe(
            "handle with a directory",
            ("SHM-3",),
            lambda _: shm(
                "SHM-3",
                Status.INVALID_ARGUMENT,
                "handle_name 'DIR/NAME'",
                lambda arena: (f"avaproto-check/{arena.handle_name}", arena.length_bytes),
            ),
        ),
        Probe(
            "reference past the segment",
            ("SHM-4",),
            lambda _: refer(
                lambda arena: (arena.length_bytes - frame_bytes + 1, frame_bytes),
                expect("SHM-4", Status.OUT_OF_RANGE, "a reference one byte past the segment"),
            ),
            needs=("shm",),
        ),
        Probe(
            "reference overflowing",
            ("SHM-4",),
            lambda _: refer(
                lambda arena: (UINT64_MAX, frame_bytes),
                expect("SHM-4", Status.OUT_OF_RANGE, "a reference at offset 2^64-1"),
            ),
            needs=("shm",),
        ),
        Probe(
            "missing segment",
            ("SHM-5",),
            lambda _: shm("SHM-5", Status.FAILED_PRECONDITION, "a handle naming no file", _missing),
            needs=("shm",),
        ),
        Probe("symbolic link", ("SHM-5",), symlinked_segment, needs=("shm",)),
        Probe(
            "segment shorter than announced",
            ("SHM-6",),
            lambda _: shm(
                "SHM-6",
                Status.FAILED_PRECONDITION,
                "a segment shorter than its length_bytes",
                lambda arena: (arena.handle_name, arena.length_bytes * 16),
            ),
            needs=("shm",),
        ),
        Probe(
            "reference a byte longer than the frame",
            ("SHM-14",),
            lambda _: refer(
                lambda arena: (0, frame_bytes + 1),
                lambda done: [
                    acceptance(
                        "SHM-14",
                        "a reference one byte longer than the frame",
                        done,
                        [2],
                        field=True,
                    )
                ],
            ),
            needs=("shm", "raw"),
        ),
        Probe(
            "reference shorter than the frame",
            ("MEDIA-6",),
            lambda _: refer(
                lambda arena: (0, frame_bytes - 1),
                expect("MEDIA-6", Status.INVALID_ARGUMENT, "a reference one byte short"),
            ),
            needs=("shm", "raw"),
        ),
        Probe(
            "unknown encoding",
            ("MEDIA-1",),
            lambda _: described(
                ctx,
                "MEDIA-1",
                "encoding 9 (not BMP, JPG, PNG or RAW)",
                VideoFrameSampleFormat(
                    encoding=9,  # type: ignore[arg-type]  # a value the contract lacks
                    pixel_format=rgb,
                    dimensions=Dimensions(width=width, height=height),
                ),
                Status.INVALID_ARGUMENT,
            ),
        ),
        Probe(
            "no pixel format",
            ("MEDIA-2",),
            lambda _: described(
                ctx,
                "MEDIA-2",
                "RAW with pixel_format NONE",
                raw(PixelFormat.NONE, width, height),
                Status.INVALID_ARGUMENT,
            ),
        ),
        Probe(
            "width 0",
            ("MEDIA-3",),
            lambda _: described(
                ctx, "MEDIA-3", "RAW of width 0", raw(rgb, 0, height), Status.INVALID_ARGUMENT
            ),
        ),
        Probe(
            "stride below a row",
            ("MEDIA-4",),
            lambda _: described(
                ctx,
                "MEDIA-4",
                "stride_bytes 1, below one row",
                raw(rgb, width, height, stride=1),
                Status.INVALID_ARGUMENT,
            ),
        ),
        Probe(
            "stride of an encoded format",
            ("MEDIA-5",),
            lambda _: described(
                ctx,
                "MEDIA-5",
                "JPG with stride_bytes 7",
                VideoFrameSampleFormat(
                    encoding=Encoding.JPG,
                    dimensions=Dimensions(width=width, height=height),
                    stride_bytes=7,
                ),
                None,
            ),
        ),
        Probe(
            "frame a byte short",
            ("MEDIA-6",),
            partial(content_size, difference=-1),
            needs=("raw",),
        ),
        Probe(
            "frame a byte long", ("MEDIA-6",), partial(content_size, difference=1), needs=("raw",)
        ),
        Probe('configuration "{}"', ("CFG-1",), empty_configuration),
        Probe("authentication", ("AUTH-3", "AUTH-4"), authentication, needs=("credentials",)),
        Probe("header not needed", ("AUTH-1",), header_ignored, needs=("no-credentials",)),
        Probe("health", ("SRV-9",), health),
        Probe("oversized message", ("SRV-5",), oversized),
        Probe("malformed message", ("WIRE-1",), malformed),
        Probe("too many fields", ("WIRE-2",), too_many_fields),
        Probe("vanishing client", ("SRV-6", "CONN-3"), vanishing_client),
    ]
    return listed
