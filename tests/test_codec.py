"""The hand-written decoder agrees with the generated parser and never reads past its input."""

from __future__ import annotations

import re
import struct
import tracemalloc
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import grpclib.client
import grpclib.const
import grpclib.exceptions
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from avaproto.client import connect
from avaproto.codec import decode_message
from avaproto.errors import ProtocolError, RemoteProtocolError
from avaproto.messages import (
    METHOD_PATH,
    ContentBytes,
    ContentReference,
    Encoding,
    Inference,
    InferenceType,
    MediaSample,
    MediaStreamMessage,
    Motion,
    PixelFormat,
    Rectangle,
)
from avaproto.protocol.video_format import VideoFormat
from avaproto.server import running
from avaproto.status import Status
from avaproto.transport import _grpclib_private
from avaproto.transport.framing import WireCodec
from avaproto.transport.grpc_server import ExtensionServer, ServerConfig
from tests.builders import (
    FRAME_BYTES,
    embedded,
    extension_descriptor,
    pipeline_descriptor,
    referenced,
    video_format,
)

uint64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
inference = st.builds(
    Inference,
    type=st.sampled_from(list(InferenceType)),
    subtype=st.text(max_size=8),
    motion=st.builds(Motion, box=st.builds(Rectangle, l=st.just(0.25), w=st.just(0.5))),
)
sample = st.builds(
    MediaSample,
    timestamp=uint64,
    content_bytes=st.one_of(st.none(), st.builds(ContentBytes, bytes=st.binary(max_size=300))),
    inferences=st.lists(inference, max_size=3),
)
reference_sample = st.builds(
    MediaSample,
    timestamp=uint64,
    content_reference=st.builds(ContentReference, address_offset=uint64, length_bytes=uint64),
)
message = st.builds(
    MediaStreamMessage,
    sequence_number=uint64,
    ack_sequence_number=uint64,
    media_sample=st.one_of(st.none(), sample, reference_sample),
)


@pytest.mark.rule("WIRE-1", "EMB-1")
@settings(max_examples=300, deadline=None)
@given(message)
def test_decoder_agrees_with_the_generated_parser(original: MediaStreamMessage) -> None:
    wire = bytes(original)
    decoded = decode_message(wire)
    assert bytes(decoded) == wire
    assert decoded == MediaStreamMessage.parse(wire)


@pytest.mark.rule("EMB-1")
def test_embedded_content_is_a_view_of_the_received_buffer() -> None:
    frame = bytes(range(256)) * 100
    sample = MediaSample(content_bytes=ContentBytes(frame))
    wire = bytearray(bytes(MediaStreamMessage(media_sample=sample)))
    decoded = decode_message(wire)
    assert decoded.media_sample is not None and decoded.media_sample.content_bytes is not None
    content = decoded.media_sample.content_bytes.bytes
    assert isinstance(content, memoryview)
    assert content.obj is wire  # no copy: a window on the buffer it was read into
    assert bytes(content) == frame


@pytest.mark.rule("WIRE-1")
def test_descriptors_are_decoded_too() -> None:
    original = MediaStreamMessage(sequence_number=1, media_stream_descriptor=pipeline_descriptor())
    assert decode_message(bytes(original)) == original


@pytest.mark.rule("WIRE-2")
def test_each_message_nested_in_an_inference_counts_as_an_inference_does() -> None:
    """An entity of 24,000 attributes is 72,000 fields, but 24,000 objects to make: 358 ms
    of the event loop in 324 KB (700 bytes gzipped), before nested messages counted."""
    from avaproto.codec import INFERENCE_WEIGHT, MAX_FIELDS, STRING_WEIGHT
    from avaproto.messages import Attribute, Entity, MediaSample

    def sample(attributes: int) -> bytes:
        entity = Entity(attributes=[Attribute(name="n", value="v")] * attributes)
        inference = Inference(entity=entity)
        sample = MediaSample(inferences=[inference])
        return bytes(MediaStreamMessage(sequence_number=2, media_sample=sample))

    # Itself (its field, and its weight), and its name and value strings.
    per_attribute = 1 + INFERENCE_WEIGHT + 2 * STRING_WEIGHT
    fits = MAX_FIELDS // per_attribute - 10
    decoded = decode_message(sample(fits)).media_sample
    assert decoded is not None and decoded.inferences[0].entity is not None
    assert len(decoded.inferences[0].entity.attributes) == fits
    with pytest.raises(RemoteProtocolError) as caught:
        decode_message(sample(24_000))
    assert (caught.value.rule, caught.value.status) == ("WIRE-2", Status.RESOURCE_EXHAUSTED)


