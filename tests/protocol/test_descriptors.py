"""Spec section 2, Descriptors (and the descriptor-level rules of sections 6, 8 and 10)."""

from __future__ import annotations

import pytest

from avaproto.errors import LocalProtocolError, RemoteProtocolError
from avaproto.messages import (
    ContentBytes,
    Encoding,
    GraphIdentifier,
    MediaDescriptor,
    MediaSample,
    MediaStreamDescriptor,
    MediaStreamMessage,
    PixelFormat,
    SharedMemoryBufferTransferProperties,
)
from avaproto.protocol.events import DescriptorReceived, SampleReceived, Tolerated
from avaproto.protocol.roles import Role
from avaproto.protocol.session import Session
from avaproto.status import Status
from tests.builders import (
    extension_descriptor,
    negotiate,
    pipeline_descriptor,
    video_format,
)


def first_message(descriptor: MediaStreamDescriptor) -> MediaStreamMessage:
    return MediaStreamMessage(sequence_number=1, media_stream_descriptor=descriptor)


def refused(session: Session, message: MediaStreamMessage) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as caught:
        session.receive(message)
    assert session.failed
    return caught.value


class TestFirstMessage:
    @pytest.mark.rule("DESC-1")
    def test_extension_refuses_a_sample_first(self) -> None:
        extension = Session(Role.EXTENSION)
        error = refused(
            extension, MediaStreamMessage(sequence_number=1, media_sample=MediaSample())
        )
        assert (error.rule, error.status) == ("DESC-1", Status.FAILED_PRECONDITION)
        assert "first message" in str(error)

    @pytest.mark.rule("DESC-1")
    def test_extension_refuses_an_empty_first_message(self) -> None:
        error = refused(Session(Role.EXTENSION), MediaStreamMessage(sequence_number=1))
        assert error.rule == "DESC-1"

    @pytest.mark.rule("DESC-1")
    def test_pipeline_refuses_an_answer_that_is_not_a_descriptor(self) -> None:
        pipeline = Session(Role.PIPELINE)
        pipeline.send_descriptor(pipeline_descriptor())
        error = refused(pipeline, MediaStreamMessage(sequence_number=1, media_sample=MediaSample()))
        assert error.rule == "DESC-1"

    @pytest.mark.rule("DESC-1")
    def test_we_cannot_send_a_sample_before_our_descriptor(self) -> None:
        pipeline = Session(Role.PIPELINE)
        with pytest.raises(LocalProtocolError) as caught:
            pipeline.send_sample(MediaSample())
        assert caught.value.rule == "DESC-1"

    @pytest.mark.rule("DESC-1", "DESC-8")
    def test_descriptor_is_reported_checked(self) -> None:
        extension = Session(Role.EXTENSION)
        [event] = extension.receive(first_message(pipeline_descriptor()))
        assert isinstance(event, DescriptorReceived)
        assert event.sequence_number == 1
        assert event.descriptor.timescale == 90000
        assert event.descriptor.video_format is not None
        assert event.descriptor.video_format.pixel_format is PixelFormat.RGB24
        assert event.descriptor.graph_identifier == GraphIdentifier(
            media_services_arm_id="/subscriptions/s/resourceGroups/g",
            graph_instance_name="pipeline-1",
            graph_node_name="grpcExtension",
        )


class TestOneDescriptor:
    @pytest.mark.rule("DESC-2")
    def test_second_descriptor_from_the_peer_is_refused(self) -> None:
        _, extension = negotiate()
        error = refused(
            extension,
            MediaStreamMessage(sequence_number=2, media_stream_descriptor=pipeline_descriptor()),
        )
        assert (error.rule, error.status) == ("DESC-2", Status.FAILED_PRECONDITION)

    @pytest.mark.rule("DESC-2")
    def test_we_cannot_send_a_second_descriptor(self) -> None:
        pipeline, _ = negotiate()
        with pytest.raises(LocalProtocolError) as caught:
            pipeline.send_descriptor(pipeline_descriptor())
        assert caught.value.rule == "DESC-2"


