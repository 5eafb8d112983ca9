"""Byte compatibility of avaproto's messages with the official protobuf runtime.

Every other pipeline and extension speaks the protocol through some protobuf runtime,
never through avaproto, so compatibility is judged against the reference one: at test
time ``protos/`` is compiled by grpcio-tools' protoc into ``*_pb2`` modules of the
``protobuf`` package. The comparison is then between two independent code generators
reading the same ``.proto`` files, and, through the contract table below, between
``protos/`` and the contract itself.

Messages travel both ways:

* built with the official runtime, read by avaproto (betterproto2's ``parse`` and the
  copy-free ``avaproto.codec.decode_message``) and written back by avaproto (``bytes()``
  and ``avaproto.codec.encode_message``): the same values, and the same bytes;
* built with avaproto's classes, read by the official runtime: the same values, and
  written back by the official runtime to the same bytes.

Protobuf lets a writer put fields and map entries in any order, and two writers do
differ there: the official deterministic serializer sorts map entries by key where
avaproto keeps insertion order, and betterproto2 writes fields in declaration order
where the official runtime writes them by number. Where a message has such freedom the
bytes are compared by value (both sides parsed by the official runtime); everywhere
else, byte for byte.

One builder makes each message with either implementation's classes (a ``Kit``), so the
two directions check the same rich messages: every oneof branch and its absence, maps,
repeated fields, every enum value, uint64 values above 2^63, uint32 maxima and float32
extremes. Coverage tests walk those messages and fail when a message type, field, oneof
branch or enum value of ``protos/`` is not exercised, so a message added to the contract
cannot go untested.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.resources
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import betterproto2
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor
from grpc_tools import protoc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avaproto import codec, messages
from avaproto.codegen import PROTOS
from avaproto.messages import MediaStreamMessage

U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1
#: Above the largest signed 64-bit value: a reader that takes uint64 as int64 gets these wrong.
ABOVE_I64 = 2**63 + 1
F32_MAX = 3.4028234663852886e38
F32_TINY = 1.401298464324817e-45  # the smallest positive (subnormal) float32

PACKAGE = "microsoft.azure.media.live_video_analytics.extensibility.grpc.v1"

# --- the contract (restated from the protocol's .proto facts) --------------------------------

#: Which messages each .proto file defines.
FILES = {
    "extension.proto": {
        "MediaStreamMessage",
        "MediaStreamDescriptor",
        "MediaSample",
        "GraphIdentifier",
        "SharedMemoryBufferTransferProperties",
    },
    "media.proto": {
        "MediaDescriptor",
        "VideoFrameSampleFormat",
        "Dimensions",
        "ContentBytes",
        "ContentReference",
    },
    "inferencing.proto": {
        "Inference",
        "Classification",
        "Motion",
        "Entity",
        "Text",
        "Event",
        "InferenceOther",
        "Attribute",
        "Tag",
        "Rectangle",
    },
}
IMPORTS = {
    "extension.proto": ["inferencing.proto", "media.proto"],
    "media.proto": [],
    "inferencing.proto": [],
}

#: Every field of every message: name -> (number, type).
CONTRACT: dict[str, dict[str, tuple[int, str]]] = {
    "MediaStreamMessage": {
        "sequence_number": (1, "uint64"),
        "ack_sequence_number": (2, "uint64"),
        "media_stream_descriptor": (5, "MediaStreamDescriptor"),
        "media_sample": (6, "MediaSample"),
    },
    "MediaStreamDescriptor": {
        "graph_identifier": (1, "GraphIdentifier"),
        "extension_identifier": (2, "string"),
        "extension_configuration": (3, "string"),
        "media_descriptor": (5, "MediaDescriptor"),
        "shared_memory_buffer_transfer_properties": (10, "SharedMemoryBufferTransferProperties"),
    },
    "MediaSample": {
        "timestamp": (1, "uint64"),
        "content_bytes": (5, "ContentBytes"),
        "content_reference": (6, "ContentReference"),
        "inferences": (10, "repeated Inference"),
    },
    "GraphIdentifier": {
        "media_services_arm_id": (1, "string"),
        "graph_instance_name": (2, "string"),
        "graph_node_name": (3, "string"),
    },
    "SharedMemoryBufferTransferProperties": {
        "handle_name": (1, "string"),
        "length_bytes": (2, "uint64"),
    },
    "MediaDescriptor": {
        "timescale": (1, "uint32"),
        "video_frame_sample_format": (5, "VideoFrameSampleFormat"),
    },
    "VideoFrameSampleFormat": {
        "encoding": (1, "enum Encoding"),
        "pixel_format": (2, "enum PixelFormat"),
        "dimensions": (3, "Dimensions"),
        "stride_bytes": (4, "uint32"),
    },
    "Dimensions": {"width": (1, "uint32"), "height": (2, "uint32")},
    "ContentBytes": {"bytes": (1, "bytes")},
    "ContentReference": {"address_offset": (1, "uint64"), "length_bytes": (2, "uint64")},
    "Inference": {
        "type": (1, "enum InferenceType"),
        "subtype": (2, "string"),
        "inference_id": (3, "string"),
        "related_inferences": (4, "repeated string"),
        "sequence_id": (14, "string"),
        "classification": (5, "Classification"),
        "motion": (6, "Motion"),
        "entity": (7, "Entity"),
        "text": (8, "Text"),
        "event": (9, "Event"),
        "other": (13, "InferenceOther"),
        "extensions": (15, "map<string, string>"),
    },
    "Classification": {"tag": (1, "Tag"), "attributes": (2, "repeated Attribute")},
    "Motion": {"box": (1, "Rectangle")},
    "Entity": {
        "tag": (1, "Tag"),
        "attributes": (2, "repeated Attribute"),
        "box": (3, "Rectangle"),
        "id": (4, "string"),
    },
    "Text": {
        "value": (1, "string"),
        "language": (2, "string"),
        "start_timestamp": (5, "uint64"),
        "end_timestamp": (6, "uint64"),
    },
    "Event": {"name": (1, "string"), "properties": (7, "map<string, string>")},
    "InferenceOther": {"content_type": (1, "string"), "content_bytes": (2, "bytes")},
    "Attribute": {"name": (1, "string"), "value": (2, "string"), "confidence": (3, "float")},
    "Tag": {"value": (2, "string"), "confidence": (3, "float")},
    "Rectangle": {"l": (1, "float"), "t": (2, "float"), "w": (3, "float"), "h": (4, "float")},
}

#: Every oneof: message -> oneof -> its fields.
ONEOFS: dict[str, dict[str, tuple[str, ...]]] = {
    "MediaStreamMessage": {"payload": ("media_stream_descriptor", "media_sample")},
    "MediaStreamDescriptor": {
        "stream_identifier": ("graph_identifier", "extension_identifier"),
        "data_transfer_properties": ("shared_memory_buffer_transfer_properties",),
    },
    "MediaSample": {"content": ("content_bytes", "content_reference")},
    "MediaDescriptor": {"media_sample_format": ("video_frame_sample_format",)},
    "Inference": {
        "value": ("classification", "motion", "entity", "text", "event", "other"),
    },
}

#: Every enum, by the message it is nested in.
ENUMS: dict[tuple[str, str], dict[str, int]] = {
    ("VideoFrameSampleFormat", "Encoding"): {"BMP": 0, "JPG": 1, "PNG": 2, "RAW": 3},
    ("VideoFrameSampleFormat", "PixelFormat"): {
        "NONE": 0,
        "YUV420P": 20,
        "RGB565BE": 40,
        "RGB565LE": 41,
        "RGB555BE": 42,
        "RGB555LE": 43,
        "RGB24": 60,
        "BGR24": 61,
        "ARGB": 80,
        "RGBA": 81,
        "ABGR": 82,
        "BGRA": 83,
    },
    ("Inference", "InferenceType"): {
        "AUTO": 0,
        "CLASSIFICATION": 1,
        "MOTION": 2,
        "ENTITY": 3,
        "TEXT": 4,
        "EVENT": 5,
        "OTHER": 15,
    },
}

SERVICE = "MediaGraphExtension"
METHOD = "ProcessMediaStream"

# --- compiling protos/ with the official runtime --------------------------------------


def compile_official(output: Path) -> dict[str, ModuleType]:
    """protoc's own Python output for every file of ``protos/``, imported.

    The modules import each other by top-level name (``import media_pb2``), so the
    directory is on ``sys.path`` while they load; afterwards both ``sys.path`` and
    ``sys.modules`` are put back as they were, and the modules live on only here.
    """
    include = importlib.resources.files("grpc_tools") / "_proto"
    sources = sorted(p.name for p in PROTOS.glob("*.proto"))
    status = protoc.main(
        ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={output}", *sources]
    )
    assert status == 0, f"protoc failed on {sources}"
    names = [f"{Path(source).stem}_pb2" for source in sources]
    saved = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    sys.path.insert(0, str(output))
    try:
        return {
            f"{Path(name).stem.removesuffix('_pb2')}.proto": importlib.import_module(name)
            for name in names
        }
    finally:
        sys.path.remove(str(output))
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def official_kit(modules: dict[str, ModuleType]) -> SimpleNamespace:
    classes = {
        name: getattr(module, name)
        for module in modules.values()
        for name in module.DESCRIPTOR.message_types_by_name
    }
    enums = {
        enum: SimpleNamespace(**dict(getattr(classes[parent], enum).items()))
        for parent, enum in ENUMS
    }
    return SimpleNamespace(**classes, **enums)


def project_kit() -> SimpleNamespace:
    """avaproto's classes under the contract's names (nested enums by their short names)."""
    classes = {name: getattr(messages, name) for name in CONTRACT}
    enums = {
        enum: SimpleNamespace(**{member.name: member for member in getattr(messages, enum)})
        for _, enum in ENUMS
    }
    return SimpleNamespace(**classes, **enums)


# --- one builder for both implementations ---------------------------------------------


def every_kind_of_inference(k: Any) -> list[Any]:
    box = k.Rectangle(l=0.125, t=0.25, w=0.5, h=1.0)
    tag = k.Tag(value="person", confidence=0.875)
    attributes = [
        k.Attribute(name="color", value="red", confidence=0.5),
        k.Attribute(name="age", value="", confidence=1.0),
    ]
    kind = k.InferenceType
    return [
        # Map entries deliberately not in key order (see the module docstring).
        k.Inference(
            type=kind.AUTO, subtype="plain", extensions={"zeta": "z", "alpha": "a", "mid": ""}
        ),
        k.Inference(
            type=kind.CLASSIFICATION,
            inference_id="c1",
            classification=k.Classification(tag=tag, attributes=attributes),
        ),
        k.Inference(type=kind.MOTION, motion=k.Motion(box=box)),
        k.Inference(
            type=kind.ENTITY,
            subtype="vehicle",
            inference_id="e1",
            related_inferences=["c1", "t1", ""],
            sequence_id="track-7",
            entity=k.Entity(tag=tag, attributes=attributes, box=box, id="car-42"),
        ),
        k.Inference(
            type=kind.TEXT,
            inference_id="t1",
            text=k.Text(
                value="Grüße, 世界 🚗",
                language="de-DE",
                start_timestamp=ABOVE_I64,
                end_timestamp=U64_MAX,
            ),
        ),
        k.Inference(
            type=kind.EVENT,
            event=k.Event(name="entered", properties={"zone": "B", "door": "2", "": "no key"}),
        ),
        k.Inference(
            type=kind.OTHER,
            other=k.InferenceOther(
                content_type="application/octet-stream", content_bytes=b'{"a":1}\x00\xff'
            ),
        ),
        # Float32 extremes, and a value set while the type is left to be inferred.
        k.Inference(
            motion=k.Motion(box=k.Rectangle(l=F32_MAX, t=F32_TINY, w=math.inf, h=-1.5)),
        ),
    ]


def video_format(k: Any, encoding: str, pixel_format: str) -> Any:
    return k.MediaStreamMessage(
        sequence_number=1,
        media_stream_descriptor=k.MediaStreamDescriptor(
            graph_identifier=k.GraphIdentifier(graph_node_name="node"),
            media_descriptor=k.MediaDescriptor(
                timescale=90000,
                video_frame_sample_format=k.VideoFrameSampleFormat(
                    encoding=getattr(k.Encoding, encoding),
                    pixel_format=getattr(k.PixelFormat, pixel_format),
                    dimensions=k.Dimensions(width=U32_MAX, height=U32_MAX),
                    stride_bytes=U32_MAX,
                ),
            ),
        ),
    )


def rich_messages(k: Any) -> dict[str, Any]:
    """Named MediaStreamMessages built with the classes of kit ``k``."""
    cases = {
        "pipeline-descriptor-shared-memory": k.MediaStreamMessage(
            sequence_number=1,
            media_stream_descriptor=k.MediaStreamDescriptor(
                graph_identifier=k.GraphIdentifier(
                    media_services_arm_id="/subscriptions/s/resourceGroups/g/providers/"
                    "microsoft.media/videoanalyzers/a",
                    graph_instance_name="instance",
                    graph_node_name="grpcExtension",
                ),
                extension_configuration='{"model": "yolo", "threshold": 0.5}',
                media_descriptor=k.MediaDescriptor(
                    timescale=90000,
                    video_frame_sample_format=k.VideoFrameSampleFormat(
                        encoding=k.Encoding.RAW,
                        pixel_format=k.PixelFormat.RGB24,
                        dimensions=k.Dimensions(width=416, height=416),
                        stride_bytes=1280,
                    ),
                ),
                shared_memory_buffer_transfer_properties=(
                    k.SharedMemoryBufferTransferProperties(
                        handle_name="inference_client_share_memory_2146989006636459346",
                        length_bytes=U64_MAX,
                    )
                ),
            ),
        ),
        "extension-descriptor-inferences-only": k.MediaStreamMessage(
            sequence_number=1,
            ack_sequence_number=1,
            media_stream_descriptor=k.MediaStreamDescriptor(
                extension_identifier="customExtensionName",
                media_descriptor=k.MediaDescriptor(timescale=U32_MAX),
            ),
        ),
        # Oneof members and submessages that are set but hold only defaults are still
        # present on the wire (as empty fields), unlike unset ones.
        "descriptor-set-but-empty": k.MediaStreamMessage(
            sequence_number=U64_MAX,
            ack_sequence_number=U64_MAX,
            media_stream_descriptor=k.MediaStreamDescriptor(
                extension_identifier="",
                media_descriptor=k.MediaDescriptor(
                    video_frame_sample_format=k.VideoFrameSampleFormat()
                ),
                shared_memory_buffer_transfer_properties=(k.SharedMemoryBufferTransferProperties()),
            ),
        ),
        "descriptor-without-anything": k.MediaStreamMessage(
            media_stream_descriptor=k.MediaStreamDescriptor()
        ),
        "sample-embedded": k.MediaStreamMessage(
            sequence_number=ABOVE_I64,
            ack_sequence_number=2**63,
            media_sample=k.MediaSample(
                timestamp=U64_MAX, content_bytes=k.ContentBytes(bytes=bytes(range(256)) * 4)
            ),
        ),
        "sample-embedded-empty": k.MediaStreamMessage(
            sequence_number=2, media_sample=k.MediaSample(content_bytes=k.ContentBytes())
        ),
        "sample-shared-memory": k.MediaStreamMessage(
            sequence_number=3,
            ack_sequence_number=2,
            media_sample=k.MediaSample(
                timestamp=ABOVE_I64,
                content_reference=k.ContentReference(
                    address_offset=ABOVE_I64, length_bytes=U64_MAX
                ),
            ),
        ),
        "sample-inferences-of-every-kind": k.MediaStreamMessage(
            sequence_number=4,
            ack_sequence_number=4,
            media_sample=k.MediaSample(timestamp=2**63, inferences=every_kind_of_inference(k)),
        ),
        "sample-content-and-inferences": k.MediaStreamMessage(
            sequence_number=5,
            media_sample=k.MediaSample(
                timestamp=1,
                content_reference=k.ContentReference(length_bytes=1),
                inferences=[k.Inference(type=k.InferenceType.MOTION, motion=k.Motion())],
            ),
        ),
        "sample-empty": k.MediaStreamMessage(sequence_number=6, media_sample=k.MediaSample()),
        "acknowledgement-only": k.MediaStreamMessage(sequence_number=7, ack_sequence_number=6),
        "nothing-at-all": k.MediaStreamMessage(),
    }
    for name in ENUMS["VideoFrameSampleFormat", "Encoding"]:
        cases[f"encoding-{name}"] = video_format(k, name, "NONE")
    for name in ENUMS["VideoFrameSampleFormat", "PixelFormat"]:
        cases[f"pixel-format-{name}"] = video_format(k, "RAW", name)
    return cases


PROJECT_MESSAGES = rich_messages(project_kit())
CASES = list(PROJECT_MESSAGES)


@pytest.fixture(scope="session")
def official(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    modules = compile_official(tmp_path_factory.mktemp("official_pb2"))
    kit = official_kit(modules)
    return SimpleNamespace(modules=modules, kit=kit, messages=rich_messages(kit))


# --- comparing -------------------------------------------------------------------------

Decoder = Callable[[bytes], MediaStreamMessage]
Encoder = Callable[[MediaStreamMessage], bytes]
DECODERS: dict[str, Decoder] = {
    "betterproto2": MediaStreamMessage.parse,
    "codec": codec.decode_message,
}
ENCODERS: dict[str, Encoder] = {"betterproto2": bytes, "codec": codec.encode_message}


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def assert_same_values(ours: Any, theirs: Any, where: str = "") -> None:
    """Every field of avaproto's ``ours`` holds the value of the official ``theirs``."""
    desc = theirs.DESCRIPTOR
    where = where or desc.name
    assert type(ours).__name__ == desc.name, where
    for oneof in desc.oneofs:
        branch = betterproto2.which_one_of(ours, oneof.name)[0] or None
        assert branch == theirs.WhichOneof(oneof.name), f"{where}.{oneof.name}"
    for field in desc.fields:
        mine, other = getattr(ours, field.name), getattr(theirs, field.name)
        at = f"{where}.{field.name}"
        if field.containing_oneof and theirs.WhichOneof(field.containing_oneof.name) != field.name:
            continue  # an unset branch: None in avaproto, the default in the official runtime
        if is_map(field):
            assert dict(mine) == dict(other), at
        elif field.is_repeated:
            assert len(mine) == len(other), at
            for index, (a, b) in enumerate(zip(mine, other, strict=True)):
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    assert_same_values(a, b, f"{at}[{index}]")
                else:
                    assert a == b, f"{at}[{index}]"
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            assert (mine is not None) == theirs.HasField(field.name), at
            if mine is not None:
                assert_same_values(mine, other, at)
        elif field.type == FieldDescriptor.TYPE_ENUM:
            assert int(mine) == other, at
        elif field.type == FieldDescriptor.TYPE_BYTES:
            assert bytes(mine) == other, at
        else:
            assert type(mine) is type(other) and mine == other, (at, mine, other)


