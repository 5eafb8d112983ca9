"""Reading ``MediaStreamMessage`` off the wire without copying the frame.

betterproto2's generic parser copies a ``bytes`` field at every level of nesting; for a
frame carried in ``MediaStreamMessage.media_sample.content_bytes.bytes`` that is several
copies of hundreds of kilobytes per message. This decoder walks the three envelopes by
hand and leaves the frame as a ``memoryview`` of the buffer it was given, so the only
copy of an embedded frame is the one the transport made when it read it off the socket.
The rare or small parts (descriptors, content references, inferences) are handed to
the generated classes, so there is one definition of every message.

Malformed input raises ``RemoteProtocolError`` (WIRE-1, INVALID_ARGUMENT) naming what
was wrong and where; it never crashes and never reads past the buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, TypeVar

from .errors import RemoteProtocolError
from .messages import (
    ContentBytes,
    ContentReference,
    Inference,
    MediaSample,
    MediaStreamDescriptor,
    MediaStreamMessage,
)
from .status import Status

Buffer = bytes | bytearray | memoryview

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _malformed(what: str, offset: int) -> RemoteProtocolError:
    return RemoteProtocolError(
        "WIRE-1", Status.INVALID_ARGUMENT, f"malformed MediaStreamMessage: {what} at byte {offset}"
    )


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    # Up to three bytes read without a loop: every key of this protocol's fields is one,
    # and sequence numbers, offsets and frame sizes are two or three (< 2**21). A loop
    # costs several times more per byte, on a path every message takes.
    if pos < end:
        low = data[pos]
        if low < 0x80:
            return low, pos + 1
        if pos + 1 < end:
            middle = data[pos + 1]
            if middle < 0x80:
                return (low & 0x7F) | middle << 7, pos + 2
            if pos + 2 < end:
                high = data[pos + 2]
                if high < 0x80:
                    return (low & 0x7F) | (middle & 0x7F) << 7 | high << 14, pos + 3
    result = 0
    shift = 0
    start = pos
    while pos < end:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if result >> 64:
                raise _malformed("varint larger than 64 bits", start)
            return result, pos
        shift += 7
        if shift >= 70:
            break
    raise _malformed("truncated or overlong varint", start)


#: The most fields one message may hold, nested ones included (WIRE-2). A frame is one
#: field and a sample of a thousand entities about 90,000 (with their weight, below); a
#: message of millions of two-byte fields exists only to keep the event loop busy.
MAX_FIELDS = 100_000
#: What an inference, or a message nested in one (an entity, its tag, box or each of its
#: attributes), costs of that budget beyond its own fields: each becomes an object of
#: several hundred bytes, made in about as long as ten fields take to read (10 µs),
#: where an unknown field costs nothing once skipped. A message of empty inferences (two
#: bytes each) is then capped at 9,091 of them, and one of entities with a tag, a box
#: and three attributes at about 920 (a detector's answer holds tens to hundreds).
INFERENCE_WEIGHT = 10
#: What a string, bytes or map entry of a known field costs of it, its own field
#: included: each is decoded into an object (3 µs each for the repeated strings of
#: ``related_inferences``, of which 99,000 in one message took 0.3 s).
STRING_WEIGHT = 3
_DECODED = frozenset({"string", "bytes", "map"})


class _Budget:
    """The fields a message may still hold while it is walked (WIRE-2)."""

    __slots__ = ("left",)

    def __init__(self, fields: int = MAX_FIELDS) -> None:
        self.left = fields


def _too_many(pos: int) -> RemoteProtocolError:
    return RemoteProtocolError(
        "WIRE-2",
        Status.RESOURCE_EXHAUSTED,
        f"message holds more than {MAX_FIELDS} fields (at byte {pos}; each inference, "
        f"each message nested in one and each map entry count as {INFERENCE_WEIGHT} more, "
        f"each string {STRING_WEIGHT} in all); no message of this protocol needs that many",
    )


def _fields(
    data: memoryview, pos: int, end: int, budget: _Budget, path: str = "MediaStreamMessage"
) -> Iterator[tuple[int, int, int, int]]:
    """Every field in ``data[pos:end]`` as (number, wire type, value or start, stop).

    One at a time: a message of many small unknown fields is walked through in constant
    memory, never collected, and refused once it holds more fields than ``budget``.
    """
    while pos < end:
        budget.left -= 1
        if budget.left < 0:
            raise _too_many(pos)
        key, pos = _varint(data, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise _malformed(f"{path}: field number 0", pos)
        if wire_type == _VARINT:
            value, pos = _varint(data, pos, end)
            yield number, wire_type, value, pos
        elif wire_type == _LEN:
            length, pos = _varint(data, pos, end)
            stop = pos + length
            if stop > end:
                raise _malformed(f"{path}: field {number} of {length} bytes runs past the end", pos)
            yield number, wire_type, pos, stop
            pos = stop
        elif wire_type in (_I64, _I32):
            stop = pos + (8 if wire_type == _I64 else 4)
            if stop > end:
                raise _malformed(f"{path}: fixed-size field {number} runs past the end", pos)
            yield number, wire_type, pos, stop
            pos = stop
        else:
            raise _malformed(f"{path}: unsupported wire type {wire_type} of field {number}", pos)


def _expect(wire_type: int, expected: int, name: str, stop: int) -> None:
    """``stop``: where the field ends (a varint's value is no position: never pass it)."""
    if wire_type != expected:
        raise _malformed(f"{name} has wire type {wire_type}, in the field ending", stop)


def _sample(data: memoryview, pos: int, end: int, budget: _Budget) -> MediaSample:
    sample = MediaSample()
    for number, wire_type, start, stop in _fields(data, pos, end, budget):
        if number == 1:
            _expect(wire_type, _VARINT, "timestamp", stop)
            sample.timestamp = start
        elif number == 5:
            _expect(wire_type, _LEN, "content_bytes", stop)
            content = data[stop:stop]  # empty unless field 1 is present
            for inner, inner_type, a, b in _fields(data, start, stop, budget):
                if inner == 1:
                    _expect(inner_type, _LEN, "content_bytes.bytes", b)
                    content = data[a:b]
            sample.content_bytes = ContentBytes(bytes=content)  # type: ignore[arg-type]
            sample.content_reference = None
        elif number == 6:
            _expect(wire_type, _LEN, "content_reference", stop)
            sample.content_reference = _reference(data, start, stop, budget)
            sample.content_bytes = None
        elif number == 10:
            _expect(wire_type, _LEN, "inferences", stop)
            budget.left -= INFERENCE_WEIGHT
            if budget.left < 0:
                raise _too_many(start)
            sample.inferences.append(_parse(Inference, data, start, stop, budget))
    return sample


def _reference(data: memoryview, pos: int, end: int, budget: _Budget) -> ContentReference:
    """Every shared-memory sample carries one: two varints, read without the generic parser."""
    offset = length = 0
    for number, wire_type, value, stop in _fields(data, pos, end, budget, "ContentReference"):
        if number == 1:
            _expect(wire_type, _VARINT, "content_reference.address_offset", stop)
            offset = value
        elif number == 2:
            _expect(wire_type, _VARINT, "content_reference.length_bytes", stop)
            length = value
    return ContentReference(address_offset=offset, length_bytes=length)


_Parsed = TypeVar("_Parsed", Inference, MediaStreamDescriptor)

_WIRE_TYPES = {
    **dict.fromkeys(
        ("int32", "int64", "uint32", "uint64", "sint32", "sint64", "bool", "enum"), _VARINT
    ),
    **dict.fromkeys(("fixed64", "sfixed64", "double"), _I64),
    **dict.fromkeys(("fixed32", "sfixed32", "float"), _I32),
    **dict.fromkeys(("string", "bytes", "message", "map"), _LEN),
}


def _check_structure(
    data: memoryview, pos: int, end: int, cls: type[Any], path: str, budget: _Budget
) -> None:
    """Verify what betterproto2 would otherwise accept silently.

    The generated parser reads a length-delimited field that runs past its end as a
    shorter one and takes any wire type for a field; a truncated descriptor would then
    parse as a different one. This walks every field (bounds, wire type against the
    field's declared type, sub-messages and map entries recursively) first.
    """
    meta = cls._betterproto
    for number, wire_type, start, stop in _fields(data, pos, end, budget, path):
        name = meta.field_name_by_number.get(number)
        if name is None:
            continue  # an unknown field: skipped, as protobuf requires
        field = meta.meta_by_field_name[name]
        expected = _WIRE_TYPES.get(field.proto_type, _LEN)
        packed = field.repeated and wire_type == _LEN and expected != _LEN
        if wire_type != expected and not packed:
            raise _malformed(f"{path}.{name} has wire type {wire_type}", start)
        if field.proto_type == "message":
            budget.left -= INFERENCE_WEIGHT  # an object to make, as an inference is
            if budget.left < 0:
                raise _too_many(start)
            _check_structure(data, start, stop, meta.cls_by_field[name], f"{path}.{name}", budget)
        elif field.proto_type in _DECODED:
            # A string to decode; a map entry is a message of two to parse, then an entry
            # to make (11.5 µs each: 20,000 of them, 159 KB, took a quarter of a second).
            weight = INFERENCE_WEIGHT if field.proto_type == "map" else STRING_WEIGHT
            budget.left -= weight - 1
            if budget.left < 0:
                raise _too_many(start)
            if field.proto_type == "map":
                for _entry in _fields(data, start, stop, budget, f"{path}.{name}"):  # key, value
                    pass


def _parse(cls: type[_Parsed], data: memoryview, start: int, stop: int, budget: _Budget) -> _Parsed:
    _check_structure(data, start, stop, cls, cls.__name__, budget)
    try:
        return cls.parse(bytes(data[start:stop]))
    except Exception as error:  # betterproto2 raises several types for bad input
        raise _malformed(f"{cls.__name__}: {error}", start) from None


def _decode_usual(data: memoryview, end: int) -> MediaStreamMessage | None:
    """The message in the layout nearly every one has, read straight through; None for
    any other (``decode_message``'s walk then reads it, and names what is wrong).

    That layout, as protobuf runtimes write it: sequence and acknowledgement numbers,
    then a sample of a timestamp and a content reference (offset, length) or embedded
    bytes, each field at most once, in order, present unless zero, each envelope ending
    with the one around it. Read this way a sample costs a few calls where the walk
    costs a few dozen; the walk's result is the same for every message read here
    (tests/test_codec.py compares the two).
    """
    try:
        sequence = ack = timestamp = 0
        pos = 0
        if pos < end and data[pos] == 0x08:  # 1: sequence_number
            sequence, pos = _varint(data, pos + 1, end)
        if pos < end and data[pos] == 0x10:  # 2: ack_sequence_number
            ack, pos = _varint(data, pos + 1, end)
        if pos == end:
            return MediaStreamMessage(sequence_number=sequence, ack_sequence_number=ack)
        if data[pos] != 0x32:  # 6: media_sample, to the end
            return None
        length, pos = _varint(data, pos + 1, end)
        if pos + length != end:
            return None
        if pos < end and data[pos] == 0x08:  # media_sample 1: timestamp
            timestamp, pos = _varint(data, pos + 1, end)
        sample = MediaSample(timestamp=timestamp)
        if pos < end:
            key = data[pos]
            if key not in (0x2A, 0x32):  # 5: content_bytes, 6: content_reference
                return None
            length, pos = _varint(data, pos + 1, end)
            if pos + length != end:
                return None
            if key == 0x32:
                offset = size = 0
                if pos < end and data[pos] == 0x08:  # 1: address_offset
                    offset, pos = _varint(data, pos + 1, end)
                if pos < end and data[pos] == 0x10:  # 2: length_bytes
                    size, pos = _varint(data, pos + 1, end)
                if pos != end:
                    return None
                sample.content_reference = ContentReference(
                    address_offset=offset, length_bytes=size
                )
            else:
                if pos < end:
                    if data[pos] != 0x0A:  # 1: bytes, to the end
                        return None
                    length, pos = _varint(data, pos + 1, end)
                    if pos + length != end:
                        return None
                sample.content_bytes = ContentBytes(bytes=data[pos:end])  # type: ignore[arg-type]
        return MediaStreamMessage(
            sequence_number=sequence, ack_sequence_number=ack, media_sample=sample
        )
    except RemoteProtocolError:
        return None  # a malformed varint: the walk says where


def decode_message(buffer: Buffer) -> MediaStreamMessage:
    """Parse one ``MediaStreamMessage``; embedded content stays a view of ``buffer``."""
    data = memoryview(buffer).cast("B") if not isinstance(buffer, memoryview) else buffer
    usual = _decode_usual(data, len(data))
    return usual if usual is not None else _walk(data)


def embedded_bytes(buffer: Buffer) -> int:
    """The length of the embedded frame (content_bytes) of the message in ``buffer``;
    0 when it has none, or when the fields before it are not the few a sample puts
    first (runtimes write fields in number order: the frame before any inference).

    A look at the first fields only, for a reader that must know what, besides its
    frame, a message holds; malformed bytes are left to ``decode_message``.
    """
    data = memoryview(buffer).cast("B") if not isinstance(buffer, memoryview) else buffer
    budget = _Budget(_FIELDS_BEFORE_CONTENT)
    try:
        for number, wire_type, start, stop in _fields(data, 0, len(data), budget):
            if number == 6 and wire_type == _LEN:  # media_sample
                for inner, inner_type, a, b in _fields(data, start, stop, budget):
                    if inner == 5 and inner_type == _LEN:  # content_bytes
                        return b - a
    except RemoteProtocolError:
        return 0
    return 0


#: Fields looked at before a sample's content_bytes: its envelope's and a few more.
_FIELDS_BEFORE_CONTENT = 8


def decode_usual(buffer: Buffer) -> MediaStreamMessage | None:
    """``decode_message`` for a message in the usual layout (a sample or an
    acknowledgement, read straight through, in microseconds); None for any other."""
    data = memoryview(buffer).cast("B") if not isinstance(buffer, memoryview) else buffer
    return _decode_usual(data, len(data))


def _walk(data: memoryview) -> MediaStreamMessage:
    """Any message, field by field: the reading every other is measured against."""
    message = MediaStreamMessage()
    budget = _Budget()
    for number, wire_type, start, stop in _fields(data, 0, len(data), budget):
        if number == 1:
            _expect(wire_type, _VARINT, "sequence_number", stop)
            message.sequence_number = start
        elif number == 2:
            _expect(wire_type, _VARINT, "ack_sequence_number", stop)
            message.ack_sequence_number = start
        elif number == 5:
            _expect(wire_type, _LEN, "media_stream_descriptor", stop)
            message.media_stream_descriptor = _parse(
                MediaStreamDescriptor, data, start, stop, budget
            )
            message.media_sample = None
        elif number == 6:
            _expect(wire_type, _LEN, "media_sample", stop)
            message.media_sample = _sample(data, start, stop, budget)
            message.media_stream_descriptor = None
    return message


# --- encoding --------------------------------------------------------------------------

_SMALL = [bytes([value]) for value in range(0x80)]
_GRPC_PREFIX = struct.Struct(">?I")


def _uvarint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]
    # Two or three bytes without a loop: sequence numbers, timestamps of a few seconds'
    # worth of ticks, offsets and sizes of frames below 2 MiB.
    if 0 < value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if 0 < value < 0x200000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
    if value < 0 or value >> 64:
        # What the official runtime refuses too; written, it would be WIRE-1 at the peer.
        raise ValueError(f"{value} does not fit in a uint64 field")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _uvarint(number << 3 | wire_type)


