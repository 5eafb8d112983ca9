"""Spec section 13, Session lifecycle: the state machine, both roles, every row."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avaproto.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from avaproto.messages import MediaSample, MediaStreamMessage
from avaproto.protocol.events import StreamEnded
from avaproto.protocol.lifecycle import STATES, TRANSITIONS
from avaproto.protocol.roles import Role
from avaproto.protocol.session import Session
from avaproto.status import Status
from tests.builders import extension_descriptor, negotiate, pipeline_descriptor


def states(*sessions: Session) -> tuple[str, ...]:
    return tuple(s.state for s in sessions)


class TestMachine:
    def test_lifecycle_states(self) -> None:
        assert STATES == [
            "awaiting_descriptor",
            "negotiated",
            "streaming",
            "closing",
            "closed",
            "failed",
        ]

    def test_every_callback_the_table_names_is_a_session_method(self) -> None:
        session = Session(Role.PIPELINE)
        for row in TRANSITIONS:
            for key in ("conditions", "unless", "before"):
                names = row.get(key, [])
                for name in [names] if isinstance(names, str) else names:
                    assert callable(getattr(session, name)), (row["trigger"], name)

    def test_machine_binds_nothing_onto_the_session(self) -> None:
        session = Session(Role.PIPELINE)
        assert not hasattr(session, "trigger")
        assert not hasattr(session, "is_closed")
        assert session.peer_descriptor is None


class _Facts:
    """A model for both dispatchers: the four facts the guards read, and a call log."""

    def __init__(self, state: str, facts: tuple[bool, bool, bool, bool]) -> None:
        self.state = state
        self.facts = facts
        self.calls: list[str] = []

    def own_described(self, *_: object) -> bool:
        return self.facts[0]

    def peer_described(self, *_: object) -> bool:
        return self.facts[1]

    def own_closed(self, *_: object) -> bool:
        return self.facts[2]

    def peer_closed(self, *_: object) -> bool:
        return self.facts[3]


for _name in {
    n
    for row in TRANSITIONS
    for n in ([row["before"]] if isinstance(row.get("before"), str) else row.get("before", []))
}:
    setattr(_Facts, _name, lambda self, *_, _name=_name: self.calls.append(_name))


class TestDispatch:
    def test_the_sessions_lookup_agrees_with_transitions_on_every_input(self) -> None:
        """Sessions dispatch through ``Dispatcher``; a ``transitions.Machine`` built from the same
        table must take the same row (same callbacks, same state) in every state, for every
        trigger and every value of the guards."""
        from itertools import product

        from transitions import Machine

        from avaproto.protocol.lifecycle import TRIGGERS, Dispatcher

        dispatcher = Dispatcher(_Facts)
        compared = 0
        for state, trigger, facts in product(STATES, TRIGGERS, product([False, True], repeat=4)):
            reference = _Facts(state, facts)
            machine = Machine(
                model=reference,
                states=STATES,
                transitions=TRANSITIONS,
                initial=state,
                auto_transitions=False,
                ignore_invalid_triggers=True,
                model_attribute="state",
            )
            taken = machine.events[trigger].trigger(reference, "message")
            ours = _Facts(state, facts)
            fired = dispatcher.fire(ours, trigger, "message")
            assert (fired, ours.state, ours.calls) == (
                bool(taken),
                reference.state,
                reference.calls,
            ), (state, trigger, facts)
            compared += 1
        assert compared == len(STATES) * len(TRIGGERS) * 16


class TestCleanEndings:
    @pytest.mark.rule("LIFE-2", "LIFE-4")
    def test_pipeline_ends_input_then_extension_drains(self) -> None:
        pipeline, extension = negotiate()
        requests = [pipeline.send_sample(MediaSample()) for _ in range(2)]
        pipeline.send_end()
        assert states(pipeline) == ("closing",)
        for request in requests:
            extension.receive(request)
        assert extension.receive_end() == [StreamEnded()]
        assert extension.state == "closing"
        with pytest.raises(LocalProtocolError) as caught:
            extension.send_end()  # two requests still unanswered
        assert caught.value.rule == "LIFE-2"

        pipeline2, extension2 = negotiate()
        requests = [pipeline2.send_sample(MediaSample()) for _ in range(2)]
        pipeline2.send_end()
        for request in requests:
            extension2.receive(request)
        extension2.receive_end()
        for request in requests:
            pipeline2.receive(extension2.send_sample(MediaSample(), ack=request.sequence_number))
        extension2.send_end()
        pipeline2.receive_end()
        assert states(pipeline2, extension2) == ("closed", "closed")
        assert pipeline2.closed and extension2.closed

    @pytest.mark.rule("LIFE-2")
    def test_extension_ending_with_requests_unanswered_is_refused(self) -> None:
        pipeline, _ = negotiate()
        pipeline.send_sample(MediaSample())
        pipeline.send_end()
        with pytest.raises(RemoteProtocolError) as caught:
            pipeline.receive_end()
        assert (caught.value.rule, caught.value.status) == ("LIFE-2", Status.FAILED_PRECONDITION)
        assert "2" in str(caught.value)
        assert pipeline.failed

    @pytest.mark.rule("LIFE-4")
    def test_pipeline_that_sends_nothing(self) -> None:
        extension = Session(Role.EXTENSION)
        extension.receive_end()
        assert extension.closed
        pipeline = Session(Role.PIPELINE)
        pipeline.send_end()
        assert pipeline.closed

    @pytest.mark.rule("LIFE-4", "DESC-5")
    def test_pipeline_ends_right_after_its_descriptor(self) -> None:
        pipeline, extension = Session(Role.PIPELINE), Session(Role.EXTENSION)
        extension.receive(pipeline.send_descriptor(pipeline_descriptor()))
        pipeline.send_end()
        extension.receive_end()
        assert states(pipeline, extension) == ("awaiting_descriptor", "awaiting_descriptor")
        pipeline.receive(extension.send_descriptor(extension_descriptor()))
        assert states(pipeline, extension) == ("closing", "closing")
        extension.send_end()
        pipeline.receive_end()
        assert states(pipeline, extension) == ("closed", "closed")

    @pytest.mark.rule("LIFE-4")
    def test_extension_ends_first_then_pipeline(self) -> None:
        pipeline, extension = negotiate()
        extension.send_end()
        pipeline.receive_end()
        assert states(pipeline, extension) == ("closing", "closing")
        pipeline.send_end()
        extension.receive_end()
        assert states(pipeline, extension) == ("closed", "closed")


class TestAfterTheEnd:
    @pytest.mark.rule("LIFE-1")
    def test_no_sample_is_sent_after_our_end(self) -> None:
        pipeline, _ = negotiate()
        pipeline.send_end()
        with pytest.raises(LocalProtocolError) as caught:
            pipeline.send_sample(MediaSample())
        assert caught.value.rule == "LIFE-1"

    @pytest.mark.rule("LIFE-1")
    def test_we_end_only_once(self) -> None:
        pipeline, _ = negotiate()
        pipeline.send_end()
        with pytest.raises(LocalProtocolError) as caught:
            pipeline.send_end()
        assert caught.value.rule == "LIFE-1"

    @pytest.mark.rule("LIFE-1")
    def test_nothing_is_accepted_after_the_peers_end(self) -> None:
        _, extension = negotiate()
        extension.receive_end()
        with pytest.raises(RemoteProtocolError) as caught:
            extension.receive(MediaStreamMessage(sequence_number=2, media_sample=MediaSample()))
        assert (caught.value.rule, caught.value.status) == ("LIFE-1", Status.FAILED_PRECONDITION)

    @pytest.mark.rule("LIFE-1")
    def test_closed_stays_closed(self) -> None:
        pipeline = Session(Role.PIPELINE)
        pipeline.send_end()
        with pytest.raises(LocalProtocolError) as caught:
            pipeline.send_descriptor(pipeline_descriptor())
        assert caught.value.rule == "LIFE-1"
        assert pipeline.closed


class TestFailure:
    @pytest.mark.rule("LIFE-3")
    def test_violation_fails_the_session_and_everything_after_is_refused(self) -> None:
        _, extension = negotiate()
        with pytest.raises(RemoteProtocolError):
            extension.receive(MediaStreamMessage(sequence_number=0, media_sample=MediaSample()))
        assert extension.failed
        assert extension.error is not None and extension.error.rule == "SEQ-4"
        with pytest.raises(RemoteProtocolError) as caught:
            extension.receive(MediaStreamMessage(sequence_number=5, media_sample=MediaSample()))
        assert (caught.value.rule, caught.value.status) == ("LIFE-3", Status.FAILED_PRECONDITION)
        assert "SEQ-4" in str(caught.value)
        with pytest.raises(LocalProtocolError):
            extension.send_sample(MediaSample())

    @pytest.mark.rule("LIFE-3")
    def test_fail_from_outside(self) -> None:
        pipeline, _ = negotiate()
        reason = RemoteProtocolError("AUTH-3", Status.UNAUTHENTICATED, "wrong password")
        pipeline.fail(reason)
        assert pipeline.failed and pipeline.error is reason
        pipeline.fail(RemoteProtocolError("LIFE-3", Status.INTERNAL, "again"))
        assert pipeline.error is reason


# --- no sequence of calls escapes the rules -------------------------------------------

Call = Callable[[Session, int], object]
CALLS: list[tuple[str, Call]] = [
    ("send_descriptor", lambda s, n: s.send_descriptor(
        pipeline_descriptor() if s.role is Role.PIPELINE else extension_descriptor())),
    ("send_sample", lambda s, n: s.send_sample(MediaSample(), ack=n % 4)),
    ("send_end", lambda s, n: s.send_end()),
    ("receive_descriptor", lambda s, n: s.receive(MediaStreamMessage(
        sequence_number=n, ack_sequence_number=n % 3,
        media_stream_descriptor=extension_descriptor() if s.role is Role.PIPELINE
        else pipeline_descriptor()))),
    ("receive_sample", lambda s, n: s.receive(MediaStreamMessage(
        sequence_number=n, ack_sequence_number=n % 4, media_sample=MediaSample()))),
    ("receive_ack", lambda s, n: s.receive(
        MediaStreamMessage(sequence_number=n, ack_sequence_number=n % 4))),
    ("receive_end", lambda s, n: s.receive_end()),
]  # fmt: skip


@pytest.mark.rule("LIFE-3", "DESC-1", "DESC-2", "DESC-6", "LIFE-1")
@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(list(Role)),
    st.lists(
        st.tuples(st.sampled_from(range(len(CALLS))), st.integers(0, 6)),
        max_size=14,
    ),
)
def test_any_sequence_of_calls_ends_in_a_protocol_error_or_a_lifecycle_state(
    role: Role, calls: list[tuple[int, int]]
) -> None:
    session = Session(role)
    for index, number in calls:
        before = session.state
        error: ProtocolError | None = None
        try:
            CALLS[index][1](session, number)
        except ProtocolError as raised:
            error = raised
        assert session.state in STATES
        if error is not None:
            assert error.rule and error.status is not Status.OK
            # A broken rule fails a live session; a finished one stays as it was.
            assert session.failed or before in ("closed", "failed")