def written_in_another_order(ours: Any) -> bool:
    """Whether avaproto writes this message's fields in another order than their numbers.

    betterproto2 writes fields in the order the ``.proto`` declares them, the official
    runtime by number; the two differ where a message declares a field before one with a
    lower number and both are set. Legal protobuf, so compared by value.
    """
    if not isinstance(ours, betterproto2.Message):
        return False
    meta = type(ours)._betterproto
    numbers = [
        meta.meta_by_field_name[f.name].number
        for f in dataclasses.fields(ours)
        if f.name in meta.meta_by_field_name and ours.is_set(f.name)
    ]
    if numbers != sorted(numbers):
        return True
    children = (getattr(ours, name) for name in meta.meta_by_field_name)
    return any(
        written_in_another_order(item)
        for child in children
        for item in (child if isinstance(child, list) else [child])
    )


def maps_of_several_entries(ours: Any) -> bool:
    """Whether a map with two or more entries occurs (its entry order is the writer's)."""
    if not isinstance(ours, betterproto2.Message):
        return False
    for name in type(ours)._betterproto.meta_by_field_name:
        child = getattr(ours, name)
        if isinstance(child, dict) and len(child) > 1:
            return True
        items = child if isinstance(child, list) else [child]
        if any(maps_of_several_entries(item) for item in items):
            return True
    return False


