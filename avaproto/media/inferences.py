"""Building and checking inferences: the results an extension sends back.

The contract's ``Inference`` carries a ``type`` and one value of six kinds
(classification, motion, entity, text, event, other), and "the value set must match
the type" (INF-1). Rather than ask callers to keep the two in step, the builders here
take the value and set the type from it (INF-7), so they cannot disagree. They also
check what the contract states as ranges: confidences and rectangle edges are
fractions in [0, 1] (INF-3, INF-4). A box may reach past the image's edge
(l + w > 1): detectors that do not clip send such boxes, so they are carried as
given, and ``box_overflows`` says so to whoever wants to know. A box with an edge
outside [0, 1] (l < 0 for an object at the left edge) has no valid form;
``clip_box`` cuts it to the image, and ``unset_negative_confidences`` reads a
confidence below 0 (a tracker's "none") as none given; ``validate_or_mend`` makes both,
as the server does to its extension's inferences and ``send --output`` to an
extension's, each with one warning. Floats are stored as
the float32 the wire carries, so a built message equals its own echo after
serialisation; that is what makes the JSON form (``inference_json``) lossless.

``validate`` applies the same checks to an inference built any other way: by hand,
returned by a user's processor, or received from a peer. Errors are ``InferenceError``
(INVALID_ARGUMENT) naming the rule and the field's path, for instance
``inferences[2].entity.box.w = 1.2 is outside [0, 1]``.

``VALUE_FIELDS`` is the one table from inference type to the ``value`` oneof field;
the builders, ``validate``, ``type_of`` and the JSON form all read it.

    from avaproto.media import inferences as inf
    person = inf.entity("person", 0.92, inf.rectangle(0.1, 0.2, 0.3, 0.6), id="7")
"""

from __future__ import annotations

import math
import numbers
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, SupportsFloat, TypedDict, Unpack

import betterproto2

from ..errors import InferenceError
from ..messages import (
    PACKAGE,
    Attribute,
    Classification,
    Entity,
    Event,
    Inference,
    InferenceOther,
    InferenceType,
    Motion,
    Rectangle,
    Tag,
    Text,
)
from ..status import Status

#: The one table of kinds: each inference type and the oneof field holding its value,
#: in the contract's order. AUTO is absent on purpose: it names no value of its own.
VALUE_FIELDS: dict[InferenceType, str] = {
    InferenceType.CLASSIFICATION: "classification",
    InferenceType.MOTION: "motion",
    InferenceType.ENTITY: "entity",
    InferenceType.TEXT: "text",
    InferenceType.EVENT: "event",
    InferenceType.OTHER: "other",
}
#: The same table read the other way: oneof field name -> inference type.
TYPES_BY_FIELD: dict[str, InferenceType] = {name: kind for kind, name in VALUE_FIELDS.items()}
#: Slack for sums of float32 fractions (l + w, t + h): a box that reaches the far edge
#: exactly in decimal may pass 1 by a rounding step once stored as float32, and
#: ``box_overflows`` does not call that passing the edge.
EDGE_TOLERANCE = 1e-6
_EDGES = ("l", "t", "w", "h")


def _refuse(rule: str, message: str) -> InferenceError:
    return InferenceError(rule, Status.INVALID_ARGUMENT, message)


def as_float32(value: float) -> float:
    """``value`` rounded to the float32 the wire carries.

    Storing this rather than the caller's double means a message built here equals
    the same message parsed back from its bytes, and its JSON form reads back equal.
    """
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def _fraction(value: object, where: str, rule: str) -> float:
    """A number in [0, 1] (NaN refused), as float32.

    Any real number is accepted (int, float, numpy floating; not bool), not only
    ``float``: a model's numpy.float32 score is the common case and should not need
    a cast.
    """
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise _refuse(rule, f"{where} must be a number in [0, 1], got {type(value).__name__}")
    number = float(value)
    if math.isnan(number) or not 0.0 <= number <= 1.0:
        raise _refuse(rule, f"{where} = {number} is outside [0, 1]")
    return as_float32(number)


# --- parts ------------------------------------------------------------------------------


