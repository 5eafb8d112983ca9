"""The protocol's messages as the official protobuf runtime sees them, compiled at bench time.

The grpcio baselines and the grpcio client use ``protoc``'s own Python output for
``protos/`` (grpcio-tools, a development dependency), as every published sample does;
nothing of avaproto's generated code is involved on their side.
"""

from __future__ import annotations

import importlib
import importlib.resources
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from avaproto.messages import METHOD_PATH

PROTOS = Path(__file__).resolve().parents[1] / "protos"
SERVICE, _, METHOD = METHOD_PATH.strip("/").rpartition("/")
#: Messages a frame may need: a 1080p RGB24 frame is 6.2 MB, over grpcio's 4 MiB default.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]

# RAW and RGB24 in the contract's enums (VideoFrameSampleFormat.Encoding / PixelFormat).
RAW = 3
RGB24 = 60

_scratch: tempfile.TemporaryDirectory[str] | None = None


def official_messages() -> ModuleType:
    """``extension_pb2``, compiled once per process into a directory removed at exit."""
    global _scratch
    if "extension_pb2" in sys.modules:
        return sys.modules["extension_pb2"]
    from grpc_tools import protoc

    _scratch = tempfile.TemporaryDirectory(prefix="bench-protos-")
    include = importlib.resources.files("grpc_tools") / "_proto"
    sources = sorted(p.name for p in PROTOS.glob("*.proto"))
    if protoc.main(
        ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={_scratch.name}", *sources]
    ):
        raise RuntimeError(f"protoc failed on {sources}")
    sys.path.insert(0, _scratch.name)  # the modules import each other by top-level name
    return importlib.import_module("extension_pb2")


def descriptor_message(
    pb: ModuleType,
    width: int,
    height: int,
    *,
    shm: tuple[str, int] | None = None,
    timescale: int = 90000,
) -> Any:
    """The pipeline's first message: RAW RGB24 frames, embedded or in segment ``shm``."""
    message = pb.MediaStreamMessage(sequence_number=1)
    descriptor = message.media_stream_descriptor
    descriptor.graph_identifier.graph_instance_name = "bench"
    descriptor.graph_identifier.graph_node_name = "grpcExtension"
    media = descriptor.media_descriptor
    media.timescale = timescale
    sample_format = media.video_frame_sample_format
    sample_format.encoding = RAW
    sample_format.pixel_format = RGB24
    sample_format.dimensions.width = width
    sample_format.dimensions.height = height
    if shm is not None:
        properties = descriptor.shared_memory_buffer_transfer_properties
        properties.handle_name, properties.length_bytes = shm
    return message