def assert_same_wire(ours: bytes, theirs: bytes, official: SimpleNamespace, *, exact: bool) -> None:
    """Both serializations are the same message; byte for byte when ``exact``."""
    parse = official.kit.MediaStreamMessage.FromString
    assert parse(ours) == parse(theirs)
    if exact:
        assert ours.hex() == theirs.hex()
    else:
        assert parse(ours).SerializeToString(deterministic=True) == theirs


# --- walking official messages, for coverage -------------------------------------------


@dataclasses.dataclass
class Coverage:
    messages: set[str] = dataclasses.field(default_factory=set)
    fields: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    branches: set[tuple[str, str, str | None]] = dataclasses.field(default_factory=set)
    enum_values: set[tuple[str, int]] = dataclasses.field(default_factory=set)
    largest: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)

    def walk(self, message: Any) -> None:
        desc = message.DESCRIPTOR
        self.messages.add(desc.name)
        for oneof in desc.oneofs:
            self.branches.add((desc.name, oneof.name, message.WhichOneof(oneof.name)))
        for field in desc.fields:
            # Enum zeros are not "listed" (proto3 omits defaults) but are values all the same.
            if field.type == FieldDescriptor.TYPE_ENUM:
                self.enum_values.add((field.enum_type.name, getattr(message, field.name)))
        for field, value in message.ListFields():
            key = (desc.name, field.name)
            self.fields.add(key)
            if is_map(field):
                continue
            values = list(value) if field.is_repeated else [value]
            for item in values:
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    self.walk(item)
                elif isinstance(item, int) and field.type != FieldDescriptor.TYPE_ENUM:
                    self.largest[key] = max(self.largest.get(key, 0), item)