_SEQUENCE = _key(1, _VARINT)
_ACK = _key(2, _VARINT)
_SAMPLE = _key(6, _LEN)
_TIMESTAMP = _key(1, _VARINT)
_CONTENT_BYTES = _key(5, _LEN)
_CONTENT_REFERENCE = _key(6, _LEN)
_INFERENCE = _key(10, _LEN)
_BYTES = _key(1, _LEN)
_OFFSET = _key(1, _VARINT)
_LENGTH = _key(2, _VARINT)


def _sample_parts(sample: MediaSample) -> tuple[list[Buffer], int]:
    """The sample's encoding in pieces, and which piece is its embedded frame (-1: none)."""
    parts: list[Buffer] = []
    at = -1
    if sample.timestamp:
        parts += (_TIMESTAMP, _uvarint(sample.timestamp))
    reference = sample.content_reference
    embedded = sample.content_bytes
    if embedded is not None:
        content: Buffer = embedded.bytes
        if isinstance(content, memoryview) and (content.ndim != 1 or content.itemsize != 1):
            content = content.cast("B")  # a frame handed over as a shaped view
        if content:
            inner = [_BYTES, _uvarint(len(content)), content]
            parts += (_CONTENT_BYTES, _uvarint(sum(map(len, inner))), *inner)
            at = len(parts) - 1
        else:
            parts += (_CONTENT_BYTES, _SMALL[0])
    elif reference is not None:
        inner = []
        if reference.address_offset:
            inner += (_OFFSET, _uvarint(reference.address_offset))
        if reference.length_bytes:
            inner += (_LENGTH, _uvarint(reference.length_bytes))
        parts += (_CONTENT_REFERENCE, _uvarint(sum(map(len, inner))), *inner)
    for inference in sample.inferences:
        encoded = bytes(inference)
        parts += (_INFERENCE, _uvarint(len(encoded)), encoded)
    return parts, at


