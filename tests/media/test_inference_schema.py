"""Spec section 12: what avaproto writes validates against its own JSON Schema (JSON-10).

The schema is avaproto/media/inference.schema.json, shipped in the package. Every
document the writers produce is checked with a stock draft-07 validator, for every
kind the builders make and for generated inferences, odd ones included; the schema
itself is checked to refuse what the rules forbid, so that passing it means something.
"""

from __future__ import annotations

import importlib.resources
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator

from avaproto.media import inferences as inf
from avaproto.media.inference_json import (
    SCHEMA_FILE,
    json_schema,
    to_json,
    to_json_dict,
    to_json_lenient,
)
from avaproto.messages import (
    Attribute,
    Classification,
    Entity,
    Event,
    Inference,
    InferenceType,
    Motion,
    Rectangle,
    Tag,
    Text,
)

SCHEMA = json_schema()
VALIDATOR = Draft7Validator(SCHEMA)  # no format checker: the schema uses no format


def errors(doc: Any) -> list[str]:
    return [f"{error.json_path}: {error.message}" for error in VALIDATOR.iter_errors(doc)]


def assert_valid(doc: Any) -> None:
    """``doc`` is standard JSON (no NaN) and valid against the project's schema."""
    text = json.dumps(doc, allow_nan=False)
    assert errors(json.loads(text)) == []
    assert errors(doc) == []


def one(item: Any) -> dict[str, Any]:
    return {"inferences": [item]}


# --- the schema file ---------------------------------------------------------------------