def official_descriptors(official: SimpleNamespace) -> Iterator[Any]:
    for module in official.modules.values():
        yield from module.DESCRIPTOR.message_types_by_name.values()


def field_type(field: FieldDescriptor) -> str:
    if is_map(field):
        key, value = field.message_type.fields
        return f"map<{field_type(key)}, {field_type(value)}>"
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        base = field.message_type.name
    elif field.type == FieldDescriptor.TYPE_ENUM:
        base = f"enum {field.enum_type.name}"
    else:
        scalars = {
            FieldDescriptor.TYPE_UINT64: "uint64",
            FieldDescriptor.TYPE_UINT32: "uint32",
            FieldDescriptor.TYPE_STRING: "string",
            FieldDescriptor.TYPE_BYTES: "bytes",
            FieldDescriptor.TYPE_FLOAT: "float",
        }
        base = scalars.get(field.type, f"protobuf type {field.type}")
    return f"repeated {base}" if field.is_repeated else base


# --- tests ------------------------------------------------------------------------------


@pytest.mark.rule("CONN-2", "CONN-4")
class TestTheContract:
    """protos/, as the official compiler reads it, states the contract's facts."""

    def test_files_package_syntax_and_imports(self, official: SimpleNamespace) -> None:
        assert set(official.modules) == set(FILES)
        for name, module in official.modules.items():
            proto = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
            assert (proto.name, proto.package, proto.syntax) == (name, PACKAGE, "proto3")
            assert sorted(proto.dependency) == IMPORTS[name], name
            assert set(module.DESCRIPTOR.message_types_by_name) == FILES[name], name

    def test_service_and_method(self, official: SimpleNamespace) -> None:
        file = official.modules["extension.proto"].DESCRIPTOR
        assert [s.name for s in file.services_by_name.values()] == [SERVICE]
        service = file.services_by_name[SERVICE]
        assert [m.name for m in service.methods] == [METHOD]
        method = service.methods_by_name[METHOD]
        assert method.full_name == f"{PACKAGE}.{SERVICE}.{METHOD}"
        assert method.client_streaming and method.server_streaming
        assert method.input_type.full_name == f"{PACKAGE}.MediaStreamMessage"
        assert method.output_type.full_name == f"{PACKAGE}.MediaStreamMessage"
        for module in official.modules.values():
            others = module.DESCRIPTOR.services_by_name
            assert module is official.modules["extension.proto"] or not others

    def test_fields_numbers_and_types(self, official: SimpleNamespace) -> None:
        found = {
            desc.name: {f.name: (f.number, field_type(f)) for f in desc.fields}
            for desc in official_descriptors(official)
        }
        assert found == CONTRACT

    def test_oneofs(self, official: SimpleNamespace) -> None:
        found = {
            desc.name: {o.name: tuple(f.name for f in o.fields) for o in desc.oneofs}
            for desc in official_descriptors(official)
            if desc.oneofs
        }
        assert found == ONEOFS

    def test_enums(self, official: SimpleNamespace) -> None:
        found = {
            (desc.name, enum.name): {v.name: v.number for v in enum.values}
            for desc in official_descriptors(official)
            for enum in desc.enum_types
        }
        assert found == ENUMS
        for module in official.modules.values():
            assert not module.DESCRIPTOR.enum_types_by_name  # all enums are nested

    def test_avaproto_classes_carry_the_same_numbers(self) -> None:
        for name, fields in CONTRACT.items():
            meta = getattr(messages, name)._betterproto
            numbers = {field: m.number for field, m in meta.meta_by_field_name.items()}
            assert numbers == {field: n for field, (n, _) in fields.items()}, name
            groups: dict[str, tuple[str, ...]] = {}
            for field, m in meta.meta_by_field_name.items():
                if m.group:
                    groups[m.group] = (*groups.get(m.group, ()), field)
            assert {g: set(f) for g, f in groups.items()} == {
                g: set(f) for g, f in ONEOFS.get(name, {}).items()
            }, name
        for (_, enum), values in ENUMS.items():
            assert {m.name: int(m) for m in getattr(messages, enum)} == values, enum


