"""The JSON form of inferences (the inference metadata schema's shape), both ways.

Pipelines publish an extension's results as JSON: ``{"inferences": [...]}`` with
lower-case type names and camelCase keys. The rules this module follows are stated in
spec/rules/12-inference-json.toml (JSON-1 to JSON-7); in short:

* a result with no inferences has **no** ``inferences`` key (``{}``), never ``[]``;
* each item has ``type`` (``"classification"``, ``"motion"``, ``"entity"``,
  ``"text"``, ``"event"``, ``"other"``; AUTO written as the value's kind) and its
  value under the same key;
* keys are the contract's field names in camelCase (``inferenceId``,
  ``relatedInferences``, ``sequenceId``, ``startTimestamp``, ``contentType``, ...);
  a field at its default is left out, except those the schema requires (a tag's
  value, an attribute's name and value, all four rectangle edges, an event's
  properties, a text's value), and confidences, which are always written;
* ``contentBytes`` is base64;
* the conversion is lossless: reading back what was written gives the same message.
  Floats are written as the float32 the wire carries, in the shortest decimal that
  reads back to the same float32.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InferenceError
from ..messages import (
    Attribute,
    Classification,
    Entity,
    Event,
    Inference,
    InferenceOther,
    Motion,
    Rectangle,
    Tag,
    Text,
)
from ..status import Status
from .inferences import TYPES_BY_FIELD, VALUE_FIELDS, type_of, validate

JsonDict = dict[str, Any]


def _float(value: float) -> float:
    """The float32 the wire carries, as the shortest decimal that reads back to it."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="0"))


# --- to JSON ----------------------------------------------------------------------------


def _tag(tag: Tag) -> JsonDict:
    return {"value": tag.value, "confidence": _float(tag.confidence)}


def _attributes(attributes: Sequence[Attribute]) -> list[JsonDict]:
    return [
        {"name": a.name, "value": a.value, "confidence": _float(a.confidence)} for a in attributes
    ]


def _box(box: Rectangle) -> JsonDict:
    return {"l": _float(box.l), "t": _float(box.t), "w": _float(box.w), "h": _float(box.h)}


def _value(value: Any) -> JsonDict:
    out: JsonDict = {}
    if isinstance(value, Classification | Entity):
        out["tag"] = _tag(value.tag or Tag())
        if value.attributes:
            out["attributes"] = _attributes(value.attributes)
        if isinstance(value, Entity):
            out["box"] = _box(value.box or Rectangle())
            if value.id:
                out["id"] = value.id
    elif isinstance(value, Motion):
        if value.box is not None:
            out["box"] = _box(value.box)
    elif isinstance(value, Text):
        out["value"] = value.value
        if value.language:
            out["language"] = value.language
        if value.start_timestamp:
            out["startTimestamp"] = value.start_timestamp
        if value.end_timestamp:
            out["endTimestamp"] = value.end_timestamp
    elif isinstance(value, Event):
        out["name"] = value.name
        out["properties"] = dict(value.properties)
    elif isinstance(value, InferenceOther):
        if value.content_type:
            out["contentType"] = value.content_type
        if value.content_bytes:
            out["contentBytes"] = base64.b64encode(value.content_bytes).decode("ascii")
    return out


def inference_to_json(inference: Inference) -> JsonDict:
    """One inference as a JSON object (checked first: INF rules)."""
    validate(inference)
    kind = type_of(inference)
    name = VALUE_FIELDS[kind]
    out: JsonDict = {"type": name}
    if inference.subtype:
        out["subtype"] = inference.subtype
    if inference.inference_id:
        out["inferenceId"] = inference.inference_id
    if inference.related_inferences:
        out["relatedInferences"] = list(inference.related_inferences)
    if inference.sequence_id:
        out["sequenceId"] = inference.sequence_id
    out[name] = _value(getattr(inference, name))
    if inference.extensions:
        out["extensions"] = dict(inference.extensions)
    return out


def to_json_dict(inferences: Iterable[Inference]) -> JsonDict:
    """``{"inferences": [...]}``, or ``{}`` when there are none (JSON-2)."""
    items = [inference_to_json(inference) for inference in inferences]
    return {"inferences": items} if items else {}


def to_json(inferences: Iterable[Inference], **dumps: Any) -> str:
    return json.dumps(to_json_dict(inferences), **dumps)


# --- from JSON --------------------------------------------------------------------------


def _refuse(rule: str, where: str, message: str) -> InferenceError:
    return InferenceError(rule, Status.INVALID_ARGUMENT, f"{where}: {message}")