class TestStreamIdentifiers:
    @pytest.mark.rule("DESC-3")
    def test_pipeline_descriptor_with_extension_identifier_is_refused(self) -> None:
        descriptor = MediaStreamDescriptor(extension_identifier="not-a-pipeline")
        error = refused(Session(Role.EXTENSION), first_message(descriptor))
        assert (error.rule, error.status) == ("DESC-3", Status.INVALID_ARGUMENT)

    @pytest.mark.rule("DESC-3")
    def test_pipeline_descriptor_without_identifier_is_accepted(self) -> None:
        extension = Session(Role.EXTENSION)
        [event] = extension.receive(first_message(MediaStreamDescriptor()))
        assert isinstance(event, DescriptorReceived)
        assert event.descriptor.graph_identifier is None

    @pytest.mark.rule("DESC-4")
    def test_extension_descriptor_with_graph_identifier_is_ignored_with_a_warning(self) -> None:
        """An extension that echoes the pipeline's descriptor, graph_identifier included:
        the identifier is ignored, once noted (DESC-4's field note)."""
        pipeline = Session(Role.PIPELINE)
        pipeline.send_descriptor(pipeline_descriptor())
        reply = MediaStreamMessage(
            sequence_number=1,
            ack_sequence_number=1,
            media_stream_descriptor=MediaStreamDescriptor(graph_identifier=GraphIdentifier()),
        )
        events = pipeline.receive(reply)
        [note] = [e for e in events if isinstance(e, Tolerated)]
        assert (note.rule, note.first) == ("DESC-4", True)
        assert pipeline.peer_descriptor is not None
        assert pipeline.peer_descriptor.graph_identifier is None
        assert pipeline.tolerated["DESC-4"] == 1

    @pytest.mark.rule("DESC-4")
    def test_extension_descriptor_without_identifier_is_accepted(self) -> None:
        # Published sample extensions answer with a media descriptor and nothing else.
        pipeline, _ = negotiate(reply=MediaStreamDescriptor(media_descriptor=MediaDescriptor()))
        assert pipeline.state == "negotiated"
        assert pipeline.peer_descriptor is not None
        assert pipeline.peer_descriptor.extension_identifier is None

    @pytest.mark.rule("DESC-4")
    def test_extension_identifier_is_reported(self) -> None:
        pipeline, _ = negotiate(reply=extension_descriptor("yolo"))
        assert pipeline.peer_descriptor is not None
        assert pipeline.peer_descriptor.extension_identifier == "yolo"

    @pytest.mark.rule("DESC-3", "DESC-4")
    def test_we_cannot_send_the_other_roles_identifier(self) -> None:
        with pytest.raises(LocalProtocolError) as caught:
            Session(Role.PIPELINE).send_descriptor(extension_descriptor())
        assert caught.value.rule == "DESC-3"


class TestTheAnswer:
    @pytest.mark.rule("DESC-5")
    def test_extension_answer_acknowledges_the_pipeline_descriptor(self) -> None:
        pipeline, extension = Session(Role.PIPELINE), Session(Role.EXTENSION)
        opening = pipeline.send_descriptor(pipeline_descriptor())
        extension.receive(opening)
        answer = extension.send_descriptor(extension_descriptor())
        assert (answer.sequence_number, answer.ack_sequence_number) == (1, 1)
        pipeline.receive(answer)
        assert pipeline.state == extension.state == "negotiated"

    @pytest.mark.rule("DESC-5")
    def test_answer_without_acknowledgement_is_accepted(self) -> None:
        pipeline = Session(Role.PIPELINE)
        pipeline.send_descriptor(pipeline_descriptor())
        pipeline.receive(first_message(extension_descriptor()))
        assert pipeline.state == "negotiated"

    @pytest.mark.rule("DESC-5")
    def test_answer_acknowledging_another_message_is_refused(self) -> None:
        pipeline = Session(Role.PIPELINE)
        pipeline.send_descriptor(pipeline_descriptor())
        answer = MediaStreamMessage(
            sequence_number=1, ack_sequence_number=7, media_stream_descriptor=extension_descriptor()
        )
        error = refused(pipeline, answer)
        assert (error.rule, error.status) == ("DESC-5", Status.INVALID_ARGUMENT)
        assert "7" in str(error)

    @pytest.mark.rule("DESC-5")
    def test_pipeline_descriptor_cannot_acknowledge_anything(self) -> None:
        opening = MediaStreamMessage(
            sequence_number=1, ack_sequence_number=1, media_stream_descriptor=pipeline_descriptor()
        )
        assert refused(Session(Role.EXTENSION), opening).rule == "DESC-5"

    @pytest.mark.rule("DESC-5")
    def test_extension_cannot_speak_first(self) -> None:
        with pytest.raises(LocalProtocolError) as caught:
            Session(Role.EXTENSION).send_descriptor(extension_descriptor())
        assert caught.value.rule == "DESC-5"

    @pytest.mark.rule("DESC-5")
    def test_extension_ending_without_an_answer_is_refused(self) -> None:
        pipeline = Session(Role.PIPELINE)
        pipeline.send_descriptor(pipeline_descriptor())
        with pytest.raises(RemoteProtocolError) as caught:
            pipeline.receive_end()
        assert caught.value.rule == "DESC-5"

    @pytest.mark.rule("DESC-5")
    def test_extension_cannot_end_before_answering(self) -> None:
        extension = Session(Role.EXTENSION)
        extension.receive(first_message(pipeline_descriptor()))
        with pytest.raises(LocalProtocolError) as caught:
            extension.send_end()
        assert caught.value.rule == "DESC-5"