class TestTheSchema:
    @pytest.mark.rule("JSON-10")
    def test_it_is_a_draft_07_schema_shipped_in_the_package(self) -> None:
        Draft7Validator.check_schema(SCHEMA)
        assert SCHEMA["$schema"].startswith("http://json-schema.org/draft-07/schema")
        shipped = importlib.resources.files("avaproto.media").joinpath(SCHEMA_FILE)
        assert shipped.is_file()
        assert json.loads(shipped.read_text("utf-8")) == SCHEMA
        assert json_schema() is not json_schema()  # a fresh copy each time, safe to change

    @pytest.mark.rule("JSON-10", "JSON-2")
    def test_every_object_but_the_top_level_allows_no_other_key(self) -> None:
        objects: list[tuple[str, dict[str, Any]]] = []

        def walk(node: Any, where: str) -> None:
            if isinstance(node, dict):
                if node.get("type") == "object" and "properties" in node:
                    objects.append((where, node))
                for key, value in node.items():
                    walk(value, f"{where}/{key}")
            elif isinstance(node, list):
                for index, value in enumerate(node):
                    walk(value, f"{where}/{index}")

        walk(SCHEMA, "#")
        assert objects[0] == ("#", SCHEMA)
        assert SCHEMA["additionalProperties"] is True
        for where, node in objects[1:]:
            assert node["additionalProperties"] is False, where
        names = {where.rsplit("/", 1)[-1] for where, _ in objects[1:]}
        assert names == {
            "tag", "attribute", "rectangle", "classification", "motion", "entity", "text",
            "event", "other", "inference",
        }  # fmt: skip
        for key in ("sequenceNumber", "timestamp", "send --output"):
            assert key in SCHEMA["description"]  # the writer's own top-level keys

    @pytest.mark.rule("JSON-10", "JSON-1", "JSON-2", "JSON-8")
    @pytest.mark.parametrize(
        "doc",
        [
            {},
            {"sequenceNumber": 2, "timestamp": 90000},
            {
                "sequenceNumber": 2,
                "timestamp": 90000,
                "inferences": [{"type": "motion", "motion": {}}],
            },
            one({"type": "motion", "motion": {"box": {"l": 0.75, "t": 0.5, "w": 0.5, "h": 1}}}),
            one({"type": "classification", "classification": {"tag": {"value": "a"}}}),
            one({"type": "text", "text": {"value": "a", "endTimestamp": 2**64 - 1}}),
            one({"type": "other", "other": {"contentBytes": "AP8Q+/=="}}),
            one({"type": "motion", "subtype": "people  counting\tv2", "motion": {}}),
        ],
    )
    def test_it_accepts_what_the_rules_allow(self, doc: Any) -> None:
        assert errors(doc) == []

    @pytest.mark.rule("JSON-10", "JSON-1", "JSON-2", "JSON-3", "JSON-4", "JSON-5", "JSON-6")
    @pytest.mark.rule("JSON-8", "JSON-9")
    @pytest.mark.parametrize(
        ("doc", "why"),
        [
            ({"inferences": []}, "should be non-empty"),
            ({"inferences": None}, "not of type 'array'"),
            (one("motion"), "not of type 'object'"),
            (one({"type": "MOTION", "motion": {}}), "is not one of"),
            (one({"motion": {}}), "'type' is a required property"),
            (one({"type": "motion"}), "is not valid under any of the given schemas"),
            (one({"type": "text", "motion": {}}), "is not valid under any of the given schemas"),
            (
                one({"type": "motion", "motion": {}, "text": {"value": ""}}),
                "is not valid under any of the given schemas",
            ),
            (
                one({"type": "motion", "motion": {}, "sequenceId": "s"}),
                "'sequenceId' was unexpected",
            ),
            (one({"type": "motion", "motion": {}, "inference_id": "a"}), "was unexpected"),
            (one({"type": "motion", "motion": {"area": 1}}), "'area' was unexpected"),
            (
                one({"type": "entity", "entity": {"tag": {"value": "a"}}}),
                "'box' is a required property",
            ),
            (one({"type": "classification", "classification": {}}), "'tag' is a required"),
            (
                one({"type": "classification", "classification": {"tag": {"value": "a", "x": 1}}}),
                "'x' was unexpected",
            ),
            (
                one({"type": "motion", "motion": {"box": {"l": 0, "t": 0, "w": 1.5, "h": 0}}}),
                "greater than the maximum of 1",
            ),
            (
                one({"type": "motion", "motion": {"box": {"l": -0.1, "t": 0, "w": 0, "h": 0}}}),
                "less than the minimum of 0",
            ),
            (
                one({"type": "motion", "motion": {"box": {"l": "0", "t": 0, "w": 0, "h": 0}}}),
                "not of type 'number'",
            ),
            (one({"type": "motion", "motion": {"box": {"l": 0, "t": 0, "w": 0}}}), "'h' is a"),
            (
                one(
                    {
                        "type": "classification",
                        "classification": {"tag": {"value": "a", "confidence": 2}},
                    }
                ),
                "greater than the maximum of 1",
            ),
            (
                one(
                    {
                        "type": "classification",
                        "classification": {"tag": {"value": "a", "confidence": True}},
                    }
                ),
                "not of type 'number'",
            ),
            (one({"type": "motion", "subtype": " a", "motion": {}}), "does not match"),
            (one({"type": "motion", "subtype": "a\n", "motion": {}}), "does not match"),
            (one({"type": "motion", "subtype": "", "motion": {}}), "does not match"),
            (one({"type": "text", "text": {"value": "a", "startTimestamp": -1}}), "minimum"),
            (one({"type": "text", "text": {"value": "a", "endTimestamp": 2**64}}), "maximum"),
            (one({"type": "text", "text": {"value": "a", "endTimestamp": 1.5}}), "'integer'"),
            (one({"type": "other", "other": {"contentBytes": "AP8"}}), "does not match"),
            (one({"type": "other", "other": {"contentBytes": "-_-_"}}), "does not match"),
            (one({"type": "other", "other": {"contentBytes": "AP8=\n"}}), "does not match"),
            (
                one({"type": "event", "event": {"name": "e", "properties": {}, "box": {}}}),
                "'box' was unexpected",
            ),
            (
                one({"type": "event", "event": {"name": "e", "properties": {"k": 1}}}),
                "not of type 'string'",
            ),
            (one({"type": "event", "event": {"name": "e"}}), "'properties' is a required"),
            (one({"type": "motion", "motion": {}, "extensions": {"k": None}}), "'string'"),
            (one({"type": "motion", "motion": {}, "relatedInferences": "a"}), "'array'"),
        ],
    )
    def test_it_refuses_what_the_rules_forbid(self, doc: Any, why: str) -> None:
        found = errors(doc)
        assert found and any(why in error for error in found), found


