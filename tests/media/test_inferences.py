"""Spec section 11, inferences: the builders and the checks of the contract's ranges."""

from __future__ import annotations

import math

import pytest

from avaproto.errors import InferenceError
from avaproto.media import inferences as inf
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
from avaproto.status import Status

BOX = inf.rectangle(0.1, 0.2, 0.3, 0.4)


class TestBuilders:
    @pytest.mark.rule("INF-1")
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

    def test_text_timestamps_and_other_bytes(self) -> None:
        built = inf.text("caption", start=2**64 - 1, end=5)
        assert built.text == Text(value="caption", start_timestamp=2**64 - 1, end_timestamp=5)
        payload = inf.other("image/png", bytearray(b"\x89PNG"))
        assert payload.other is not None and payload.other.content_bytes == b"\x89PNG"

    @pytest.mark.rule("INF-3")
    def test_built_values_are_what_the_wire_carries(self) -> None:
        built = inf.classification("cat", 0.1, attributes=[inf.attribute("a", "b", 0.3)])
        assert Inference.parse(bytes(built)) == built  # float32 from the start

    def test_a_tag_object_may_be_given(self) -> None:
        built = inf.classification(Tag(value="dog", confidence=0.25))
        assert built.classification == Classification(tag=Tag(value="dog", confidence=0.25))

    def test_motion_without_a_box_is_the_whole_frame(self) -> None:
        assert inf.motion().motion == Motion()


class TestRanges:
    @pytest.mark.rule("INF-3")
    @pytest.mark.parametrize("confidence", [-0.01, 1.01, math.nan, math.inf])
    def test_confidences_outside_zero_to_one(self, confidence: float) -> None:
        with pytest.raises(InferenceError) as caught:
            inf.classification("cat", confidence)
        assert (caught.value.rule, caught.value.status) == ("INF-3", Status.INVALID_ARGUMENT)
        assert "cat" in str(caught.value)

    @pytest.mark.rule("INF-3")
    def test_attribute_confidence(self) -> None:
        with pytest.raises(InferenceError, match="colour"):
            inf.attribute("colour", "red", 2.0)

    @pytest.mark.rule("INF-3")
    @pytest.mark.parametrize("edge", [0.0, 1.0])
    def test_the_ends_are_inside(self, edge: float) -> None:
        assert inf.tag("x", edge).confidence == edge

    @pytest.mark.rule("INF-4")
    @pytest.mark.parametrize(
        ("box", "named"),
        [
            ((-0.1, 0, 0.5, 0.5), "box.l"),
            ((0, 1.2, 0, 0), "box.t"),
            ((0, 0, math.nan, 0.5), "box.w"),
            ((0, 0, 0.5, -1), "box.h"),
            ((0.6, 0, 0.5, 0.5), "past the image's edge"),
            ((0, 0.7, 0.1, 0.31), "past the image's edge"),
        ],
    )
    def test_rectangles_are_fractions_of_the_image(
        self, box: tuple[float, float, float, float], named: str
    ) -> None:
        with pytest.raises(InferenceError, match=named) as caught:
            inf.rectangle(*box)
        assert caught.value.rule == "INF-4"

    @pytest.mark.rule("INF-4")
    def test_float32_rounding_at_the_edge_is_tolerated(self) -> None:
        box = Rectangle.parse(bytes(Rectangle(l=0.01, t=0.0, w=0.99, h=1.0)))
        assert box.l + box.w > 1.0  # float32 rounding pushes it just past
        inf.validate(Inference(motion=Motion(box=box)))

    @pytest.mark.rule("INF-5")
    def test_a_box_on_a_padded_image_is_kept_as_given(self) -> None:
        # A 16:9 picture letterboxed into a square: the box is relative to the square.
        built = inf.entity("car", 0.7, inf.rectangle(0.0, 0.125, 1.0, 0.75))
        assert built.entity is not None and built.entity.box == Rectangle(
            l=0.0, t=0.125, w=1.0, h=0.75
        )


class TestValidate:
    @pytest.mark.rule("INF-1")
    def test_a_value_of_another_kind_is_refused(self) -> None:
        wrong = Inference(type=InferenceType.ENTITY, motion=Motion(box=BOX))
        with pytest.raises(InferenceError, match="type ENTITY but its value is motion") as caught:
            inf.validate(wrong)
        assert caught.value.rule == "INF-1"

    @pytest.mark.rule("INF-1")
    def test_a_type_without_a_value_is_refused(self) -> None:
        with pytest.raises(InferenceError, match="no value") as caught:
            inf.validate(Inference(type=InferenceType.TEXT))
        assert caught.value.rule == "INF-1"

    @pytest.mark.rule("INF-2")
    def test_auto_takes_the_kind_of_its_value(self) -> None:
        auto = Inference(event=Event(name="door"))
        assert inf.validate(auto) is auto
        assert inf.type_of(auto) is InferenceType.EVENT

    @pytest.mark.rule("INF-2")
    def test_auto_without_a_value(self) -> None:
        with pytest.raises(InferenceError, match="AUTO"):
            inf.type_of(Inference())

    @pytest.mark.rule("INF-3", "INF-4")
    def test_errors_name_the_path(self) -> None:
        bad_box = Inference(entity=Entity(tag=Tag(value="a"), box=Rectangle(w=1.5)))
        bad_attr = Inference(
            classification=Classification(
                tag=Tag(value="a"), attributes=[Attribute(name="n", confidence=-1)]
            )
        )
        with pytest.raises(InferenceError, match=r"inferences\[1\]\.entity\.box\.w = 1\.5"):
            inf.validate_all([inf.motion(), bad_box])
        with pytest.raises(InferenceError, match=r"classification\.attributes\[0\]\.confidence"):
            inf.validate(bad_attr)

    @pytest.mark.rule("INF-6")
    def test_opaque_maps_and_bytes_are_carried_unchanged(self) -> None:
        odd = {"": "", "ключ": "значение", "a\nb": "\x00"}
        built = inf.event("e", odd, extensions=odd)
        payload = inf.other("", bytes(range(256)))
        again = Inference.parse(bytes(built))
        assert again.event is not None and again.event.properties == odd
        assert again.extensions == odd
        assert Inference.parse(bytes(payload)).other == payload.other