@pytest.mark.rule("WIRE-2")
def test_each_string_counts_as_the_object_it_becomes() -> None:
    """99,000 related_inferences in one inference, 792 KB, took 0.3 s to decode."""
    from avaproto.codec import MAX_FIELDS, STRING_WEIGHT
    from avaproto.messages import MediaSample

    def sample(strings: int) -> bytes:
        inference = Inference(related_inferences=["abcdef"] * strings)
        sample = MediaSample(inferences=[inference])
        return bytes(MediaStreamMessage(sequence_number=2, media_sample=sample))

    fits = MAX_FIELDS // STRING_WEIGHT - 100
    decoded = decode_message(sample(fits)).media_sample
    assert decoded is not None and len(decoded.inferences[0].related_inferences) == fits
    with pytest.raises(RemoteProtocolError) as caught:
        decode_message(sample(99_000))
    assert (caught.value.rule, caught.value.status) == ("WIRE-2", Status.RESOURCE_EXHAUSTED)


@pytest.mark.rule("WIRE-2")
def test_each_map_entry_counts_as_the_message_it_is() -> None:
    """20,000 extensions entries in one inference (159 KB, 279 bytes gzipped), counted
    as strings, fitted, and took a quarter of a second to decode."""
    from avaproto.codec import INFERENCE_WEIGHT, MAX_FIELDS
    from avaproto.messages import MediaSample

    def sample(entries: int) -> bytes:
        inference = Inference(extensions={f"k{n}": "v" for n in range(entries)})
        sample = MediaSample(inferences=[inference])
        return bytes(MediaStreamMessage(sequence_number=2, media_sample=sample))

    # Each entry: its field and weight, and its key and value fields.
    fits = MAX_FIELDS // (INFERENCE_WEIGHT + 2) - 100
    decoded = decode_message(sample(fits)).media_sample
    assert decoded is not None and len(decoded.inferences[0].extensions) == fits
    with pytest.raises(RemoteProtocolError) as caught:
        decode_message(sample(10_000))
    assert (caught.value.rule, caught.value.status) == ("WIRE-2", Status.RESOURCE_EXHAUSTED)
    assert "each map entry count as 10 more" in str(caught.value)


