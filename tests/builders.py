"""Builders shared by the tests: descriptors, samples and negotiated session pairs."""

from __future__ import annotations

from avaproto.messages import (
    ContentBytes,
    ContentReference,
    Dimensions,
    Encoding,
    GraphIdentifier,
    MediaDescriptor,
    MediaSample,
    MediaStreamDescriptor,
    PixelFormat,
    SharedMemoryBufferTransferProperties,
    VideoFrameSampleFormat,
)
from avaproto.protocol.roles import Role
from avaproto.protocol.session import Session

WIDTH, HEIGHT = 4, 2
FRAME_BYTES = WIDTH * HEIGHT * 3  # RGB24, packed


def video_format(
    encoding: Encoding = Encoding.RAW,
    pixel_format: PixelFormat = PixelFormat.RGB24,
    width: int = WIDTH,
    height: int = HEIGHT,
    stride: int = 0,
) -> VideoFrameSampleFormat:
    return VideoFrameSampleFormat(
        encoding=encoding,
        pixel_format=pixel_format,
        dimensions=Dimensions(width=width, height=height),
        stride_bytes=stride,
    )


def pipeline_descriptor(
    fmt: VideoFrameSampleFormat | None = None,
    *,
    shm: tuple[str, int] | None = None,
    configuration: str = "",
    media: bool = True,
) -> MediaStreamDescriptor:
    return MediaStreamDescriptor(
        graph_identifier=GraphIdentifier(
            media_services_arm_id="/subscriptions/s/resourceGroups/g",
            graph_instance_name="pipeline-1",
            graph_node_name="grpcExtension",
        ),
        extension_configuration=configuration,
        media_descriptor=MediaDescriptor(
            timescale=90000, video_frame_sample_format=fmt or video_format()
        )
        if media
        else None,
        shared_memory_buffer_transfer_properties=SharedMemoryBufferTransferProperties(
            handle_name=shm[0], length_bytes=shm[1]
        )
        if shm
        else None,
    )


def extension_descriptor(name: str | None = "test-extension") -> MediaStreamDescriptor:
    return MediaStreamDescriptor(
        extension_identifier=name, media_descriptor=MediaDescriptor(timescale=90000)
    )


def embedded(size: int = FRAME_BYTES, timestamp: int = 0) -> MediaSample:
    return MediaSample(timestamp=timestamp, content_bytes=ContentBytes(bytes=bytes(size)))


def referenced(offset: int, length: int = FRAME_BYTES) -> MediaSample:
    return MediaSample(
        content_reference=ContentReference(address_offset=offset, length_bytes=length)
    )


Pair = tuple[Session, Session]


def negotiate(
    descriptor: MediaStreamDescriptor | None = None,
    reply: MediaStreamDescriptor | None = None,
) -> Pair:
    """A pipeline and an extension session that have exchanged descriptors."""
    pipeline, extension = Session(Role.PIPELINE), Session(Role.EXTENSION)
    extension.receive(pipeline.send_descriptor(descriptor or pipeline_descriptor()))
    pipeline.receive(extension.send_descriptor(reply or extension_descriptor()))
    return pipeline, extension
