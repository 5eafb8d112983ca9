"""Spec section 4, Acknowledgements."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from avaproto.errors import LocalProtocolError, RemoteProtocolError
from avaproto.messages import MediaSample, MediaStreamMessage
from avaproto.protocol.ack_ledger import AckLedger
from avaproto.protocol.events import AckReceived, SampleReceived, Tolerated
from avaproto.status import Status
from tests.builders import negotiate, pipeline_descriptor, referenced


def answer(number: int, ack: int) -> MediaStreamMessage:
    return MediaStreamMessage(
        sequence_number=number, ack_sequence_number=ack, media_sample=MediaSample()
    )


class TestRequestsAreAcknowledged:
    @pytest.mark.rule("ACK-1")
    def test_every_pipeline_sample_awaits_an_acknowledgement(self) -> None:
        pipeline, extension = negotiate()
        sent = [pipeline.send_sample(MediaSample(timestamp=t)) for t in range(3)]
        assert pipeline.ledger.awaiting == {2, 3, 4}
        events = [e for m in sent for e in extension.receive(m)]
        assert all(isinstance(e, SampleReceived) and e.requires_ack for e in events)
        assert extension.ledger.owed == {2, 3, 4}

    @pytest.mark.rule("ACK-1")
    def test_we_acknowledge_only_what_we_owe(self) -> None:
        pipeline, extension = negotiate()
        extension.receive(pipeline.send_sample(MediaSample()))
        extension.send_sample(MediaSample(), ack=2)
        for bogus in (2, 3, 1):  # twice, never received, the descriptor
            with pytest.raises(LocalProtocolError) as caught:
                extension.send_sample(MediaSample(), ack=bogus)
            assert caught.value.rule == "ACK-1"
            pipeline, extension = negotiate()
            extension.receive(pipeline.send_sample(MediaSample()))
            extension.send_sample(MediaSample(), ack=2)

    @pytest.mark.rule("ACK-1", "ACK-6")
    def test_acknowledgement_rides_on_the_answer(self) -> None:
        pipeline, extension = negotiate()
        request = pipeline.send_sample(MediaSample(timestamp=42))
        extension.receive(request)
        reply = extension.send_sample(MediaSample(timestamp=42), ack=request.sequence_number)
        assert reply.ack_sequence_number == request.sequence_number
        events = pipeline.receive(reply)
        assert isinstance(events[0], AckReceived)
        assert isinstance(events[1], SampleReceived)
        assert events[0].acknowledged == request.sequence_number
        assert events[0].needed
        assert pipeline.ledger.settled and extension.ledger.settled


class TestAcknowledgementNumbers:
    @pytest.mark.rule("ACK-2")
    def test_zero_acknowledges_nothing(self) -> None:
        pipeline, _ = negotiate()
        pipeline.send_sample(MediaSample())
        events = pipeline.receive(answer(2, 0))
        assert not any(isinstance(e, AckReceived) for e in events)
        assert pipeline.ledger.awaiting == {2}

    @pytest.mark.rule("ACK-3")
    @pytest.mark.parametrize("number", [3, 1000, (1 << 64) - 1])
    def test_acknowledging_a_message_never_sent_is_refused(self, number: int) -> None:
        pipeline, _ = negotiate()
        pipeline.send_sample(MediaSample())
        with pytest.raises(RemoteProtocolError) as caught:
            pipeline.receive(answer(2, number))
        assert (caught.value.rule, caught.value.status) == ("ACK-3", Status.INVALID_ARGUMENT)
        assert str(number) in str(caught.value)

    @pytest.mark.rule("ACK-3")
    def test_acknowledging_an_answer_that_needed_none_is_tolerated(self) -> None:
        pipeline, extension = negotiate()
        extension.receive(pipeline.send_sample(MediaSample()))
        pipeline.receive(extension.send_sample(MediaSample(), ack=2))
        # The pipeline acknowledges the extension's answer (2) although it needed none.
        events = extension.receive(MediaStreamMessage(sequence_number=3, ack_sequence_number=2))
        [noted, acknowledged] = events
        assert acknowledged == AckReceived(acknowledged=2, sequence_number=3, needed=False)
        # Noted once per stream, as every deviation accepted (spec: ACK-3's field note).
        assert isinstance(noted, Tolerated) and (noted.rule, noted.first) == ("ACK-3", True)
        assert "acknowledges our message 2, which needed no acknowledgement" in noted.detail
        assert extension.state == "streaming"
        assert extension.tolerated["ACK-3"] == 1

    @pytest.mark.rule("ACK-4")
    def test_second_acknowledgement_is_refused(self) -> None:
        pipeline, _ = negotiate()
        pipeline.send_sample(MediaSample())
        pipeline.receive(answer(2, 2))
        with pytest.raises(RemoteProtocolError) as caught:
            pipeline.receive(answer(3, 2))
        assert (caught.value.rule, caught.value.status) == ("ACK-4", Status.INVALID_ARGUMENT)

    @pytest.mark.rule("ACK-5")
    def test_shared_memory_answers_await_acknowledgement(self) -> None:
        reply = pipeline_descriptor(shm=("extension-segment", 1 << 20))
        reply.graph_identifier = None
        reply.extension_identifier = "shm-extension"
        pipeline, extension = negotiate(reply=reply)
        extension.receive(pipeline.send_sample(MediaSample()))
        message = extension.send_sample(referenced(0), ack=2)
        assert extension.ledger.awaiting == {message.sequence_number}
        [_, event] = pipeline.receive(message)
        assert isinstance(event, SampleReceived) and event.requires_ack
        extension.receive(
            MediaStreamMessage(sequence_number=3, ack_sequence_number=message.sequence_number)
        )
        assert extension.ledger.settled

    @pytest.mark.rule("ACK-5")
    def test_plain_answers_await_nothing(self) -> None:
        pipeline, extension = negotiate()
        extension.receive(pipeline.send_sample(MediaSample()))
        extension.send_sample(MediaSample(), ack=2)
        assert extension.ledger.awaiting == frozenset()

    @pytest.mark.rule("ACK-7")
    def test_acknowledgement_alone(self) -> None:
        pipeline, extension = negotiate()
        extension.receive(pipeline.send_sample(MediaSample()))
        message = extension.send_sample(None, ack=2)
        assert message.media_sample is None and message.media_stream_descriptor is None
        assert pipeline.receive(message) == [
            AckReceived(acknowledged=2, sequence_number=2, needed=True)
        ]

    @pytest.mark.rule("ACK-8")
    def test_acknowledgements_in_any_order(self) -> None:
        pipeline, extension = negotiate()
        for message in [pipeline.send_sample(MediaSample()) for _ in range(4)]:
            extension.receive(message)
        for number in (4, 2, 5, 3):
            pipeline.receive(extension.send_sample(MediaSample(), ack=number))
        assert pipeline.ledger.settled and extension.ledger.settled


# --- the ledger against a model ------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.booleans()),
        st.tuples(st.just("ack"), st.integers(min_value=1, max_value=40)),
    ),
    max_size=80,
)


@pytest.mark.rule("ACK-3", "ACK-4", "ACK-8")
@settings(max_examples=300, deadline=None)
@given(operations)
def test_ledger_agrees_with_a_model(ops: list[tuple[str, object]]) -> None:
    ledger = AckLedger()
    needs: dict[int, bool] = {}
    acked: set[int] = set()
    for kind, value in ops:
        if kind == "send":
            number = len(needs) + 1
            needs[number] = bool(value)
            ledger.sent(number, bool(value))
            continue
        number = int(str(value))
        if needs.get(number) and number not in acked:
            assert ledger.peer_acknowledged(number) is True
            acked.add(number)
        elif number not in needs:
            with pytest.raises(RemoteProtocolError, match=r"\[ACK-3\]"):
                ledger.peer_acknowledged(number)
        elif needs[number]:
            with pytest.raises(RemoteProtocolError, match=r"\[ACK-4\]"):
                ledger.peer_acknowledged(number)
        else:
            assert ledger.peer_acknowledged(number) is False
        assert ledger.awaiting == {n for n, need in needs.items() if need} - acked


class Exchange(RuleBasedStateMachine):
    """A pipeline and an extension exchanging samples, answers in random order."""

    def __init__(self) -> None:
        super().__init__()
        self.pipeline, self.extension = negotiate()
        self.in_flight: list[MediaStreamMessage] = []  # sent, not yet received
        self.owed: list[int] = []  # received by the extension, not yet answered
        self.answers: list[MediaStreamMessage] = []  # answers not yet received
        self.acknowledged: set[int] = set()

    @rule()
    def pipeline_sends(self) -> None:
        self.in_flight.append(self.pipeline.send_sample(MediaSample()))

    @precondition(lambda self: self.in_flight)
    @rule()
    def extension_receives(self) -> None:
        message = self.in_flight.pop(0)
        self.extension.receive(message)
        self.owed.append(message.sequence_number)

    @precondition(lambda self: self.owed)
    @rule(index=st.integers(min_value=0))
    def extension_answers(self, index: int) -> None:
        number = self.owed.pop(index % len(self.owed))
        self.answers.append(self.extension.send_sample(MediaSample(), ack=number))

    @precondition(lambda self: self.answers)
    @rule()
    def pipeline_receives(self) -> None:
        message = self.answers.pop(0)
        [ack, _] = self.pipeline.receive(message)
        assert isinstance(ack, AckReceived)
        assert ack.acknowledged not in self.acknowledged
        self.acknowledged.add(ack.acknowledged)

    @invariant()
    def books_agree(self) -> None:
        sent = set(range(2, self.pipeline.last_sent + 1))
        assert self.pipeline.ledger.awaiting == sent - self.acknowledged
        assert self.extension.ledger.owed == set(self.owed)


@pytest.mark.rule("ACK-1", "ACK-8")
class TestExchange(Exchange.TestCase):  # type: ignore[name-defined,misc]
    settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
