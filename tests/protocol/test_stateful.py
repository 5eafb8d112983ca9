"""The protocol core against a reference model: both roles, random traffic from both sides.

Two sessions, a pipeline's and an extension's, exchange messages chosen at random: each
party's own calls (descriptors, samples, acknowledgements, end of stream, a failure
found elsewhere), the messages those calls produce delivered to the other party as
sent, tampered with on the way (a number set to 0, repeated, skipped; an
acknowledgement of a message never sent or already acknowledged) or lost, and messages
a broken peer builds by hand (descriptors valid and invalid, content embedded or
referring to shared memory inside and outside the segment).

``Model`` is a small, separate statement of the rules in spec/: for each party, which
numbers it sent and which still await an acknowledgement, what the next number must
exceed, what each descriptor announced, which state the stream is in, and, for every
call, either the events it must yield or the one violation it must raise (its rule,
its status, whose fault). Where the rules overlap, the model checks a message from its
envelope inwards: the state of the stream, then the sequence number, then the
acknowledgement, then the payload.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from avaproto.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from avaproto.messages import (
    ContentBytes,
    ContentReference,
    MediaDescriptor,
    MediaSample,
    MediaStreamDescriptor,
    MediaStreamMessage,
    PixelFormat,
    SharedMemoryBufferTransferProperties,
)
from avaproto.protocol.events import (
    AckReceived,
    DescriptorReceived,
    EmbeddedContent,
    Event,
    ReferencedContent,
    SampleReceived,
    StreamEnded,
    Tolerated,
)
from avaproto.protocol.roles import Role
from avaproto.protocol.session import Session
from avaproto.status import Status
from tests.builders import (
    FRAME_BYTES,
    WIDTH,
    extension_descriptor,
    pipeline_descriptor,
    video_format,
)

PIPELINE, EXTENSION = Role.PIPELINE, Role.EXTENSION
FRAME = FRAME_BYTES  # one RAW RGB24 frame of the builders' format
SEGMENT = 4 * FRAME  # four slots of shared memory
UINT64_MAX = (1 << 64) - 1

INVALID, PRECONDITION, INTERNAL = (
    Status.INVALID_ARGUMENT,
    Status.FAILED_PRECONDITION,
    Status.INTERNAL,
)


# --- what the test sends ----------------------------------------------------------------


@dataclass(frozen=True)
class Announced:
    """What a descriptor tells the receiver about its sender's samples."""

    frame: int | None  # bytes of one RAW frame; None: inferences only
    segment: int | None  # bytes of the shared-memory segment; None: embedded content


@dataclass(frozen=True)
class DescriptorKind:
    name: str
    build: Callable[[], MediaStreamDescriptor]
    #: The rule a sender of each role breaks by sending it (None: valid from that role).
    broken: dict[Role, str | None]
    announced: Announced

    def __repr__(self) -> str:
        return self.name


def _anonymous(**fmt: Any) -> Callable[[], MediaStreamDescriptor]:
    """A descriptor without identifiers (valid from either party, DESC-3 and DESC-4)."""
    return lambda: MediaStreamDescriptor(
        media_descriptor=MediaDescriptor(
            timescale=90000, video_frame_sample_format=video_format(**fmt)
        )
    )


def _with_memory(handle: str, length: int) -> Callable[[], MediaStreamDescriptor]:
    def build() -> MediaStreamDescriptor:
        descriptor = _anonymous()()
        descriptor.shared_memory_buffer_transfer_properties = SharedMemoryBufferTransferProperties(
            handle_name=handle, length_bytes=length
        )
        return descriptor

    return build


def _extension_with_memory() -> MediaStreamDescriptor:
    descriptor = _with_memory("answers", SEGMENT)()
    descriptor.extension_identifier = "test-extension"
    return descriptor


def _both(rule: str | None) -> dict[Role, str | None]:
    return {PIPELINE: rule, EXTENSION: rule}


EMBEDDED_MEDIA = Announced(FRAME, None)
SHARED_MEDIA = Announced(FRAME, SEGMENT)
NO_MEDIA = Announced(None, None)