# --- what the writers produce -----------------------------------------------------------

BOX = inf.rectangle(0.125, 0.25, 0.5, 0.5)
PAST = inf.rectangle(0.75, 0.875, 0.5, 0.25)  # a detector that does not clip
COMMON: dict[str, Any] = {
    "subtype": "objectDetection",
    "inference_id": "i1",
    "related": ["i0", "i2"],
    "sequence_id": "track-7",
    "extensions": {"model": "yolo", "ключ": "значение"},
}
ATTRIBUTES = [inf.attribute("colour", "red", 0.625), inf.attribute("", "", 0)]
#: One inference of each kind the builders make, every field set, and a few bare ones.
EVERY_KIND = {
    "classification": inf.classification("indoor", 0.75, attributes=ATTRIBUTES, **COMMON),
    "motion": inf.motion(BOX, **COMMON),
    "motion without a box": inf.motion(),
    "motion past the edge": inf.motion(PAST),
    "entity": inf.entity("person", 0.875, BOX, id="17", attributes=ATTRIBUTES, **COMMON),
    "entity past the edge": inf.entity("car", 1, PAST),
    "text": inf.text("caption", language="fr-CA", start=0, end=2**64 - 1, **COMMON),
    "event": inf.event("lineCrossed", {"direction": "in", "": "😀"}, **COMMON),
    "event without properties": inf.event(""),
    "other": inf.other("application/octet-stream", bytes(range(256)), **COMMON),
    "other without bytes": inf.other("", b""),
    "auto": Inference(entity=Entity(tag=Tag(value="a", confidence=0.5), box=BOX)),
}


class TestWhatIsWrittenValidates:
    @pytest.mark.rule("JSON-10", "JSON-4", "JSON-5", "JSON-6", "JSON-8")
    @pytest.mark.parametrize("name", list(EVERY_KIND))
    def test_every_kind(self, name: str) -> None:
        built = EVERY_KIND[name]
        assert_valid(to_json_dict([built]))
        assert_valid(json.loads(to_json([built], indent=2)))
        written, left_out = to_json_lenient([built])
        assert left_out == []
        assert_valid(written)

    @pytest.mark.rule("JSON-10", "JSON-2")
    def test_all_kinds_in_one_document_and_in_a_send_output_line(self) -> None:
        doc = to_json_dict(EVERY_KIND.values())
        assert len(doc["inferences"]) == len(EVERY_KIND)
        assert_valid(doc)
        line: dict[str, Any] = {"sequenceNumber": 7, "timestamp": 90000}
        line.update(to_json_lenient(EVERY_KIND.values())[0])
        assert_valid(line)
        empty: dict[str, Any] = {"sequenceNumber": 8, "timestamp": 93000}
        empty.update(to_json_lenient([])[0])
        assert_valid(empty)

    @pytest.mark.rule("JSON-10", "JSON-4", "JSON-6")
    def test_the_parts_that_made_invalid_documents(self) -> None:
        # sequenceId was written, and absent tags and boxes were written as zeros.
        odd = [
            inf.motion(sequence_id="s"),
            Inference(entity=Entity(tag=Tag(value="a"))),
            Inference(entity=Entity(box=BOX)),
            Inference(classification=Classification()),
            inf.motion(PAST),
        ]
        written, left_out = to_json_lenient(odd)
        assert_valid(written)
        assert len(written["inferences"]) == 2 and len(left_out) == 3