@pytest.mark.rule("CONN-4", "CONN-5")
class TestTheCasesCoverTheContract:
    """The rich messages exercise every part of protos/: adding to the contract without
    adding to them fails here."""

    @pytest.fixture
    def seen(self, official: SimpleNamespace) -> Coverage:
        coverage = Coverage()
        for message in official.messages.values():
            coverage.walk(message)
        return coverage

    def test_every_message_type(self, official: SimpleNamespace, seen: Coverage) -> None:
        pool = {desc.name for desc in official_descriptors(official)}
        assert pool == set(CONTRACT)
        assert seen.messages == pool

    def test_every_field(self, seen: Coverage) -> None:
        every = {(m, f) for m, fields in CONTRACT.items() for f in fields}
        assert every - seen.fields == set()

    def test_every_oneof_branch_and_its_absence(self, seen: Coverage) -> None:
        every = {
            (m, oneof, branch)
            for m, oneofs in ONEOFS.items()
            for oneof, fields in oneofs.items()
            for branch in (*fields, None)
        }
        assert every - seen.branches == set()

    def test_every_enum_value(self, seen: Coverage) -> None:
        every = {(enum, v) for (_, enum), values in ENUMS.items() for v in values.values()}
        assert every - seen.enum_values == set()

    def test_integers_at_their_limits(self, seen: Coverage) -> None:
        for message, fields in CONTRACT.items():
            for field, (_, kind) in fields.items():
                if kind == "uint64":
                    assert seen.largest.get((message, field), 0) >= 2**63, (message, field)
                elif kind == "uint32":
                    assert seen.largest.get((message, field), 0) == U32_MAX, (message, field)

    def test_both_builders_make_the_same_messages(self, official: SimpleNamespace) -> None:
        parse = official.kit.MediaStreamMessage.FromString
        assert set(official.messages) == set(PROJECT_MESSAGES)
        for name, ours in PROJECT_MESSAGES.items():
            assert parse(bytes(ours)) == official.messages[name], name


