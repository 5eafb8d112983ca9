"""The JSON form of inferences (the shape of the inference metadata schema), both ways.

The protocol text strongly recommends that results follow the "inference metadata
schema": ``{"inferences": [...]}`` with lower-case type names and camelCase keys.
Pipelines publish results in that form, so this module writes it and reads it back.
The rules it follows are the project's own, stated in
spec/rules/12-inference-json.toml (JSON-1 to JSON-10), and the project's own JSON
Schema, ``inference.schema.json`` beside this module (``json_schema()``), states the
shape of what is written. In short:

* a result with no inferences has **no** ``inferences`` key (``{}``), never ``[]``,
  so a caller can ``line.update(to_json_dict(result.inferences))``;
* each item has ``type`` (``"classification"``, ``"motion"``, ``"entity"``,
  ``"text"``, ``"event"``, ``"other"``; AUTO written as its value's kind) and that
  value under the same key;
* keys are the contract's field names in camelCase; a field at its default is left
  out, except the keys the form requires (a tag's value, an attribute's name and
  value, the four edges of a rectangle, an entity's tag and box, a classification's
  tag, an event's name and properties, a text's value); confidences are always
  written;
* ``sequence_id`` is not written: the published schema has no key for it and allows
  no key it does not define;
* ``contentBytes`` is standard base64;
* floats are written as the float32 the wire carries (in the shortest decimal that
  reads back to it) and read back through float32, so
  ``from_json_dict(to_json_dict(xs)) == xs`` for inferences the builders make, but
  for their ``sequence_id``.

Writing is strict: what is written validates against the schema, or is not written.
An inference that has no valid form (no value, an entity without a box, a
classification without a tag, a confidence out of range) is refused with
``InferenceError`` naming the rule and the path; missing parts are never made up.
``to_json_lenient`` writes the inferences that have a form and says which it left
out, for a writer that must not stop a run over one odd inference.

Reading is lenient where the published schema is (a box past the image's edge, an
event's box, which the contract's Event cannot hold, ``sequenceId`` from earlier
avaproto versions, base64 without padding or in the URL-safe alphabet, a timestamp
written as ``90000.0``) and says so in ``notes`` when asked. What is malformed (an
unknown key, a value of the wrong JSON type, a missing required key, a number out of
range, a type that does not name the value) is refused with ``InferenceError``
(INVALID_ARGUMENT) naming the rule and the path (``$.inferences[2].entity.box.w``),
never dropped or clamped, because silently repairing results would make them lie.
"""

from __future__ import annotations

import base64
import binascii
import importlib.resources
import json
import math
import re
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
from .inferences import (
    TYPES_BY_FIELD,
    VALUE_FIELDS,
    as_float32,
    box_overflows,
    type_of,
    validate,
    value_field,
)

JsonDict = dict[str, Any]

#: Keys of each value object, by oneof field name (the names come from VALUE_FIELDS).
VALUE_KEYS: dict[str, tuple[str, ...]] = {
    "classification": ("tag", "attributes"),
    "motion": ("box",),
    "entity": ("tag", "attributes", "box", "id"),
    "text": ("value", "language", "startTimestamp", "endTimestamp"),
    "event": ("name", "properties"),
    "other": ("contentType", "contentBytes"),
}
if set(VALUE_KEYS) != set(VALUE_FIELDS.values()):  # pragma: no cover - a table out of step
    raise ImportError("VALUE_KEYS and VALUE_FIELDS name different kinds")
#: Keys of an inference object, as written.
INFERENCE_KEYS: tuple[str, ...] = (
    "type", "subtype", "inferenceId", "relatedInferences",
    *VALUE_FIELDS.values(), "extensions",
)  # fmt: skip
#: Keys read although never written: ``sequenceId`` (earlier avaproto versions wrote
#: it), and an event's ``box`` (the published schema has one; the contract's Event
#: does not, so it is read, checked and left out).
_READ_ONLY_KEYS = {"inference": ("sequenceId",), "event": ("box",)}
_TAG_KEYS = ("value", "confidence")
_ATTRIBUTE_KEYS = ("name", "value", "confidence")
_BOX_KEYS = ("l", "t", "w", "h")
#: The published form's pattern for a subtype (``^\S(\s*\S)*$``): not empty, and
#: neither starting nor ending with white space.
_SUBTYPE = re.compile(r"\S(?:.*\S)?", re.DOTALL)
_UINT64_END = 2**64
#: The file, beside this module and shipped in the package, of the project's schema.
SCHEMA_FILE = "inference.schema.json"


