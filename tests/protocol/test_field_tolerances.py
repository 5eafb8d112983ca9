"""Where the text is silent and real peers differ: what the core accepts, warns about, counts.

Each case is something a widely used pipeline or extension sends. The session accepts it
when the meaning is unambiguous, reports one ``Tolerated`` event (``first`` only once
per rule and stream, so a transport logs one line) and counts every occurrence in
``Session.tolerated``; where an acknowledgement depends on the deviation, it stays an
error.
"""

from __future__ import annotations

import pytest

from avaproto.errors import LocalProtocolError, RemoteProtocolError
from avaproto.messages import (
    Inference,
    MediaDescriptor,
    MediaSample,
    MediaStreamDescriptor,
    MediaStreamMessage,
    SharedMemoryBufferTransferProperties,
)
from avaproto.protocol.events import (
    AckReceived,
    DescriptorReceived,
    ReferencedContent,
    SampleReceived,
    Tolerated,
)
from avaproto.protocol.roles import Role
from avaproto.protocol.session import OVERRUN_BYTES, Session
from avaproto.status import Status
from tests.builders import (
    FRAME_BYTES,
    embedded,
    negotiate,
    pipeline_descriptor,
    referenced,
    video_format,
)

SEGMENT = 1 << 20


def from_pipeline(number: int, sample: MediaSample) -> MediaStreamMessage:
    """A pipeline's message as a field peer builds it (our own session would refuse it)."""
    return MediaStreamMessage(sequence_number=number, media_sample=sample)


def tolerated(events: list[object]) -> list[Tolerated]:
    return [e for e in events if isinstance(e, Tolerated)]


def samples(events: list[object]) -> list[SampleReceived]:
    return [e for e in events if isinstance(e, SampleReceived)]


class TestReferencesLongerThanAFrame:
    """A pipeline's allocator that computes closed intervals wrongly: every slot after
    the first starts on the previous slot's last byte and is one byte longer."""

    def slots(self, count: int) -> list[tuple[int, int]]:
        slots = [(0, FRAME_BYTES)]
        end = FRAME_BYTES - 1  # the closed interval's end
        for _ in range(count - 1):
            slots.append((end, FRAME_BYTES + 1))
            end += FRAME_BYTES
        return slots

    @pytest.mark.rule("SHM-14")
    def test_reference_one_byte_longer_is_read_from_its_start(self) -> None:
        _, extension = negotiate(pipeline_descriptor(shm=("seg", SEGMENT)))
        [first, second] = self.slots(2)
        events = extension.receive(from_pipeline(2, referenced(*first)))
        assert not tolerated(events)
        extension.send_sample(MediaSample(), ack=2)
        events = extension.receive(from_pipeline(3, referenced(*second)))
        [sample] = samples(events)
        assert sample.content == ReferencedContent(second[0], FRAME_BYTES)
        assert sample.requires_ack
        [note] = tolerated(events)
        assert (note.rule, note.first) == ("SHM-14", True)
        assert "1 bytes longer" in note.detail

    @pytest.mark.rule("SHM-14")
    def test_a_stream_of_such_references_warns_once_and_counts_all(self) -> None:
        _, extension = negotiate(pipeline_descriptor(shm=("seg", SEGMENT)))
        firsts = []
        for number, slot in enumerate(self.slots(6), start=2):
            events = extension.receive(from_pipeline(number, referenced(*slot)))
            firsts += [n.first for n in tolerated(events) if n.rule == "SHM-14"]
            extension.send_sample(MediaSample(), ack=number)
        assert firsts == [True, False, False, False, False]
        assert extension.tolerated["SHM-14"] == 5

    @pytest.mark.rule("SHM-4", "SHM-14")
    def test_the_last_slot_may_run_a_byte_past_the_segment_its_frame_inside(self) -> None:
        """The same allocator's last slot, once the segment has filled: its frame ends
        with the segment, its reference a byte past it."""
        _, extension = negotiate(pipeline_descriptor(shm=("seg", 3 * FRAME_BYTES)))
        reference = referenced(2 * FRAME_BYTES, FRAME_BYTES + 1)
        events = extension.receive(MediaStreamMessage(sequence_number=2, media_sample=reference))
        [sample] = samples(events)
        assert sample.content == ReferencedContent(2 * FRAME_BYTES, FRAME_BYTES)
        [note] = tolerated(events)
        assert (
            note.rule == "SHM-14" and "runs 1 bytes past the shared-memory segment" in note.detail
        )

    @pytest.mark.rule("SHM-4", "SHM-14")
    @pytest.mark.parametrize(
        ("start", "length"),
        [(1, FRAME_BYTES), (0, FRAME_BYTES + OVERRUN_BYTES)],
        ids=["its-frame-past-the-end", "a-page-past-the-end"],
    )
    def test_the_segment_bound_still_applies_past_that(self, start: int, length: int) -> None:
        _, extension = negotiate(pipeline_descriptor(shm=("seg", FRAME_BYTES)))
        message = MediaStreamMessage(sequence_number=2, media_sample=referenced(start, length))
        with pytest.raises(RemoteProtocolError) as caught:
            extension.receive(message)
        assert (caught.value.rule, caught.value.status) == ("SHM-4", Status.OUT_OF_RANGE)

    @pytest.mark.rule("MEDIA-6", "SHM-14")
    def test_embedded_content_stays_exact(self) -> None:
        _, extension = negotiate()
        message = MediaStreamMessage(sequence_number=2, media_sample=embedded(FRAME_BYTES + 1))
        with pytest.raises(RemoteProtocolError) as caught:
            extension.receive(message)
        assert caught.value.rule == "MEDIA-6"

    @pytest.mark.rule("SHM-14")
    def test_our_own_references_stay_exact(self) -> None:
        pipeline, _ = negotiate(pipeline_descriptor(shm=("seg", SEGMENT)))
        with pytest.raises(LocalProtocolError) as caught:
            pipeline.send_sample(referenced(0, FRAME_BYTES + 1))
        assert caught.value.rule == "MEDIA-6"