@pytest.mark.rule("CONN-4", "CONN-5")
class TestOfficialToAvaproto:
    """What the official runtime writes, avaproto reads to the same values and writes
    back to the same bytes."""

    @pytest.mark.parametrize("decoder", DECODERS)
    @pytest.mark.parametrize("case", CASES)
    def test_rich_message(self, official: SimpleNamespace, case: str, decoder: str) -> None:
        theirs = official.messages[case]
        wire = theirs.SerializeToString(deterministic=True)
        ours = DECODERS[decoder](wire)
        assert_same_values(ours, theirs)
        # Map entries arrive sorted and stay in arrival order: only field order can differ.
        exact = not written_in_another_order(ours)
        for encode in ENCODERS.values():
            assert_same_wire(encode(ours), wire, official, exact=exact)

    @pytest.mark.parametrize("decoder", DECODERS)
    def test_enum_values_unknown_to_the_contract_survive(
        self, official: SimpleNamespace, decoder: str
    ) -> None:
        # A peer built from a later contract may send values this one lacks; proto3
        # enums are open, so they are kept rather than refused or zeroed.
        k = official.kit
        theirs = k.MediaStreamMessage(
            media_stream_descriptor=k.MediaStreamDescriptor(
                media_descriptor=k.MediaDescriptor(
                    video_frame_sample_format=k.VideoFrameSampleFormat(
                        encoding=7, pixel_format=2**31 - 1
                    )
                )
            )
        )
        wire = theirs.SerializeToString(deterministic=True)
        ours = DECODERS[decoder](wire)
        assert_same_values(ours, theirs)
        assert bytes(ours) == wire
        sample = k.MediaStreamMessage(media_sample=k.MediaSample(inferences=[k.Inference(type=9)]))
        wire = sample.SerializeToString()
        ours = DECODERS[decoder](wire)
        assert_same_values(ours, sample)
        assert bytes(ours) == wire


