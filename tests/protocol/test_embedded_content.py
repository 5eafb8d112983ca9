"""Spec section 5, Reading embedded content, and the core's checks of sample content
(sections 6 and 10): what a sample may carry given its sender's descriptor."""

from __future__ import annotations

import pytest

from avaproto.errors import LocalProtocolError, RemoteProtocolError
from avaproto.messages import ContentBytes, Encoding, Inference, MediaSample, MediaStreamMessage
from avaproto.messages import PixelFormat as PF
from avaproto.protocol.events import EmbeddedContent, ReferencedContent, SampleReceived
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


def receive_one(message: MediaStreamMessage, **descriptor: object) -> SampleReceived:
    _, extension = negotiate(pipeline_descriptor(**descriptor))  # type: ignore[arg-type]
    [event] = extension.receive(message)
    assert isinstance(event, SampleReceived)
    return event


def refused(message: MediaStreamMessage, **descriptor: object) -> RemoteProtocolError:
    _, extension = negotiate(pipeline_descriptor(**descriptor))  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError) as caught:
        extension.receive(message)
    assert extension.failed
    return caught.value


def message(sample: MediaSample, number: int = 2) -> MediaStreamMessage:
    return MediaStreamMessage(sequence_number=number, media_sample=sample)


class TestEmbedded:
    @pytest.mark.rule("EMB-1", "EMB-2")
    def test_embedded_bytes_are_passed_on_as_received(self) -> None:
        data = bytes(range(FRAME_BYTES))
        event = receive_one(message(MediaSample(timestamp=7, content_bytes=ContentBytes(data))))
        assert event.content == EmbeddedContent(data)
        assert event.timestamp == 7
        assert event.requires_ack

    @pytest.mark.rule("EMB-1")
    def test_encoded_content_of_any_size_is_accepted(self) -> None:
        fmt = video_format(Encoding.JPG, PF.NONE, 0, 0)
        event = receive_one(message(embedded(size=1234)), fmt=fmt)
        assert isinstance(event.content, EmbeddedContent)
        assert len(event.content.data) == 1234

    @pytest.mark.rule("EMB-3")
    def test_sample_without_content_carries_inferences(self) -> None:
        upstream = [Inference(subtype="from-upstream")]
        event = receive_one(message(MediaSample(timestamp=3, inferences=upstream)))
        assert event.content is None
        assert event.inferences == upstream
        assert event.requires_ack

    @pytest.mark.rule("EMB-2", "SHM-1")
    def test_reference_without_shared_memory_is_refused(self) -> None:
        error = refused(message(referenced(0)))
        assert (error.rule, error.status) == ("SHM-1", Status.FAILED_PRECONDITION)

    @pytest.mark.rule("SHM-1")
    def test_we_cannot_refer_to_memory_we_did_not_announce(self) -> None:
        pipeline, _ = negotiate()
        with pytest.raises(LocalProtocolError) as caught:
            pipeline.send_sample(referenced(0))
        assert caught.value.rule == "SHM-1"


class TestFrameSize:
    @pytest.mark.rule("MEDIA-6")
    @pytest.mark.parametrize("size", [0, FRAME_BYTES - 1, FRAME_BYTES + 1])
    def test_raw_embedded_frame_of_wrong_size_is_refused(self, size: int) -> None:
        error = refused(message(embedded(size=size)))
        assert (error.rule, error.status) == ("MEDIA-6", Status.INVALID_ARGUMENT)
        assert f"{size} bytes" in str(error) and str(FRAME_BYTES) in str(error)

    @pytest.mark.rule("MEDIA-6", "SHM-14")
    def test_raw_referenced_frame_shorter_than_a_frame_is_refused(self) -> None:
        error = refused(message(referenced(0, FRAME_BYTES - 1)), shm=("seg", SEGMENT))
        assert (error.rule, error.status) == ("MEDIA-6", Status.INVALID_ARGUMENT)
        assert "never shorter" in str(error)

    @pytest.mark.rule("MEDIA-6", "MEDIA-4")
    @pytest.mark.parametrize(
        ("fmt", "size"),
        [
            (video_format(pixel_format=PF.RGB24, width=416, height=416), 416 * 416 * 3),
            (video_format(pixel_format=PF.RGB24, width=5, height=3, stride=16), 48),
            (video_format(pixel_format=PF.BGRA, width=3, height=2), 24),
            (video_format(pixel_format=PF.RGB565LE, width=3, height=3), 18),
            (video_format(pixel_format=PF.YUV420P, width=4, height=4), 16 + 4 + 4),
            (video_format(pixel_format=PF.YUV420P, width=5, height=3), 15 + 6 + 6),
            (video_format(pixel_format=PF.YUV420P, width=5, height=3, stride=8), 24 + 8 + 8),
        ],
    )
    def test_raw_frame_of_exact_size_is_accepted(self, fmt: object, size: int) -> None:
        event = receive_one(message(embedded(size=size)), fmt=fmt)
        assert isinstance(event.content, EmbeddedContent)


class TestReferences:
    @pytest.mark.rule("SHM-16")
    def test_an_encoded_sample_is_referred_to_within_the_largest_message(self) -> None:
        """A JPG's size is only what its reference says: up to 64 MiB by default (what
        bounds an embedded one), refused past it before a byte is read; a RAW frame's
        reference, however long, is read for one frame's bytes (SHM-14)."""
        limit, segment = 64 << 20, 1 << 31  # a sparse 2 GiB file costs its sender nothing
        jpg = video_format(encoding=Encoding.JPG, pixel_format=PF.NONE, width=0, height=0)
        shm = ("seg", segment)
        event = receive_one(message(referenced(0, limit)), fmt=jpg, shm=shm)
        assert event.content == ReferencedContent(0, limit)
        error = refused(message(referenced(0, limit + 1)), fmt=jpg, shm=shm)
        assert (error.rule, error.status) == ("SHM-16", Status.RESOURCE_EXHAUSTED)
        assert f"{limit + 1} bytes to a JPG sample; the limit is {limit} bytes" in str(error)
        _, extension = negotiate(pipeline_descriptor(shm=shm))
        events = extension.receive(message(referenced(0, segment)))
        [raw] = [e for e in events if isinstance(e, SampleReceived)]
        assert isinstance(raw, SampleReceived)
        assert raw.content == ReferencedContent(0, FRAME_BYTES)

    @pytest.mark.rule("SHM-4")
    def test_reference_inside_the_segment_is_accepted(self) -> None:
        event = receive_one(message(referenced(SEGMENT - FRAME_BYTES)), shm=("seg", SEGMENT))
        assert event.content == ReferencedContent(SEGMENT - FRAME_BYTES, FRAME_BYTES)
        assert event.requires_ack

    @pytest.mark.rule("SHM-4")
    @pytest.mark.parametrize(
        ("offset", "length"),
        [
            (SEGMENT - FRAME_BYTES + 1, FRAME_BYTES),
            (SEGMENT, FRAME_BYTES),
            ((1 << 64) - 1, FRAME_BYTES),
            ((1 << 64) - FRAME_BYTES, FRAME_BYTES),  # wraps to 0 in 64-bit arithmetic
        ],
    )
    def test_reference_past_the_segment_is_refused(self, offset: int, length: int) -> None:
        error = refused(message(referenced(offset, length)), shm=("seg", SEGMENT))
        assert (error.rule, error.status) == ("SHM-4", Status.OUT_OF_RANGE)
        assert str(SEGMENT) in str(error)