class TestSamplesAfterDescriptors:
    @pytest.mark.rule("DESC-6")
    def test_pipeline_cannot_send_samples_before_the_answer(self) -> None:
        pipeline = Session(Role.PIPELINE)
        pipeline.send_descriptor(pipeline_descriptor())
        with pytest.raises(LocalProtocolError) as caught:
            pipeline.send_sample(MediaSample())
        assert caught.value.rule == "DESC-6"

    @pytest.mark.rule("DESC-6")
    def test_extension_refuses_samples_before_it_answered(self) -> None:
        extension = Session(Role.EXTENSION)
        extension.receive(first_message(pipeline_descriptor()))
        error = refused(
            extension, MediaStreamMessage(sequence_number=2, media_sample=MediaSample())
        )
        assert (error.rule, error.status) == ("DESC-6", Status.FAILED_PRECONDITION)


class TestMediaDescriptor:
    @pytest.mark.rule("DESC-7")
    def test_inferences_only_descriptor_refuses_content(self) -> None:
        _, extension = negotiate(pipeline_descriptor(media=False))
        assert extension.peer_descriptor is not None
        assert not extension.peer_descriptor.carries_media
        sample = MediaStreamMessage(sequence_number=2, media_sample=MediaSample(content_bytes=None))
        extension.receive(sample)  # no content: fine
        bad = pipeline_sample_with_content(3)
        error = refused(extension, bad)
        assert (error.rule, error.status) == ("DESC-7", Status.INVALID_ARGUMENT)

    @pytest.mark.rule("DESC-7")
    def test_empty_content_where_no_format_was_announced_is_read_as_none(self) -> None:
        """A sender that sets content_bytes whatever it holds (protobuf's runtimes mark the
        field present once its bytes are assigned, empty or not): nothing is in it."""
        _, extension = negotiate(pipeline_descriptor(media=False))
        empty = MediaStreamMessage(
            sequence_number=2, media_sample=MediaSample(content_bytes=ContentBytes(bytes=b""))
        )
        [noted, sample] = extension.receive(empty)
        assert isinstance(noted, Tolerated) and (noted.rule, noted.first) == ("DESC-7", True)
        assert "empty content_bytes" in noted.detail
        assert isinstance(sample, SampleReceived) and sample.content is None
        # Content with anything in it is still refused, and our own sender never sends it.
        error = refused(extension, pipeline_sample_with_content(3))
        assert (error.rule, error.status) == ("DESC-7", Status.INVALID_ARGUMENT)
        pipeline, _ = negotiate(pipeline_descriptor(media=False))
        with pytest.raises(LocalProtocolError) as caught:
            pipeline.send_sample(empty.media_sample)
        assert caught.value.rule == "DESC-7"

    @pytest.mark.rule("DESC-7")
    def test_extension_answers_carry_no_content(self) -> None:
        pipeline, extension = negotiate()
        request = pipeline.send_sample(MediaSample())
        extension.receive(request)
        with pytest.raises(LocalProtocolError) as caught:
            extension.send_sample(pipeline_sample_with_content(0).media_sample, ack=2)
        assert caught.value.rule == "DESC-7"

    @pytest.mark.rule("MEDIA-1")
    def test_unknown_encoding_is_refused(self) -> None:
        descriptor = pipeline_descriptor(video_format(encoding=Encoding(9)))
        error = refused(Session(Role.EXTENSION), first_message(descriptor))
        assert (error.rule, error.status) == ("MEDIA-1", Status.INVALID_ARGUMENT)

    @pytest.mark.rule("MEDIA-2")
    @pytest.mark.parametrize("pixel_format", [PixelFormat.NONE, PixelFormat(99)])
    def test_raw_needs_a_known_pixel_format(self, pixel_format: PixelFormat) -> None:
        descriptor = pipeline_descriptor(video_format(pixel_format=pixel_format))
        error = refused(Session(Role.EXTENSION), first_message(descriptor))
        assert (error.rule, error.status) == ("MEDIA-2", Status.INVALID_ARGUMENT)

    @pytest.mark.rule("MEDIA-3")
    @pytest.mark.parametrize(
        ("width", "height"), [(0, 2), (4, 0), (100_000, 100_000), (16385, 1), (1, 16385)]
    )
    def test_raw_dimensions_are_refused_when_zero_or_absurd(self, width: int, height: int) -> None:
        descriptor = pipeline_descriptor(video_format(width=width, height=height))
        error = refused(Session(Role.EXTENSION), first_message(descriptor))
        assert (error.rule, error.status) == ("MEDIA-3", Status.INVALID_ARGUMENT)
        assert f"{width}x{height}" in str(error)

    @pytest.mark.rule("MEDIA-3")
    def test_largest_frame_is_accepted(self) -> None:
        descriptor = pipeline_descriptor(video_format(width=16384, height=16384))
        [event] = Session(Role.EXTENSION).receive(first_message(descriptor))
        assert isinstance(event, DescriptorReceived)

    @pytest.mark.rule("MEDIA-3")
    def test_encoded_formats_may_omit_dimensions(self) -> None:
        descriptor = pipeline_descriptor(video_format(Encoding.JPG, PixelFormat.NONE, 0, 0))
        [event] = Session(Role.EXTENSION).receive(first_message(descriptor))
        assert isinstance(event, DescriptorReceived)
        assert event.descriptor.video_format is not None
        assert event.descriptor.video_format.encoding is Encoding.JPG

    @pytest.mark.rule("MEDIA-4")
    def test_stride_shorter_than_a_row_is_refused(self) -> None:
        descriptor = pipeline_descriptor(video_format(width=416, height=416, stride=1247))
        error = refused(Session(Role.EXTENSION), first_message(descriptor))
        assert (error.rule, error.status) == ("MEDIA-4", Status.INVALID_ARGUMENT)
        assert "1248" in str(error)

    @pytest.mark.rule("MEDIA-4")
    @pytest.mark.parametrize(
        ("width", "height", "stride"), [(1, 2, 1 << 31), (416, 416, 16384 * 3 + 1)]
    )
    def test_stride_longer_than_the_widest_row_is_refused(
        self, width: int, height: int, stride: int
    ) -> None:
        """Else two pixels, their rows 2 GiB apart, would make a frame of 2 GiB to read
        (a sparse segment costs its sender nothing)."""
        fmt = video_format(width=width, height=height, stride=stride)
        error = refused(Session(Role.EXTENSION), first_message(pipeline_descriptor(fmt)))
        assert (error.rule, error.status) == ("MEDIA-4", Status.INVALID_ARGUMENT)
        assert "longer than a row of the widest frame accepted (16384 RGB24 pixels" in str(error)

    @pytest.mark.rule("MEDIA-4")
    @pytest.mark.parametrize("stride", [0, 1248, 1280, 5760, 16384 * 3])
    def test_stride_zero_or_at_least_a_row_is_accepted(self, stride: int) -> None:
        """5760: a 416-pixel crop left in a 1920-pixel frame, rows as far apart as its."""
        descriptor = pipeline_descriptor(video_format(width=416, height=416, stride=stride))
        [event] = Session(Role.EXTENSION).receive(first_message(descriptor))
        assert isinstance(event, DescriptorReceived)
        assert event.descriptor.video_format is not None
        assert event.descriptor.video_format.pitch == (stride or 1248)

    @pytest.mark.rule("MEDIA-5")
    def test_stride_of_an_encoded_format_is_ignored(self) -> None:
        descriptor = pipeline_descriptor(video_format(Encoding.PNG, PixelFormat.NONE, 8, 8, 3))
        [event] = Session(Role.EXTENSION).receive(first_message(descriptor))
        assert isinstance(event, DescriptorReceived)
        assert event.descriptor.video_format is not None
        assert event.descriptor.video_format.stride_bytes == 0