DESCRIPTORS = [
    DescriptorKind(
        "pipeline, embedded",
        pipeline_descriptor,
        {PIPELINE: None, EXTENSION: "DESC-4"},
        EMBEDDED_MEDIA,
    ),
    DescriptorKind(
        "pipeline, shared memory",
        lambda: pipeline_descriptor(shm=("frames", SEGMENT)),
        {PIPELINE: None, EXTENSION: "DESC-4"},
        SHARED_MEDIA,
    ),
    DescriptorKind(
        "extension, inferences only",
        extension_descriptor,
        {PIPELINE: "DESC-3", EXTENSION: None},
        NO_MEDIA,
    ),
    DescriptorKind(
        "extension, shared memory",
        _extension_with_memory,
        {PIPELINE: "DESC-3", EXTENSION: None},
        SHARED_MEDIA,
    ),
    DescriptorKind("anonymous, embedded", _anonymous(), _both(None), EMBEDDED_MEDIA),
    DescriptorKind("width 0", _anonymous(width=0), _both("MEDIA-3"), EMBEDDED_MEDIA),
    DescriptorKind(
        "pixel format NONE",
        _anonymous(pixel_format=PixelFormat.NONE),
        _both("MEDIA-2"),
        EMBEDDED_MEDIA,
    ),
    DescriptorKind(
        "stride shorter than a row",
        _anonymous(stride=WIDTH * 3 - 1),
        _both("MEDIA-4"),
        EMBEDDED_MEDIA,
    ),
    DescriptorKind("segment of 0 bytes", _with_memory("frames", 0), _both("SHM-2"), SHARED_MEDIA),
    DescriptorKind(
        "handle leaving the directory",
        _with_memory("../frames", SEGMENT),
        _both("SHM-3"),
        SHARED_MEDIA,
    ),
]
BY_NAME = {kind.name: kind for kind in DESCRIPTORS}


@dataclass(frozen=True)
class Embedded:
    size: int


@dataclass(frozen=True)
class Reference:
    offset: int
    length: int


Content = Embedded | Reference


@dataclass(frozen=True)
class Wire:
    """One message as the model sees it; ``message()`` builds the real one."""

    seq: int
    ack: int = 0
    descriptor: DescriptorKind | None = None
    #: False (and no descriptor): an acknowledgement alone (ACK-7).
    sample: bool = False
    content: Content | None = None

    def message(self) -> MediaStreamMessage:
        message = MediaStreamMessage(sequence_number=self.seq, ack_sequence_number=self.ack)
        if self.descriptor is not None:
            message.media_stream_descriptor = self.descriptor.build()
        elif self.sample:
            message.media_sample = media_sample(self.content)
        return message


def media_sample(content: Content | None) -> MediaSample:
    if isinstance(content, Embedded):
        return MediaSample(content_bytes=ContentBytes(bytes=bytes(content.size)))
    if isinstance(content, Reference):
        return MediaSample(
            content_reference=ContentReference(
                address_offset=content.offset, length_bytes=content.length
            )
        )
    return MediaSample()  # no content: inferences only (EMB-3)


# --- the reference model ----------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """The one violation a call must raise."""

    local: bool  # the caller's own fault (LocalProtocolError) or the peer's
    rule: str
    status: Status


Outcome = Refusal | list[tuple[Any, ...]]