@pytest.mark.rule("WIRE-1")
@pytest.mark.parametrize(
    ("data", "fault"),
    [
        (b"\x08", "truncated or overlong varint"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "varint"),
        (b"\x32\x05\x08", "runs past the end"),
        (b"\x0b", "wire type 3"),
        (b"\x00", "field number 0"),
        (b"\x0a\x00", "sequence_number has wire type 2"),
        (b"\x2a\x02\x0a\x05", "MediaStreamDescriptor"),
    ],
)
def test_malformed_input_is_refused_precisely(data: bytes, fault: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode_message(data)
    assert (caught.value.rule, caught.value.status) == ("WIRE-1", Status.INVALID_ARGUMENT)
    assert fault in str(caught.value)
    assert "at byte" in str(caught.value)


@pytest.mark.rule("WIRE-1")
@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_wire_1(data: bytes) -> None:
    outcome: object
    try:
        outcome = decode_message(data)
    except RemoteProtocolError as error:
        outcome = error
    # Either a message or the one error of malformed input: nothing else escapes.
    assert isinstance(outcome, MediaStreamMessage) or (
        isinstance(outcome, RemoteProtocolError) and outcome.rule == "WIRE-1"
    )


@pytest.mark.rule("WIRE-1")
@settings(max_examples=100, deadline=None)
@given(message)
def test_a_framed_message_is_the_grpc_prefix_and_the_message(original: MediaStreamMessage) -> None:
    import struct

    from avaproto.codec import encode_framed, encode_message

    framed = encode_framed(original)
    body = encode_message(original)
    assert framed == struct.pack(">?I", False, len(body)) + body
    assert decode_message(framed[5:]) == MediaStreamMessage.parse(body)


@pytest.mark.parametrize("size", [0, 1000, 64 * 1024, 519_168])
@pytest.mark.parametrize("inferences", [0, 2])
@pytest.mark.parametrize("kind", ["bytes", "view of bytes", "bytearray", "strided view"])
def test_framed_pieces_are_the_framed_message_with_a_fixed_frame_not_copied(
    size: int, inferences: int, kind: str
) -> None:
    """A frame that cannot change (bytes, a contiguous view of them) is written from
    where it lies; one in a buffer its owner may reuse is copied, as before."""
    from avaproto.codec import SEPARATE_FROM, encode_framed, framed_pieces

    raw = bytes(range(256)) * (2 * size // 256) + bytes(2 * size % 256)
    frame: bytes | bytearray | memoryview = {
        "bytes": raw[:size],
        "view of bytes": memoryview(raw)[:size],
        "bytearray": bytearray(raw[:size]),
        "strided view": memoryview(raw)[: 2 * size : 2],
    }[kind]
    sample = MediaSample(
        timestamp=9,
        content_bytes=ContentBytes(bytes=frame),  # type: ignore[arg-type]
        inferences=[Inference(type=InferenceType.MOTION) for _ in range(inferences)],
    )
    original = MediaStreamMessage(sequence_number=300, ack_sequence_number=7, media_sample=sample)
    if kind == "strided view" and size:
        with pytest.raises(TypeError):  # as encode_framed refuses it: before any is sent
            framed_pieces(original)
        return
    pieces = framed_pieces(original)
    assert b"".join(pieces) == encode_framed(original)
    if size >= SEPARATE_FROM and kind in ("bytes", "view of bytes"):
        assert len(pieces) == 2 + bool(inferences)
        assert memoryview(pieces[1]).obj is raw or pieces[1] is frame  # not copied
        tracemalloc.start()
        framed_pieces(original)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < size // 4
    else:
        assert len(pieces) == 1


_valid = message.map(bytes)


@st.composite
def _mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes] = _valid) -> bytes:
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        last = max(len(data) - 1, 0)
        # Anywhere, or among the first bytes, where a large frame's envelope is.
        position = draw(
            st.integers(min_value=0, max_value=last)
            | st.integers(min_value=0, max_value=min(last, 24))
        )
        if kind == "flip" and data:
            data[position] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif kind == "insert":
            data[position:position] = bytes([draw(st.integers(min_value=0, max_value=255))])
        elif kind == "delete" and data:
            del data[position]
        else:
            del data[position:]
    return bytes(data)


@pytest.mark.rule("WIRE-1", "EMB-1")
@settings(max_examples=300, deadline=None)
@given(st.one_of(message, _mutated()))
def test_the_usual_layout_read_straight_through_is_what_the_walk_reads(
    original: MediaStreamMessage | bytes,
) -> None:
    """``decode_message`` reads the usual layout without walking its fields: what it
    reads so is what the walk reads (messages, and valid ones with bytes changed)."""
    from avaproto.codec import _decode_usual, _walk

    wire = original if isinstance(original, bytes) else bytes(original)
    data = memoryview(wire)
    usual = _decode_usual(data, len(data))
    if usual is None:
        return
    assert usual == _walk(data)
    assert bytes(usual) == bytes(_walk(data))