class _Reader:
    """Reads one JSON object's keys with their types, refusing unknown keys."""

    def __init__(self, data: Any, where: str, known: Iterable[str]) -> None:
        if not isinstance(data, Mapping):
            raise _refuse("JSON-3", where, f"expected an object, got {type(data).__name__}")
        unknown = set(data) - set(known)
        if unknown:
            raise _refuse("JSON-4", where, f"unknown key {sorted(unknown)[0]!r}")
        self.data = data
        self.where = where

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str, required: bool, kinds: tuple[type, ...], what: str) -> Any:
        if key not in self.data:
            if required:
                raise _refuse("JSON-6", self.where, f"missing required key {key!r}")
            return None
        value = self.data[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise _refuse(
                "JSON-3", f"{self.where}.{key}", f"expected {what}, got {json.dumps(value)}"
            )
        return value

    def string(self, key: str, *, required: bool = False) -> str:
        value = self._get(key, required, (str,), "a string")
        return "" if value is None else str(value)

    def number(self, key: str, *, required: bool = False) -> float:
        value = self._get(key, required, (int, float), "a number")
        return 0.0 if value is None else float(value)

    def integer(self, key: str) -> int:
        value = self._get(key, False, (int,), "a non-negative integer")
        if value is not None and not 0 <= value < 2**64:
            raise _refuse("JSON-3", f"{self.where}.{key}", f"{value} is not a uint64")
        return 0 if value is None else int(value)

    def strings(self, key: str) -> list[str]:
        value = self._get(key, False, (list,), "an array of strings") or []
        if not all(isinstance(item, str) for item in value):
            raise _refuse("JSON-3", f"{self.where}.{key}", "expected an array of strings")
        return list(value)

    def string_map(self, key: str, *, required: bool = False) -> dict[str, str]:
        value = self._get(key, required, (Mapping,), "an object of strings") or {}
        if not all(isinstance(item, str) for item in value.values()):
            raise _refuse("JSON-3", f"{self.where}.{key}", "every value must be a string")
        return dict(value)

    def child(self, key: str, known: Iterable[str], *, required: bool = False) -> _Reader | None:
        if key not in self.data:
            if required:
                raise _refuse("JSON-6", self.where, f"missing required key {key!r}")
            return None
        return _Reader(self.data[key], f"{self.where}.{key}", known)


def _read_tag(reader: _Reader | None) -> Tag | None:
    if reader is None:
        return None
    return Tag(value=reader.string("value", required=True), confidence=reader.number("confidence"))


def _read_attributes(reader: _Reader) -> list[Attribute]:
    items = reader._get("attributes", False, (list,), "an array of attributes") or []
    out = []
    for index, item in enumerate(items):
        attr = _Reader(item, f"{reader.where}.attributes[{index}]", ("name", "value", "confidence"))
        out.append(
            Attribute(
                name=attr.string("name", required=True),
                value=attr.string("value", required=True),
                confidence=attr.number("confidence"),
            )
        )
    return out


def _read_box(reader: _Reader | None) -> Rectangle | None:
    if reader is None:
        return None
    return Rectangle(**{edge: reader.number(edge, required=True) for edge in "ltwh"})


def _read_value(name: str, reader: _Reader) -> Any:
    if name == "classification":
        return Classification(
            tag=_read_tag(reader.child("tag", ("value", "confidence"), required=True)),
            attributes=_read_attributes(reader),
        )
    if name == "entity":
        return Entity(
            tag=_read_tag(reader.child("tag", ("value", "confidence"), required=True)),
            attributes=_read_attributes(reader),
            box=_read_box(reader.child("box", "ltwh", required=True)),
            id=reader.string("id"),
        )
    if name == "motion":
        return Motion(box=_read_box(reader.child("box", "ltwh")))
    if name == "text":
        return Text(
            value=reader.string("value", required=True),
            language=reader.string("language"),
            start_timestamp=reader.integer("startTimestamp"),
            end_timestamp=reader.integer("endTimestamp"),
        )
    if name == "event":
        return Event(
            name=reader.string("name", required=True),
            properties=reader.string_map("properties", required=True),
        )
    encoded = reader.string("contentBytes")
    try:
        content = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise _refuse("JSON-5", f"{reader.where}.contentBytes", "is not base64") from None
    return InferenceOther(content_type=reader.string("contentType"), content_bytes=content)


_VALUE_KEYS = {
    "classification": ("tag", "attributes"),
    "entity": ("tag", "attributes", "box", "id"),
    "motion": ("box",),
    "text": ("value", "language", "startTimestamp", "endTimestamp"),
    "event": ("name", "properties"),
    "other": ("contentType", "contentBytes"),
}
_INFERENCE_KEYS = (
    "type", "subtype", "inferenceId", "relatedInferences", "sequenceId", "extensions",
    *_VALUE_KEYS,
)  # fmt: skip


def inference_from_json(data: Any, where: str = "inference") -> Inference:
    """One JSON object as an Inference; errors name the path and the rule."""
    reader = _Reader(data, where, _INFERENCE_KEYS)
    kind = reader.string("type", required=True)
    if kind not in TYPES_BY_FIELD:
        raise _refuse(
            "JSON-1",
            f"{where}.type",
            f"{kind!r} is not one of {', '.join(VALUE_FIELDS.values())} (lower case)",
        )
    present = [name for name in _VALUE_KEYS if reader.has(name)]
    if present != [kind]:
        raise _refuse(
            "JSON-6",
            where,
            f"type {kind!r} needs exactly the value {kind!r}, found {present or 'none'}",
        )
    value_reader = reader.child(kind, _VALUE_KEYS[kind], required=True)
    assert value_reader is not None
    inference = Inference(
        type=TYPES_BY_FIELD[kind],
        subtype=reader.string("subtype"),
        inference_id=reader.string("inferenceId"),
        related_inferences=reader.strings("relatedInferences"),
        sequence_id=reader.string("sequenceId"),
        extensions=reader.string_map("extensions"),
        **{kind: _read_value(kind, value_reader)},
    )
    return validate(inference, where)


def from_json_dict(data: Any) -> list[Inference]:
    """``{"inferences": [...]}`` (or ``{}``: no result) as a list of Inference."""
    reader = _Reader(data, "$", ("inferences",))
    if not reader.has("inferences"):
        return []
    items = reader._get("inferences", True, (list,), "an array of inferences")
    if not items:
        raise _refuse("JSON-2", "$.inferences", "an empty array; leave the key out instead")
    return [inference_from_json(item, f"$.inferences[{i}]") for i, item in enumerate(items)]


def from_json(text: str) -> list[Inference]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise _refuse("JSON-3", "$", f"not JSON: {error.msg} at character {error.pos}") from None
    return from_json_dict(data)


__all__ = [
    "from_json",
    "from_json_dict",
    "inference_from_json",
    "inference_to_json",
    "to_json",
    "to_json_dict",
]