@dataclass
class Model:
    """One party's view of the stream, from the rules alone."""

    role: Role
    own: Announced | None = None
    peer: Announced | None = None
    own_number: int = 0  # our descriptor's sequence number
    peer_number: int = 0
    own_closed: bool = False
    peer_closed: bool = False
    closed_empty: bool = False  # ended before any descriptor (LIFE-4)
    failed: bool = False
    flowing: bool = False  # a sample or acknowledgement has gone either way
    last_sent: int = 0
    needed: set[int] = field(default_factory=set)  # our numbers that needed an ack
    awaiting: set[int] = field(default_factory=set)  # ... and still need it
    last_received: int = 0
    owed: set[int] = field(default_factory=set)  # the peer's numbers we must acknowledge
    acknowledged: set[int] = field(default_factory=set)  # ... and those we did
    live: dict[int, tuple[int, int]] = field(default_factory=dict)  # peer references
    tolerated: Counter[str] = field(default_factory=Counter)

    def copy(self) -> Model:
        return replace(
            self,
            needed=set(self.needed),
            awaiting=set(self.awaiting),
            owed=set(self.owed),
            acknowledged=set(self.acknowledged),
            live=dict(self.live),
            tolerated=Counter(self.tolerated),
        )

    @property
    def state(self) -> str:
        if self.failed:
            return "failed"
        if self.closed_empty:
            return "closed"
        if self.own is None or self.peer is None:
            return "awaiting_descriptor"
        if self.own_closed and self.peer_closed:
            return "closed"
        if self.own_closed or self.peer_closed:
            return "closing"
        return "streaming" if self.flowing else "negotiated"

    # -- verdicts --

    def _refuse(self, local: bool, rule: str, status: Status) -> Refusal:
        if self.state != "closed":  # a stream that closed cleanly stays closed
            self.failed = True
        return Refusal(local, rule, status)

    def _gate(self, local: bool) -> Refusal | None:
        """What refuses any call of this direction before its content is looked at."""
        if self.failed:
            return Refusal(local, "LIFE-3", PRECONDITION)
        if self.closed_empty or (self.own_closed if local else self.peer_closed):
            return self._refuse(local, "LIFE-1", INTERNAL if local else PRECONDITION)
        return None

    def _tolerate(self, rule: str, events: list[tuple[Any, ...]]) -> None:
        self.tolerated[rule] += 1
        events.append(("tolerated", rule, self.tolerated[rule] == 1))

    def _content_fault(
        self, content: Content, sender: Announced, local: bool
    ) -> tuple[str, Status] | None:
        """The rule a sample's content breaks against its sender's descriptor."""
        if sender.frame is None:
            return "DESC-7", INVALID
        if isinstance(content, Reference):
            if sender.segment is None:
                return "SHM-1", PRECONDITION
            if content.offset + content.length > sender.segment:
                return "SHM-4", Status.OUT_OF_RANGE
            if content.length < sender.frame or (local and content.length > sender.frame):
                return "MEDIA-6", INVALID
            return None
        return ("MEDIA-6", INVALID) if content.size != sender.frame else None

    def _needs_ack(self, sender: Role, wire: Wire) -> bool:
        """ACK-1 and ACK-5: the pipeline's samples, and any sample referring to memory."""
        return wire.sample and (sender is PIPELINE or isinstance(wire.content, Reference))

    # -- our calls --

    def send_descriptor(self, kind: DescriptorKind) -> Outcome:
        refusal = self._gate(local=True)
        if refusal is not None:
            return refusal
        if self.own is not None:
            return self._refuse(True, "DESC-2", INTERNAL)
        if self.role is EXTENSION and self.peer is None:
            return self._refuse(True, "DESC-5", INTERNAL)
        if kind.broken[self.role] is not None:
            return self._refuse(True, str(kind.broken[self.role]), INTERNAL)
        self.last_sent += 1
        self.own, self.own_number = kind.announced, self.last_sent
        return [("sent", self.last_sent, self.peer_number)]

    def send_sample(self, wire: Wire) -> Outcome:
        """``wire.seq`` is ignored: the session numbers its messages itself."""
        refusal = self._gate(local=True)
        if refusal is not None:
            return refusal
        if self.own is None:
            return self._refuse(True, "DESC-1", INTERNAL)
        if self.peer is None:
            return self._refuse(True, "DESC-6", INTERNAL)
        if wire.ack and wire.ack not in self.owed:
            return self._refuse(True, "ACK-1", INTERNAL)
        if wire.content is not None:
            fault = self._content_fault(wire.content, self.own, local=True)
            if fault is not None:
                return self._refuse(True, fault[0], INTERNAL)
        needs_ack = self._needs_ack(self.role, wire)
        if needs_ack and self.peer_closed:
            return self._refuse(True, "LIFE-4", INTERNAL)
        self.last_sent += 1
        self.flowing = True
        if wire.ack:
            self.owed.remove(wire.ack)
            self.acknowledged.add(wire.ack)
            self.live.pop(wire.ack, None)
        if needs_ack:
            self.needed.add(self.last_sent)
            self.awaiting.add(self.last_sent)
        return [("sent", self.last_sent, wire.ack)]

    def send_end(self) -> Outcome:
        refusal = self._gate(local=True)
        if refusal is not None:
            return refusal
        if self.own is None:
            if self.peer is not None:
                return self._refuse(True, "DESC-5", INTERNAL)
            self.closed_empty = True
            return []
        if self.owed:
            return self._refuse(True, "LIFE-2", INTERNAL)
        self.own_closed = True
        return []

    def fail(self) -> None:
        if self.state != "closed":
            self.failed = True

    # -- the peer's messages --

    def receive(self, wire: Wire) -> Outcome:
        refusal = self._gate(local=False)
        if refusal is not None:
            return refusal
        if wire.descriptor is not None:
            return self._receive_descriptor(wire, wire.descriptor)
        if self.peer is None:
            return self._refuse(False, "DESC-1", PRECONDITION)
        if self.own is None:
            return self._refuse(False, "DESC-6", PRECONDITION)
        events: list[tuple[Any, ...]] = []
        needs_ack = self._needs_ack(self.role.peer, wire)
        if needs_ack and self.own_closed:
            return self._refuse(False, "LIFE-4", PRECONDITION)
        numbered = wire.seq != 0 and wire.seq > self.last_received
        if not numbered:
            rule = "SEQ-4" if wire.seq == 0 else "SEQ-3"
            if needs_ack:
                return self._refuse(False, rule, INVALID)
            self._tolerate(rule, events)  # SEQ-3, SEQ-4 field: nothing names this message
        needed = False
        if wire.ack:
            if wire.ack in self.awaiting:
                needed = True
            elif not 0 < wire.ack <= self.last_sent:
                return self._refuse(False, "ACK-3", INVALID)
            elif wire.ack in self.needed:
                return self._refuse(False, "ACK-4", INVALID)
            else:  # a message that needed none: tolerated and ignored (ACK-3)
                self._tolerate("ACK-3", events)
        nothing = self.peer.frame is None and wire.content == Embedded(0)
        if nothing:  # empty content where no format was announced: none (DESC-7)
            self._tolerate("DESC-7", events)
        elif wire.content is not None:
            fault = self._content_fault(wire.content, self.peer, local=False)
            if fault is not None:
                return self._refuse(False, *fault)
            if isinstance(wire.content, Reference):
                start, end = wire.content.offset, wire.content.offset + wire.content.length
                if any(start < b and a < end for a, b in self.live.values()):
                    self._tolerate("SHM-8", events)
                assert self.peer.frame is not None
                if wire.content.length > self.peer.frame:
                    self._tolerate("SHM-14", events)
        self.flowing = True
        if numbered:
            self.last_received = wire.seq
        if wire.ack:
            self.awaiting.discard(wire.ack)
            events.append(("ack", wire.ack, wire.seq, needed))
        if wire.sample:
            content: tuple[Any, ...] | None = None
            if isinstance(wire.content, Embedded) and not nothing:
                content = ("embedded", wire.content.size)
            elif isinstance(wire.content, Reference):
                content = ("referenced", wire.content.offset, self.peer.frame)
                self.live[wire.seq] = (
                    wire.content.offset,
                    wire.content.offset + wire.content.length,
                )
            if needs_ack:
                self.owed.add(wire.seq)
            events.append(("sample", wire.seq, content, needs_ack))
        return events

    def _receive_descriptor(self, wire: Wire, kind: DescriptorKind) -> Outcome:
        if self.peer is not None:
            return self._refuse(False, "DESC-2", PRECONDITION)
        if self.role is PIPELINE and self.own is None:
            return self._refuse(False, "DESC-5", PRECONDITION)
        events: list[tuple[Any, ...]] = []
        if wire.seq == 0:
            if self.role is not PIPELINE:
                return self._refuse(False, "SEQ-4", INVALID)
            # The extension's descriptor, which nothing acknowledges (SEQ-4 field).
            self._tolerate("SEQ-4", events)
        elif wire.seq <= self.last_received:
            return self._refuse(False, "SEQ-3", INVALID)
        if wire.ack not in (0, self.own_number):
            return self._refuse(False, "DESC-5", INVALID)
        broken = kind.broken[self.role.peer]
        if broken == "DESC-4":
            self._tolerate(broken, events)  # DESC-4 field: the identifier is ignored
        elif broken is not None:
            return self._refuse(False, broken, INVALID)
        self.last_received = self.peer_number = wire.seq
        self.peer = kind.announced
        return [*events, ("descriptor", wire.seq)]

    def receive_end(self) -> Outcome:
        refusal = self._gate(local=False)
        if refusal is not None:
            return refusal
        if self.peer is None:
            if self.own is not None:
                return self._refuse(False, "DESC-5", PRECONDITION)
            self.closed_empty = True
            return [("ended",)]
        if self.awaiting:
            return self._refuse(False, "LIFE-2", PRECONDITION)
        self.peer_closed = True
        return [("ended",)]