def rectangle(
    l: SupportsFloat,  # noqa: E741 - the contract's names
    t: SupportsFloat,
    w: SupportsFloat,
    h: SupportsFloat,
    *,
    clip: bool = False,
) -> Rectangle:
    """A box as fractions of the image: of the padded image, when it was padded (INF-5).

    Each edge is checked in [0, 1] (INF-4). The box may reach past the image's right or
    bottom edge (l + w > 1 or t + h > 1), as boxes of detectors that do not clip do:
    refusing it would end a stream over a box that is still useful. With ``clip``, a
    box is first cut to the image on every side (a detector's box that starts left of
    or above it, l or t below 0, is otherwise refused); ``box_overflows`` tells a
    caller who wants to know.
    """
    edges: tuple[object, ...] = (l, t, w, h)
    if clip:
        x, y, width, height = (float(value) for value in (l, t, w, h))
        # A negative size (corners swapped) is a detector's bug: refused, not cut to 0.
        if width >= 0 and height >= 0 and not math.isnan(x + y):
            left, top = min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
            right, bottom = min(max(x + width, 0.0), 1.0), min(max(y + height, 0.0), 1.0)
            edges = (left, top, max(right - left, 0.0), max(bottom - top, 0.0))
    return _box_of(edges, "box")


def tag(value: str, confidence: SupportsFloat = 1.0) -> Tag:
    """A label with its confidence in [0, 1] (INF-3)."""
    return Tag(value=value, confidence=_fraction(confidence, f"tag {value!r} confidence", "INF-3"))


def attribute(name: str, value: str, confidence: SupportsFloat = 1.0) -> Attribute:
    """A named property of a classification or an entity, with its confidence (INF-3)."""
    sure = _fraction(confidence, f"attribute {name!r} confidence", "INF-3")
    return Attribute(name=name, value=value, confidence=sure)


_new_tag = tag  # the builders' parameter is called ``tag``, as in the contract


def _checked_tag(label: str | Tag, confidence: SupportsFloat, where: str) -> Tag:
    if isinstance(label, Tag):
        return Tag(value=label.value, confidence=_fraction(label.confidence, where, "INF-3"))
    return _new_tag(label, confidence)


def _checked_attributes(attributes: Iterable[Attribute], where: str) -> list[Attribute]:
    """Copies with float32 confidences, so hand-made attributes behave like built ones."""
    return [
        Attribute(
            name=item.name,
            value=item.value,
            confidence=_fraction(item.confidence, f"{where}[{index}].confidence", "INF-3"),
        )
        for index, item in enumerate(attributes)
    ]


# --- the six kinds ----------------------------------------------------------------------


class Common(TypedDict, total=False):
    """What every kind of inference may carry besides its value (keyword arguments)."""

    subtype: str
    inference_id: str
    related: Iterable[str]
    sequence_id: str
    extensions: Mapping[str, str] | None


def _inference(
    value: Classification | Motion | Entity | Text | Event | InferenceOther,
    subtype: str = "",
    inference_id: str = "",
    related: Iterable[str] = (),
    sequence_id: str = "",
    extensions: Mapping[str, str] | None = None,
) -> Inference:
    """The common part: type from the value (INF-7), then the same checks as anyone's."""
    name = _FIELD_BY_CLASS[type(value)]
    fields: dict[str, Any] = {name: value}
    inference = Inference(
        type=TYPES_BY_FIELD[name],
        subtype=subtype,
        inference_id=inference_id,
        related_inferences=list(related),
        sequence_id=sequence_id,
        extensions=dict(extensions or {}),
        **fields,
    )
    return validate(inference)


def classification(
    tag: str | Tag,
    confidence: SupportsFloat = 1.0,
    *,
    attributes: Sequence[Attribute] = (),
    **common: Unpack[Common],
) -> Inference:
    """A label, often for the whole frame; ``tag`` a label or a ready ``Tag``."""
    value = Classification(
        tag=_checked_tag(tag, confidence, "classification.tag.confidence"),
        attributes=_checked_attributes(attributes, "classification.attributes"),
    )
    return _inference(value, **common)


def motion(
    box: Rectangle | None = None,
    **common: Unpack[Common],
) -> Inference:
    """Motion, in ``box`` when given (somewhere in the frame otherwise)."""
    value = Motion(box=None if box is None else _checked_box(box, "motion.box"))
    return _inference(value, **common)


