"""One stream's protocol state, sans I/O: messages in, events and messages out.

``Session`` is the model of the lifecycle machine in ``lifecycle.py``: the table decides
which transitions exist, and the ``check_*`` methods here are the rules its rows name.
Nothing here reads a socket, awaits, or touches pixels: the engine feeds received
messages to ``receive`` and sends what ``send_descriptor`` / ``send_sample`` return, on
any transport, for either role.

Every rule broken raises a ``ProtocolError`` carrying the spec/ rule id and its gRPC
status, and leaves the session ``failed``: a broken peer cannot be half-trusted.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from ..errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ..messages import MediaSample, MediaStreamDescriptor, MediaStreamMessage
from ..status import Status
from .ack_ledger import AckLedger
from .descriptor import StreamDescriptor, check_descriptor
from .events import (
    AckReceived,
    Content,
    DescriptorReceived,
    EmbeddedContent,
    Event,
    ReferencedContent,
    SampleReceived,
    StreamEnded,
    Tolerated,
)
from .lifecycle import (
    AWAITING_DESCRIPTOR,
    CLOSED,
    FAILED,
    Dispatcher,
)
from .roles import Role
from .sequence import IncomingSequence, OutgoingSequence
from .video_format import DEFAULT_LIMITS, FrameLimits, VideoFormat

log = logging.getLogger(__name__)

ProtocolErrorType = type[LocalProtocolError] | type[RemoteProtocolError]


class Session:
    """The protocol state of one ``ProcessMediaStream`` call, for either role."""

    #: The lifecycle state, moved only by ``_fire`` along the table's rows.
    state: str

    def __init__(self, role: Role, *, limits: FrameLimits = DEFAULT_LIMITS) -> None:
        self.role = role
        self.limits = limits
        self.ledger = AckLedger()
        self._outgoing = OutgoingSequence()
        self._incoming = IncomingSequence()
        self.own_descriptor: StreamDescriptor | None = None
        self.peer_descriptor: StreamDescriptor | None = None
        self._own_descriptor_number = 0
        self._peer_descriptor_number = 0
        self._own_closed = False
        self._peer_closed = False
        self.error: ProtocolError | None = None
        #: Deviations of the peer accepted under each rule (see ``Tolerated``).
        self.tolerated: Counter[str] = Counter()
        # The peer's live content references (sequence number -> [start, end)), until we
        # acknowledge them: what a new reference must not overlap (SHM-8).
        self._peer_references: dict[int, tuple[int, int]] = {}
        # Scratch results of the rules, committed only once a whole transition succeeded.
        self._pending_descriptor: StreamDescriptor | None = None
        self._tolerated_ack = 0
        self._unnumbered = False
        self._noted: list[Tolerated] = []
        self.state = AWAITING_DESCRIPTOR

    # --- public API: what the engine calls ------------------------------------------

    def receive(self, message: MediaStreamMessage) -> list[Event]:
        """Apply a message from the peer; return what it means, in order."""
        if message.media_stream_descriptor is not None:
            self._trigger("receive_descriptor", RemoteProtocolError, message)
            described: list[Event] = [self._record_peer_descriptor(message)]
            return [*self._noted, *described] if self._noted else described
        self._trigger("receive_sample", RemoteProtocolError, message)
        events = self._record_peer_sample(message)
        return [*self._noted, *events] if self._noted else events

    def receive_end(self) -> list[Event]:
        """The peer closed its direction: it will send no more messages."""
        self._trigger("receive_end", RemoteProtocolError)
        self._peer_closed = True
        return [StreamEnded()]

    def send_descriptor(self, descriptor: MediaStreamDescriptor) -> MediaStreamMessage:
        """Our descriptor as the next message; the extension's acknowledges the pipeline's."""
        message = MediaStreamMessage(
            sequence_number=self._outgoing.peek(),
            ack_sequence_number=self._peer_descriptor_number,
            media_stream_descriptor=descriptor,
        )
        self._trigger("send_descriptor", LocalProtocolError, message)
        self._outgoing.advance()
        self.own_descriptor = self._pending_descriptor
        self._own_descriptor_number = message.sequence_number
        self.ledger.sent(message.sequence_number, needs_ack=False)
        return message

    def send_sample(self, sample: MediaSample | None, *, ack: int = 0) -> MediaStreamMessage:
        """The next message carrying ``sample`` and, when ``ack`` is not 0, acknowledging it.

        ``sample`` None sends an acknowledgement alone.
        """
        message = MediaStreamMessage(
            sequence_number=self._outgoing.peek(),
            ack_sequence_number=ack,
            media_sample=sample,
        )
        self._trigger("send_sample", LocalProtocolError, message)
        self._outgoing.advance()
        if ack:
            self.ledger.acknowledge(ack)
            if self._peer_references:
                self._peer_references.pop(ack, None)
        needs_ack = sample is not None and (
            self.role.sends_requests or sample.content_reference is not None
        )
        self.ledger.sent(message.sequence_number, needs_ack)
        return message

    def send_end(self) -> None:
        """We close our direction: nothing more will be sent."""
        self._trigger("send_end", LocalProtocolError)
        self._own_closed = True

    def fail(self, error: ProtocolError) -> None:
        """Move to ``failed`` for a reason found outside the session (auth, a processor error)."""
        if self.error is None:
            self.error = error
        self._fire("violation")

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    @property
    def failed(self) -> bool:
        return self.state == FAILED

    @property
    def last_sent(self) -> int:
        return self._outgoing.last

    @property
    def last_received(self) -> int:
        return self._incoming.last

    # --- routing guards (pure; transitions passes them the trigger's message too) ------

    def own_described(self, *_message: object) -> bool:
        return self.own_descriptor is not None

    def peer_described(self, *_message: object) -> bool:
        return self.peer_descriptor is not None

    def own_closed(self, *_message: object) -> bool:
        return self._own_closed

    def peer_closed(self, *_message: object) -> bool:
        return self._peer_closed

    # --- rules (the table's ``before`` callbacks) -------------------------------------

    def check_peer_sequence(self, message: MediaStreamMessage) -> None:
        try:
            self._incoming.check(message.sequence_number)
        except RemoteProtocolError as error:
            # Numbers are what acknowledgements name: a must wherever one depends on
            # them. A message that needs no acknowledgement (an extension's answer of
            # inferences, an acknowledgement alone) names nothing by its number, and
            # widely used extensions leave it at 0 on every answer (SEQ-3, SEQ-4 field).
            # Nor does the extension's descriptor: nothing ever acknowledges it, and a
            # published sample sends it unnumbered (SEQ-4 field). The pipeline's does.
            if message.media_stream_descriptor is not None:
                if self.role.peer.speaks_first or error.rule != "SEQ-4":
                    raise
            elif self._needs_our_ack(message):
                raise
            self._unnumbered = True
            self._tolerate(
                error.rule,
                f"{error.detail}; accepted on a message that needs no acknowledgement",
            )

    def check_peer_descriptor(self, message: MediaStreamMessage) -> None:
        assert message.media_stream_descriptor is not None
        if message.ack_sequence_number not in (0, self._own_descriptor_number):
            raise RemoteProtocolError(
                "DESC-5",
                Status.INVALID_ARGUMENT,
                f"the {self.role.peer.value}'s descriptor acknowledges message "
                f"{message.ack_sequence_number}; it may acknowledge only our descriptor "
                + (
                    f"({self._own_descriptor_number})"
                    if self._own_descriptor_number
                    else "(none sent yet), so 0"
                ),
            )
        # Stash the checked form for _record_peer_descriptor; committed only on success.
        self._pending_descriptor = check_descriptor(
            message.media_stream_descriptor, self.role.peer, self.limits, self._tolerate
        )

    def check_own_descriptor(self, message: MediaStreamMessage) -> None:
        assert message.media_stream_descriptor is not None
        if not self.role.speaks_first and self.peer_descriptor is None:
            raise LocalProtocolError(
                "DESC-5",
                Status.INTERNAL,
                "the extension sends its descriptor in answer to the pipeline's; none "
                "has been received",
            )
        try:
            self._pending_descriptor = check_descriptor(
                message.media_stream_descriptor, self.role, self.limits
            )
        except RemoteProtocolError as error:
            raise LocalProtocolError(error.rule, Status.INTERNAL, error.detail) from None

    def check_peer_speaks_first(self, message: MediaStreamMessage) -> None:
        if not self.role.peer.speaks_first:
            raise RemoteProtocolError(
                "DESC-5",
                Status.FAILED_PRECONDITION,
                "the extension sends its descriptor in answer to the pipeline's; ours was "
                "not sent yet",
            )

    def check_peer_ack(self, message: MediaStreamMessage) -> None:
        # Settles the acknowledgement at once: should a later rule of this message fail,
        # the whole session fails, so a partly applied message is never acted upon.
        number = message.ack_sequence_number
        if number and not self.ledger.peer_acknowledged(number):
            # An acknowledgement of a message that needed none: tolerated (ACK-3).
            self._tolerated_ack = number
            self._tolerate(
                "ACK-3",
                f"message {message.sequence_number} acknowledges our message {number}, "
                "which needed no acknowledgement; ignored",
            )

    def check_peer_answerable(self, message: MediaStreamMessage) -> None:
        if self._own_closed and self._needs_our_ack(message):
            raise RemoteProtocolError(
                "LIFE-4",
                Status.FAILED_PRECONDITION,
                f"the {self.role.peer.value} sent a sample that needs an acknowledgement "
                "after we ended our stream: it could never get one",
            )

    def check_peer_sample(self, message: MediaStreamMessage) -> None:
        self._check_sample(message.media_sample, self.peer_descriptor, RemoteProtocolError)

    def check_own_sample(self, message: MediaStreamMessage) -> None:
        if message.ack_sequence_number and not self.ledger.owes(message.ack_sequence_number):
            raise LocalProtocolError(
                "ACK-1",
                Status.INTERNAL,
                f"cannot acknowledge message {message.ack_sequence_number}: it is not a "
                "received message awaiting an acknowledgement",
            )
        self._check_sample(message.media_sample, self.own_descriptor, LocalProtocolError)
        sample = message.media_sample
        if (
            self._peer_closed
            and sample is not None
            and (self.role.sends_requests or sample.content_reference is not None)
        ):
            raise LocalProtocolError(
                "LIFE-4",
                Status.INTERNAL,
                f"the {self.role.peer.value} ended its stream: a sample that needs an "
                "acknowledgement could never get one",
            )

    def check_own_end(self) -> None:
        if self.ledger.owed_count:
            raise LocalProtocolError(
                "LIFE-2",
                Status.INTERNAL,
                f"cannot end the stream before acknowledging messages {_numbers(self.ledger.owed)}",
            )

    def check_peer_end(self) -> None:
        if self.ledger.awaiting_count:
            raise RemoteProtocolError(
                "LIFE-2",
                Status.FAILED_PRECONDITION,
                f"the {self.role.peer.value} ended its stream without acknowledging our "
                f"messages {_numbers(self.ledger.awaiting)}",
            )

    # --- internals --------------------------------------------------------------------

    def _check_sample(
        self,
        sample: MediaSample | None,
        descriptor: StreamDescriptor | None,
        error: ProtocolErrorType,
    ) -> None:
        if sample is None:
            return  # an acknowledgement alone (ACK-7)
        assert descriptor is not None  # the table admits samples only after descriptors
        status = Status.INTERNAL if error is LocalProtocolError else None
        reference = sample.content_reference
        embedded = sample.content_bytes
        if reference is None and embedded is None:
            return  # inferences only (EMB-3)
        video = descriptor.video_format
        if video is None:
            if error is RemoteProtocolError and embedded is not None and not embedded.bytes:
                # Nothing in it: a sender that sets the field whatever it holds.
                self._tolerate(
                    "DESC-7",
                    "sample carries empty content_bytes, but its sender's descriptor "
                    "announced no media format (inferences only): read as a sample "
                    "without content",
                )
                return
            raise error(
                "DESC-7",
                status or Status.INVALID_ARGUMENT,
                "sample carries content, but its sender's descriptor announced no media "
                "format (inferences only)",
            )
        if reference is not None:
            memory = descriptor.shared_memory
            if memory is None:
                raise error(
                    "SHM-1",
                    status or Status.FAILED_PRECONDITION,
                    "sample refers to shared memory, but its sender's descriptor announced "
                    "no shared_memory_buffer_transfer_properties",
                )
            start = reference.address_offset
            end = start + reference.length_bytes
            if end > memory.length_bytes and not (
                error is RemoteProtocolError
                and overruns_tolerably(start, reference.length_bytes, memory.length_bytes, video)
            ):
                raise error(
                    "SHM-4",
                    status or Status.OUT_OF_RANGE,
                    f"content reference [{start}, {end}) lies outside "
                    f"the shared-memory segment of {memory.length_bytes} bytes",
                )
            length = reference.length_bytes
            if not video.is_raw and length > self.limits.encoded_bytes:
                raise error(
                    "SHM-16",
                    status or Status.RESOURCE_EXHAUSTED,
                    f"content reference of {length} bytes to a {video.encoding.name} sample; "
                    f"the limit is {self.limits.encoded_bytes} bytes "
                    "(--max-message-bytes)",
                )
            if error is RemoteProtocolError:
                self._check_overlap(start, end)
                if end > memory.length_bytes:
                    self._tolerate(
                        "SHM-14",
                        f"content reference [{start}, {end}) runs {end - memory.length_bytes} "
                        f"bytes past the shared-memory segment of {memory.length_bytes} bytes, "
                        f"past the {video} frame at its start, which lies inside and is read",
                    )
                    return
                if video.is_raw and length > video.frame_bytes:
                    # A widely used pipeline's allocator makes every slot after the first
                    # one byte longer than the frame; the frame is at the slot's start
                    # (SHM-14). Embedded content has no such allocator: MEDIA-6 stays.
                    self._tolerate(
                        "SHM-14",
                        f"content reference [{start}, {end}) is {length - video.frame_bytes} "
                        f"bytes longer than a {video} frame; the frame is read from its start",
                    )
                    return
        else:
            assert embedded is not None
            length = len(embedded.bytes)
        if video.is_raw and length != video.frame_bytes:
            if error is RemoteProtocolError and video.shortest_bytes <= length < video.frame_bytes:
                # Copied from the first pixel to the last of a padded image: every
                # pixel is there, only the padding after the last row is not.
                self._tolerate(
                    "MEDIA-6",
                    f"sample content is {length} bytes, {video.frame_bytes - length} short "
                    f"of a {video} frame: the padding after its last row is missing; "
                    "every pixel is there, and is read",
                )
                return
            shortest = video.shortest_bytes
            raise error(
                "MEDIA-6",
                status or Status.INVALID_ARGUMENT,
                f"sample content is {length} bytes; a {video} frame is exactly "
                f"{video.frame_bytes} bytes"
                + (
                    f" ({shortest} without the padding after its last row)"
                    if shortest < video.frame_bytes and error is RemoteProtocolError
                    else ""
                )
                + (
                    " (a content reference may be longer, never shorter)"
                    if reference and error is RemoteProtocolError
                    else ""
                ),
            )

    def _check_overlap(self, start: int, end: int) -> None:
        """Warn when a reference shares bytes with one we have not acknowledged (SHM-8).

        The sender must not reuse memory before its acknowledgement; one that does races
        with its own writes, not with us (we map read-only), so the stream goes on.
        """
        for number, (live_start, live_end) in self._peer_references.items():
            if start < live_end and live_start < end:
                self._tolerate(
                    "SHM-8",
                    f"content reference [{start}, {end}) overlaps [{live_start}, {live_end}) "
                    f"of message {number}, which is not acknowledged yet",
                )
                return

    def _needs_our_ack(self, message: MediaStreamMessage) -> bool:
        sample = message.media_sample
        return sample is not None and (
            self.role.peer.sends_requests or sample.content_reference is not None
        )

    def _tolerate(self, rule: str, detail: str) -> None:
        self.tolerated[rule] += 1
        self._noted.append(Tolerated(rule, detail, first=self.tolerated[rule] == 1))

    def _trigger(self, name: str, error: ProtocolErrorType, *args: Any) -> None:
        if self.state == FAILED:
            raise error(
                "LIFE-3",
                Status.FAILED_PRECONDITION,
                f"the stream already failed: {self.error}",
            )
        self._tolerated_ack = 0
        self._unnumbered = False
        if self._noted:
            self._noted = []
        try:
            if not self._fire(name, *args):
                raise self._refusal(name, error)
        except ProtocolError as violation:
            self.error = violation
            self._fire("violation")
            raise

    def _fire(self, trigger: str, *args: Any) -> bool:
        return _DISPATCH.fire(self, trigger, *args)

    def _refusal(self, trigger: str, error: ProtocolErrorType) -> ProtocolError:
        """Why ``trigger`` has no row from here: the rule that forbids it."""
        status = Status.INTERNAL if error is LocalProtocolError else Status.FAILED_PRECONDITION
        own = trigger.startswith("send_")
        who = "we" if own else f"the {self.role.peer.value}"
        if self.state == CLOSED or (self._own_closed if own else self._peer_closed):
            return error("LIFE-1", status, f"{who} already ended the stream")
        if trigger in ("send_descriptor", "receive_descriptor"):
            return error("DESC-2", status, f"{who} already sent a descriptor")
        if self.state == AWAITING_DESCRIPTOR:
            described = self.own_descriptor if own else self.peer_descriptor
            if described is None and trigger in ("send_sample", "receive_sample"):
                return error("DESC-1", status, f"{who} must send a descriptor as the first message")
            if trigger == "receive_end":
                return error(
                    "DESC-5",
                    status,
                    f"the {self.role.peer.value} ended the stream without answering our descriptor",
                )
            if trigger == "send_end":
                return error(
                    "DESC-5", status, "the extension answers the pipeline's descriptor first"
                )
            return error(
                "DESC-6", status, "samples flow only after both descriptors were exchanged"
            )
        return error("LIFE-1", status, f"{trigger} is not possible in state {self.state}")

    def _record_peer_descriptor(self, message: MediaStreamMessage) -> DescriptorReceived:
        assert message.media_stream_descriptor is not None
        self._incoming.record(message.sequence_number)
        self.peer_descriptor = self._pending_descriptor
        assert self.peer_descriptor is not None
        self._peer_descriptor_number = message.sequence_number
        if message.ack_sequence_number:
            self.ledger.peer_acknowledged(message.ack_sequence_number)
        log.debug("%s descriptor received: %s", self.role.peer.value, self.peer_descriptor)
        return DescriptorReceived(
            message.sequence_number, self.peer_descriptor, message.media_stream_descriptor
        )

    def _record_peer_sample(self, message: MediaStreamMessage) -> list[Event]:
        number = message.sequence_number
        if not self._unnumbered:
            self._incoming.record(number)
        events: list[Event] = []
        if message.ack_sequence_number:
            events.append(
                AckReceived(message.ack_sequence_number, number, self._tolerated_ack == 0)
            )
        sample = message.media_sample
        if sample is None:
            return events
        content: Content | None = None
        video = self.peer_descriptor.video_format if self.peer_descriptor else None
        if sample.content_bytes is not None:
            if video is not None:  # else it is empty (DESC-7's tolerance): no content
                content = EmbeddedContent(sample.content_bytes.bytes)
        elif sample.content_reference is not None:
            ref = sample.content_reference
            length = ref.length_bytes
            if video is not None and video.is_raw:
                # One frame: the start of a longer reference (SHM-14), or all of one
                # without the padding after its last row (MEDIA-6).
                length = min(video.frame_bytes, length)
            content = ReferencedContent(ref.address_offset, length)
            if length:
                self._peer_references[number] = (
                    ref.address_offset,
                    ref.address_offset + ref.length_bytes,
                )
        requires_ack = self.role.peer.sends_requests or isinstance(content, ReferencedContent)
        if requires_ack:
            self.ledger.received(number)
        events.append(
            SampleReceived(
                number, sample.timestamp, content, sample.inferences, requires_ack, sample
            )
        )
        return events


#: How far past its segment a reference to a RAW frame may run, past the frame at its
#: start (SHM-14): less than a page, what slots rounded up to a page, or computed as
#: closed intervals (one byte longer than the frame), make of the last slot.
OVERRUN_BYTES = 4096


def overruns_tolerably(start: int, length: int, segment: int, video: VideoFormat) -> bool:
    """Whether a reference that runs past its segment holds a RAW frame inside it, and
    runs past it by less than ``OVERRUN_BYTES`` (SHM-14)."""
    return (
        video.is_raw
        and start + video.frame_bytes <= segment
        and start + length - segment < OVERRUN_BYTES
    )


def _numbers(numbers: frozenset[int]) -> str:
    listed = sorted(numbers)
    shown = ", ".join(map(str, listed[:10]))
    return shown + (f" and {len(listed) - 10} more" if len(listed) > 10 else "")


_DISPATCH = Dispatcher(Session)
