"""What the session reports after reading a message: small frozen values, like h11's.

A message can yield more than one event (an acknowledgement riding on a sample gives
``AckReceived`` then ``SampleReceived``), always in that order, so that shared memory
acknowledged by a message is freed before the message's own work starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..messages import Inference, MediaSample, MediaStreamDescriptor
from .descriptor import StreamDescriptor


@dataclass(frozen=True, slots=True)
class DescriptorReceived:
    """The peer's descriptor, checked (DESC rules)."""

    sequence_number: int
    descriptor: StreamDescriptor
    message: MediaStreamDescriptor


@dataclass(frozen=True, slots=True)
class EmbeddedContent:
    """A sample's bytes, carried in the message (EMB-1)."""

    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class ReferencedContent:
    """A sample's bytes, in the peer's shared-memory segment (SHM-4: already bounds-checked)."""

    offset: int
    length: int


Content = EmbeddedContent | ReferencedContent


@dataclass(frozen=True, slots=True)
class SampleReceived:
    """A sample: content (or none, EMB-3), its timestamp and upstream inferences.

    ``requires_ack`` says whether the session expects us to acknowledge it (ACK-1,
    ACK-5); if so, exactly one later message of ours must carry
    ``ack_sequence_number = sequence_number``.
    """

    sequence_number: int
    timestamp: int
    content: Content | None
    inferences: list[Inference]
    requires_ack: bool
    message: MediaSample


@dataclass(frozen=True, slots=True)
class AckReceived:
    """The peer acknowledged our message ``acknowledged`` (in its message ``sequence_number``).

    ``needed`` is False for an acknowledgement of a message that needed none (tolerated,
    ACK-3).
    """

    acknowledged: int
    sequence_number: int
    needed: bool


@dataclass(frozen=True, slots=True)
class Tolerated:
    """The peer deviated from the text on a point real peers differ on, and it was accepted.

    Only where the text is silent (or says *should*) and the meaning is unambiguous; the
    rule's ``field`` note in spec/ says what real peers send and what avaproto does.
    ``first`` is True for the first deviation under ``rule`` in this stream, so a
    transport logs one line per rule and stream and counts the rest
    (``Session.tolerated``).
    """

    rule: str
    detail: str
    first: bool


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer closed its direction: it will send nothing more."""


Event = DescriptorReceived | SampleReceived | AckReceived | Tolerated | StreamEnded