def entity(
    tag: str | Tag,
    confidence: SupportsFloat,
    box: Rectangle,
    *,
    id: str = "",  # the contract's name
    attributes: Sequence[Attribute] = (),
    **common: Unpack[Common],
) -> Inference:
    """A detected object: what it is, how sure, where; ``id`` to follow it across frames."""
    value = Entity(
        tag=_checked_tag(tag, confidence, "entity.tag.confidence"),
        attributes=_checked_attributes(attributes, "entity.attributes"),
        box=_checked_box(box, "entity.box"),
        id=id,
    )
    return _inference(value, **common)


def text(
    value: str,
    *,
    language: str = "",
    start: int = 0,
    end: int = 0,
    **common: Unpack[Common],
) -> Inference:
    """Text about the frame (a caption, a transcript); ``language`` as BCP 47.

    ``start`` and ``end`` are uint64 timestamps on the stream's clock; a value that
    does not fit is refused here rather than by the serialiser.
    """
    for where, stamp in (("text.start_timestamp", start), ("text.end_timestamp", end)):
        if not isinstance(stamp, int) or isinstance(stamp, bool) or not 0 <= stamp < 2**64:
            raise _refuse("INF-7", f"{where} = {stamp!r} is not a uint64")
    content = Text(value=value, language=language, start_timestamp=start, end_timestamp=end)
    return _inference(content, **common)


def event(
    name: str,
    properties: Mapping[str, str] | None = None,
    **common: Unpack[Common],
) -> Inference:
    """Something that happened (a line crossed, a door opened), with string properties."""
    value = Event(name=name, properties=dict(properties or {}))
    return _inference(value, **common)


def other(
    content_type: str,
    content: bytes | bytearray | memoryview,
    **common: Unpack[Common],
) -> Inference:
    """An opaque payload of an IANA media type (UTF-8 when text states no charset)."""
    value = InferenceOther(content_type=content_type, content_bytes=bytes(content))
    return _inference(value, **common)


#: Value class -> oneof field, for the builders (names taken from ``VALUE_FIELDS``).
_FIELD_BY_CLASS: dict[type, str] = {
    Classification: VALUE_FIELDS[InferenceType.CLASSIFICATION],
    Motion: VALUE_FIELDS[InferenceType.MOTION],
    Entity: VALUE_FIELDS[InferenceType.ENTITY],
    Text: VALUE_FIELDS[InferenceType.TEXT],
    Event: VALUE_FIELDS[InferenceType.EVENT],
    InferenceOther: VALUE_FIELDS[InferenceType.OTHER],
}


# --- checking ---------------------------------------------------------------------------


def value_field(inference: Inference) -> str | None:
    """The name of the oneof field set in ``value``, or None when none is."""
    name, _ = betterproto2.which_one_of(inference, "value")
    return name or None


def type_of(inference: Inference) -> InferenceType:
    """The inference's type, AUTO resolved from the value that is set (INF-2)."""
    declared = InferenceType(inference.type)
    if declared is not InferenceType.AUTO:
        return declared
    name = value_field(inference)
    if name is None:
        raise _refuse("INF-2", "an inference of type AUTO needs a value to take its type from")
    return TYPES_BY_FIELD[name]


def _box_of(edges: Sequence[object], where: str) -> Rectangle:
    """A box of float32 edges, each in [0, 1] (INF-4); it may reach past the edge."""
    checked = [
        _fraction(v, f"{where}.{edge}", "INF-4") for edge, v in zip(_EDGES, edges, strict=True)
    ]
    l, t, w, h = checked  # noqa: E741 - the contract's names
    return Rectangle(l=l, t=t, w=w, h=h)


def _checked_box(box: Rectangle, where: str) -> Rectangle:
    return _box_of([getattr(box, edge) for edge in _EDGES], where)