def json_schema() -> JsonDict:
    """The project's JSON Schema (draft 07) of what ``to_json_dict`` writes.

    It restates the published inference metadata schema's constraints from the
    contract's facts, a little stricter (the type names the value, timestamps are
    uint64, ``contentBytes`` is standard base64, an event has no box), so that any
    consumer can check avaproto's output with a stock validator.
    """
    text = importlib.resources.files(__package__).joinpath(SCHEMA_FILE).read_text("utf-8")
    schema: JsonDict = json.loads(text)
    return schema


def _refuse(rule: str, where: str, message: str) -> InferenceError:
    return InferenceError(rule, Status.INVALID_ARGUMENT, f"{where}: {message}")


def _check_subtype(subtype: str, where: str) -> None:
    if subtype and not _SUBTYPE.fullmatch(subtype):
        raise _refuse(
            "JSON-9",
            f"{where}.subtype",
            f"{subtype!r} starts or ends with white space; the JSON form's subtype has "
            "none (strip it, or leave the subtype empty)",
        )


# --- to JSON ----------------------------------------------------------------------------


def _float(value: float) -> float:
    """The float32 the wire carries, as the shortest decimal that reads back to it.

    Writing the double of a float32 (0.10000000149011612) would be exact but noisy;
    the shortest decimal (0.1) reads back to the same float32, which is all that
    the message can hold.
    """
    return float(np.format_float_positional(np.float32(value), unique=True, trim="0"))


def _tag(tag: Tag) -> JsonDict:
    return {"value": tag.value, "confidence": _float(tag.confidence)}


def _attributes(attributes: Sequence[Attribute]) -> list[JsonDict]:
    return [
        {"name": a.name, "value": a.value, "confidence": _float(a.confidence)} for a in attributes
    ]


def _box(box: Rectangle) -> JsonDict:
    return {edge: _float(getattr(box, edge)) for edge in _BOX_KEYS}


def _required(part: Any, name: str, where: str) -> Any:
    """A message the form requires (a tag, an entity's box), never made up when absent."""
    if part is None:
        raise _refuse(
            "JSON-6",
            where,
            f"has no {name}, which the JSON form requires and avaproto does not make up: "
            f"give it a {name}, or leave the inference out",
        )
    return part


def _timestamp(value: int, where: str) -> int:
    if not 0 <= value < _UINT64_END:
        raise _refuse("JSON-3", where, f"{value} is not a uint64")
    return value


def _value(value: Any, where: str) -> JsonDict:
    out: JsonDict = {}
    if isinstance(value, Classification | Entity):
        out["tag"] = _tag(_required(value.tag, "tag", where))
        if value.attributes:
            out["attributes"] = _attributes(value.attributes)
        if isinstance(value, Entity):
            out["box"] = _box(_required(value.box, "box", where))
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
            out["startTimestamp"] = _timestamp(value.start_timestamp, f"{where}.startTimestamp")
        if value.end_timestamp:
            out["endTimestamp"] = _timestamp(value.end_timestamp, f"{where}.endTimestamp")
    elif isinstance(value, Event):
        out["name"] = value.name
        out["properties"] = dict(value.properties)
    elif isinstance(value, InferenceOther):
        if value.content_type:
            out["contentType"] = value.content_type
        if value.content_bytes:
            out["contentBytes"] = base64.b64encode(value.content_bytes).decode("ascii")
    return out


def inference_to_json(inference: Inference, where: str = "inference") -> JsonDict:
    """One inference as a JSON object valid against the schema, or InferenceError.

    It is checked first (INF rules, JSON-9); a part the form requires and the
    message lacks is refused (JSON-6), not filled in. ``sequence_id`` is left out
    (JSON-4): the published schema has no key for it.
    """
    validate(inference, where)
    _check_subtype(inference.subtype, where)
    if value_field(inference) is None:
        raise _refuse(
            "JSON-6",
            where,
            "has no value (classification, motion, entity, text, event or other), so it "
            "has no JSON form; leave it out of the result",
        )
    name = VALUE_FIELDS[type_of(inference)]
    out: JsonDict = {"type": name}
    if inference.subtype:
        out["subtype"] = inference.subtype
    if inference.inference_id:
        out["inferenceId"] = inference.inference_id
    if inference.related_inferences:
        out["relatedInferences"] = list(inference.related_inferences)
    out[name] = _value(getattr(inference, name), f"{where}.{name}")
    if inference.extensions:
        out["extensions"] = dict(inference.extensions)
    return out