def summary(events: list[Event]) -> list[tuple[Any, ...]]:
    """The session's events in the model's terms."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        if isinstance(event, Tolerated):
            out.append(("tolerated", event.rule, event.first))
        elif isinstance(event, DescriptorReceived):
            out.append(("descriptor", event.sequence_number))
        elif isinstance(event, AckReceived):
            out.append(("ack", event.acknowledged, event.sequence_number, event.needed))
        elif isinstance(event, SampleReceived):
            content: tuple[Any, ...] | None = None
            if isinstance(event.content, EmbeddedContent):
                content = ("embedded", len(event.content.data))
            elif isinstance(event.content, ReferencedContent):
                content = ("referenced", event.content.offset, event.content.length)
            out.append(("sample", event.sequence_number, content, event.requires_ack))
        else:
            assert isinstance(event, StreamEnded)
            out.append(("ended",))
    return out


# --- the machine ------------------------------------------------------------------------

sides = st.sampled_from([PIPELINE, EXTENSION])
#: A party's own kind of descriptor first and most often (the simplest draws come first,
#: and a stream that fails at once explores little); then every kind, for either party.
OWN_KINDS = {
    "its own, embedded": {
        PIPELINE: BY_NAME["pipeline, embedded"],
        EXTENSION: BY_NAME["extension, inferences only"],
    },
    "its own, shared memory": {
        PIPELINE: BY_NAME["pipeline, shared memory"],
        EXTENSION: BY_NAME["extension, shared memory"],
    },
}
descriptor_kinds = st.sampled_from([*OWN_KINDS] * 3 + [kind.name for kind in DESCRIPTORS])


def descriptor_kind(name: str, sender: Role) -> DescriptorKind:
    return OWN_KINDS[name][sender] if name in OWN_KINDS else BY_NAME[name]


PAYLOADS: dict[str, Callable[[int], Content] | None] = {
    "ack alone": None,
    "no content": None,
    "frame": lambda i: Embedded(FRAME),
    "frame one byte short": lambda i: Embedded(FRAME - 1),
    "frame one byte long": lambda i: Embedded(FRAME + 1),
    "empty content": lambda i: Embedded(0),
    "slot": lambda i: Reference(i % 4 * FRAME, FRAME),
    "half a slot on": lambda i: Reference(i % 4 * FRAME + FRAME // 2, FRAME),
    "slot one byte longer": lambda i: Reference(i % 4 * FRAME, FRAME + 1),
    "slot one byte shorter": lambda i: Reference(i % 4 * FRAME, FRAME - 1),
    "past the segment": lambda i: Reference(SEGMENT - FRAME + 1, FRAME),
    "offset near 2^64": lambda i: Reference(UINT64_MAX - 7, 16),
}
payloads = st.sampled_from(
    ["what the descriptor announced"] * 6
    + ["ack alone"] * 2
    + ["no content", "half a slot on", "slot one byte longer"]
    + list(PAYLOADS)
)
#: How a message travels from one session to the other.
tampering = st.sampled_from(
    ["as sent"] * 8
    + ["lost", "number 0", "number repeated", "number skipped", "number 2^64-1"]
    + ["ack never sent", "ack repeated", "ack of a message needing none"]
)
sequence_choices = st.sampled_from(["next"] * 4 + ["skipped", "repeated", "zero", "2^64-1"])
ack_choices = st.sampled_from(["none", "awaited", "awaited", "never sent", "repeated", "needless"])
our_ack_choices = st.sampled_from(
    ["owed"] * 4 + ["none", "never received", "repeated", "descriptor"]
)
indexes = st.integers(min_value=0, max_value=7)
calls = st.sampled_from(["sample"] * 10 + ["descriptor", "end", "end", "failure elsewhere"])
#: What a broken peer sends: mostly samples, sometimes a descriptor, rarely its end.
peer_payloads = st.sampled_from(
    list(PAYLOADS) * 2
    + [f"descriptor: {name}" for name in [*OWN_KINDS, *(kind.name for kind in DESCRIPTORS)]]
    + ["end"] * 4
)


#: The most steps of well-formed traffic before anything goes.
PATIENCE = 20


def _pick(numbers: set[int], index: int, otherwise: int) -> int:
    return sorted(numbers)[index % len(numbers)] if numbers else otherwise


class TwoSessions(RuleBasedStateMachine):
    """Both parties, their calls, the wire between them and a broken peer's messages.

    For its first ``patience`` steps the machine makes only calls the model accepts
    (tolerated deviations included), so that streams reach their later states before
    a violation ends them; after that, anything goes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sessions = {role: Session(role) for role in Role}
        self.models = {role: Model(role) for role in Role}
        self.patience = 0
        #: The error that failed each session, as raised.
        self.errors: dict[Role, ProtocolError] = {}
        #: Acknowledgements each party received of messages that needed one, in order.
        self.acks: dict[Role, list[int]] = {role: [] for role in Role}

    # -- checking one call against the model --

    def verdict(self, role: Role, judge: Callable[[Model], Outcome]) -> Outcome | None:
        """The model's outcome of a call, applied; None: the call is not made.

        Not made, while patience lasts: a violation. Each call weighed uses up one step
        of patience.
        """
        model = self.models[role]
        if self.patience > 0:
            self.patience -= 1
            trial = judge(model.copy())
            if isinstance(trial, Refusal):
                return None
        return judge(model)

    def call(self, role: Role, action: Callable[[], Any], outcome: Outcome) -> Any:
        if isinstance(outcome, Refusal):
            with pytest.raises(ProtocolError) as caught:
                action()
            error = caught.value
            kind = LocalProtocolError if outcome.local else RemoteProtocolError
            assert type(error) is kind, f"{type(error).__name__} {error}, expected {outcome}"
            assert (error.rule, error.status) == (outcome.rule, outcome.status), (
                f"{error!s} ({error.status.name}), expected {outcome}"
            )
            assert str(error).startswith(f"[{outcome.rule}] ")
            if self.models[role].failed and role not in self.errors:
                self.errors[role] = error
            return None
        return action()

    def receive(self, role: Role, wire: Wire) -> None:
        outcome = self.verdict(role, lambda model: model.receive(wire))
        if outcome is None:
            return
        events = self.call(role, lambda: self.sessions[role].receive(wire.message()), outcome)
        if events is not None:
            assert summary(events) == outcome
            for event in events:
                if isinstance(event, AckReceived) and event.needed:
                    self.acks[role].append(event.acknowledged)

    def deliver(self, sender: Role, wire: Wire, how: str, index: int) -> None:
        """``wire`` as the sender's session sent it, to the other party, maybe altered."""
        receiver = self.models[sender.peer]
        if self.patience > 0 or how == "as sent":
            pass
        elif how == "lost":
            return
        elif how == "number 0":
            wire = replace(wire, seq=0)
        elif how == "number repeated":
            wire = replace(wire, seq=receiver.last_received)
        elif how == "number skipped":
            wire = replace(wire, seq=min(wire.seq + 3, UINT64_MAX))
        elif how == "number 2^64-1":
            wire = replace(wire, seq=UINT64_MAX)
        elif how == "ack never sent":
            wire = replace(wire, ack=receiver.last_sent + 1 + index)
        elif how == "ack repeated":
            wire = replace(wire, ack=_pick(receiver.needed - receiver.awaiting, index, wire.ack))
        else:
            assert how == "ack of a message needing none"
            free = set(range(1, receiver.last_sent + 1)) - receiver.needed
            wire = replace(wire, ack=_pick(free, index, wire.ack))
        self.receive(sender.peer, wire)

    # -- the opening --

    @initialize(
        opening=st.sampled_from(
            [
                "embedded",
                "pipeline's shared memory",
                "shared memory both ways",
                "descriptors of any kind",
                "a broken peer's descriptors",
                "nothing yet",
            ]
        ),
        first=descriptor_kinds,
        answer=descriptor_kinds,
        how=tampering,
        impatience=st.integers(min_value=0, max_value=PATIENCE),
    )
    def open(self, opening: str, first: str, answer: str, how: str, impatience: int) -> None:
        """Descriptors exchanged as the opening says, then ``PATIENCE - impatience`` steps."""
        if opening == "descriptors of any kind":
            self.send_descriptor(PIPELINE, descriptor_kind(first, PIPELINE), how, 0)
            self.send_descriptor(EXTENSION, descriptor_kind(answer, EXTENSION), "as sent", 0)
        elif opening == "a broken peer's descriptors":
            # Each session sends its own; each party receives one of any kind instead.
            self.sessions[PIPELINE].send_descriptor(pipeline_descriptor())
            self.models[PIPELINE].send_descriptor(BY_NAME["pipeline, embedded"])
            self.receive(EXTENSION, Wire(1, 0, descriptor=descriptor_kind(first, PIPELINE)))
            self.peer_builds(PIPELINE, descriptor_kind(answer, EXTENSION), "next", "none", 0)
        elif opening != "nothing yet":
            ours, theirs = {
                "embedded": ("pipeline, embedded", "extension, inferences only"),
                "pipeline's shared memory": (
                    "pipeline, shared memory",
                    "extension, inferences only",
                ),
                "shared memory both ways": ("pipeline, shared memory", "extension, shared memory"),
            }[opening]
            self.send_descriptor(PIPELINE, BY_NAME[ours], "as sent", 0)
            self.send_descriptor(EXTENSION, BY_NAME[theirs], "as sent", 0)
            assert {m.state for m in self.models.values()} == {"negotiated"}
        self.patience = PATIENCE - impatience

    # -- the steps --

    def live(self) -> bool:
        return any(m.state not in ("failed", "closed") for m in self.models.values())

    @precondition(live)
    @rule(
        role=sides,
        call=calls,
        kind=descriptor_kinds,
        payload=payloads,
        ack=our_ack_choices,
        how=tampering,
        index=indexes,
    )
    def party_calls(
        self,
        role: Role,
        call: str,
        kind: str,
        payload: str,
        ack: str,
        how: str,
        index: int,
    ) -> None:
        """One call of a party's own; what it sends reaches the other party, or not."""
        if call == "descriptor":
            self.send_descriptor(role, descriptor_kind(kind, role), how, index)
        elif call == "sample":
            self.send_sample(role, payload, ack, how, index)
        elif call == "end":
            self.send_end(role, delivered=how != "lost")
        else:
            self.fails_elsewhere(role)

    @precondition(live)
    @rule(
        role=sides,
        payload=peer_payloads,
        number=sequence_choices,
        ack=ack_choices,
        index=indexes,
    )
    def peer_sends(self, role: Role, payload: str, number: str, ack: str, index: int) -> None:
        """What a broken peer sends ``role``, which its own session did not make."""
        if payload == "end":
            self.end_arrives(role)
        elif payload.startswith("descriptor: "):
            kind = descriptor_kind(payload.removeprefix("descriptor: "), role.peer)
            self.peer_builds(role, kind, number, ack, index)
        else:
            self.peer_builds(role, payload, number, ack, index)

    @precondition(lambda self: not self.live())
    @rule()
    def nothing_more(self) -> None:
        """Both parties are done: their calls and their peers' messages are all refused."""
        for role in Role:
            self.send_sample(role, "what the descriptor announced", "none", "as sent", 0)
            self.peer_builds(role, "frame", "next", "none", 0)

    # -- each party's own calls --

    def send_descriptor(self, role: Role, kind: DescriptorKind, how: str, index: int) -> None:
        outcome = self.verdict(role, lambda model: model.send_descriptor(kind))
        if outcome is None:
            return
        message = self.call(
            role, lambda: self.sessions[role].send_descriptor(kind.build()), outcome
        )
        if message is None:
            return
        [(_, number, ack)] = outcome
        wire = Wire(number, ack, descriptor=kind)
        assert message == wire.message()
        self.deliver(role, wire, how, index)

    def send_sample(self, role: Role, payload: str, ack: str, how: str, index: int) -> None:
        model = self.models[role]
        number = {
            "none": 0,
            "owed": _pick(model.owed, index, 0),
            "never received": model.last_received + 1 + index,
            "repeated": _pick(model.acknowledged, index, 0),
            "descriptor": model.peer_number,
        }[ack]
        wire = Wire(
            0, number, sample=payload != "ack alone", content=self.content(role, payload, index)
        )
        outcome = self.verdict(role, lambda model: model.send_sample(wire))
        if outcome is None:
            return
        sample = media_sample(wire.content) if wire.sample else None
        message = self.call(
            role, lambda: self.sessions[role].send_sample(sample, ack=number), outcome
        )
        if message is None:
            return
        [(_, sent, _)] = outcome
        wire = replace(wire, seq=sent)
        assert message == wire.message()
        self.deliver(role, wire, how, index)

    def content(self, role: Role, payload: str, index: int) -> Content | None:
        if payload == "what the descriptor announced":
            own = self.models[role].own
            if own is None or own.frame is None:
                return None
            return Reference(index % 4 * FRAME, FRAME) if own.segment else Embedded(FRAME)
        make = PAYLOADS[payload]
        return make(index) if make else None

    def send_end(self, role: Role, delivered: bool) -> None:
        outcome = self.verdict(role, Model.send_end)
        if outcome is None:
            return
        self.call(role, self.sessions[role].send_end, outcome)
        if (delivered or self.patience > 0) and not isinstance(outcome, Refusal):
            self.end_arrives(role.peer)

    def fails_elsewhere(self, role: Role) -> None:
        """A failure found outside the core (a processor's error, a lost connection)."""
        if self.patience > 0:
            return
        self.models[role].fail()
        error = ProtocolError("SRV-3", INTERNAL, "the processor raised")
        self.sessions[role].fail(error)
        if self.models[role].failed:
            self.errors.setdefault(role, error)

    # -- what a broken peer sends --

    def end_arrives(self, role: Role) -> None:
        """The peer's end of its direction, whether or not its session ended it."""
        outcome = self.verdict(role, Model.receive_end)
        if outcome is None:
            return
        events = self.call(role, self.sessions[role].receive_end, outcome)
        if events is not None:
            assert summary(events) == outcome

    def peer_builds(
        self, role: Role, payload: DescriptorKind | str, number: str, ack: str, index: int
    ) -> None:
        model = self.models[role]
        seq = {
            "next": min(model.last_received + 1, UINT64_MAX),  # a uint64 on the wire
            "skipped": min(model.last_received + 2 + index, UINT64_MAX),
            "repeated": model.last_received,
            "zero": 0,
            "2^64-1": UINT64_MAX,
        }[number]
        acknowledged = {
            "none": 0,
            "awaited": _pick(model.awaiting, index, 0),
            "never sent": model.last_sent + 1 + index,
            "repeated": _pick(model.needed - model.awaiting, index, 0),
            "needless": _pick(set(range(1, model.last_sent + 1)) - model.needed, index, 0),
        }[ack]
        if isinstance(payload, DescriptorKind):
            wire = Wire(seq, acknowledged, descriptor=payload)
        else:
            wire = Wire(
                seq,
                acknowledged,
                sample=payload != "ack alone",
                content=self.content(role.peer, payload, index),
            )
        self.receive(role, wire)

    # -- invariants --

    @invariant()
    def states_agree(self) -> None:
        for role, session in self.sessions.items():
            model = self.models[role]
            assert session.state == model.state, role
            if model.failed:
                # After the first failure every call is refused (LIFE-3); the error kept is
                # the one raised.
                assert session.failed and session.error is self.errors[role]
                continue
            assert session.ledger.awaiting == model.awaiting, role
            assert session.ledger.owed == model.owed, role
            assert (session.last_sent, session.last_received) == (
                model.last_sent,
                model.last_received,
            )
            assert session.tolerated == model.tolerated, role

    @invariant()
    def acknowledged_exactly_once(self) -> None:
        for role, model in self.models.items():
            acks = self.acks[role]
            assert len(acks) == len(set(acks)), f"{role}: acknowledged twice in {acks}"
            assert set(acks) <= model.needed
            if model.state == "closed":
                # A clean close: every message that needed an acknowledgement got one.
                assert set(acks) == model.needed
                assert self.sessions[role].ledger.settled