class TestSharedMemoryProperties:
    @pytest.mark.rule("SHM-2")
    @pytest.mark.parametrize(("name", "length"), [("", 1024), ("segment", 0)])
    def test_handle_and_length_are_required(self, name: str, length: int) -> None:
        descriptor = pipeline_descriptor()
        descriptor.shared_memory_buffer_transfer_properties = SharedMemoryBufferTransferProperties(
            handle_name=name, length_bytes=length
        )
        error = refused(Session(Role.EXTENSION), first_message(descriptor))
        assert (error.rule, error.status) == ("SHM-2", Status.INVALID_ARGUMENT)

    @pytest.mark.rule("SHM-3")
    @pytest.mark.parametrize(
        "name",
        ["../etc/passwd", "a/b", ".", "..", "nul\x00byte", "/../x", "/a/b", "/dev/shm/a/b", "/"],
    )
    def test_handle_must_be_a_plain_file_name(self, name: str) -> None:
        descriptor = pipeline_descriptor(shm=(name, 1 << 20))
        error = refused(Session(Role.EXTENSION), first_message(descriptor))
        assert (error.rule, error.status) == ("SHM-3", Status.INVALID_ARGUMENT)
        assert repr(name) in str(error)  # what the peer sent, not what a path reduced to

    @pytest.mark.rule("SHM-3")
    @pytest.mark.parametrize("name", ["/segment", "/dev/shm/segment"])
    def test_a_handle_given_as_a_path_is_read_as_its_file_name(self, name: str) -> None:
        """shm_open(3)'s "/name", and the whole path the text writes: the file is the
        same one, named once in a warning (SHM-3's field note)."""
        descriptor = pipeline_descriptor(shm=(name, 1 << 20))
        extension = Session(Role.EXTENSION)
        events = extension.receive(first_message(descriptor))
        [received] = [e for e in events if isinstance(e, DescriptorReceived)]
        [note] = [e for e in events if isinstance(e, Tolerated)]
        assert note.rule == "SHM-3" and repr(name) in note.detail
        assert received.descriptor.shared_memory is not None
        assert received.descriptor.shared_memory.handle_name == "segment"

    @pytest.mark.rule("SHM-1", "SHM-2")
    def test_shared_memory_properties_are_reported(self) -> None:
        descriptor = pipeline_descriptor(
            shm=("inference_client_share_memory_2146989006636459346", 20971520)
        )
        [event] = Session(Role.EXTENSION).receive(first_message(descriptor))
        assert isinstance(event, DescriptorReceived)
        memory = event.descriptor.shared_memory
        assert memory is not None
        assert memory.handle_name == "inference_client_share_memory_2146989006636459346"
        assert memory.length_bytes == 20971520


class TestExtensionConfiguration:
    @pytest.mark.rule("CFG-1")
    def test_configuration_is_optional(self) -> None:
        [event] = Session(Role.EXTENSION).receive(first_message(pipeline_descriptor()))
        assert isinstance(event, DescriptorReceived)
        assert event.descriptor.extension_configuration == ""

    @pytest.mark.rule("CFG-2")
    @pytest.mark.parametrize(
        "configuration", ['{"model": "yolov3", "threshold": 0.5}', "plain text", " ünï\tcode \n"]
    )
    def test_configuration_reaches_the_extension_unchanged(self, configuration: str) -> None:
        descriptor = pipeline_descriptor(configuration=configuration)
        wire = bytes(first_message(descriptor))
        [event] = Session(Role.EXTENSION).receive(MediaStreamMessage.parse(wire))
        assert isinstance(event, DescriptorReceived)
        assert event.descriptor.extension_configuration == configuration


def pipeline_sample_with_content(number: int) -> MediaStreamMessage:
    from tests.builders import embedded

    return MediaStreamMessage(sequence_number=number, media_sample=embedded())