def to_json_dict(inferences: Iterable[Inference]) -> JsonDict:
    """``{"inferences": [...]}``, or ``{}`` when there are none (JSON-2).

    All or nothing: the first inference without a valid form raises InferenceError
    naming its index (``inferences[2]``), the rule and what to fix.
    """
    items = [inference_to_json(item, f"inferences[{i}]") for i, item in enumerate(inferences)]
    return {"inferences": items} if items else {}


def to_json_lenient(inferences: Iterable[Inference]) -> tuple[JsonDict, list[str]]:
    """The JSON form of the inferences that have one, and a message per one left out.

    For a writer that records many results (``avaproto send --output``) and must not
    stop over one odd inference from a peer: the dict is what ``to_json_dict`` would
    write for the inferences that have a valid form (``{}`` when none has), and each
    message names the left-out inference by its index in ``inferences``, the rule and
    why (``inferences[2] left out: [JSON-6] inferences[2].entity: has no box, ...``).
    Nothing is repaired: an inference is written whole or not at all.
    """
    items: list[JsonDict] = []
    left_out: list[str] = []
    for index, inference in enumerate(inferences):
        where = f"inferences[{index}]"
        try:
            items.append(inference_to_json(inference, where))
        except InferenceError as error:
            left_out.append(f"{where} left out: {error}")
    return ({"inferences": items} if items else {}), left_out


def to_json(inferences: Iterable[Inference], **dumps: Any) -> str:
    """``to_json_dict`` as text; ``dumps`` are passed to ``json.dumps`` (indent, ...)."""
    return json.dumps(to_json_dict(inferences), allow_nan=False, **dumps)


# --- from JSON --------------------------------------------------------------------------