class TestFramesWithoutTheLastRowsPadding:
    """A pipeline that copies a padded image from its first pixel to its last: RGB24
    4x2 with rows 16 bytes apart is 32 bytes a frame, and its 28 first hold every pixel."""

    FORMAT = video_format(stride=16)
    FRAME, SHORTEST = 32, 16 + 4 * 3

    @pytest.mark.rule("MEDIA-6")
    @pytest.mark.parametrize("transfer", ["embedded", "shm"])
    def test_accepted_with_one_warning_per_stream(self, transfer: str) -> None:
        _, extension = negotiate(pipeline_descriptor(self.FORMAT, shm=("seg", SEGMENT)))
        firsts = []
        for index, length in enumerate([self.SHORTEST, self.FRAME - 1, self.SHORTEST]):
            number = index + 2
            sample = embedded(length) if transfer == "embedded" else referenced(0, length)
            events = extension.receive(from_pipeline(number, sample))
            [received] = samples(events)
            assert received.content is not None and received.sequence_number == number
            firsts += [n.first for n in tolerated(events) if n.rule == "MEDIA-6"]
            extension.send_sample(MediaSample(), ack=number)
        assert firsts == [True, False, False]
        assert extension.tolerated["MEDIA-6"] == 3

    @pytest.mark.rule("MEDIA-6", "SHM-4")
    def test_a_reference_to_the_last_bytes_of_its_segment_is_read_as_it_is(self) -> None:
        """The frame is the reference's bytes, not a whole frame's from its start."""
        _, extension = negotiate(pipeline_descriptor(self.FORMAT, shm=("seg", self.SHORTEST)))
        events = extension.receive(from_pipeline(2, referenced(0, self.SHORTEST)))
        [received] = samples(events)
        assert isinstance(received.content, ReferencedContent)
        assert (received.content.offset, received.content.length) == (0, self.SHORTEST)

    @pytest.mark.rule("MEDIA-6")
    @pytest.mark.parametrize("transfer", ["embedded", "shm"])
    def test_a_missing_pixel_is_still_refused(self, transfer: str) -> None:
        _, extension = negotiate(pipeline_descriptor(self.FORMAT, shm=("seg", SEGMENT)))
        length = self.SHORTEST - 1
        sample = embedded(length) if transfer == "embedded" else referenced(0, length)
        with pytest.raises(RemoteProtocolError) as caught:
            extension.receive(from_pipeline(2, sample))
        assert (caught.value.rule, caught.value.status) == ("MEDIA-6", Status.INVALID_ARGUMENT)

    @pytest.mark.rule("MEDIA-6")
    def test_our_own_frames_stay_whole(self) -> None:
        pipeline, _ = negotiate(pipeline_descriptor(self.FORMAT))
        with pytest.raises(LocalProtocolError) as caught:
            pipeline.send_sample(embedded(self.SHORTEST))
        assert caught.value.rule == "MEDIA-6"