def validate(inference: Inference, where: str = "inference") -> Inference:
    """Check an inference made anywhere against INF-1 to INF-4; return it unchanged.

    A box past the image's edge passes (INF-4); ``box_overflows`` reports it for
    callers who want to know. An AUTO inference with no value is accepted (INF-2): it
    states no kind, so it cannot contradict one, and peers do send such carriers of ids
    or extensions.

    ``where`` prefixes the paths in error messages (``inferences[2]``), so a caller
    checking a list can say which item broke which rule.
    """
    name = value_field(inference)
    declared = InferenceType(inference.type)
    if name is None and declared is InferenceType.AUTO:
        # Nothing to contradict: only ids, a subtype or extensions (INF-2). Such an
        # inference travels on the wire, but has no kind and so no JSON form (JSON-6).
        return inference
    if name is None:
        raise _refuse(
            "INF-1",
            f"{where} has type {declared.name} but no value; set one of "
            + ", ".join(VALUE_FIELDS.values()),
        )
    if declared is not InferenceType.AUTO and VALUE_FIELDS.get(declared) != name:
        raise _refuse(
            "INF-1",
            f"{where} has type {declared.name} but its value is {name}; the value set "
            "must match the type",
        )
    value = getattr(inference, name)
    path = f"{where}.{name}"
    label = getattr(value, "tag", None)
    if label is not None:
        _fraction(label.confidence, f"{path}.tag.confidence", "INF-3")
    for index, item in enumerate(getattr(value, "attributes", None) or ()):
        _fraction(item.confidence, f"{path}.attributes[{index}].confidence", "INF-3")
    box = getattr(value, "box", None)
    if box is not None:
        _checked_box(box, f"{path}.box")
    return inference


def box_overflows(inference: Inference, where: str = "inference") -> str | None:
    """How the inference's box reaches past the image's edge, or None when it does not.

    Such a box is valid (INF-4): detectors that do not clip produce it and the
    published JSON schema allows it. This is for a caller who wants to count, warn
    or clip, at a rate of its choosing; nothing in the media plane logs it.
    Passing 1 by no more than ``EDGE_TOLERANCE`` (float32 rounding) is not reaching
    past it. An inference without a box (or without a value) has nothing to report.
    """
    name = value_field(inference)
    box = None if name is None else getattr(getattr(inference, name), "box", None)
    if box is None:
        return None
    right, bottom = box.l + box.w, box.t + box.h
    past = [
        f"{sum_name} = {total:.7g}"
        for sum_name, total in (("l + w", right), ("t + h", bottom))
        if total > 1.0 + EDGE_TOLERANCE
    ]
    if not past:
        return None
    edges = ", ".join(f"{edge}={getattr(box, edge):.7g}" for edge in _EDGES)
    return f"{where}.{name}.box ({edges}) reaches past the image's edge: {' and '.join(past)}"


def clip_box(inference: Inference, where: str = "inference") -> tuple[Inference, str] | None:
    """The inference with its box cut to the image, and what was cut; None if no cut helps.

    For a box with an edge outside [0, 1] (INF-4) that still covers part of the image,
    as a detector that does not clip gives for an object at the image's left or top
    edge (``l = -0.02``): the box becomes the part inside the image, a copy of the
    inference carries it, and the message says what the box was. The meaning is
    kept (the object is where the box says, as far as the image shows it), where
    refusing would end a stream, or drop the detection, over a valid result. A box
    inside the image, one that misses it altogether, or one with an edge that is not
    a finite number, has no such cut: None, and ``validate`` says what is wrong.
    """
    name = value_field(inference)
    if name is None or (box := getattr(getattr(inference, name), "box", None)) is None:
        return None
    edges = [getattr(box, edge) for edge in _EDGES]
    if not all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in edges
    ):
        return None
    if all(0.0 <= v <= 1.0 for v in edges):
        return None
    l, t, w, h = (float(v) for v in edges)  # noqa: E741 - the contract's names
    if w < 0.0 or h < 0.0:
        return None
    if _misses(l, w) or _misses(t, h):
        return None  # the box misses the image: nothing of it to keep
    left, top = max(l, 0.0), max(t, 0.0)
    width, height = min(l + w, 1.0) - left, min(t + h, 1.0) - top
    copy = Inference.parse(bytes(inference))
    getattr(copy, name).box = _box_of((left, top, width, height), f"{where}.{name}.box")
    given = ", ".join(f"{edge}={v:.7g}" for edge, v in zip(_EDGES, edges, strict=True))
    return copy, f"{where}.{name}.box ({given}) reaches outside the image; cut to it"