@pytest.mark.rule("WIRE-1")
@pytest.mark.parametrize(
    "wire",
    [
        b"\x08\x01\x32\x08\x32\x06\x08\x05\x10\x06\x08\x07",  # offset twice: the last
        b"\x32\x06\x08\x09\x08\x0a",  # timestamp twice
        b"\x32\x08\x32\x04\x08\x01\x10\x02\x08\x09",  # timestamp after the reference
        b"\x32\x08\x2a\x06\x0a\x01\xaa\x0a\x01\xbb",  # embedded bytes twice
        b"\x32\x02\x08\x01\x32\x02\x08\x02",  # the sample twice: merged
        b"\x08\x01\x08\x02",  # the number twice
        b"\x32\x07\x32\x05\x08\x01\x18\x02\x00",  # an unknown field, then field 0
    ],
)
def test_layouts_read_straight_through_are_read_as_the_walk_reads_them(wire: bytes) -> None:
    """Repeated, reordered and unknown fields: read as the walk reads them, or refused
    the same way (the last of a repeated field wins, and messages merge)."""

    def outcome(read: Any) -> object:
        try:
            return bytes(read(memoryview(wire)))
        except RemoteProtocolError as error:
            return error.rule, str(error)

    from avaproto.codec import _walk

    assert outcome(decode_message) == outcome(_walk)


@pytest.mark.parametrize(
    "original",
    [
        MediaStreamMessage(sequence_number=7, media_sample=referenced(0)),
        MediaStreamMessage(sequence_number=8, media_sample=referenced(FRAME_BYTES * 3)),
        MediaStreamMessage(sequence_number=300, ack_sequence_number=299),
        MediaStreamMessage(sequence_number=2, media_sample=embedded(100, 9)),
        MediaStreamMessage(sequence_number=2, media_sample=MediaSample()),
    ],
)
def test_the_usual_layouts_are_read_straight_through(original: MediaStreamMessage) -> None:
    from avaproto.codec import _decode_usual

    wire = memoryview(bytes(original))
    assert _decode_usual(wire, len(wire)) == original


@pytest.mark.rule("WIRE-1")
@settings(max_examples=400, deadline=None)
@given(_mutated(), st.binary(min_size=1, max_size=16), st.binary(min_size=1, max_size=16))
def test_mutated_messages_decode_or_raise_wire_1_and_stay_in_their_buffer(
    data: bytes, before: bytes, after: bytes
) -> None:
    """Valid messages with bytes flipped, inserted, deleted or cut: a message or WIRE-1,
    and the same outcome read from a window of a larger buffer (nothing outside it read)."""

    def outcome(buffer: bytes | memoryview) -> object:
        try:
            decoded = decode_message(buffer)
        except RemoteProtocolError as error:
            return (error.rule, error.status, error.detail.rpartition(" at byte")[0])
        return bytes(decoded)

    alone = outcome(data)
    if isinstance(alone, tuple):
        assert alone[:2] == ("WIRE-1", Status.INVALID_ARGUMENT)
    window = memoryview(before + data + after)[len(before) : len(before) + len(data)]
    assert outcome(window) == alone


