"""Spec section 3, Sequence numbers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avaproto.errors import LocalProtocolError, RemoteProtocolError
from avaproto.messages import MediaSample, MediaStreamMessage
from avaproto.protocol.roles import Role
from avaproto.protocol.sequence import UINT64_MAX, IncomingSequence, OutgoingSequence
from avaproto.protocol.session import Session
from avaproto.status import Status
from tests.builders import extension_descriptor, negotiate, pipeline_descriptor


def sample(number: int) -> MediaStreamMessage:
    return MediaStreamMessage(sequence_number=number, media_sample=MediaSample())


class TestOwnNumbers:
    @pytest.mark.rule("SEQ-1")
    def test_our_messages_are_numbered_from_one_by_one(self) -> None:
        pipeline, _ = negotiate()
        numbers = [pipeline.send_sample(MediaSample()).sequence_number for _ in range(5)]
        assert numbers == [2, 3, 4, 5, 6]
        assert pipeline.last_sent == 6

    @pytest.mark.rule("SEQ-1", "SEQ-2")
    def test_directions_are_numbered_independently(self) -> None:
        pipeline, extension = negotiate()
        sent = [pipeline.send_sample(MediaSample()) for _ in range(3)]
        for message in sent:
            extension.receive(message)
        # The extension has received 2..4 but numbers its own answers from 2 (after its
        # descriptor, 1), whatever the pipeline's numbers are.
        answers = [extension.send_sample(MediaSample(), ack=m.sequence_number) for m in sent]
        assert [a.sequence_number for a in answers] == [2, 3, 4]
        assert [a.ack_sequence_number for a in answers] == [2, 3, 4]

    @pytest.mark.rule("SEQ-2")
    def test_gapped_peer_numbers_do_not_shift_ours(self) -> None:
        _, extension = negotiate()
        extension.receive(sample(100))
        answer = extension.send_sample(MediaSample(), ack=100)
        assert answer.sequence_number == 2

    @pytest.mark.rule("SEQ-6")
    def test_our_counter_refuses_to_wrap(self) -> None:
        counter = OutgoingSequence()
        counter._last = UINT64_MAX - 1
        assert counter.advance() == UINT64_MAX
        with pytest.raises(LocalProtocolError) as caught:
            counter.advance()
        assert (caught.value.rule, caught.value.status) == ("SEQ-6", Status.OUT_OF_RANGE)


class TestPeerNumbers:
    @pytest.mark.rule("SEQ-3")
    @pytest.mark.parametrize("number", [1, 2])
    def test_repeated_or_smaller_number_is_refused(self, number: int) -> None:
        _, extension = negotiate()
        extension.receive(sample(2))
        with pytest.raises(RemoteProtocolError) as caught:
            extension.receive(sample(number))
        assert (caught.value.rule, caught.value.status) == ("SEQ-3", Status.INVALID_ARGUMENT)
        assert f"sequence_number {number}" in str(caught.value)
        assert extension.failed

    @pytest.mark.rule("SEQ-3")
    def test_gaps_are_accepted(self) -> None:
        _, extension = negotiate()
        for number in (2, 5, 6, 1000):
            extension.receive(sample(number))
        assert extension.last_received == 1000

    @pytest.mark.rule("SEQ-4")
    def test_zero_is_refused(self) -> None:
        extension = Session(Role.EXTENSION)
        message = MediaStreamMessage(
            sequence_number=0, media_stream_descriptor=pipeline_descriptor()
        )
        with pytest.raises(RemoteProtocolError) as caught:
            extension.receive(message)
        assert (caught.value.rule, caught.value.status) == ("SEQ-4", Status.INVALID_ARGUMENT)

    @pytest.mark.rule("SEQ-5")
    def test_first_number_other_than_one_is_accepted(self) -> None:
        extension = Session(Role.EXTENSION)
        extension.receive(
            MediaStreamMessage(sequence_number=7, media_stream_descriptor=pipeline_descriptor())
        )
        answer = extension.send_descriptor(extension_descriptor())
        assert answer.ack_sequence_number == 7
        extension.receive(sample(8))
        assert extension.state == "streaming"

    @pytest.mark.rule("SEQ-6")
    def test_full_uint64_range_is_compared_exactly(self) -> None:
        _, extension = negotiate()
        extension.receive(sample(UINT64_MAX - 1))
        extension.receive(sample(UINT64_MAX))
        with pytest.raises(RemoteProtocolError):
            extension.receive(sample(UINT64_MAX))
        wire = bytes(sample(UINT64_MAX))
        assert MediaStreamMessage.parse(wire).sequence_number == UINT64_MAX

    @pytest.mark.rule("SEQ-3", "SEQ-4")
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=UINT64_MAX), min_size=1, max_size=30))
    def test_accepts_exactly_the_strictly_increasing_nonzero_numbers(
        self, numbers: list[int]
    ) -> None:
        incoming = IncomingSequence()
        last = 0
        for number in numbers:
            if number == 0 or number <= last:
                with pytest.raises(RemoteProtocolError):
                    incoming.check(number)
                return
            incoming.check(number)
            incoming.record(number)
            last = number
        assert incoming.last == last
