"""The hand-written decoder agrees with the generated parser and never reads past its input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avaproto.codec import decode_message
from avaproto.errors import RemoteProtocolError
from avaproto.messages import (
    ContentBytes,
    ContentReference,
    Inference,
    InferenceType,
    MediaSample,
    MediaStreamMessage,
    Motion,
    Rectangle,
)
from avaproto.status import Status
from tests.builders import pipeline_descriptor

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


_valid = message.map(bytes)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(_valid))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        position = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[position] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif kind == "insert":
            data[position:position] = bytes([draw(st.integers(min_value=0, max_value=255))])
        elif kind == "delete" and data:
            del data[position]
        else:
            del data[position:]
    return bytes(data)


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


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