@pytest.mark.rule(
    "DESC-1",
    "DESC-2",
    "DESC-3",
    "DESC-4",
    "DESC-5",
    "DESC-6",
    "DESC-7",
    "SEQ-3",
    "SEQ-4",
    "ACK-1",
    "ACK-2",
    "ACK-3",
    "ACK-4",
    "ACK-5",
    "ACK-6",
    "ACK-7",
    "ACK-8",
    "EMB-3",
    "SHM-1",
    "SHM-2",
    "SHM-3",
    "SHM-4",
    "SHM-8",
    "SHM-14",
    "MEDIA-2",
    "MEDIA-3",
    "MEDIA-4",
    "MEDIA-6",
    "LIFE-1",
    "LIFE-2",
    "LIFE-3",
    "LIFE-4",
)
class TestTwoSessions(TwoSessions.TestCase):  # type: ignore[name-defined,misc]
    """Deterministic: the same 800 runs of 25 steps every time (about 10 s)."""

    settings = settings(
        max_examples=800,
        stateful_step_count=25,
        deadline=None,
        derandomize=True,
        database=None,
    )


# --- what the model refuses and the session does not, yet ---------------------------------


class TestEdgesTheMachineFound:
    """Inputs the machine above found accepted once; each breaks a rule, each is refused."""

    @pytest.mark.rule("DESC-2")
    def test_our_second_descriptor_before_the_answer(self) -> None:
        pipeline = Session(PIPELINE)
        pipeline.send_descriptor(pipeline_descriptor())
        with pytest.raises(LocalProtocolError, match=r"^\[DESC-2\]"):
            pipeline.send_descriptor(pipeline_descriptor())

    @pytest.mark.rule("DESC-2")
    def test_the_peers_second_descriptor_before_our_answer(self) -> None:
        extension = Session(EXTENSION)
        extension.receive(Wire(1, descriptor=BY_NAME["pipeline, embedded"]).message())
        with pytest.raises(RemoteProtocolError, match=r"^\[DESC-2\]"):
            extension.receive(Wire(2, descriptor=BY_NAME["pipeline, embedded"]).message())

    @pytest.mark.rule("LIFE-1")
    def test_a_descriptor_after_the_peers_end(self) -> None:
        extension = Session(EXTENSION)
        extension.receive(Wire(1, descriptor=BY_NAME["pipeline, embedded"]).message())
        extension.receive_end()
        with pytest.raises(RemoteProtocolError, match=r"^\[LIFE-1\]"):
            extension.receive(Wire(2, descriptor=BY_NAME["pipeline, embedded"]).message())

    @pytest.mark.rule("DESC-5")
    def test_the_extensions_descriptor_before_the_pipelines(self) -> None:
        pipeline = Session(PIPELINE)
        answer = Wire(1, descriptor=BY_NAME["extension, inferences only"]).message()
        with pytest.raises(RemoteProtocolError, match=r"^\[DESC-5\]"):
            pipeline.receive(answer)

    @pytest.mark.rule("LIFE-4")
    def test_a_request_after_the_extensions_end(self) -> None:
        """Accepted, it can never be acknowledged: the stream then closes unsettled."""
        pipeline, extension = Session(PIPELINE), Session(EXTENSION)
        extension.receive(pipeline.send_descriptor(pipeline_descriptor()))
        pipeline.receive(extension.send_descriptor(extension_descriptor()))
        extension.send_end()
        pipeline.receive_end()
        with pytest.raises(LocalProtocolError, match=r"^\[LIFE-4\]"):
            pipeline.send_sample(media_sample(Embedded(FRAME)))

    @pytest.mark.rule("LIFE-4")
    def test_a_request_received_after_our_end(self) -> None:
        pipeline, extension = Session(PIPELINE), Session(EXTENSION)
        extension.receive(pipeline.send_descriptor(pipeline_descriptor()))
        pipeline.receive(extension.send_descriptor(extension_descriptor()))
        extension.send_end()
        with pytest.raises(RemoteProtocolError, match=r"^\[LIFE-4\]"):
            extension.receive(pipeline.send_sample(media_sample(Embedded(FRAME))))
