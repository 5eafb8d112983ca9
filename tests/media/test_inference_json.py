"""Spec section 12, the JSON form of inferences: its shape, its rules, both directions."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avaproto.errors import InferenceError
from avaproto.media import inferences as inf
from avaproto.media.inference_json import (
    from_json,
    from_json_dict,
    inference_from_json,
    inference_to_json,
    to_json,
    to_json_dict,
    to_json_lenient,
)
from avaproto.messages import (
    Attribute,
    Classification,
    Entity,
    Inference,
    InferenceType,
    Motion,
    Rectangle,
    Tag,
    Text,
)
from avaproto.status import Status

GOLDEN = [
    inf.entity(
        "person",
        0.875,
        inf.rectangle(0.25, 0.5, 0.125, 0.25),
        id="17",
        attributes=[inf.attribute("hat", "yes", 0.5), inf.attribute("coat", "red", 0.1)],
        subtype="peopleDetection",
        inference_id="p1",
    ),
    inf.motion(inf.rectangle(0, 0, 1, 1), related=["p1"], sequence_id="s"),
    inf.event("lineCrossed", {"direction": "in", "line": "door"}, extensions={"zone": "door"}),
    inf.text("hello", language="en", start=90000, end=18446744073709551615),
    inf.other("application/octet-stream", b"\x00\xff\x10"),
    inf.classification("indoor", 1.0),
    inf.motion(),
]

GOLDEN_JSON: dict[str, Any] = {
    "inferences": [
        {
            "type": "entity",
            "subtype": "peopleDetection",
            "inferenceId": "p1",
            "entity": {
                "tag": {"value": "person", "confidence": 0.875},
                "attributes": [
                    {"name": "hat", "value": "yes", "confidence": 0.5},
                    {"name": "coat", "value": "red", "confidence": 0.1},
                ],
                "box": {"l": 0.25, "t": 0.5, "w": 0.125, "h": 0.25},
                "id": "17",
            },
        },
        {
            "type": "motion",
            "relatedInferences": ["p1"],
            "motion": {"box": {"l": 0.0, "t": 0.0, "w": 1.0, "h": 1.0}},
        },
        {
            "type": "event",
            "event": {"name": "lineCrossed", "properties": {"direction": "in", "line": "door"}},
            "extensions": {"zone": "door"},
        },
        {
            "type": "text",
            "text": {
                "value": "hello",
                "language": "en",
                "startTimestamp": 90000,
                "endTimestamp": 18446744073709551615,
            },
        },
        {
            "type": "other",
            "other": {"contentType": "application/octet-stream", "contentBytes": "AP8Q"},
        },
        {
            "type": "classification",
            "classification": {"tag": {"value": "indoor", "confidence": 1.0}},
        },
        {"type": "motion", "motion": {}},
    ]
}


def without_sequence_id(inferences: list[Inference]) -> list[Inference]:
    """What the JSON form keeps of ``inferences``: all but their sequence_id (JSON-4)."""
    copies = [Inference.parse(bytes(item)) for item in inferences]
    for item in copies:
        item.sequence_id = ""
    return copies


@contextmanager
def refused(rule: str, match: str | None = None) -> Iterator[pytest.ExceptionInfo[InferenceError]]:
    """Expect an InferenceError for ``rule`` (INVALID_ARGUMENT), its message matching."""
    with pytest.raises(InferenceError, match=match) as caught:
        yield caught
    assert caught.value.rule == rule
    assert caught.value.status is Status.INVALID_ARGUMENT


def one(item: Any) -> dict[str, Any]:
    return {"inferences": [item]}


# --- the rules of spec/rules/12-inference-json.toml, checked independently --------------

KINDS = ("classification", "motion", "entity", "text", "event", "other")
TAG = ({"value"}, {"value", "confidence"})
ATTRIBUTE = ({"name", "value"}, {"name", "value", "confidence"})
BOX = ({"l", "t", "w", "h"}, {"l", "t", "w", "h"})
#: kind -> (required keys, allowed keys) of its value object (JSON-4, JSON-6).
VALUE_SHAPES = {
    "classification": ({"tag"}, {"tag", "attributes"}),
    "motion": (set(), {"box"}),
    "entity": ({"tag", "box"}, {"tag", "attributes", "box", "id"}),
    "text": ({"value"}, {"value", "language", "startTimestamp", "endTimestamp"}),
    "event": ({"name", "properties"}, {"name", "properties"}),
    "other": (set(), {"contentType", "contentBytes"}),
}
ITEM_KEYS = {"type", "subtype", "inferenceId", "relatedInferences", "extensions"}
CAMEL = re.compile(r"[a-z]+(?:[A-Z][a-z]+)*")


def check_keys(obj: Any, shape: tuple[set[str], set[str]], where: str) -> None:
    required, allowed = shape
    assert isinstance(obj, dict), where
    assert required <= set(obj) <= allowed, (where, set(obj))
    assert all(CAMEL.fullmatch(key) for key in obj), where  # JSON-4


def check_fraction(value: Any, where: str) -> None:
    assert type(value) in (int, float), where  # JSON-3
    assert math.isfinite(value) and 0 <= value <= 1, where  # JSON-8


def check_strings(value: Any, where: str) -> None:
    assert isinstance(value, dict) and all(isinstance(v, str) for v in value.values()), where


def check_conforms(doc: Any) -> None:
    """Assert that ``doc`` follows JSON-1 to JSON-9, as the rules state them."""
    assert isinstance(doc, dict)
    if "inferences" not in doc:
        return  # JSON-2: no result, no key
    items = doc["inferences"]
    assert isinstance(items, list) and items, "JSON-2: at least one item"
    for index, item in enumerate(items):
        where = f"$.inferences[{index}]"
        assert isinstance(item, dict), where
        kind = item["type"]
        assert kind in KINDS, where  # JSON-1
        assert set(item) - ITEM_KEYS == {kind}, where  # JSON-6: exactly its own value
        assert all(CAMEL.fullmatch(key) for key in item), where  # JSON-4
        for key in ("subtype", "inferenceId"):
            assert isinstance(item.get(key, ""), str), where
        subtype = item.get("subtype")
        assert subtype is None or (subtype and subtype == subtype.strip()), where  # JSON-9
        assert all(isinstance(r, str) for r in item.get("relatedInferences", [])), where
        check_strings(item.get("extensions", {}), where)
        value = item[kind]
        check_keys(value, VALUE_SHAPES[kind], f"{where}.{kind}")
        if "tag" in value:
            check_keys(value["tag"], TAG, where)
            assert isinstance(value["tag"]["value"], str)
            check_fraction(value["tag"]["confidence"], where)  # always written
        for attribute in value.get("attributes", []):
            check_keys(attribute, ATTRIBUTE, where)
            check_fraction(attribute["confidence"], where)
        if "box" in value:
            check_keys(value["box"], BOX, where)
            for edge in "ltwh":  # each edge; the box may reach past the image's edge
                check_fraction(value["box"][edge], where)
        for stamp in ("startTimestamp", "endTimestamp"):
            if stamp in value:
                assert type(value[stamp]) is int and 0 < value[stamp] < 2**64, where
        if kind == "event":
            check_strings(value["properties"], where)
        if "contentBytes" in value:  # JSON-5: standard base64, padded
            encoded = value["contentBytes"]
            assert encoded and base64.b64encode(base64.b64decode(encoded, validate=True)) == (
                encoded.encode("ascii")
            )


class TestShape:
    @pytest.mark.rule("JSON-1", "JSON-4", "JSON-5", "JSON-6")
    def test_a_hand_written_example(self) -> None:
        assert GOLDEN[1].sequence_id == "s"  # and it is not written (JSON-4)
        assert to_json_dict(GOLDEN) == GOLDEN_JSON

    @pytest.mark.rule("JSON-1", "JSON-2", "JSON-3", "JSON-4", "JSON-5", "JSON-6", "JSON-8")
    def test_the_example_follows_the_rules(self) -> None:
        check_conforms(GOLDEN_JSON)
        check_conforms(json.loads(to_json(GOLDEN)))

    @pytest.mark.rule("JSON-2")
    def test_no_result_means_no_inferences_key(self) -> None:
        assert to_json_dict([]) == {}
        assert to_json(()) == "{}"
        assert from_json_dict({}) == []
        line = {"sequenceNumber": 2, "timestamp": 0}
        line.update(to_json_dict(iter([])))
        assert line == {"sequenceNumber": 2, "timestamp": 0}

    @pytest.mark.rule("JSON-2")
    def test_the_caller_s_other_keys_are_left_alone(self) -> None:
        line = {"sequenceNumber": 2, "timestamp": 90000}
        line.update(to_json_dict([inf.motion()]))
        assert from_json(json.dumps(line)) == [inf.motion()]
        assert from_json_dict({"sequenceNumber": 3}) == []

    @pytest.mark.rule("JSON-1", "INF-2")
    @pytest.mark.parametrize("built", GOLDEN)
    def test_auto_is_written_as_its_kind(self, built: Inference) -> None:
        field = inf.value_field(built)
        assert field is not None
        auto = Inference(**{field: getattr(built, field)})
        assert auto.type is InferenceType.AUTO
        [item] = to_json_dict([auto])["inferences"]
        assert item["type"] == field
        assert item[field] == to_json_dict([built])["inferences"][0][field]

    @pytest.mark.rule("JSON-4")
    def test_every_key_is_camel_case(self) -> None:
        keys: set[str] = set()

        def walk(data: Any) -> None:
            if isinstance(data, dict):
                keys.update(data)
                for key, value in data.items():
                    if key not in ("properties", "extensions"):  # their keys are the user's
                        walk(value)
            elif isinstance(data, list):
                for value in data:
                    walk(value)

        walk(to_json_dict(GOLDEN))
        assert not any("_" in key for key in keys)
        assert {
            "inferenceId", "relatedInferences",
            "startTimestamp", "endTimestamp", "contentType", "contentBytes",
        } <= keys  # fmt: skip

    @pytest.mark.rule("JSON-4", "JSON-7")
    def test_sequence_id_is_not_written_but_is_read(self) -> None:
        # The published schema has no key for it; earlier versions wrote it anyway.
        built = inf.motion(sequence_id="track-7", inference_id="m")
        [item] = to_json_dict([built])["inferences"]
        assert item == {"type": "motion", "inferenceId": "m", "motion": {}}
        assert from_json_dict({"inferences": [item]}) == without_sequence_id([built])
        notes: list[str] = []
        old = {**item, "sequenceId": "track-7"}
        assert from_json_dict({"inferences": [old]}, notes=notes) == [built]
        assert notes == [
            "$.inferences[0].sequenceId is not in the published schema (earlier avaproto "
            "versions wrote it); read as sequence_id"
        ]
        with refused("JSON-3", r"\.sequenceId: expected a string"):
            from_json_dict(one({**item, "sequenceId": 7}))

    @pytest.mark.rule("JSON-6")
    def test_required_keys_are_written_at_their_defaults(self) -> None:
        bare = [
            inf.entity("", 0.0, inf.rectangle(0, 0, 0, 0)),
            inf.event(""),
            inf.text(""),
            inf.classification("", 0),
            Inference(entity=Entity(tag=Tag(), box=Rectangle())),  # parts present, at defaults
        ]
        entity, event, text, classification, defaults = to_json_dict(bare)["inferences"]
        zero_box = {"l": 0.0, "t": 0.0, "w": 0.0, "h": 0.0}
        assert entity["entity"] == {"tag": {"value": "", "confidence": 0.0}, "box": zero_box}
        assert event["event"] == {"name": "", "properties": {}}
        assert text["text"] == {"value": ""}
        assert classification["classification"] == {"tag": {"value": "", "confidence": 0.0}}
        assert defaults["entity"] == entity["entity"]
        assert set(entity) == {"type", "entity"}  # optional fields left out at defaults
        assert to_json_dict([inf.other("", b"")]) == {
            "inferences": [{"type": "other", "other": {}}]
        }

    @pytest.mark.rule("JSON-6")
    @pytest.mark.parametrize(
        ("value", "named"),
        [
            (Entity(), r"inferences\[1\]\.entity: has no tag"),
            (Entity(tag=Tag(value="car", confidence=0.5)), r"inferences\[1\]\.entity: has no box"),
            (Entity(box=Rectangle(w=0.5, h=0.5)), r"inferences\[1\]\.entity: has no tag"),
            (Classification(), r"inferences\[1\]\.classification: has no tag"),
            (
                Classification(attributes=[Attribute(name="n", value="v")]),
                r"inferences\[1\]\.classification: has no tag",
            ),
        ],
    )
    def test_a_missing_part_is_not_made_up(
        self, value: Entity | Classification, named: str
    ) -> None:
        odd = Inference(**{type(value).__name__.lower(): value})  # type: ignore[arg-type]
        with refused("JSON-6", named) as caught:
            to_json_dict([inf.motion(), odd])
        assert "does not make up" in str(caught.value)
        written, left_out = to_json_lenient([inf.motion(), odd, inf.text("t")])
        assert written == to_json_dict([inf.motion(), inf.text("t")])
        assert len(left_out) == 1 and re.fullmatch(
            rf"inferences\[1\] left out: \[JSON-6\] {named}.*", left_out[0]
        )


class TestLenientWriting:
    @pytest.mark.rule("JSON-6", "JSON-2")
    def test_what_has_a_form_is_written_and_the_rest_named(self) -> None:
        items = [
            Inference(subtype="no value"),
            inf.entity("car", 0.5, inf.rectangle(0.1, 0.1, 0.2, 0.2), sequence_id="x"),
            Inference(entity=Entity(tag=Tag(value="car"))),
            Inference(motion=Motion(box=Rectangle(w=1.5))),
            inf.motion(subtype=" padded"),
            Inference(type=InferenceType.TEXT, motion=Motion()),
            Inference(text=Text(value="t", start_timestamp=-1)),
            inf.classification("indoor"),
        ]
        written, left_out = to_json_lenient(iter(items))
        assert written == to_json_dict([items[1], items[7]])
        check_conforms(written)
        assert [message.split(" left out: ")[0] for message in left_out] == [
            f"inferences[{index}]" for index in (0, 2, 3, 4, 5, 6)
        ]
        rules = [re.search(r"\[([A-Z]+-[0-9]+)\]", message) for message in left_out]
        assert [match and match[1] for match in rules] == [
            "JSON-6", "JSON-6", "INF-4", "JSON-9", "INF-1", "JSON-3",
        ]  # fmt: skip
        assert "inferences[3].motion.box.w = 1.5 is outside [0, 1]" in left_out[2]

    @pytest.mark.rule("JSON-2", "JSON-6")
    def test_nothing_left_means_no_inferences_key(self) -> None:
        assert to_json_lenient([]) == ({}, [])
        written, left_out = to_json_lenient([Inference(classification=Classification())])
        assert written == {}
        assert left_out == [
            "inferences[0] left out: [JSON-6] inferences[0].classification: has no tag, which "
            "the JSON form requires and avaproto does not make up: give it a tag, or leave the "
            "inference out"
        ]
        line = {"sequenceNumber": 4, "timestamp": 0}
        line.update(written)
        assert line == {"sequenceNumber": 4, "timestamp": 0}

    @pytest.mark.rule("JSON-6")
    def test_it_refuses_nothing_to_json_dict_writes(self) -> None:
        assert to_json_lenient(GOLDEN) == (GOLDEN_JSON, [])

    @pytest.mark.rule("JSON-3")
    def test_a_timestamp_outside_uint64_is_not_written(self) -> None:
        for stamp in (-1, 2**64):
            with refused("JSON-3", r"inferences\[0\]\.text\.endTimestamp: .* is not a uint64"):
                to_json_dict([Inference(text=Text(value="t", end_timestamp=stamp))])

    @pytest.mark.rule("INF-1", "JSON-8")
    def test_an_invalid_inference_is_not_written(self) -> None:
        with pytest.raises(InferenceError, match=r"inferences\[1\] has type TEXT") as caught:
            to_json_dict([inf.motion(), Inference(type=InferenceType.TEXT, motion=Motion())])
        assert caught.value.rule == "INF-1"
        bad_box = Inference(motion=Motion(box=Rectangle(w=math.nan)))
        with pytest.raises(InferenceError, match=r"inferences\[0\]\.motion\.box\.w = nan"):
            to_json(iter([bad_box]))

    @pytest.mark.rule("JSON-6", "INF-2")
    def test_an_inference_without_a_value_has_no_json_form(self) -> None:
        with refused("JSON-6", "no value"):
            to_json_dict([Inference(subtype="upstream")])

    @pytest.mark.rule("JSON-9")
    @pytest.mark.parametrize("subtype", [" lead", "trail\t", "\n", " "])
    def test_a_subtype_with_outer_white_space(self, subtype: str) -> None:
        with refused("JSON-9", "white space"):
            to_json_dict([inf.motion(subtype=subtype)])
        with refused("JSON-9", r"\$\.inferences\[0\]\.subtype"):
            from_json_dict(one({"type": "motion", "subtype": subtype, "motion": {}}))

    @pytest.mark.rule("JSON-9")
    def test_inner_white_space_is_fine(self) -> None:
        built = inf.motion(subtype="people  counting\tv2")
        assert from_json(to_json([built])) == [built]

    @pytest.mark.rule("JSON-5")
    def test_bytes_are_standard_base64(self) -> None:
        payload = bytes([0xFB, 0xFF, 0xBF])  # '+' and '/' in standard, '-' '_' in urlsafe
        [item] = to_json_dict([inf.other("x/y", payload)])["inferences"]
        assert item["other"]["contentBytes"] == "+/+/"
        assert from_json_dict({"inferences": [item]})[0].other.content_bytes == payload  # type: ignore[union-attr]

    @pytest.mark.rule("JSON-7")
    def test_floats_are_the_shortest_float32_decimal(self) -> None:
        built = inf.classification("x", 0.1, attributes=[inf.attribute("a", "b", 1 / 3)])
        text = to_json([built])
        assert '"confidence": 0.1}' in text and '"confidence": 0.33333334}' in text
        assert from_json(text) == [built]

    @pytest.mark.rule("JSON-2", "JSON-8")
    def test_to_json_passes_options_and_writes_no_nan(self) -> None:
        text = to_json([inf.motion()], indent=2, sort_keys=True)
        assert text.startswith('{\n  "inferences": [')
        assert "NaN" not in to_json(GOLDEN)


class TestReading:
    @pytest.mark.rule("JSON-7")
    def test_the_example_reads_back(self) -> None:
        notes: list[str] = []
        assert from_json(json.dumps(GOLDEN_JSON), notes=notes) == without_sequence_id(GOLDEN)
        assert from_json(json.dumps(GOLDEN_JSON).encode()) == without_sequence_id(GOLDEN)
        assert notes == []  # nothing was tolerated

    @pytest.mark.rule("JSON-7")
    def test_one_item_both_ways(self) -> None:
        item = GOLDEN_JSON["inferences"][0]
        assert inference_to_json(inference_from_json(item)) == item

    @pytest.mark.rule("JSON-7", "JSON-1")
    def test_hand_written_json_with_long_decimals(self) -> None:
        [read] = from_json_dict(
            one({"type": "entity", "entity": {"tag": {"value": "a", "confidence": 0.1234567891},
                 "box": {"l": 0, "t": 0, "w": 1, "h": 1}}})
        )  # fmt: skip
        assert read.type is InferenceType.ENTITY
        assert Inference.parse(bytes(read)) == read  # stored as float32
        assert read.entity is not None and read.entity.tag == inf.tag("a", 0.1234567891)
        assert read.entity.tag == Tag(value="a", confidence=inf.as_float32(0.12345679))

    @pytest.mark.rule("JSON-1", "JSON-3", "JSON-4", "JSON-5", "JSON-6")
    @pytest.mark.parametrize(
        ("item", "rule", "named"),
        [
            ({"type": "Motion", "motion": {}}, "JSON-1", "lower case"),
            ({"type": "MOTION", "motion": {}}, "JSON-1", "'MOTION'"),
            ({"type": "face", "motion": {}}, "JSON-1", "'face'"),
            ({"type": "auto", "motion": {}}, "JSON-1", "'auto'"),
            ({"type": 2, "motion": {}}, "JSON-3", r"\.type: expected a string"),
            ({"motion": {}}, "JSON-6", "'type'"),
            ({"type": "motion"}, "JSON-6", "found none"),
            ({"type": "motion", "text": {"value": ""}}, "JSON-6", r"found \['text'\]"),
            ({"type": "motion", "motion": {}, "text": {"value": ""}}, "JSON-6", "exactly"),
            ({"type": "motion", "motion": {}, "inference_id": "x"}, "JSON-4", "inference_id"),
            ({"type": "motion", "motion": {}, "InferenceId": "x"}, "JSON-4", "InferenceId"),
            ({"type": "motion", "motion": {"box": {"l": 0}}}, "JSON-6", "'t'"),
            ({"type": "motion", "motion": {"area": 1}}, "JSON-4", "'area'"),
            ({"type": "motion", "motion": []}, "JSON-3", r"\.motion: expected an object"),
            (
                {"type": "motion", "motion": {"box": {"l": "0", "t": 0, "w": 0, "h": 0}}},
                "JSON-3",
                r"box\.l: expected a number",
            ),
            (
                {"type": "motion", "motion": {"box": {"l": True, "t": 0, "w": 0, "h": 0}}},
                "JSON-3",
                r"box\.l: expected a number in \[0, 1\], got true",
            ),
            (
                {"type": "event", "event": {"name": "e", "properties": {}, "box": {}}},
                "JSON-6",
                r"event\.box: missing required key 'l'",
            ),
            (
                {"type": "event", "event": {"name": "e", "properties": {}, "area": {}}},
                "JSON-4",
                "'area'",
            ),
            ({"type": "motion", "motion": {}, "sequence_id": "s"}, "JSON-4", "'sequence_id'"),
            ({"type": "motion", "motion": {"box": {}, "sequenceId": "s"}}, "JSON-4", "sequenceId"),
            ({"type": "entity", "entity": {"tag": {"value": "a"}}}, "JSON-6", "'box'"),
            ({"type": "classification", "classification": {}}, "JSON-6", "'tag'"),
            (
                {"type": "classification", "classification": {"tag": {"confidence": 1}}},
                "JSON-6",
                "'value'",
            ),
            (
                {
                    "type": "classification",
                    "classification": {"tag": {"value": "a"}, "attributes": [{"name": "n"}]},
                },
                "JSON-6",
                r"attributes\[0\]: missing required key 'value'",
            ),
            (
                {
                    "type": "classification",
                    "classification": {"tag": {"value": "a"}, "attributes": {"name": "n"}},
                },
                "JSON-3",
                "an array",
            ),
            ({"type": "text", "text": {}}, "JSON-6", "'value'"),
            ({"type": "text", "text": {"value": "a", "startTimestamp": -1}}, "JSON-3", "uint64"),
            ({"type": "text", "text": {"value": "a", "endTimestamp": 2**64}}, "JSON-3", "uint64"),
            ({"type": "text", "text": {"value": "a", "endTimestamp": 1.5}}, "JSON-3", "integer"),
            ({"type": "text", "text": {"value": "a", "endTimestamp": -1.0}}, "JSON-3", "uint64"),
            ({"type": "text", "text": {"value": "a", "endTimestamp": 2.0**64}}, "JSON-3", "uint64"),
            ({"type": "text", "text": {"value": "a", "endTimestamp": True}}, "JSON-3", "integer"),
            ({"type": "text", "text": {"value": "a", "language": True}}, "JSON-3", "language"),
            ({"type": "text", "text": {"value": "\ud800"}}, "JSON-3", "surrogate"),
            ({"type": "event", "event": {"name": "a"}}, "JSON-6", "'properties'"),
            ({"type": "event", "event": {"properties": {}}}, "JSON-6", "'name'"),
            ({"type": "event", "event": {"name": "a", "properties": {"k": 1}}}, "JSON-3", "'k'"),
            ({"type": "event", "event": {"name": "a", "properties": []}}, "JSON-3", "object"),
            ({"type": "other", "other": {"contentBytes": "!!"}}, "JSON-5", "base64"),
            ({"type": "other", "other": {"contentBytes": "A"}}, "JSON-5", "base64"),
            ({"type": "other", "other": {"contentBytes": "AP8=="}}, "JSON-5", "base64"),
            ({"type": "other", "other": {"contentBytes": "AP="}}, "JSON-5", "base64"),
            ({"type": "other", "other": {"contentBytes": "A+8-"}}, "JSON-5", "base64"),
            ({"type": "other", "other": {"contentBytes": "AP8=\n"}}, "JSON-5", "base64"),
            ({"type": "other", "other": {"contentBytes": "=AP8"}}, "JSON-5", "base64"),
            ({"type": "other", "other": {"contentBytes": 12}}, "JSON-3", "string"),
            ({"type": "motion", "motion": {}, "relatedInferences": [1]}, "JSON-3", r"\[0\]"),
            ({"type": "motion", "motion": {}, "relatedInferences": "a"}, "JSON-3", "array"),
            ({"type": "motion", "motion": {}, "extensions": {"k": None}}, "JSON-3", "string"),
            ("motion", "JSON-3", "object"),
            (None, "JSON-3", "object"),
        ],
    )
    def test_bad_items_are_refused_naming_the_path(self, item: Any, rule: str, named: str) -> None:
        with refused(rule, named) as caught:
            from_json_dict(one(item))
        assert "$.inferences[0]" in str(caught.value)
        assert f"[{rule}]" in str(caught.value)

    @pytest.mark.rule("JSON-8")
    @pytest.mark.parametrize("number", [-0.5, 1.5, 2, -1, 10**400, math.nan, math.inf, -math.inf])
    def test_numbers_out_of_range_are_refused(self, number: float) -> None:
        box = {"l": 0, "t": 0, "w": number, "h": 0}
        with refused("JSON-8", r"\$\.inferences\[0\]\.motion\.box\.w = .* is outside \[0, 1\]"):
            from_json_dict(one({"type": "motion", "motion": {"box": box}}))
        tag = {"value": "a", "confidence": number}
        with refused("JSON-8", r"classification\.tag\.confidence"):
            from_json_dict(one({"type": "classification", "classification": {"tag": tag}}))

    @pytest.mark.rule("JSON-8")
    def test_nan_and_infinity_in_the_text(self) -> None:
        for literal in ("NaN", "Infinity", "-Infinity"):
            text = '{"inferences": [{"type": "classification", "classification": '
            text += f'{{"tag": {{"value": "a", "confidence": {literal}}}}}}}]}}'
            with refused("JSON-8", "outside"):
                from_json(text)

    @pytest.mark.rule("JSON-8", "INF-4")
    def test_a_box_past_the_edge_is_read_and_written_as_given(self) -> None:
        item = {"type": "motion", "motion": {"box": {"l": 0.5, "t": 0.0, "w": 0.6, "h": 0.0}}}
        notes: list[str] = []
        [read] = from_json_dict(one(item), notes=notes)
        assert read == inf.motion(inf.rectangle(0.5, 0, 0.6, 0))  # not clipped
        assert notes == [
            "$.inferences[0].motion.box (l=0.5, t=0, w=0.6, h=0) reaches past the image's "
            "edge: l + w = 1.1; read as given (INF-4)"
        ]
        assert to_json_dict([read]) == one(item)
        entity = inf.entity("a", 1, inf.rectangle(0.75, 0.75, 0.5, 0.5))
        assert from_json(to_json([entity])) == [entity]

    @pytest.mark.rule("JSON-8")
    def test_a_box_at_the_edge_is_no_note(self) -> None:
        notes: list[str] = []
        box = {"l": 0.01, "t": 0, "w": 0.99, "h": 1}  # 0.01 + 0.99 passes 1 in float32
        from_json_dict(one({"type": "motion", "motion": {"box": box}}), notes=notes)
        assert notes == []

    @pytest.mark.rule("JSON-4")
    def test_an_event_s_box_is_checked_and_left_out(self) -> None:
        box = {"l": 0.1, "t": 0.1, "w": 0.2, "h": 0.2}
        item = {"type": "event", "event": {"name": "door", "properties": {"k": "v"}, "box": box}}
        notes: list[str] = []
        assert from_json_dict(one(item), notes=notes) == [inf.event("door", {"k": "v"})]
        assert notes == [
            "$.inferences[0].event.box left out: the contract's Event has no box (the "
            "published schema allows one)"
        ]
        item["event"]["box"] = {**box, "w": 1.5}  # type: ignore[index]
        with refused("JSON-8", r"\$\.inferences\[0\]\.event\.box\.w = 1\.5 is outside"):
            from_json_dict(one(item))

    @pytest.mark.rule("JSON-5")
    @pytest.mark.parametrize(
        ("encoded", "content", "variant"),
        [
            ("AP8", b"\x00\xff", "no padding"),
            ("AP8QEQ", b"\x00\xff\x10\x11", "no padding"),
            ("-_-_", bytes([0xFB, 0xFF, 0xBF]), "the URL-safe alphabet"),
            ("-_8", b"\xfb\xff", "the URL-safe alphabet and no padding"),
            ("-_8=", b"\xfb\xff", "the URL-safe alphabet"),
        ],
    )
    def test_other_base64_is_read_with_a_note(
        self, encoded: str, content: bytes, variant: str
    ) -> None:
        notes: list[str] = []
        [read] = from_json_dict(
            one({"type": "other", "other": {"contentBytes": encoded}}), notes=notes
        )
        assert read.other is not None and read.other.content_bytes == content
        assert notes == [
            f"$.inferences[0].other.contentBytes is base64 with {variant}, not standard "
            "base64; read as such"
        ]
        [item] = to_json_dict([read])["inferences"]
        assert item["other"]["contentBytes"] == base64.b64encode(content).decode()  # standard

    @pytest.mark.rule("JSON-3")
    def test_an_integral_timestamp_written_as_a_float(self) -> None:
        notes: list[str] = []
        item = {"type": "text", "text": {"value": "a", "startTimestamp": 90000.0}}
        [read] = from_json_dict(one(item), notes=notes)
        assert read == inf.text("a", start=90000)
        assert read.text is not None and type(read.text.start_timestamp) is int
        assert notes == []
        assert to_json_dict([read])["inferences"][0]["text"]["startTimestamp"] == 90000

    @pytest.mark.rule("JSON-2")
    @pytest.mark.parametrize(
        ("text", "named"),
        [
            ('{"inferences": []}', "leave the key out"),
            ('{"inferences": {}}', "expected an array"),
            ('{"inferences": null}', "expected an array"),
            ("[]", "expected an object"),
            ("{inferences", "not JSON"),
            (b"\xff", "not JSON"),
        ],
    )
    def test_a_bad_document_is_refused(self, text: str | bytes, named: str) -> None:
        with refused("JSON-2", named):
            from_json(text)

    @pytest.mark.rule("JSON-2", "JSON-3")
    def test_errors_name_the_item(self) -> None:
        good = to_json_dict([inf.motion()])["inferences"][0]
        with refused("JSON-3", r"\$\.inferences\[2\]\.text\.value"):
            from_json_dict({"inferences": [good, good, {"type": "text", "text": {"value": 1}}]})


# --- every field, both ways --------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)
SUBTYPE = TEXT.filter(lambda s: s == "" or (not s[0].isspace() and not s[-1].isspace()))
FRACTION = st.floats(0, 1, width=32)
MAP = st.dictionaries(TEXT, TEXT, max_size=3)
U64 = st.integers(0, 2**64 - 1)


@st.composite
def boxes(draw: st.DrawFn) -> Rectangle:
    l, t = draw(FRACTION), draw(FRACTION)  # noqa: E741 - the contract's names
    if draw(st.booleans()):  # any edges: the box may reach past the image's edge (INF-4)
        return inf.rectangle(l, t, draw(FRACTION), draw(FRACTION))
    w, h = draw(st.floats(0, 1)) * (1 - l), draw(st.floats(0, 1)) * (1 - t)
    return inf.rectangle(l, t, w, h)


ATTRIBUTES = st.lists(st.builds(inf.attribute, TEXT, TEXT, st.floats(0, 1)), max_size=2)
COMMON = {
    "subtype": SUBTYPE,
    "inference_id": TEXT,
    "related": st.lists(TEXT, max_size=3),
    "sequence_id": TEXT,
    "extensions": MAP,
}
INFERENCES = st.one_of(
    st.builds(inf.classification, TEXT, st.floats(0, 1), attributes=ATTRIBUTES, **COMMON),
    st.builds(inf.motion, st.none() | boxes(), **COMMON),
    st.builds(inf.entity, TEXT, FRACTION, boxes(), id=TEXT, attributes=ATTRIBUTES, **COMMON),
    st.builds(inf.text, TEXT, language=TEXT, start=U64, end=U64, **COMMON),
    st.builds(inf.event, TEXT, MAP, **COMMON),
    st.builds(inf.other, TEXT, st.binary(max_size=16), **COMMON),
)


class TestBothWays:
    @pytest.mark.rule("JSON-7", "JSON-5", "INF-7")
    @settings(max_examples=300, deadline=None)
    @given(st.lists(INFERENCES, min_size=1, max_size=4))
    def test_any_inferences_survive_json_both_ways(self, inferences: list[Inference]) -> None:
        text = json.dumps(to_json_dict(inferences))
        again = from_json_dict(json.loads(text))
        kept = without_sequence_id(inferences)  # the one field the form has no key for
        assert again == kept  # field for field, floats as float32
        assert [Inference.parse(bytes(i)) for i in again] == kept  # and after the wire
        assert json.loads(to_json(again)) == json.loads(text)

    @pytest.mark.rule("JSON-1", "JSON-2", "JSON-3", "JSON-4", "JSON-5", "JSON-6", "JSON-8")
    @pytest.mark.rule("JSON-9")
    @settings(max_examples=200, deadline=None)
    @given(st.lists(INFERENCES, max_size=4))
    def test_any_output_follows_the_rules(self, inferences: list[Inference]) -> None:
        doc = json.loads(to_json(inferences))
        check_conforms(doc)
        assert ("inferences" in doc) == bool(inferences)

    @pytest.mark.rule("JSON-7", "INF-2")
    @given(INFERENCES)
    def test_received_auto_inferences_read_back_with_their_kind(self, built: Inference) -> None:
        auto = Inference.parse(bytes(built))
        auto.type = InferenceType.AUTO
        [again] = from_json(to_json([auto]))
        assert again == without_sequence_id([built])[0]


class TestTheChecker:
    """The rule checker above must itself catch what the rules forbid."""

    @pytest.mark.rule("JSON-2", "JSON-4", "JSON-5", "JSON-9")
    @pytest.mark.parametrize(
        "doc",
        [
            {"inferences": []},
            one({"type": "Motion", "Motion": {}}),
            one({"type": "motion", "motion": {}, "inference_id": "a"}),
            one({"type": "other", "other": {"contentBytes": "AP8"}}),
            one({"type": "motion", "subtype": " x", "motion": {}}),
            one({"type": "entity", "entity": {"tag": {"value": "a"}}}),
            one({"type": "motion", "motion": {}, "sequenceId": "s"}),
        ],
    )
    def test_it_rejects_what_the_rules_forbid(self, doc: Any) -> None:
        with pytest.raises((AssertionError, KeyError, binascii.Error)):
            check_conforms(doc)
