"""Building and checking inferences: the results an extension sends back.

The contract's ``Inference`` carries a ``type`` and one value of six kinds
(classification, motion, entity, text, event, other); "the value set must match the
type" (INF-1). The builders here set the type from the value, so it cannot disagree,
and check what the contract states as ranges: confidences and rectangle fields are
fractions in [0, 1] (INF-3, INF-4). ``validate`` applies the same checks to an
inference built any other way (by hand, or received from a peer).

    from avaproto.media import inferences as inf
    person = inf.entity("person", 0.92, inf.rectangle(0.1, 0.2, 0.3, 0.6), id="7")
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence

import betterproto2

from ..errors import InferenceError
from ..messages import (
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

#: The one table of kinds: each inference type and the oneof field holding its value.
VALUE_FIELDS: dict[InferenceType, str] = {
    InferenceType.CLASSIFICATION: "classification",
    InferenceType.MOTION: "motion",
    InferenceType.ENTITY: "entity",
    InferenceType.TEXT: "text",
    InferenceType.EVENT: "event",
    InferenceType.OTHER: "other",
}
TYPES_BY_FIELD = {name: kind for kind, name in VALUE_FIELDS.items()}
#: Slack for sums of float32 fractions (l + w, t + h) that should reach exactly 1.
EDGE_TOLERANCE = 1e-6


def _refuse(rule: str, message: str) -> InferenceError:
    return InferenceError(rule, Status.INVALID_ARGUMENT, message)


def _fraction(value: float, where: str, rule: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _refuse(rule, f"{where} must be a number, got {type(value).__name__}")
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise _refuse(rule, f"{where} = {value} is outside [0, 1]")
    return _as_float32(value)


def _as_float32(value: float) -> float:
    """The value the wire will carry (a float32), so a built message equals its echo."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


# --- parts ------------------------------------------------------------------------------


def rectangle(l: float, t: float, w: float, h: float) -> Rectangle:  # noqa: E741 - the contract's names
    """A box as fractions of the image (of the padded image, when it was padded: INF-5)."""
    box = Rectangle(l=l, t=t, w=w, h=h)
    _check_box(box, "box")
    return Rectangle(**{edge: _as_float32(getattr(box, edge)) for edge in "ltwh"})


def tag(value: str, confidence: float = 1.0) -> Tag:
    """A label with its confidence in [0, 1]."""
    return Tag(value=value, confidence=_fraction(confidence, f"tag {value!r} confidence", "INF-3"))


def attribute(name: str, value: str, confidence: float = 1.0) -> Attribute:
    sure = _fraction(confidence, f"attribute {name!r} confidence", "INF-3")
    return Attribute(name=name, value=value, confidence=sure)


# --- the six kinds ----------------------------------------------------------------------


def _inference(
    value_field: str,
    value: object,
    *,
    subtype: str,
    inference_id: str,
    related: Iterable[str],
    sequence_id: str,
    extensions: Mapping[str, str] | None,
) -> Inference:
    inference = Inference(
        type=TYPES_BY_FIELD[value_field],
        subtype=subtype,
        inference_id=inference_id,
        related_inferences=list(related),
        sequence_id=sequence_id,
        extensions=dict(extensions or {}),
        **{value_field: value},  # type: ignore[arg-type]
    )
    return validate(inference)


def classification(
    label: str | Tag,
    confidence: float = 1.0,
    *,
    attributes: Sequence[Attribute] = (),
    subtype: str = "",
    inference_id: str = "",
    related: Iterable[str] = (),
    sequence_id: str = "",
    extensions: Mapping[str, str] | None = None,
) -> Inference:
    """A label for the whole frame (often)."""
    value = Classification(
        tag=label if isinstance(label, Tag) else tag(label, confidence),
        attributes=list(attributes),
    )
    return _inference(
        "classification", value, subtype=subtype, inference_id=inference_id,
        related=related, sequence_id=sequence_id, extensions=extensions,
    )  # fmt: skip


def motion(
    box: Rectangle | None = None,
    *,
    subtype: str = "",
    inference_id: str = "",
    related: Iterable[str] = (),
    sequence_id: str = "",
    extensions: Mapping[str, str] | None = None,
) -> Inference:
    """Motion, in ``box`` when given (the whole frame otherwise)."""
    return _inference(
        "motion", Motion(box=box), subtype=subtype, inference_id=inference_id,
        related=related, sequence_id=sequence_id, extensions=extensions,
    )  # fmt: skip