def unset_negative_confidences(
    inference: Inference, where: str = "inference"
) -> tuple[Inference, str] | None:
    """The inference with each confidence below 0 made 0 (none given), and what was
    changed; None if it has none below 0.

    Below 0 is no confidence at all, a value that stands for none: NVIDIA's DeepStream
    gives -0.1 to objects its tracker found, and model-server adaptors -1 to an attribute
    that is a measure (an age) rather than a class. 0 is what the wire carries for a
    confidence not given (proto3), so the label, the box and the rest are kept as sent.
    NaN and values above 1 have no such reading: None, and ``validate`` refuses them.
    """
    name = value_field(inference)
    if name is None or (value := getattr(inference, name)) is None:
        return None
    parts = [("tag", getattr(value, "tag", None))]
    parts += [
        (f"attributes[{index}]", item)
        for index, item in enumerate(getattr(value, "attributes", None) or ())
    ]
    below = [
        (path, part.confidence)
        for path, part in parts
        if part is not None
        and isinstance(part.confidence, numbers.Real)
        and math.isfinite(part.confidence)
        and part.confidence < 0.0
    ]
    if not below:
        return None
    copy = Inference.parse(bytes(inference))
    mended = getattr(copy, name)
    if mended.tag is not None and mended.tag.confidence < 0.0:
        mended.tag.confidence = 0.0
    for item in getattr(mended, "attributes", None) or ():
        if item.confidence < 0.0:
            item.confidence = 0.0
    given = ", ".join(f"{where}.{name}.{path}.confidence = {v:.7g}" for path, v in below)
    return copy, f"{given} below 0, which stands for none: read as none given (0)"


#: The repairs ``validate_or_mend`` makes, by the rule a value breaks as sent.
_MENDS = {"INF-3": unset_negative_confidences, "INF-4": clip_box}


def validate_or_mend(inference: Inference, where: str = "inference") -> tuple[Inference, str]:
    """``validate``, with what real detectors send that has one reading mended.

    A box reaching outside the image is cut to it (``clip_box``, INF-4's field note), a
    confidence below 0 read as none (``unset_negative_confidences``, INF-3's). The
    inference, unchanged (and ``""``) when valid, or its mended copy and what was
    changed, each part naming its rule; ``InferenceError`` for anything no repair mends.
    """
    inference, changed = mended_by_rule(inference, where)
    return inference, "; ".join(f"[{rule}] {detail}" for rule, detail in changed.items())


def mended_by_rule(
    inference: Inference, where: str = "inference"
) -> tuple[Inference, dict[str, str]]:
    """``validate_or_mend``'s inference, and what was mended under each rule."""
    changed: dict[str, str] = {}
    while True:
        try:
            return validate(inference, where), changed
        except InferenceError as error:
            mend = _MENDS.get(error.rule) if error.rule not in changed else None
            done = mend(inference, where) if mend is not None else None
            if done is None:
                raise
            inference, changed[error.rule] = done


def _misses(start: float, size: float) -> bool:
    """Whether [start, start + size] leaves nothing inside [0, 1]; a box that only
    touches the image's edge from outside misses it (one of no size inside does not)."""
    end = start + size
    return start > 1.0 or end < 0.0 or (size > 0.0 and (end <= 0.0 or start >= 1.0))


#: Inference's name in the contract, as protoc's classes carry it (``DESCRIPTOR``).
_CONTRACT_NAME = f"{PACKAGE}.Inference"


def from_protoc(value: object) -> Inference | None:
    """``value`` read as an ``Inference`` if it is one of protoc's classes (the
    ``inferencing_pb2.Inference`` the published extensions build); None otherwise.

    Both are the contract's message, so its bytes say the same in either: an extension
    ported from a published sample returns these, and nothing about them is unclear.
    """
    if getattr(getattr(type(value), "DESCRIPTOR", None), "full_name", None) != _CONTRACT_NAME:
        return None
    try:
        data = value.SerializeToString()  # type: ignore[attr-defined]
        return Inference.parse(data) if isinstance(data, bytes) else None
    except Exception:  # not what its name says: refused as any other object
        return None


def validate_all(inferences: Iterable[Inference]) -> list[Inference]:
    """``validate`` each, naming its index (``inferences[i]``) in errors."""
    return [validate(item, f"inferences[{index}]") for index, item in enumerate(inferences)]


__all__ = [
    "EDGE_TOLERANCE",
    "TYPES_BY_FIELD",
    "VALUE_FIELDS",
    "as_float32",
    "attribute",
    "box_overflows",
    "classification",
    "clip_box",
    "entity",
    "event",
    "from_protoc",
    "motion",
    "other",
    "rectangle",
    "tag",
    "text",
    "type_of",
    "unset_negative_confidences",
    "validate",
    "validate_all",
    "validate_or_mend",
    "value_field",
]
