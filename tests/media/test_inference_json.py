"""Spec section 12, the JSON form of inferences: its shape, its rules, both directions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avaproto.errors import InferenceError
from avaproto.media import inferences as inf
from avaproto.media.inference_json import from_json, from_json_dict, to_json, to_json_dict
from avaproto.messages import Event, Inference, InferenceType, Motion

GOLDEN = [
    inf.entity(
        "person",
        0.875,
        inf.rectangle(0.25, 0.5, 0.125, 0.25),
        id="17",
        attributes=[inf.attribute("hat", "yes", 0.5)],
        subtype="peopleDetection",
        inference_id="p1",
    ),
    inf.motion(inf.rectangle(0, 0, 1, 1), related=["p1"], sequence_id="s"),
    inf.event("lineCrossed", {"direction": "in"}, extensions={"zone": "door"}),
    inf.text("hello", language="en", start=90000, end=180000),
    inf.other("application/octet-stream", b"\x00\xff"),
    inf.classification("indoor", 1.0),
]

GOLDEN_JSON: dict[str, Any] = {
    "inferences": [
        {
            "type": "entity",
            "subtype": "peopleDetection",
            "inferenceId": "p1",
            "entity": {
                "tag": {"value": "person", "confidence": 0.875},
                "attributes": [{"name": "hat", "value": "yes", "confidence": 0.5}],
                "box": {"l": 0.25, "t": 0.5, "w": 0.125, "h": 0.25},
                "id": "17",
            },
        },
        {
            "type": "motion",
            "relatedInferences": ["p1"],
            "sequenceId": "s",
            "motion": {"box": {"l": 0.0, "t": 0.0, "w": 1.0, "h": 1.0}},
        },
        {
            "type": "event",
            "event": {"name": "lineCrossed", "properties": {"direction": "in"}},
            "extensions": {"zone": "door"},
        },
        {
            "type": "text",
            "text": {
                "value": "hello",
                "language": "en",
                "startTimestamp": 90000,
                "endTimestamp": 180000,
            },
        },
        {
            "type": "other",
            "other": {"contentType": "application/octet-stream", "contentBytes": "AP8="},
        },
        {
            "type": "classification",
            "classification": {"tag": {"value": "indoor", "confidence": 1.0}},
        },
    ]
}

CAMEL = {"inferenceId", "relatedInferences", "sequenceId", "startTimestamp", "endTimestamp"}


def keys_of(data: Any) -> set[str]:
    if isinstance(data, dict):
        return set(data) | {k for v in data.values() for k in keys_of(v)}
    if isinstance(data, list):
        return {k for item in data for k in keys_of(item)}
    return set()


class TestShape:
    @pytest.mark.rule("JSON-1", "JSON-4", "JSON-5", "JSON-6")
    def test_a_hand_written_example(self) -> None:
        assert to_json_dict(GOLDEN) == GOLDEN_JSON

    @pytest.mark.rule("JSON-2")
    def test_no_result_means_no_inferences_key(self) -> None:
        assert to_json_dict([]) == {}
        assert to_json([]) == "{}"
        assert from_json_dict({}) == []

    @pytest.mark.rule("JSON-2")
    def test_an_empty_array_is_refused(self) -> None:
        with pytest.raises(InferenceError, match="leave the key out") as caught:
            from_json_dict({"inferences": []})
        assert caught.value.rule == "JSON-2"

    @pytest.mark.rule("JSON-1", "INF-2")
    def test_auto_is_written_as_its_kind(self) -> None:
        [item] = to_json_dict([Inference(motion=Motion())])["inferences"]
        assert item == {"type": "motion", "motion": {}}

    @pytest.mark.rule("JSON-4")
    def test_every_key_is_camel_case(self) -> None:
        keys = keys_of(GOLDEN_JSON)
        assert not any("_" in key for key in keys)
        assert keys >= CAMEL | {"contentType", "contentBytes"}

    @pytest.mark.rule("JSON-6")
    def test_required_keys_are_written_at_their_defaults(self) -> None:
        bare = [
            Inference(entity=inf.entity("", 0.0, inf.rectangle(0, 0, 0, 0)).entity),
            Inference(event=Event()),
        ]
        entity, event = to_json_dict(bare)["inferences"]
        assert entity["entity"] == {
            "tag": {"value": "", "confidence": 0.0},
            "box": {"l": 0.0, "t": 0.0, "w": 0.0, "h": 0.0},
        }
        assert event["event"] == {"name": "", "properties": {}}

    @pytest.mark.rule("INF-1", "JSON-6")
    def test_an_invalid_inference_is_not_written(self) -> None:
        with pytest.raises(InferenceError) as caught:
            to_json_dict([Inference(type=InferenceType.TEXT, motion=Motion())])
        assert caught.value.rule == "INF-1"


class TestReading:
    @pytest.mark.rule("JSON-7")
    def test_the_example_reads_back(self) -> None:
        assert from_json(json.dumps(GOLDEN_JSON)) == GOLDEN

    @pytest.mark.rule("JSON-1", "JSON-3", "JSON-4", "JSON-5", "JSON-6")
    @pytest.mark.parametrize(
        ("item", "rule", "named"),
        [
            ({"type": "Motion", "motion": {}}, "JSON-1", "lower case"),
            ({"type": "face", "motion": {}}, "JSON-1", "'face'"),
            ({"motion": {}}, "JSON-6", "'type'"),
            ({"type": "motion"}, "JSON-6", "found none"),
            ({"type": "motion", "motion": {}, "text": {"value": ""}}, "JSON-6", "exactly"),
            ({"type": "motion", "motion": {}, "inference_id": "x"}, "JSON-4", "inference_id"),
            ({"type": "motion", "motion": {"box": {"l": 0}}}, "JSON-6", "'t'"),
            (
                {"type": "motion", "motion": {"box": {"l": "0", "t": 0, "w": 0, "h": 0}}},
                "JSON-3",
                ".l",
            ),
            ({"type": "text", "text": {"value": "a", "startTimestamp": -1}}, "JSON-3", "uint64"),
            ({"type": "text", "text": {"value": "a", "endTimestamp": 1.5}}, "JSON-3", "integer"),
            ({"type": "text", "text": {"value": "a", "language": True}}, "JSON-3", "language"),
            ({"type": "event", "event": {"name": "a"}}, "JSON-6", "'properties'"),
            ({"type": "event", "event": {"name": "a", "properties": {"k": 1}}}, "JSON-3", "string"),
            ({"type": "other", "other": {"contentBytes": "!!"}}, "JSON-5", "base64"),
            ({"type": "motion", "motion": {}, "relatedInferences": [1]}, "JSON-3", "strings"),
            ("motion", "JSON-3", "object"),
        ],
    )
    def test_bad_items_are_refused_naming_the_path(self, item: Any, rule: str, named: str) -> None:
        with pytest.raises(InferenceError, match=named) as caught:
            from_json_dict({"inferences": [item]})
        assert caught.value.rule == rule
        assert "$.inferences[0]" in str(caught.value)

    @pytest.mark.rule("INF-4", "JSON-6")
    def test_ranges_are_checked_on_the_way_in(self) -> None:
        item = {"type": "motion", "motion": {"box": {"l": 0.5, "t": 0, "w": 0.6, "h": 0}}}
        with pytest.raises(InferenceError) as caught:
            from_json_dict({"inferences": [item]})
        assert caught.value.rule == "INF-4"

    @pytest.mark.rule("JSON-3")
    def test_not_json_at_all(self) -> None:
        with pytest.raises(InferenceError, match="not JSON"):
            from_json("{inferences")
        with pytest.raises(InferenceError, match="unknown key 'results'"):
            from_json('{"results": []}')


# --- every field, both ways --------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)
FRACTION = st.floats(0, 1, width=32)
MAP = st.dictionaries(TEXT, TEXT, max_size=3)
U64 = st.integers(0, 2**64 - 1)


@st.composite
def boxes(draw: st.DrawFn) -> Any:
    l, t = draw(FRACTION), draw(FRACTION)  # noqa: E741 - the contract's names
    w, h = draw(st.floats(0, 1 - l)), draw(st.floats(0, 1 - t))
    return inf.rectangle(l, t, w, h)


ATTRIBUTES = st.lists(st.builds(inf.attribute, TEXT, TEXT, FRACTION), max_size=2)
COMMON = {
    "subtype": TEXT,
    "inference_id": TEXT,
    "related": st.lists(TEXT, max_size=3),
    "sequence_id": TEXT,
    "extensions": MAP,
}
INFERENCES = st.one_of(
    st.builds(inf.classification, TEXT, FRACTION, attributes=ATTRIBUTES, **COMMON),
    st.builds(inf.motion, st.none() | boxes(), **COMMON),
    st.builds(inf.entity, TEXT, FRACTION, boxes(), id=TEXT, attributes=ATTRIBUTES, **COMMON),
    st.builds(inf.text, TEXT, language=TEXT, start=U64, end=U64, **COMMON),
    st.builds(inf.event, TEXT, MAP, **COMMON),
    st.builds(inf.other, TEXT, st.binary(max_size=16), **COMMON),
)


@pytest.mark.rule("JSON-7", "JSON-5")
@settings(max_examples=200, deadline=None)
@given(st.lists(INFERENCES, min_size=1, max_size=4))
def test_any_inferences_survive_json_both_ways(inferences: list[Inference]) -> None:
    text = json.dumps(to_json_dict(inferences))
    again = from_json(text)
    # Lossless at the precision the wire carries: the same protobuf bytes.
    assert [bytes(i) for i in again] == [bytes(i) for i in inferences]
    assert json.loads(to_json(again)) == json.loads(text)