def _utf8(text: str) -> bool:
    """Whether a protobuf string can carry ``text`` (JSON allows lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _describe(value: Any) -> str:
    try:
        return json.dumps(value)[:60]
    except (TypeError, ValueError):
        return type(value).__name__


class _Reader:
    """One JSON object, read key by key with its JSON type; unknown keys refused.

    ``notes`` collects what was tolerated on the way (shared by a reader's children).
    """

    def __init__(
        self,
        data: Any,
        where: str,
        known: Iterable[str],
        notes: list[str],
        tolerated: Iterable[str] = (),
    ) -> None:
        if not isinstance(data, Mapping):
            raise _refuse("JSON-3", where, f"expected an object, got {_describe(data)}")
        names = tuple(known)
        accepted = (*names, *tolerated)
        unknown = [key for key in data if key not in accepted]
        if unknown:
            raise _refuse(
                "JSON-4",
                where,
                f"unknown key {unknown[0]!r}; the keys here are {', '.join(names)}",
            )
        self.data = data
        self.where = where
        self.notes = notes

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str, required: bool, kinds: tuple[type, ...], what: str) -> Any:
        if key not in self.data:
            if required:
                raise _refuse("JSON-6", self.where, f"missing required key {key!r}")
            return None
        value = self.data[key]
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise _refuse(
                "JSON-3", f"{self.where}.{key}", f"expected {what}, got {_describe(value)}"
            )
        return value

    def string(self, key: str, *, required: bool = False) -> str:
        value = self._get(key, required, (str,), "a string")
        if value is None:
            return ""
        if not _utf8(value):
            raise _refuse("JSON-3", f"{self.where}.{key}", "has a lone surrogate (not UTF-8 text)")
        return str(value)

    def fraction(self, key: str, *, required: bool = False) -> float:
        """A confidence or an edge: a finite number in [0, 1], stored as float32."""
        value = self._get(key, required, (int, float), "a number in [0, 1]")
        if value is None:
            return 0.0
        if (isinstance(value, float) and math.isnan(value)) or not 0 <= value <= 1:
            raise InferenceError(
                "JSON-8",
                Status.INVALID_ARGUMENT,
                f"{self.where}.{key} = {_describe(value)} is outside [0, 1]",
            )
        return as_float32(float(value))

    def uint64(self, key: str) -> int:
        """An integer; ``90000.0`` is one too (JSON and the schema's "integer" agree)."""
        value = self._get(key, False, (int, float), "a non-negative integer")
        if value is None:
            return 0
        if isinstance(value, float):
            if not value.is_integer():
                raise _refuse(
                    "JSON-3", f"{self.where}.{key}", f"expected an integer, got {_describe(value)}"
                )
            value = int(value)
        if not 0 <= value < _UINT64_END:
            raise _refuse("JSON-3", f"{self.where}.{key}", f"{value} is not a uint64")
        return int(value)

    def strings(self, key: str) -> list[str]:
        items = self._get(key, False, (list,), "an array of strings") or []
        for index, item in enumerate(items):
            if not isinstance(item, str) or not _utf8(item):
                raise _refuse(
                    "JSON-3",
                    f"{self.where}.{key}[{index}]",
                    f"expected a string, got {_describe(item)}",
                )
        return list(items)

    def string_map(self, key: str, *, required: bool = False) -> dict[str, str]:
        value = self._get(key, required, (Mapping,), "an object of strings") or {}
        for name, item in value.items():
            if not isinstance(item, str) or not (_utf8(name) and _utf8(item)):
                raise _refuse(
                    "JSON-3",
                    f"{self.where}.{key}[{name!r}]",
                    f"every value must be a string, got {_describe(item)}",
                )
        return dict(value)

    def objects(self, key: str) -> list[Any]:
        items = self._get(key, False, (list,), "an array of objects")
        return [] if items is None else list(items)

    def child(
        self,
        key: str,
        known: Iterable[str],
        *,
        required: bool = False,
        tolerated: Iterable[str] = (),
    ) -> _Reader | None:
        if key not in self.data:
            if required:
                raise _refuse("JSON-6", self.where, f"missing required key {key!r}")
            return None
        return _Reader(self.data[key], f"{self.where}.{key}", known, self.notes, tolerated)


def _read_tag(reader: _Reader) -> Tag:
    return Tag(
        value=reader.string("value", required=True), confidence=reader.fraction("confidence")
    )


def _read_attributes(reader: _Reader) -> list[Attribute]:
    out = []
    for index, item in enumerate(reader.objects("attributes")):
        attr = _Reader(item, f"{reader.where}.attributes[{index}]", _ATTRIBUTE_KEYS, reader.notes)
        out.append(
            Attribute(
                name=attr.string("name", required=True),
                value=attr.string("value", required=True),
                confidence=attr.fraction("confidence"),
            )
        )
    return out


def _read_box(reader: _Reader) -> Rectangle:
    edges = {edge: reader.fraction(edge, required=True) for edge in _BOX_KEYS}
    return Rectangle(**edges)


def _child(
    reader: _Reader, key: str, known: Iterable[str], tolerated: Iterable[str] = ()
) -> _Reader:
    child = reader.child(key, known, required=True, tolerated=tolerated)
    assert child is not None  # required=True raises instead
    return child


_STANDARD_BASE64 = re.compile(r"[A-Za-z0-9+/]*")
_URLSAFE_BASE64 = re.compile(r"[A-Za-z0-9_-]*")


def _read_content(reader: _Reader) -> bytes:
    """contentBytes: standard base64 (JSON-5), or, noted, unpadded or URL-safe base64.

    The published schema only says "Base64 encoded", and encoders that leave out the
    padding or use the URL-safe alphabet are common; both decode to one value. Text
    that is neither (a stray character, a mix of both alphabets, a length no base64
    has) is refused.
    """
    encoded = reader.string("contentBytes")
    where = f"{reader.where}.contentBytes"
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        pass
    body = encoded.rstrip("=")
    padding = len(encoded) - len(body)
    standard = _STANDARD_BASE64.fullmatch(body) is not None
    urlsafe = not standard and _URLSAFE_BASE64.fullmatch(body) is not None
    shaped = len(body) % 4 != 1 and (padding == 0 or (padding <= 2 and len(encoded) % 4 == 0))
    if not (standard or urlsafe) or not shaped:
        raise _refuse(
            "JSON-5",
            where,
            "is not base64: write standard base64 (A-Z a-z 0-9 + /, padded with = to a "
            "multiple of 4 characters)",
        )
    # One alphabet, a length base64 has, padding completed: this decodes.
    padded = body + "=" * (-len(body) % 4)
    content = base64.b64decode(padded, altchars=b"-_" if urlsafe else None, validate=True)
    unpadded = padding == 0 and len(body) % 4 != 0
    variant = " and ".join(
        part
        for part, present in (("the URL-safe alphabet", urlsafe), ("no padding", unpadded))
        if present
    )
    reader.notes.append(f"{where} is base64 with {variant}, not standard base64; read as such")
    return content


def _read_value(name: str, reader: _Reader) -> Any:
    if name == "classification":
        return Classification(
            tag=_read_tag(_child(reader, "tag", _TAG_KEYS)),
            attributes=_read_attributes(reader),
        )
    if name == "entity":
        return Entity(
            tag=_read_tag(_child(reader, "tag", _TAG_KEYS)),
            attributes=_read_attributes(reader),
            box=_read_box(_child(reader, "box", _BOX_KEYS)),
            id=reader.string("id"),
        )
    if name == "motion":
        box = reader.child("box", _BOX_KEYS)
        return Motion(box=None if box is None else _read_box(box))
    if name == "text":
        return Text(
            value=reader.string("value", required=True),
            language=reader.string("language"),
            start_timestamp=reader.uint64("startTimestamp"),
            end_timestamp=reader.uint64("endTimestamp"),
        )
    if name == "event":
        box = reader.child("box", _BOX_KEYS)
        if box is not None:  # checked like any box, then left out: Event has no field for it
            _read_box(box)
            reader.notes.append(
                f"{box.where} left out: the contract's Event has no box (the published "
                "schema allows one)"
            )
        return Event(
            name=reader.string("name", required=True),
            properties=reader.string_map("properties", required=True),
        )
    return InferenceOther(
        content_type=reader.string("contentType"), content_bytes=_read_content(reader)
    )


def inference_from_json(
    data: Any, where: str = "inference", *, notes: list[str] | None = None
) -> Inference:
    """One JSON object as an Inference; errors name the rule and the path.

    What is tolerated rather than refused (see the module's text) is appended to
    ``notes``, when given, one message each, naming the path.
    """
    notes = [] if notes is None else notes
    reader = _Reader(data, where, INFERENCE_KEYS, notes, _READ_ONLY_KEYS["inference"])
    kind = reader.string("type", required=True)
    if kind not in TYPES_BY_FIELD:
        raise _refuse(
            "JSON-1",
            f"{where}.type",
            f"{kind!r} is not one of {', '.join(VALUE_FIELDS.values())} (lower case)",
        )
    present = [name for name in VALUE_FIELDS.values() if reader.has(name)]
    if present != [kind]:
        raise _refuse(
            "JSON-6",
            where,
            f"type {kind!r} needs exactly the value {kind!r}, found {present or 'none'}",
        )
    subtype = reader.string("subtype")
    _check_subtype(subtype, where)
    tolerated = _READ_ONLY_KEYS.get(kind, ())
    value: dict[str, Any] = {
        kind: _read_value(kind, _child(reader, kind, VALUE_KEYS[kind], tolerated))
    }
    if reader.has("sequenceId"):
        notes.append(
            f"{where}.sequenceId is not in the published schema (earlier avaproto versions "
            "wrote it); read as sequence_id"
        )
    inference = Inference(
        type=TYPES_BY_FIELD[kind],
        subtype=subtype,
        inference_id=reader.string("inferenceId"),
        related_inferences=reader.strings("relatedInferences"),
        sequence_id=reader.string("sequenceId"),
        extensions=reader.string_map("extensions"),
        **value,
    )
    validate(inference, where)  # INF-1 to INF-4, as for any inference (fields checked as read)
    overflow = box_overflows(inference, where)
    if overflow is not None:
        notes.append(f"{overflow}; read as given (INF-4)")
    return inference


def from_json_dict(data: Any, *, notes: list[str] | None = None) -> list[Inference]:
    """``{"inferences": [...]}`` as a list of Inference; ``[]`` when there is no key.

    Other top-level keys belong to whoever wrote the object (a sequence number, a
    timestamp) and are left alone (JSON-2). ``notes``, when given, receives one
    message for each thing tolerated rather than refused (a box past the edge, a
    ``sequenceId``, an event's box left out, base64 without padding).
    """
    if not isinstance(data, Mapping):
        raise _refuse("JSON-2", "$", f"expected an object, got {_describe(data)}")
    if "inferences" not in data:
        return []
    items = data["inferences"]
    if not isinstance(items, list):
        raise _refuse(
            "JSON-2", "$.inferences", f"expected an array of inferences, got {_describe(items)}"
        )
    if not items:
        raise _refuse("JSON-2", "$.inferences", "an empty array; leave the key out instead")
    return [
        inference_from_json(item, f"$.inferences[{i}]", notes=notes) for i, item in enumerate(items)
    ]


def from_json(text: str | bytes, *, notes: list[str] | None = None) -> list[Inference]:
    """``from_json_dict`` of JSON text."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _refuse("JSON-2", "$", f"not JSON: {error}") from None
    return from_json_dict(data, notes=notes)


__all__ = [
    "INFERENCE_KEYS",
    "SCHEMA_FILE",
    "VALUE_KEYS",
    "from_json",
    "from_json_dict",
    "inference_from_json",
    "inference_to_json",
    "json_schema",
    "to_json",
    "to_json_dict",
    "to_json_lenient",
]