@pytest.mark.rule("WIRE-1")
def test_a_message_of_unknown_fields_is_skipped_in_bounded_memory() -> None:
    """Nearly as many unknown fields as a message may hold: read through, not collected."""
    import tracemalloc

    from avaproto.codec import MAX_FIELDS

    data = b"\x08\x01" + b"\xf8\x01\x00" * (MAX_FIELDS - 10)  # field 31, varint 0
    tracemalloc.start()
    try:
        decoded = decode_message(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded.sequence_number == 1
    assert peak < 4 * len(data), f"{peak} bytes at peak for a {len(data)}-byte message"


@pytest.mark.rule("WIRE-2")
def test_a_message_of_too_many_fields_is_refused_as_it_is_read() -> None:
    from avaproto.codec import MAX_FIELDS

    bomb = b"\x08\x01" + b"\xf8\x01\x00" * (MAX_FIELDS + 1)
    with pytest.raises(RemoteProtocolError) as caught:
        decode_message(bomb)
    assert (caught.value.rule, caught.value.status) == ("WIRE-2", Status.RESOURCE_EXHAUSTED)
    # Fields nested in a sample count too; just under the bound decodes.
    inner = b"\xf8\x01\x00" * (MAX_FIELDS - 10)
    nested = b"\x08\x01\x32" + _varint_bytes(len(inner)) + inner
    assert decode_message(nested).media_sample is not None
    with pytest.raises(RemoteProtocolError) as caught:
        decode_message(nested + b"\xf8\x01\x00" * 20)
    assert caught.value.rule == "WIRE-2"


@pytest.mark.rule("WIRE-1")
@pytest.mark.parametrize(
    "data",
    [
        b"\x08\x00\x30\x05",  # media_sample as the varint 5
        b"\x2a\xff\xff\xff\xff\x0f",  # media_stream_descriptor of 2^32-1 bytes, cut short
        b"\x32\x02\x28\x07",  # content_bytes, inside the sample, as the varint 7
    ],
)
def test_the_offset_a_fault_names_lies_in_the_message(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode_message(data)
    assert caught.value.rule == "WIRE-1"
    where = re.search(r"at byte (\d+)", caught.value.detail)
    assert where is not None and int(where.group(1)) <= len(data), caught.value.detail


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# --- any bytes: a message read in place, or WIRE-1/WIRE-2, in bounded memory -----------------

#: Decoding one message allocates at most MEMORY_PER_BYTE bytes for each byte of it outside
#: its embedded frame, plus MEMORY_CONSTANT. The frame costs nothing (a view). The worst
#: case is a sample of empty inferences: two bytes each on the wire, one generated object
#: each in memory, about 160 bytes per byte (measured with tracemalloc on Python 3.11).
MEMORY_PER_BYTE = 256
MEMORY_CONSTANT = 64 * 1024

#: Bytes around the window a message is read from: continuation bytes that would extend a
#: varint read past its end, a length-delimited field that would look valid, field 0.
SENTINELS = [b"\xff" * 16, b"\x0a\x7f" * 8, b"\x00" * 16]

_descriptors = st.sampled_from(
    [
        pipeline_descriptor(),
        pipeline_descriptor(shm=("inference_client_share_memory_2146989006636459346", 75 << 20)),
        pipeline_descriptor(configuration='{"threshold": 0.5}'),
        pipeline_descriptor(media=False),
        pipeline_descriptor(video_format(Encoding.JPG, PixelFormat.NONE, 0, 0)),
        pipeline_descriptor(video_format(pixel_format=PixelFormat.YUV420P, width=33, stride=48)),
        extension_descriptor(),
        extension_descriptor(None),
    ]
)


def _with_inferences(sample: MediaSample, found: list[Inference]) -> MediaSample:
    sample.inferences = found  # written after the content: a field that follows it
    return sample


_samples = st.builds(
    _with_inferences,
    st.one_of(
        st.builds(embedded, st.sampled_from([0, FRAME_BYTES, 300]), uint64),
        st.builds(referenced, uint64, uint64),
        st.builds(MediaSample, timestamp=uint64),
    ),
    st.lists(inference, max_size=3),
)
_small = st.integers(min_value=0, max_value=1 << 20)
#: Messages as the builders of the other tests make them, on the wire.
_builder_wire = st.one_of(
    st.builds(
        lambda number, ack, descriptor: MediaStreamMessage(
            sequence_number=number, ack_sequence_number=ack, media_stream_descriptor=descriptor
        ),
        _small,
        _small,
        _descriptors,
    ),
    st.builds(
        lambda number, ack, sample: MediaStreamMessage(
            sequence_number=number, ack_sequence_number=ack, media_sample=sample
        ),
        _small,
        _small,
        st.one_of(st.none(), _samples),
    ),
).map(bytes)
#: A 64 KiB frame: mutations near its envelope, where they change the structure.
_frame_wire = st.builds(
    lambda number: bytes(
        MediaStreamMessage(sequence_number=number, media_sample=embedded(1 << 16))
    ),
    _small,
)
#: The most memory per byte: empty inferences, two bytes each.
_empty_inferences_wire = st.integers(min_value=1, max_value=3000).map(
    lambda count: bytes(
        MediaStreamMessage(
            sequence_number=2, media_sample=MediaSample(inferences=[Inference()] * count)
        )
    )
)
_any_bytes = st.one_of(
    st.binary(max_size=256),
    _mutated(),
    _mutated(_builder_wire),
    _mutated(_frame_wire),
    _mutated(_empty_inferences_wire),
    _builder_wire,
    _empty_inferences_wire,
)


#: The envelopes ``decode_message`` walks by hand, and the fields it walks into.
_WALKED = {
    "MediaStreamMessage": {6: "MediaSample"},
    "MediaSample": {5: "ContentBytes", 6: "ContentReference"},
    "ContentBytes": {},
    "ContentReference": {},
}


def _varint_end(data: bytes, pos: int) -> int | None:
    while pos < len(data):
        pos += 1
        if not data[pos - 1] & 0x80:
            return pos
    return None


def _framing_holds(data: bytes, envelope: str = "MediaStreamMessage") -> bool:
    """Protobuf's framing alone, written apart from avaproto.codec: every key and varint
    ends, every field lies inside its envelope, and only wire types 0, 1, 2 and 5 occur."""
    pos = 0
    while pos < len(data):
        end = _varint_end(data, pos)
        if end is None:
            return False
        key = sum((b & 0x7F) << (7 * i) for i, b in enumerate(data[pos:end]))
        number, wire_type, pos = key >> 3, key & 7, end
        if number == 0 or wire_type not in (0, 1, 2, 5):
            return False
        if wire_type == 0:
            end = _varint_end(data, pos)
            if end is None:
                return False
            pos = end
        elif wire_type == 2:
            end = _varint_end(data, pos)
            if end is None:
                return False
            length = sum((b & 0x7F) << (7 * i) for i, b in enumerate(data[pos:end]))
            pos, stop = end, end + length
            if stop > len(data):
                return False
            inner = _WALKED[envelope].get(number)
            if inner is not None and not _framing_holds(data[pos:stop], inner):
                return False
            pos = stop
        else:
            pos += 8 if wire_type == 1 else 4
            if pos > len(data):
                return False
    return True


def _address(buffer: bytearray | memoryview) -> int:
    return int(np.frombuffer(buffer, dtype=np.uint8).ctypes.data)


def _decoded(decode: Callable[[Any], MediaStreamMessage], data: Any) -> object:
    """A message, or the ProtocolError decoding raised; any other exception escapes."""
    try:
        return decode(data)
    except ProtocolError as error:
        return error


def _same(outcome: object) -> object:
    if isinstance(outcome, ProtocolError):
        return (type(outcome), outcome.rule, outcome.status, outcome.detail)
    assert isinstance(outcome, MediaStreamMessage)
    return bytes(outcome)


@pytest.mark.rule("WIRE-1", "EMB-1")
@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(_any_bytes, st.sampled_from(SENTINELS))
# Each envelope cut inside, with more of its parent after it: read past its end, a field
# would borrow the parent's bytes and decode.
@example(b"\x32\x06\x32\x02\x08\x96\x52\x00", SENTINELS[0])  # reference's varint
@example(b"\x32\x08\x2a\x04\x0a\x05\xaa\xbb\x52\x00", SENTINELS[0])  # frame's length
@example(b"\x32\x02\x08\x96\x08\x01", SENTINELS[0])  # sample's timestamp
def test_any_bytes_are_read_in_their_window_in_bounded_memory(data: bytes, sentinel: bytes) -> None:
    """Random bytes, and valid messages (the builders', a 64 KiB frame, inferences) with bytes
    flipped, inserted, deleted or cut, read from a window of a larger buffer."""
    buffer = bytearray(sentinel + data + sentinel)
    start, stop = len(sentinel), len(sentinel) + len(data)
    window = memoryview(buffer)[start:stop]
    tracemalloc.start()
    try:
        outcome = _decoded(decode_message, window)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    frame = 0
    if isinstance(outcome, ProtocolError):
        # The one error of malformed input, naming where, inside the message.
        assert isinstance(outcome, RemoteProtocolError)
        assert (outcome.rule, outcome.status) in {
            ("WIRE-1", Status.INVALID_ARGUMENT),
            ("WIRE-2", Status.RESOURCE_EXHAUSTED),
        }, outcome
        assert re.search(r"at byte \d+", outcome.detail), outcome
    else:
        assert isinstance(outcome, MediaStreamMessage)
        sample = outcome.media_sample
        if sample is not None and sample.content_bytes is not None:
            # The frame is a view of the window: the same buffer, between the sentinels.
            content = sample.content_bytes.bytes
            assert isinstance(content, memoryview) and content.obj is buffer
            frame = len(content)
            if frame:
                offset = _address(content) - _address(buffer)
                assert start <= offset and offset + frame <= stop
    if not _framing_holds(data):
        # Whatever is read, it is read inside its field: broken framing is never decoded.
        assert isinstance(outcome, ProtocolError), data
    # The same outcome from the bytes alone, and through the transport's codec.
    assert _same(outcome) == _same(_decoded(decode_message, data))
    codec = WireCodec()
    assert _same(outcome) == _same(_decoded(lambda b: codec.decode(b, MediaStreamMessage), data))
    assert peak <= MEMORY_PER_BYTE * (len(data) - frame) + MEMORY_CONSTANT, (
        f"{peak} bytes at peak for {len(data)} bytes ({frame} of them a frame)"
    )


_UNKNOWN = b"\xf8\x01\x00"  # field 31, varint 0: skipped, but counted
#: Fields outside the repeated ones: the sequence number, and the envelopes around them.
_OVERHEAD = {"top level": 1, "in the sample": 2, "in a content reference": 3, "empty inferences": 2}


def _bomb(placement: str, total: int) -> bytes:
    """A well-formed message of ``total`` fields in all, most of them repeated as placed."""
    count = total - _OVERHEAD[placement]
    if placement == "top level":
        return b"\x08\x01" + _UNKNOWN * count
    if placement == "in the sample":
        inner = _UNKNOWN * count
    elif placement == "in a content reference":
        reference = _UNKNOWN * count
        inner = b"\x32" + _varint_bytes(len(reference)) + reference
    else:
        from avaproto.codec import INFERENCE_WEIGHT

        # Empty inferences, each worth 1 + INFERENCE_WEIGHT fields; unknown fields make
        # up the rest of the count.
        inferences, rest = divmod(count, 1 + INFERENCE_WEIGHT)
        inner = b"\x52\x00" * inferences + _UNKNOWN * rest
    return b"\x08\x01\x32" + _varint_bytes(len(inner)) + inner


@pytest.mark.rule("WIRE-2")
@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(list(_OVERHEAD)), st.integers(min_value=-2, max_value=2))
def test_fields_are_counted_wherever_they_are_nested(placement: str, around: int) -> None:
    """Messages within two fields of the bound, counted by hand: past it, WIRE-2."""
    from avaproto.codec import MAX_FIELDS

    total = MAX_FIELDS + around
    outcome = _decoded(decode_message, _bomb(placement, total))
    if total > MAX_FIELDS:
        assert isinstance(outcome, RemoteProtocolError)
        assert (outcome.rule, outcome.status) == ("WIRE-2", Status.RESOURCE_EXHAUSTED)
    else:
        assert isinstance(outcome, MediaStreamMessage), outcome


# --- any bytes on a real stream: the server's framing, then the decoder ----------------------

#: The server's message limit in these tests (SRV-5), small so random prefixes pass it.
LIMIT = 1 << 16
_PREFIX = struct.Struct(">BI")


def _framed(body: bytes, *, compressed: int = 0) -> bytes:
    return bytes([compressed]) + len(body).to_bytes(4, "big") + body


_bodies = st.one_of(_builder_wire, _valid)
_stream_bytes = st.one_of(
    st.binary(max_size=48),
    _mutated(_bodies.map(_framed)),  # the prefix mutated too
    _mutated(_bodies).map(_framed),  # a mutated message, its prefix right
    st.builds(lambda body, flag: _framed(body, compressed=flag), _bodies, st.integers(1, 255)),
    st.builds(lambda extra: _PREFIX.pack(False, LIMIT + extra), st.integers(1, 1 << 20)),
    st.builds(lambda first, second: _framed(first) + second, _builder_wire, st.binary()),
)


def _first_fault(data: bytes) -> tuple[str, Status] | None:
    """The rule the first message of ``data`` breaks before the session sees it, if any."""
    if 0 < len(data) < 5:
        return "WIRE-1", Status.INVALID_ARGUMENT  # the stream ended inside the prefix
    if not data:
        return None
    compressed, length = _PREFIX.unpack(data[:5])
    if compressed > 1:  # no flag gRPC has
        return "WIRE-1", Status.INVALID_ARGUMENT
    if length > LIMIT:
        return "SRV-5", Status.RESOURCE_EXHAUSTED
    if len(data) - 5 < length:
        return "WIRE-1", Status.INVALID_ARGUMENT  # ... or inside the message
    if compressed:  # on a stream that named no grpc-encoding
        return "WIRE-3", Status.INVALID_ARGUMENT
    outcome = _decoded(decode_message, data[5 : 5 + length])
    return (outcome.rule, outcome.status) if isinstance(outcome, ProtocolError) else None


async def _raw_stream(port: int, data: bytes) -> tuple[Status, str]:
    """Open a stream, write ``data`` as its DATA and end it; the status it ends with."""
    channel = grpclib.client.Channel("127.0.0.1", port, codec=WireCodec())
    try:
        async with channel.request(
            METHOD_PATH,
            grpclib.const.Cardinality.STREAM_STREAM,
            MediaStreamMessage,
            MediaStreamMessage,
        ) as call:
            await call.send_request()
            await _grpclib_private.http2_stream(call).send_data(data, end_stream=True)
            call._end_done = True  # ended on the wire, behind grpclib's back
            try:
                async for _ in call:
                    pass
            except grpclib.exceptions.GRPCError as error:
                return Status(error.status.value), error.message or ""
            return Status.OK, ""
    finally:
        channel.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib runs on asyncio


@pytest.fixture
async def extension() -> AsyncIterator[ExtensionServer]:
    """One server for every example; it must still serve a stream after them all."""
    config = ServerConfig(port=0, max_message_bytes=LIMIT)
    with anyio.fail_after(30):
        async with running(lambda frame: [], config, grace=1) as server:
            yield server
            fmt = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 4, 2)
            async with connect(f"127.0.0.1:{server.port}", format=fmt) as pipe:
                await pipe.send(bytes(fmt.frame_bytes), timestamp=0)
                await pipe.end()
                assert [r.acknowledged async for r in pipe.results()] == [2]


@pytest.mark.anyio
@pytest.mark.rule("WIRE-1", "SRV-5")
@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=_stream_bytes)
async def test_any_bytes_on_a_stream_end_it_with_the_rule_they_break(
    extension: ExtensionServer, data: bytes
) -> None:
    """Random bytes, and framed messages mutated in the prefix or the body, compressed,
    over the limit or cut short, written as a stream's DATA to a real server: the first
    message's fault is the one answered, and nothing else ever ends a stream unnamed."""
    with anyio.fail_after(10):
        status, detail = await _raw_stream(extension.port, data)
        await extension.service.wait_idle()
    expected = _first_fault(data)
    if expected is not None:
        assert (status, detail[: len(expected[0]) + 2]) == (expected[1], f"[{expected[0]}]"), (
            status,
            detail,
        )
    elif status is not Status.OK:
        # A message that decodes: the session's rules take over, each precisely named.
        assert status not in (Status.UNKNOWN, Status.INTERNAL), (status, detail)
        assert re.match(r"\[[A-Z]+-\d+\] ", detail), detail
    assert extension.service.active == 0