def encode_framed(message: MediaStreamMessage) -> bytes:
    """The message with gRPC's 5-byte prefix (uncompressed, length), in one buffer.

    Built in the same join as the message itself, so an embedded frame is copied once
    on its way to the transport rather than once more to prepend five bytes.
    """
    sample = message.media_sample
    if sample is None or message.media_stream_descriptor is not None:
        body = bytes(message)
        return _GRPC_PREFIX.pack(False, len(body)) + body
    parts, _ = _message_parts(message, sample)
    size = sum(map(len, parts))
    return b"".join([_GRPC_PREFIX.pack(False, size), *parts])


#: Content at least this large is a piece of its own in ``framed_pieces``.
SEPARATE_FROM = 64 * 1024


def _immutable(content: Buffer) -> bool:
    """``bytes``, or a contiguous view of ``bytes``: what no one can change once sent."""
    if isinstance(content, bytes):
        return True
    return (
        isinstance(content, memoryview) and isinstance(content.obj, bytes) and content.c_contiguous
    )


def framed_pieces(message: MediaStreamMessage) -> list[Buffer]:
    """``encode_framed``'s bytes as pieces to be written in order: an embedded frame of at
    least ``SEPARATE_FROM`` bytes that cannot change (``bytes``, or a contiguous view of
    them) is one of them, the caller's buffer as it is, and the few bytes before and
    after it are joined; any other message is one piece.

    Writing the frame from where it lies saves the copy of it that every protobuf
    sender makes into the message (the kernel copies it into the socket all the same).
    A frame in a buffer its owner may reuse is copied as before: an event loop may keep
    part of a write to send later, and must send what was there when ``send`` was called.
    """
    sample = message.media_sample
    embedded = sample.content_bytes if sample is not None else None
    if (
        sample is None
        or embedded is None
        or not _immutable(embedded.bytes)
        or memoryview(embedded.bytes).nbytes < SEPARATE_FROM
        or message.media_stream_descriptor is not None
    ):
        return [encode_framed(message)]
    parts, at = _message_parts(message, sample)
    size = sum(map(len, parts))
    before = b"".join([_GRPC_PREFIX.pack(False, size), *parts[:at]])
    after = b"".join(parts[at + 1 :])
    return [before, parts[at], after] if after else [before, parts[at]]


def _message_parts(message: MediaStreamMessage, sample: MediaSample) -> tuple[list[Buffer], int]:
    """The message's encoding in pieces, and which piece is its embedded frame (-1: none)."""
    inner, at = _sample_parts(sample)
    parts: list[Buffer] = []
    if message.sequence_number:
        parts += (_SEQUENCE, _uvarint(message.sequence_number))
    if message.ack_sequence_number:
        parts += (_ACK, _uvarint(message.ack_sequence_number))
    parts += (_SAMPLE, _uvarint(sum(map(len, inner))))
    if at >= 0:
        at += len(parts)
    parts += inner
    return parts, at


def encode_message(message: MediaStreamMessage) -> bytes:
    """Serialize a message, byte for byte as the official protobuf runtime does.

    Samples and acknowledgements, which are every message but two per stream, are
    written directly: their envelope is a few varints, and the generic serializer costs
    more than everything else a small message needs. Fields go in number order, as the
    official runtime writes them; inferences and descriptors go through the generated
    classes, so each message has one definition.
    """
    sample = message.media_sample
    if sample is None or message.media_stream_descriptor is not None:
        return bytes(message)
    return b"".join(_message_parts(message, sample)[0])