def entity(
    label: str | Tag,
    confidence: float,
    box: Rectangle,
    *,
    id: str = "",  # the contract's name
    attributes: Sequence[Attribute] = (),
    subtype: str = "",
    inference_id: str = "",
    related: Iterable[str] = (),
    sequence_id: str = "",
    extensions: Mapping[str, str] | None = None,
) -> Inference:
    """A detected object: what it is, how sure, where; ``id`` to follow it across frames."""
    value = Entity(
        tag=label if isinstance(label, Tag) else tag(label, confidence),
        attributes=list(attributes),
        box=box,
        id=id,
    )
    return _inference(
        "entity", value, subtype=subtype, inference_id=inference_id,
        related=related, sequence_id=sequence_id, extensions=extensions,
    )  # fmt: skip


def text(
    value: str,
    *,
    language: str = "",
    start: int = 0,
    end: int = 0,
    subtype: str = "",
    inference_id: str = "",
    related: Iterable[str] = (),
    sequence_id: str = "",
    extensions: Mapping[str, str] | None = None,
) -> Inference:
    """Text about the frame (a caption, a transcript), ``language`` as BCP 47."""
    content = Text(value=value, language=language, start_timestamp=start, end_timestamp=end)
    return _inference(
        "text", content, subtype=subtype, inference_id=inference_id,
        related=related, sequence_id=sequence_id, extensions=extensions,
    )  # fmt: skip


def event(
    name: str,
    properties: Mapping[str, str] | None = None,
    *,
    subtype: str = "",
    inference_id: str = "",
    related: Iterable[str] = (),
    sequence_id: str = "",
    extensions: Mapping[str, str] | None = None,
) -> Inference:
    """Something that happened (a line crossed, a door opened), with string properties."""
    value = Event(name=name, properties=dict(properties or {}))
    return _inference(
        "event", value, subtype=subtype, inference_id=inference_id,
        related=related, sequence_id=sequence_id, extensions=extensions,
    )  # fmt: skip


def other(
    content_type: str,
    content: bytes,
    *,
    subtype: str = "",
    inference_id: str = "",
    related: Iterable[str] = (),
    sequence_id: str = "",
    extensions: Mapping[str, str] | None = None,
) -> Inference:
    """An opaque payload of an IANA media type (UTF-8 when text states no charset)."""
    value = InferenceOther(content_type=content_type, content_bytes=bytes(content))
    return _inference(
        "other", value, subtype=subtype, inference_id=inference_id,
        related=related, sequence_id=sequence_id, extensions=extensions,
    )  # fmt: skip


# --- checking ---------------------------------------------------------------------------


def value_field(inference: Inference) -> str | None:
    """The name of the oneof field set in ``value``, or None."""
    name, _ = betterproto2.which_one_of(inference, "value")
    return name or None


def type_of(inference: Inference) -> InferenceType:
    """The inference's type, AUTO resolved from the value that is set (INF-2)."""
    if inference.type is not InferenceType.AUTO:
        return InferenceType(inference.type)
    name = value_field(inference)
    if name is None:
        raise _refuse("INF-2", "an inference of type AUTO needs a value to take its type from")
    return TYPES_BY_FIELD[name]


def _check_box(box: Rectangle, where: str) -> None:
    for name in ("l", "t", "w", "h"):
        _fraction(getattr(box, name), f"{where}.{name}", "INF-4")
    if box.l + box.w > 1.0 + EDGE_TOLERANCE or box.t + box.h > 1.0 + EDGE_TOLERANCE:
        raise _refuse(
            "INF-4",
            f"{where} (l={box.l}, t={box.t}, w={box.w}, h={box.h}) reaches past the "
            "image's edge: l + w and t + h must not exceed 1",
        )


def _check_tags(value: object, where: str) -> None:
    label = getattr(value, "tag", None)
    if label is not None:
        _fraction(label.confidence, f"{where}.tag.confidence", "INF-3")
    for index, item in enumerate(getattr(value, "attributes", ()) or ()):
        _fraction(item.confidence, f"{where}.attributes[{index}].confidence", "INF-3")


def validate(inference: Inference, where: str = "inference") -> Inference:
    """Check ``inference`` against INF-1 to INF-4; return it unchanged, or raise."""
    name = value_field(inference)
    declared = InferenceType(inference.type)
    if name is None and declared is InferenceType.AUTO:
        return inference  # empty: nothing to contradict (its JSON form needs a value)
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
    _check_tags(value, path)
    box = getattr(value, "box", None)
    if box is not None:
        _check_box(box, f"{path}.box")
    return inference


def validate_all(inferences: Iterable[Inference]) -> list[Inference]:
    """``validate`` each, naming its index in errors."""
    return [validate(item, f"inferences[{index}]") for index, item in enumerate(inferences)]


__all__ = [
    "VALUE_FIELDS",
    "attribute",
    "classification",
    "entity",
    "event",
    "motion",
    "other",
    "rectangle",
    "tag",
    "text",
    "type_of",
    "validate",
    "validate_all",
    "value_field",
]
