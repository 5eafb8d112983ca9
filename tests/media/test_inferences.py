"""Spec section 11, inferences: the builders and the checks of the contract's ranges."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from avaproto.errors import InferenceError
from avaproto.media import inferences as inf
from avaproto.messages import (
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
from avaproto.status import Status

BOX = inf.rectangle(0.1, 0.2, 0.3, 0.4)
#: One hand-made value of each kind, and the type it stands for.
VALUES = [
    ("classification", Classification(tag=Tag(value="cat", confidence=0.5))),
    ("motion", Motion(box=BOX)),
    ("entity", Entity(tag=Tag(value="car"), box=BOX)),
    ("text", Text(value="hi")),
    ("event", Event(name="door")),
    ("other", InferenceOther(content_type="text/plain", content_bytes=b"x")),
]


@contextmanager
def refused(rule: str, match: str | None = None) -> Iterator[pytest.ExceptionInfo[InferenceError]]:
    """Expect an InferenceError for ``rule`` (INVALID_ARGUMENT), its message matching."""
    with pytest.raises(InferenceError, match=match) as caught:
        yield caught
    assert caught.value.rule == rule
    assert caught.value.status is Status.INVALID_ARGUMENT
    assert f"[{rule}]" in str(caught.value)


class TestBuilders:
    @pytest.mark.rule("INF-7", "INF-1")
    @pytest.mark.parametrize(
        ("built", "kind", "field"),
        [
            (inf.classification("cat", 0.8), InferenceType.CLASSIFICATION, "classification"),
            (inf.motion(BOX), InferenceType.MOTION, "motion"),
            (inf.entity("car", 0.5, BOX), InferenceType.ENTITY, "entity"),
            (inf.text("hello", language="en-GB"), InferenceType.TEXT, "text"),
            (inf.event("lineCrossed", {"line": "north"}), InferenceType.EVENT, "event"),
            (inf.other("application/json", b"{}"), InferenceType.OTHER, "other"),
        ],
    )
    def test_the_type_is_set_from_the_value(
        self, built: Inference, kind: InferenceType, field: str
    ) -> None:
        assert built.type is kind
        assert inf.value_field(built) == field
        assert inf.type_of(built) is kind
        assert inf.VALUE_FIELDS[kind] == field and inf.TYPES_BY_FIELD[field] is kind

    @pytest.mark.rule("INF-7")
    def test_the_table_covers_every_kind_but_auto(self) -> None:
        assert set(inf.VALUE_FIELDS) == set(InferenceType) - {InferenceType.AUTO}
        assert set(inf.VALUE_FIELDS.values()) == {name for name, _ in VALUES}

    @pytest.mark.rule("INF-7")
    def test_classification_carries_everything(self) -> None:
        built = inf.classification(
            "indoor",
            0.75,
            attributes=[inf.attribute("lighting", "dim", 0.5)],
            subtype="sceneClassification",
            inference_id="c1",
            related=("e1",),
            sequence_id="s1",
            extensions={"model": "v2"},
        )
        assert built == Inference(
            type=InferenceType.CLASSIFICATION,
            subtype="sceneClassification",
            inference_id="c1",
            related_inferences=["e1"],
            sequence_id="s1",
            classification=Classification(
                tag=Tag(value="indoor", confidence=0.75),
                attributes=[Attribute(name="lighting", value="dim", confidence=0.5)],
            ),
            extensions={"model": "v2"},
        )

    @pytest.mark.rule("INF-7")
    def test_entity_carries_everything(self) -> None:
        built = inf.entity(
            "person",
            0.875,
            BOX,
            id="track-7",
            attributes=[inf.attribute("colour", "red", 0.625)],
            subtype="peopleDetection",
            inference_id="a",
            related=["b", "c"],
            sequence_id="seq-1",
            extensions={"model": "yolo"},
        )
        assert built.entity == Entity(
            tag=Tag(value="person", confidence=0.875),
            attributes=[Attribute(name="colour", value="red", confidence=0.625)],
            box=BOX,
            id="track-7",
        )
        assert (built.subtype, built.inference_id, built.sequence_id) == (
            "peopleDetection",
            "a",
            "seq-1",
        )
        assert built.related_inferences == ["b", "c"]
        assert built.extensions == {"model": "yolo"}

    @pytest.mark.rule("INF-7")
    def test_motion_with_and_without_a_box(self) -> None:
        assert inf.motion(BOX).motion == Motion(box=BOX)
        assert inf.motion().motion == Motion()
        assert inf.motion().motion.box is None  # type: ignore[union-attr]

    @pytest.mark.rule("INF-7")
    def test_text_with_language_and_timestamps(self) -> None:
        built = inf.text("caption", language="fr-CA", start=2**64 - 1, end=5)
        assert built.text == Text(
            value="caption", language="fr-CA", start_timestamp=2**64 - 1, end_timestamp=5
        )

    @pytest.mark.rule("INF-7")
    @pytest.mark.parametrize("stamp", [-1, 2**64, 1.5, True])
    def test_a_timestamp_that_is_not_a_uint64(self, stamp: object) -> None:
        with refused("INF-7", "not a uint64") as caught:
            inf.text("x", start=stamp)  # type: ignore[arg-type]
        assert caught.value.rule == "INF-7"

    @pytest.mark.rule("INF-7")
    def test_event_and_other(self) -> None:
        built = inf.event("doorOpened", {"door": "north", "by": "badge"})
        assert built.event == Event(name="doorOpened", properties={"door": "north", "by": "badge"})
        assert inf.event("tick").event == Event(name="tick")
        payload = inf.other("image/png", bytearray(b"\x89PNG"))
        assert payload.other == InferenceOther(content_type="image/png", content_bytes=b"\x89PNG")
        assert payload.other is not None and type(payload.other.content_bytes) is bytes

    @pytest.mark.rule("INF-7", "INF-3")
    def test_built_values_are_what_the_wire_carries(self) -> None:
        built = inf.entity(
            "cat", 0.1, inf.rectangle(0.1, 0.2, 0.3, 0.7), attributes=[inf.attribute("a", "b", 0.3)]
        )
        assert Inference.parse(bytes(built)) == built  # float32 from the start
        assert built.entity is not None and built.entity.tag is not None
        assert built.entity.tag.confidence != 0.1  # the float32 nearest 0.1, not the double

    @pytest.mark.rule("INF-7", "INF-3")
    def test_hand_made_parts_are_checked_and_rounded_too(self) -> None:
        built = inf.classification(
            Tag(value="dog", confidence=0.1), attributes=[Attribute(name="n", confidence=0.2)]
        )
        assert Inference.parse(bytes(built)) == built
        with refused("INF-3", r"classification\.tag\.confidence") as caught:
            inf.classification(Tag(value="dog", confidence=1.5))
        assert caught.value.rule == "INF-3"
        with refused("INF-3", r"entity\.attributes\[1\]\.confidence"):
            inf.entity("x", 1, BOX, attributes=[Attribute(), Attribute(confidence=-0.5)])
        with refused("INF-4", r"motion\.box\.h"):
            inf.motion(Rectangle(h=2.0))

    @pytest.mark.rule("INF-3", "INF-4")
    def test_numpy_scores_are_numbers(self) -> None:
        built = inf.entity(
            "car", np.float32(0.25), inf.rectangle(*np.array([0.5, 0.5, 0.25, 0.5], np.float32))
        )
        assert built.entity is not None and built.entity.tag == Tag(value="car", confidence=0.25)
        assert type(built.entity.tag.confidence) is float
        with refused("INF-3", "must be a number") as caught:
            inf.tag("x", "0.5")  # type: ignore[arg-type]
        assert caught.value.rule == "INF-3"


class TestRanges:
    @pytest.mark.rule("INF-3")
    @pytest.mark.parametrize("confidence", [-0.01, 1.01, -math.inf, math.nan, math.inf])
    def test_confidences_outside_zero_to_one(self, confidence: float) -> None:
        with pytest.raises(InferenceError) as caught:
            inf.classification("cat", confidence)
        assert (caught.value.rule, caught.value.status) == ("INF-3", Status.INVALID_ARGUMENT)
        assert "cat" in str(caught.value) and "[INF-3]" in str(caught.value)

    @pytest.mark.rule("INF-3")
    def test_attribute_confidence(self) -> None:
        with refused("INF-3", "colour") as caught:
            inf.attribute("colour", "red", 2.0)
        assert caught.value.rule == "INF-3"

    @pytest.mark.rule("INF-3")
    @pytest.mark.parametrize("edge", [0.0, 1.0, 0, 1])
    def test_the_ends_are_inside(self, edge: float) -> None:
        assert inf.tag("x", edge).confidence == edge

    @pytest.mark.rule("INF-4")
    @pytest.mark.parametrize(
        ("box", "named"),
        [
            ((-0.1, 0, 0.5, 0.5), r"box\.l = -0\.1 is outside \[0, 1\]"),
            ((0, 1.2, 0, 0), r"box\.t = 1\.2"),
            ((0, 0, math.nan, 0.5), r"box\.w = nan"),
            ((0, 0, 0.5, -1), r"box\.h = -1"),
            ((0, 0, 0.5, math.inf), r"box\.h = inf"),
            ((0.6, 0, 1.5, 0.5), r"box\.w = 1\.5"),  # past the edge, and an edge out of range
        ],
    )
    def test_rectangles_are_fractions_of_the_image(
        self, box: tuple[float, float, float, float], named: str
    ) -> None:
        with refused("INF-4", named) as caught:
            inf.rectangle(*box)
        assert (caught.value.rule, caught.value.status) == ("INF-4", Status.INVALID_ARGUMENT)

    @pytest.mark.rule("INF-4")
    @pytest.mark.parametrize(
        ("box", "past"),
        [
            ((0.6, 0, 0.5, 0.5), r"l \+ w = 1\.1$"),
            ((0, 0.7, 0.1, 0.31), r"t \+ h = 1\.01$"),
            ((1, 1, 1, 1), r"l \+ w = 2 and t \+ h = 2$"),
        ],
    )
    def test_a_box_past_the_image_s_edge_is_kept_as_given(
        self, box: tuple[float, float, float, float], past: str
    ) -> None:
        # Detectors that do not clip send these; each edge is still in [0, 1].
        built = inf.entity("car", 0.5, inf.rectangle(*box))
        assert built.entity is not None and built.entity.box == Rectangle(
            **{edge: inf.as_float32(value) for edge, value in zip("ltwh", box, strict=True)}
        )
        assert inf.validate(built) is built
        note = inf.box_overflows(built, "inferences[4]")
        assert note is not None and note.startswith("inferences[4].entity.box (l=")
        assert re.search(past, note), note

    @pytest.mark.rule("INF-4")
    def test_float32_rounding_at_the_edge_is_not_passing_it(self) -> None:
        box = Rectangle.parse(bytes(Rectangle(l=0.01, t=0.0, w=0.99, h=1.0)))
        assert box.l + box.w > 1.0  # float32 rounding pushes it just past
        rounded = Inference(motion=Motion(box=box))
        assert inf.validate(rounded) is rounded
        assert inf.box_overflows(rounded) is None
        assert inf.rectangle(0.01, 0, 0.99, 1).w == box.w
        assert inf.box_overflows(inf.motion(inf.rectangle(0.01, 0, 0.99 + 2e-6, 1))) is not None

    @pytest.mark.rule("INF-4")
    @pytest.mark.parametrize(
        "built",
        [
            inf.motion(),
            inf.motion(inf.rectangle(0, 0, 1, 1)),
            inf.entity("a", 1, inf.rectangle(0.5, 0.25, 0.5, 0.75)),
            inf.classification("a"),
            inf.event("e"),
            Inference(subtype="no value"),
            Inference(entity=Entity(tag=Tag(value="no box"))),
        ],
    )
    def test_nothing_to_report_without_a_box_past_the_edge(self, built: Inference) -> None:
        assert inf.box_overflows(built) is None

    @pytest.mark.rule("INF-4")
    @given(
        st.floats(0, 1, width=32),
        st.floats(0, 1, width=32),
        st.floats(0, 1),
        st.floats(0, 1),
    )
    def test_any_box_inside_the_image_is_accepted(
        self,
        l: float,  # noqa: E741 - the contract's name
        t: float,
        w: float,
        h: float,
    ) -> None:
        box = inf.rectangle(l, t, w * (1 - l), h * (1 - t))
        assert all(0.0 <= getattr(box, edge) <= 1.0 for edge in "ltwh")
        assert Rectangle.parse(bytes(box)) == box

    @pytest.mark.rule("INF-5")
    def test_a_box_on_a_padded_image_is_kept_as_given(self) -> None:
        # A 16:9 picture letterboxed into a square: bands of 1/8 above and below. A box
        # over the top band is relative to the square and is neither refused nor moved.
        built = inf.entity("car", 0.7, inf.rectangle(0.0, 0.0, 1.0, 0.875))
        assert built.entity is not None
        assert built.entity.box == Rectangle(l=0.0, t=0.0, w=1.0, h=0.875)
        assert inf.validate(built) is built


class TestValidate:
    @pytest.mark.rule("INF-1")
    @pytest.mark.parametrize(("field", "value"), VALUES)
    def test_every_value_with_its_own_type_is_accepted(self, field: str, value: object) -> None:
        inference = Inference(type=inf.TYPES_BY_FIELD[field], **{field: value})  # type: ignore[arg-type]
        assert inf.validate(inference) is inference

    @pytest.mark.rule("INF-1")
    @pytest.mark.parametrize(("field", "value"), VALUES)
    def test_a_value_of_any_other_kind_is_refused(self, field: str, value: object) -> None:
        for kind, name in inf.VALUE_FIELDS.items():
            if name == field:
                continue
            wrong = Inference(type=kind, **{field: value})  # type: ignore[arg-type]
            with refused("INF-1", f"type {kind.name} but its value is {field}") as caught:
                inf.validate(wrong, "inferences[3]")
            assert caught.value.rule == "INF-1"
            assert caught.value.status is Status.INVALID_ARGUMENT
            assert "inferences[3]" in str(caught.value)

    @pytest.mark.rule("INF-1")
    @pytest.mark.parametrize("kind", list(inf.VALUE_FIELDS))
    def test_a_type_without_a_value_is_refused(self, kind: InferenceType) -> None:
        with refused("INF-1", "no value") as caught:
            inf.validate(Inference(type=kind, subtype="x"))
        assert caught.value.rule == "INF-1"

    @pytest.mark.rule("INF-2")
    @pytest.mark.parametrize(("field", "value"), VALUES)
    def test_auto_takes_the_kind_of_its_value(self, field: str, value: object) -> None:
        auto = Inference(**{field: value})  # type: ignore[arg-type]
        assert auto.type is InferenceType.AUTO
        assert inf.validate(auto) is auto
        assert inf.type_of(auto) is inf.TYPES_BY_FIELD[field]

    @pytest.mark.rule("INF-2")
    def test_auto_without_a_value(self) -> None:
        carrier = Inference(subtype="upstream", extensions={"k": "v"})
        assert inf.validate(carrier) is carrier  # nothing to contradict
        with refused("INF-2", "AUTO") as caught:
            inf.type_of(carrier)
        assert caught.value.rule == "INF-2"

    @pytest.mark.rule("INF-3", "INF-4")
    def test_errors_name_the_path(self) -> None:
        bad_box = Inference(entity=Entity(tag=Tag(value="a"), box=Rectangle(w=1.2)))
        bad_attr = Inference(
            classification=Classification(
                tag=Tag(value="a"), attributes=[Attribute(), Attribute(name="n", confidence=-1)]
            )
        )
        bad_tag = Inference(entity=Entity(tag=Tag(value="a", confidence=math.nan), box=BOX))
        with refused("INF-4", r"inferences\[1\]\.entity\.box\.w = 1\.2 is outside") as caught:
            inf.validate_all([inf.motion(), bad_box])
        assert caught.value.rule == "INF-4"
        with refused("INF-3", r"inference\.classification\.attributes\[1\]\.confidence = -1"):
            inf.validate(bad_attr)
        with refused("INF-3", r"entity\.tag\.confidence = nan") as caught:
            inf.validate(bad_tag)
        assert caught.value.rule == "INF-3"

    @pytest.mark.rule("INF-4")
    def test_a_received_box_past_the_edge(self) -> None:
        unclipped = Inference(type=InferenceType.MOTION, motion=Motion(box=Rectangle(l=0.5, w=0.9)))
        assert inf.validate(unclipped) is unclipped  # accepted as given, not clipped
        assert unclipped.motion == Motion(box=Rectangle(l=0.5, w=0.9))
        assert inf.box_overflows(unclipped) == (
            "inference.motion.box (l=0.5, t=0, w=0.9, h=0) reaches past the image's edge: "
            "l + w = 1.4"
        )
        still_checked = Inference(motion=Motion(box=Rectangle(l=0.5, w=1.01)))
        with refused("INF-4", r"inference\.motion\.box\.w = 1\.01 is outside \[0, 1\]"):
            inf.validate(still_checked)

    @pytest.mark.rule("INF-1", "INF-3")
    def test_validate_all_returns_the_list(self) -> None:
        items = [inf.motion(), inf.text("t")]
        assert inf.validate_all(iter(items)) == items
        assert inf.validate_all([]) == []

    @pytest.mark.rule("INF-6")
    def test_opaque_maps_and_bytes_are_carried_unchanged(self) -> None:
        odd = {"": "", "ключ": "значение", "a\nb": "\x00", "😀": " "}
        built = inf.event("e", odd, extensions=odd)
        payload = inf.other("", bytes(range(256)), extensions={"": ""})
        again = Inference.parse(bytes(built))
        assert again.event is not None and again.event.properties == odd
        assert again.extensions == odd
        assert Inference.parse(bytes(payload)) == payload
        assert inf.validate(again) is again


# --- cutting a box that reaches outside the image (INF-4's field note) ------------------


def boxed(l: float, t: float, w: float, h: float) -> Inference:  # noqa: E741
    return Inference(
        type=InferenceType.ENTITY,
        entity=Entity(tag=Tag(value="car", confidence=0.5), box=Rectangle(l=l, t=t, w=w, h=h)),
        inference_id="7",
    )


@pytest.mark.rule("INF-4")
@pytest.mark.parametrize(
    ("given", "cut"),
    [
        ((-0.02, 0.2, 0.3, 0.4), (0.0, 0.2, 0.28, 0.4)),  # past the left edge
        ((0.1, -0.1, 0.2, 0.3), (0.1, 0.0, 0.2, 0.2)),  # past the top
        ((0.0, 0.0, 1.25, 0.5), (0.0, 0.0, 1.0, 0.5)),  # wider than the image
        ((-0.5, -0.5, 2.0, 2.0), (0.0, 0.0, 1.0, 1.0)),  # around the whole image
        ((-0.1, 0.5, 0.5, 0.0), (0.0, 0.5, 0.4, 0.0)),  # no height, as one inside may be
    ],
)
def test_a_box_reaching_outside_the_image_is_cut_to_it(
    given: tuple[float, float, float, float], cut: tuple[float, float, float, float]
) -> None:
    inference = boxed(*given)
    with pytest.raises(InferenceError, match=r"\[INF-4\]"):
        inf.validate(inference)
    result = inf.clip_box(inference, "inferences[3]")
    assert result is not None
    clipped, detail = result
    inf.validate(clipped)
    box = clipped.entity.box
    assert (box.l, box.t, box.w, box.h) == pytest.approx(cut, abs=1e-6)
    assert (clipped.inference_id, clipped.entity.tag.value) == ("7", "car")  # the rest kept
    assert inference.entity.box.l == pytest.approx(given[0], abs=1e-6)  # the given one kept
    assert detail.startswith("inferences[3].entity.box (l=") and "cut to it" in detail


@pytest.mark.rule("INF-4")
@pytest.mark.parametrize(
    "given",
    [
        (0.1, 0.2, 0.3, 0.4),  # inside: nothing to cut
        (0.5, 0.5, 0.7, 0.2),  # past the right edge with every edge in range: carried as given
        (-0.5, 0.2, 0.3, 0.4),  # entirely left of the image: nothing of it to keep
        (1.5, 0.2, 0.3, 0.4),  # entirely right of it
        (0.1, 0.2, -0.3, 0.4),  # a negative width is no box
        (math.nan, 0.2, 0.3, 0.4),
        (math.inf, 0.2, 0.3, 0.4),
    ],
)
def test_boxes_that_no_cut_helps_are_left_to_validate(
    given: tuple[float, float, float, float],
) -> None:
    assert inf.clip_box(boxed(*given)) is None


def test_an_inference_without_a_box_has_nothing_to_cut() -> None:
    assert inf.clip_box(Inference(subtype="seen")) is None
    assert inf.clip_box(inf.classification("cat", 0.5)) is None


# --- a confidence below 0, which stands for none (INF-3's field note) ---------------------


def tracked(confidence: float, age: float = 0.75) -> Inference:
    """As DeepStream's published extension sends an object its tracker found (-0.1), with
    an attribute that is a measure, as model-server adaptors send one (-1)."""
    return Inference(
        type=InferenceType.ENTITY,
        entity=Entity(
            tag=Tag(value="person", confidence=confidence),
            attributes=[Attribute(name="age", value="31", confidence=age)],
            box=Rectangle(l=0.25, t=0.25, w=0.5, h=0.5),
        ),
    )


@pytest.mark.rule("INF-3")
def test_a_confidence_below_zero_is_read_as_none_given() -> None:
    inference = tracked(-0.1, age=-1.0)
    with pytest.raises(InferenceError, match=r"\[INF-3\]"):
        inf.validate(inference)
    mended, detail = inf.validate_or_mend(inference, "inferences[2]")
    assert (mended.entity.tag.confidence, mended.entity.attributes[0].confidence) == (0.0, 0.0)
    assert (mended.entity.tag.value, mended.entity.attributes[0].value) == ("person", "31")
    assert mended.entity.box == inference.entity.box
    assert inference.entity.tag.confidence == pytest.approx(-0.1)  # the given one kept
    assert detail.startswith("[INF-3] inferences[2].entity.tag.confidence = -0.1")
    assert "attributes[0].confidence = -1 below 0" in detail


@pytest.mark.rule("INF-3")
@pytest.mark.parametrize("confidence", [1.5, math.nan])
def test_a_confidence_above_one_or_not_a_number_is_still_refused(confidence: float) -> None:
    assert inf.unset_negative_confidences(tracked(confidence)) is None
    with pytest.raises(InferenceError, match=r"\[INF-3\]"):
        inf.validate_or_mend(tracked(confidence))


@pytest.mark.rule("INF-3", "INF-4")
def test_both_mends_apply_to_one_inference_each_naming_its_rule() -> None:
    both = boxed(-0.02, 0.2, 0.3, 0.4)
    both.entity.tag.confidence = -0.1
    mended, detail = inf.validate_or_mend(both)
    assert mended.entity.tag.confidence == 0.0 and mended.entity.box.l == 0.0
    assert "[INF-3]" in detail and "[INF-4]" in detail
    valid = inf.entity("car", 0.5, inf.rectangle(0.1, 0.1, 0.2, 0.2))
    assert inf.validate_or_mend(valid) == (valid, "")