class TestOverlappingReferences:
    @pytest.mark.rule("SHM-8")
    def test_overlap_with_an_unacknowledged_reference_is_warned(self) -> None:
        _, extension = negotiate(pipeline_descriptor(shm=("seg", SEGMENT)))
        extension.receive(from_pipeline(2, referenced(0)))
        events = extension.receive(from_pipeline(3, referenced(FRAME_BYTES - 1)))
        [note] = tolerated(events)
        assert note.rule == "SHM-8"
        assert "message 2" in note.detail
        assert samples(events)

    @pytest.mark.rule("SHM-8")
    def test_reuse_after_the_acknowledgement_is_no_overlap(self) -> None:
        pipeline, extension = negotiate(pipeline_descriptor(shm=("seg", SEGMENT)))
        extension.receive(pipeline.send_sample(referenced(0)))
        pipeline.receive(extension.send_sample(MediaSample(), ack=2))
        events = extension.receive(pipeline.send_sample(referenced(0)))
        assert not tolerated(events)
        events = extension.receive(pipeline.send_sample(referenced(FRAME_BYTES)))
        assert not tolerated(events)  # adjacent, not overlapping


def answer(number: int, ack: int, *inferences: Inference) -> MediaStreamMessage:
    return MediaStreamMessage(
        sequence_number=number,
        ack_sequence_number=ack,
        media_sample=MediaSample(inferences=list(inferences)),
    )