@pytest.mark.rule("CONN-4", "CONN-5")
class TestAvaprotoToOfficial:
    """What avaproto writes, the official runtime reads to the same values and writes
    back to the same bytes."""

    @pytest.mark.parametrize("case", CASES)
    def test_rich_message(self, official: SimpleNamespace, case: str) -> None:
        ours = PROJECT_MESSAGES[case]
        wire = bytes(ours)
        assert codec.encode_message(ours) == wire
        theirs = official.kit.MediaStreamMessage.FromString(wire)
        assert_same_values(ours, theirs)
        exact = not written_in_another_order(ours) and not maps_of_several_entries(ours)
        assert_same_wire(wire, theirs.SerializeToString(deterministic=True), official, exact=exact)

    def test_negative_zero_reads_as_zero(self, official: SimpleNamespace) -> None:
        # proto3 leaves out a float equal to its default, and -0.0 == 0.0: avaproto does
        # not write it, so the reader sees +0.0. The value is the same number; only the
        # sign bit, meaningless for confidences and fractions of an image, is lost.
        wire = bytes(messages.Rectangle(l=-0.0, t=0.5))
        theirs = official.kit.Rectangle.FromString(wire)
        assert theirs.l == 0.0 and math.copysign(1.0, theirs.l) == 1.0 and theirs.t == 0.5


@pytest.mark.rule("CONN-4")
def test_every_message_is_written_in_field_number_order() -> None:
    for name in CONTRACT:
        cls = getattr(messages, name)
        meta = cls._betterproto.meta_by_field_name
        numbers = [meta[f.name].number for f in dataclasses.fields(cls)]
        assert numbers == sorted(numbers), name


# --- random messages --------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
U64 = st.one_of(st.integers(0, U64_MAX), st.integers(2**63, U64_MAX), st.sampled_from([0, U64_MAX]))
U32 = st.one_of(st.integers(0, U32_MAX), st.sampled_from([0, U32_MAX]))
# -0.0 is left out: it reads back as +0.0 (see test_negative_zero_reads_as_zero).
F32 = st.floats(width=32, allow_nan=False).filter(lambda x: x != 0 or math.copysign(1, x) > 0)
MAP = st.dictionaries(TEXT, TEXT, max_size=3)


def random_messages(k: Any) -> st.SearchStrategy[Any]:
    """Random MediaStreamMessages built with kit ``k``: any oneof branch or none, any value."""

    def message(cls: Any, oneofs: tuple[dict[str, Any], ...] = (), **fields: Any) -> Any:
        @st.composite
        def build(draw: st.DrawFn) -> Any:
            kwargs = {name: draw(strategy) for name, strategy in fields.items()}
            for branches in oneofs:
                choice = draw(st.sampled_from([None, *branches]))
                if choice is not None:
                    kwargs[choice] = draw(branches[choice])
            return cls(**kwargs)

        return build()

    def enum(name: str) -> st.SearchStrategy[Any]:
        return st.sampled_from(list(vars(getattr(k, name)).values()))

    def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.none() | strategy

    box = message(k.Rectangle, l=F32, t=F32, w=F32, h=F32)
    tag = message(k.Tag, value=TEXT, confidence=F32)
    attributes = st.lists(message(k.Attribute, name=TEXT, value=TEXT, confidence=F32), max_size=2)
    values = {
        "classification": message(k.Classification, tag=maybe(tag), attributes=attributes),
        "motion": message(k.Motion, box=maybe(box)),
        "entity": message(k.Entity, tag=maybe(tag), attributes=attributes, box=maybe(box), id=TEXT),
        "text": message(k.Text, value=TEXT, language=TEXT, start_timestamp=U64, end_timestamp=U64),
        "event": message(k.Event, name=TEXT, properties=MAP),
        "other": message(k.InferenceOther, content_type=TEXT, content_bytes=st.binary(max_size=16)),
    }
    inference = message(
        k.Inference,
        (values,),
        type=enum("InferenceType"),
        subtype=TEXT,
        inference_id=TEXT,
        related_inferences=st.lists(TEXT, max_size=2),
        sequence_id=TEXT,
        extensions=MAP,
    )
    sample = message(
        k.MediaSample,
        (
            {
                "content_bytes": message(k.ContentBytes, bytes=st.binary(max_size=64)),
                "content_reference": message(
                    k.ContentReference, address_offset=U64, length_bytes=U64
                ),
            },
        ),
        timestamp=U64,
        inferences=st.lists(inference, max_size=3),
    )
    sample_format = message(
        k.VideoFrameSampleFormat,
        encoding=enum("Encoding"),
        pixel_format=enum("PixelFormat"),
        dimensions=maybe(message(k.Dimensions, width=U32, height=U32)),
        stride_bytes=U32,
    )
    descriptor = message(
        k.MediaStreamDescriptor,
        (
            {
                "graph_identifier": message(
                    k.GraphIdentifier,
                    media_services_arm_id=TEXT,
                    graph_instance_name=TEXT,
                    graph_node_name=TEXT,
                ),
                "extension_identifier": TEXT,
            },
            {
                "shared_memory_buffer_transfer_properties": message(
                    k.SharedMemoryBufferTransferProperties, handle_name=TEXT, length_bytes=U64
                )
            },
        ),
        extension_configuration=TEXT,
        media_descriptor=maybe(
            message(
                k.MediaDescriptor,
                ({"video_frame_sample_format": sample_format},),
                timescale=U32,
            )
        ),
    )
    return message(
        k.MediaStreamMessage,
        ({"media_stream_descriptor": descriptor, "media_sample": sample},),
        sequence_number=U64,
        ack_sequence_number=U64,
    )


