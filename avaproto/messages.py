"""The protocol's messages, as the rest of avaproto names them.

The classes are generated from ``protos/`` by betterproto2 (``make protos``); this
module only gives the nested enums their short names (``PixelFormat`` rather than
``VideoFrameSampleFormatPixelFormat``) so that code and docs read like the contract.
"""

from __future__ import annotations

from ._generated.microsoft.azure.media.live_video_analytics.extensibility.grpc.v1 import (
    Attribute,
    Classification,
    ContentBytes,
    ContentReference,
    Dimensions,
    Entity,
    Event,
    GraphIdentifier,
    Inference,
    InferenceOther,
    MediaDescriptor,
    MediaGraphExtensionBase,
    MediaGraphExtensionStub,
    MediaSample,
    MediaStreamDescriptor,
    MediaStreamMessage,
    Motion,
    Rectangle,
    SharedMemoryBufferTransferProperties,
    Tag,
    Text,
    VideoFrameSampleFormat,
)
from ._generated.microsoft.azure.media.live_video_analytics.extensibility.grpc.v1 import (
    InferenceInferenceType as InferenceType,
)
from ._generated.microsoft.azure.media.live_video_analytics.extensibility.grpc.v1 import (
    VideoFrameSampleFormatEncoding as Encoding,
)
from ._generated.microsoft.azure.media.live_video_analytics.extensibility.grpc.v1 import (
    VideoFrameSampleFormatPixelFormat as PixelFormat,
)

#: The protobuf package of all three .proto files; part of every method path.
PACKAGE = "microsoft.azure.media.live_video_analytics.extensibility.grpc.v1"
#: The one RPC of the protocol, as it travels on the wire (the HTTP/2 ``:path``).
METHOD_PATH = f"/{PACKAGE}.MediaGraphExtension/ProcessMediaStream"

__all__ = [
    "METHOD_PATH",
    "PACKAGE",
    "Attribute",
    "Classification",
    "ContentBytes",
    "ContentReference",
    "Dimensions",
    "Encoding",
    "Entity",
    "Event",
    "GraphIdentifier",
    "Inference",
    "InferenceOther",
    "InferenceType",
    "MediaDescriptor",
    "MediaGraphExtensionBase",
    "MediaGraphExtensionStub",
    "MediaSample",
    "MediaStreamDescriptor",
    "MediaStreamMessage",
    "Motion",
    "PixelFormat",
    "Rectangle",
    "SharedMemoryBufferTransferProperties",
    "Tag",
    "Text",
    "VideoFrameSampleFormat",
]