class TestAnswersNumberedZero:
    """A widely used extension never sets sequence_number on its answers."""

    @pytest.mark.rule("SEQ-4")
    def test_answers_numbered_zero_still_acknowledge(self) -> None:
        pipeline, _ = negotiate()
        for _ in range(3):
            pipeline.send_sample(embedded())
        firsts = []
        for ack in (2, 3, 4):
            events = pipeline.receive(answer(0, ack, Inference(subtype="x")))
            acks = [e for e in events if isinstance(e, AckReceived)]
            assert [(a.acknowledged, a.needed) for a in acks] == [(ack, True)]
            firsts += [n.first for n in tolerated(events) if n.rule == "SEQ-4"]
        assert firsts == [True, False, False]
        assert pipeline.tolerated["SEQ-4"] == 3
        assert pipeline.ledger.settled

    @pytest.mark.rule("SEQ-3")
    def test_repeated_numbers_on_answers_are_warned(self) -> None:
        pipeline, _ = negotiate()
        pipeline.send_sample(embedded())
        pipeline.send_sample(embedded())
        pipeline.receive(answer(2, 2))
        events = pipeline.receive(answer(2, 3))
        assert [n.rule for n in tolerated(events)] == ["SEQ-3"]
        assert pipeline.ledger.settled
        # The last good number still counts: the next must exceed it.
        assert pipeline.last_received == 2

    @pytest.mark.rule("SEQ-4")
    def test_a_sample_that_needs_our_acknowledgement_must_be_numbered(self) -> None:
        # An extension's sample that needs an acknowledgement: shared memory of its own.
        extension_reply = MediaStreamDescriptor(
            extension_identifier="e",
            media_descriptor=MediaDescriptor(
                timescale=90000, video_frame_sample_format=video_format()
            ),
            shared_memory_buffer_transfer_properties=SharedMemoryBufferTransferProperties(
                handle_name="x", length_bytes=SEGMENT
            ),
        )
        pipeline, _ = negotiate(reply=extension_reply)
        message = MediaStreamMessage(sequence_number=0, media_sample=referenced(0))
        with pytest.raises(RemoteProtocolError) as caught:
            pipeline.receive(message)
        assert caught.value.rule == "SEQ-4"

    @pytest.mark.rule("SEQ-4")
    def test_the_pipelines_samples_must_be_numbered(self) -> None:
        _, extension = negotiate()
        with pytest.raises(RemoteProtocolError) as caught:
            extension.receive(MediaStreamMessage(sequence_number=0, media_sample=embedded()))
        assert caught.value.rule == "SEQ-4"

    @pytest.mark.rule("SEQ-4")
    def test_the_pipelines_descriptor_must_be_numbered(self) -> None:
        """The extension's answer acknowledges it: by its number."""
        with pytest.raises(RemoteProtocolError) as caught:
            Session(Role.EXTENSION).receive(
                MediaStreamMessage(sequence_number=0, media_stream_descriptor=pipeline_descriptor())
            )
        assert caught.value.rule == "SEQ-4"

    @pytest.mark.rule("SEQ-4")
    def test_the_extensions_descriptor_may_come_unnumbered(self) -> None:
        """Microsoft's published C# extension answers ``new MediaStreamMessage {
        MediaStreamDescriptor = ... }``: numbered 0, acknowledging nothing. Nothing ever
        acknowledges the extension's descriptor, so no number is missed; its answers
        after it are numbered from 1."""
        pipeline = Session(Role.PIPELINE)
        pipeline.send_descriptor(pipeline_descriptor())
        reply = MediaStreamMessage(
            sequence_number=0,
            media_stream_descriptor=MediaStreamDescriptor(extension_identifier="e"),
        )
        [noted, described] = pipeline.receive(reply)
        assert isinstance(noted, Tolerated) and (noted.rule, noted.first) == ("SEQ-4", True)
        assert isinstance(described, DescriptorReceived)
        pipeline.send_sample(embedded())
        events = pipeline.receive(MediaStreamMessage(sequence_number=1, ack_sequence_number=2))
        assert events == [AckReceived(acknowledged=2, sequence_number=1, needed=True)]
        assert pipeline.tolerated["SEQ-4"] == 1


class TestAcceptedAsTheFieldSendsThem:
    """Values real peers send that need no tolerance: the text allows them."""

    @pytest.mark.rule("MEDIA-4", "PIPE-1")
    def test_timestamps_all_zero_and_stride_zero(self) -> None:
        pipeline, extension = negotiate(pipeline_descriptor(video_format(stride=0)))
        for _ in range(3):
            events = extension.receive(pipeline.send_sample(embedded(timestamp=0)))
            [sample] = samples(events)
            assert sample.timestamp == 0
            assert not tolerated(events)

    @pytest.mark.rule("CFG-1")
    def test_configuration_of_an_empty_json_object(self) -> None:
        _, extension = negotiate(pipeline_descriptor(configuration="{}"))
        assert extension.peer_descriptor is not None
        assert extension.peer_descriptor.extension_configuration == "{}"

    @pytest.mark.rule("DESC-5")
    @pytest.mark.parametrize("ack", [0, 1])
    def test_answer_descriptor_acknowledging_nothing_or_ours(self, ack: int) -> None:
        pipeline = Session(Role.PIPELINE)
        pipeline.send_descriptor(pipeline_descriptor())
        reply = MediaStreamMessage(
            sequence_number=1,
            ack_sequence_number=ack,
            media_stream_descriptor=MediaStreamDescriptor(extension_identifier="e"),
        )
        events = pipeline.receive(reply)
        assert not tolerated(events)
        assert pipeline.peer_descriptor is not None

    @pytest.mark.rule("DESC-5")
    def test_pipeline_descriptor_acknowledging_nothing(self) -> None:
        extension = Session(Role.EXTENSION)
        opening = MediaStreamMessage(
            sequence_number=1, ack_sequence_number=0, media_stream_descriptor=pipeline_descriptor()
        )
        assert not tolerated(extension.receive(opening))