# --- generated inferences -----------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)  # any Unicode but surrogates
SUBTYPE = TEXT.filter(lambda s: s == "" or not (s[0].isspace() or s[-1].isspace()))
FRACTION = st.floats(0, 1)
MAP = st.dictionaries(TEXT, TEXT, max_size=3)
U64 = st.integers(0, 2**64 - 1)
#: Any edges in [0, 1]: boxes inside the image and boxes past its edge alike.
BOXES = st.builds(inf.rectangle, FRACTION, FRACTION, FRACTION, FRACTION)
ATTRIBUTE_LISTS = st.lists(st.builds(inf.attribute, TEXT, TEXT, FRACTION), max_size=3)
TAGS = st.builds(inf.tag, TEXT, FRACTION)
COMMONS = {
    "subtype": SUBTYPE,
    "inference_id": TEXT,
    "related": st.lists(TEXT, max_size=3),
    "sequence_id": TEXT,
    "extensions": MAP,
}
BUILT = st.one_of(
    st.builds(inf.classification, TEXT | TAGS, FRACTION, attributes=ATTRIBUTE_LISTS, **COMMONS),
    st.builds(inf.motion, st.none() | BOXES, **COMMONS),
    st.builds(
        inf.entity, TEXT | TAGS, FRACTION, BOXES, id=TEXT, attributes=ATTRIBUTE_LISTS, **COMMONS
    ),
    st.builds(inf.text, TEXT, language=TEXT, start=U64, end=U64, **COMMONS),
    st.builds(inf.event, TEXT, MAP, **COMMONS),
    st.builds(inf.other, TEXT, st.binary(max_size=32), **COMMONS),
)


@st.composite
def inferences(draw: st.DrawFn) -> Inference:
    """A built inference, sometimes with its type left AUTO as peers send it."""
    built = draw(BUILT)
    if draw(st.booleans()):
        built.type = InferenceType.AUTO
    return built


BAD_FRACTION = st.floats(allow_nan=True).filter(lambda x: math.isnan(x) or not 0 <= x <= 1)
#: Inferences that travel on the wire but have no valid JSON form.
ODD = st.one_of(
    st.builds(lambda tag: Inference(entity=Entity(tag=tag)), TAGS),  # no box
    st.builds(lambda box: Inference(entity=Entity(box=box)), BOXES),  # no tag
    st.builds(
        lambda attributes: Inference(classification=Classification(attributes=attributes)),
        ATTRIBUTE_LISTS,
    ),  # no tag
    st.builds(lambda subtype, ext: Inference(subtype=subtype, extensions=ext), TEXT, MAP),
    st.builds(lambda box: Inference(type=InferenceType.TEXT, motion=Motion(box=box)), BOXES),
    st.builds(
        lambda c: Inference(classification=Classification(tag=Tag(confidence=c))), BAD_FRACTION
    ),
    st.builds(lambda w: Inference(motion=Motion(box=Rectangle(w=w))), BAD_FRACTION),
    st.builds(
        lambda c: Inference(event=Event(name="e"), subtype=c),
        st.sampled_from([" lead", "trail ", "\n", "\u3000x", "x\u2028"]),
    ),
    st.builds(
        lambda stamp: Inference(text=Text(value="t", start_timestamp=stamp)),
        st.integers(max_value=-1) | st.integers(min_value=2**64),
    ),
    st.builds(
        lambda c: Inference(
            entity=Entity(tag=Tag(value="a"), box=BOX, attributes=[Attribute(confidence=c)])
        ),
        BAD_FRACTION,
    ),
)


class TestGenerated:
    @pytest.mark.rule("JSON-10", "JSON-4", "JSON-6", "JSON-9")
    @settings(max_examples=300, deadline=None)
    @given(st.lists(inferences(), max_size=5))
    def test_whatever_to_json_dict_writes_validates(self, items: list[Inference]) -> None:
        doc = to_json_dict(items)
        assert_valid(doc)
        assert len(doc.get("inferences", [])) == len(items)
        assert to_json_lenient(items) == (doc, [])

    @pytest.mark.rule("JSON-10", "JSON-3", "JSON-4", "JSON-6", "JSON-9", "INF-1", "INF-3")
    @pytest.mark.rule("INF-4")
    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.tuples(inferences(), st.just(True)) | st.tuples(ODD, st.just(False)), max_size=6
        )
    )
    def test_whatever_to_json_lenient_writes_validates(
        self, drawn: list[tuple[Inference, bool]]
    ) -> None:
        items = [item for item, _ in drawn]
        written, left_out = to_json_lenient(items)
        assert_valid(written)
        good = [index for index, (_, ok) in enumerate(drawn) if ok]
        bad = [index for index, (_, ok) in enumerate(drawn) if not ok]
        assert written == to_json_dict(items[index] for index in good)
        assert [message.split(" left out: ")[0] for message in left_out] == [
            f"inferences[{index}]" for index in bad
        ]
        assert all(" left out: [" in message for message in left_out)  # and the rule