RANDOM = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.rule("CONN-4", "CONN-5")
class TestRandomMessages:
    @RANDOM
    @given(data=st.data())
    def test_official_to_avaproto(self, official: SimpleNamespace, data: st.DataObject) -> None:
        theirs = data.draw(random_messages(official.kit))
        wire = theirs.SerializeToString(deterministic=True)
        for decode in DECODERS.values():
            ours = decode(wire)
            assert_same_values(ours, theirs)
            exact = not written_in_another_order(ours)
            for encode in ENCODERS.values():
                assert_same_wire(encode(ours), wire, official, exact=exact)

    @RANDOM
    @given(data=st.data())
    def test_avaproto_to_official(self, official: SimpleNamespace, data: st.DataObject) -> None:
        ours = data.draw(random_messages(project_kit()))
        wire = bytes(ours)
        assert codec.encode_message(ours) == wire
        theirs = official.kit.MediaStreamMessage.FromString(wire)
        assert_same_values(ours, theirs)
        exact = not written_in_another_order(ours) and not maps_of_several_entries(ours)
        assert_same_wire(wire, theirs.SerializeToString(deterministic=True), official, exact=exact)


# --- the hand-written encoder against the official runtime --------------------------------

_uint64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
_unit = st.floats(min_value=0, max_value=1, width=32)
_inferences = st.lists(
    st.one_of(
        st.builds(
            messages.Inference,
            type=st.sampled_from(list(messages.InferenceType)),
            subtype=st.text(max_size=6),
            sequence_id=st.text(max_size=4),
            motion=st.builds(
                messages.Motion,
                box=st.builds(messages.Rectangle, l=_unit, t=_unit, w=_unit, h=_unit),
            ),
        ),
        st.builds(
            messages.Inference,
            type=st.just(messages.InferenceType.ENTITY),
            entity=st.builds(
                messages.Entity,
                tag=st.builds(messages.Tag, value=st.text(max_size=6), confidence=_unit),
                id=st.text(max_size=4),
            ),
        ),
    ),
    max_size=3,
)
_content = st.one_of(
    st.none(),
    st.builds(messages.ContentBytes, bytes=st.binary(max_size=300)),
    st.builds(messages.ContentReference, address_offset=_uint64, length_bytes=_uint64),
)


def _sample_message(number: int, ack: int, timestamp: int, content: Any, found: Any) -> Any:
    sample = messages.MediaSample(timestamp=timestamp, inferences=found)
    if isinstance(content, messages.ContentBytes):
        sample.content_bytes = content
    elif content is not None:
        sample.content_reference = content
    return MediaStreamMessage(sequence_number=number, ack_sequence_number=ack, media_sample=sample)


@pytest.mark.rule("CONN-4")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_uint64, _uint64, _uint64, _content, _inferences, st.booleans())
def test_the_sample_encoder_writes_the_official_runtimes_bytes(
    official: SimpleNamespace,
    number: int,
    ack: int,
    timestamp: int,
    content: Any,
    found: Any,
    as_view: bool,
) -> None:
    ours = _sample_message(number, ack, timestamp, content, found)
    if as_view and isinstance(content, messages.ContentBytes):
        content.bytes = memoryview(bytearray(content.bytes))  # as the engine passes frames
    encoded = codec.encode_message(ours)
    theirs = official.kit.MediaStreamMessage.FromString(encoded)
    assert theirs.SerializeToString(deterministic=True) == encoded
    assert codec.decode_message(encoded) == MediaStreamMessage.parse(encoded)


@pytest.mark.rule("CONN-4")
def test_the_sample_encoder_is_not_the_generic_serializer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is taken for samples (so the test above checks the hand-written code)."""

    def refuse(self: Any) -> bytes:
        raise AssertionError("the generic serializer was called for a sample message")

    message = MediaStreamMessage(
        sequence_number=3, ack_sequence_number=2, media_sample=messages.MediaSample(timestamp=9)
    )
    monkeypatch.setattr(MediaStreamMessage, "__bytes__", refuse)
    assert codec.encode_message(message) == b"\x08\x03\x10\x02\x32\x02\x08\x09"


@pytest.mark.parametrize(
    "sample",
    [
        messages.MediaSample(timestamp=1 << 64),
        messages.MediaSample(
            content_reference=messages.ContentReference(address_offset=1 << 64, length_bytes=1)
        ),
    ],
    ids=["timestamp", "offset"],
)
def test_a_value_past_uint64_is_refused_as_the_official_runtime_refuses_it(
    sample: messages.MediaSample,
) -> None:
    """Written as an 11-byte varint, it would reach the peer as WIRE-1; refuse it here."""
    message = MediaStreamMessage(sequence_number=2, media_sample=sample)
    with pytest.raises(ValueError, match="does not fit in a uint64 field"):
        codec.encode_message(message)
