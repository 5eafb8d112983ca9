"""The session lifecycle: one table that is the code, the diagram and the documentation.

Both parties run this same machine (the model is ``avaproto.protocol.session.Session``);
nothing in it knows which side it is on. A row is a ``transitions`` transition:

* ``trigger``: what happens, named like the ``Session`` method that fires it:
  ``send_*`` for a message we are about to send, ``receive_*`` for one we received,
  ``*_end`` when a direction of the stream closes.
* ``conditions`` / ``unless``: routing guards. Pure predicates over four facts (has each
  party sent its descriptor, has each closed its direction) that pick the row.
* ``before``: the rules. Each callback checks the message against spec/ and raises a
  ``ProtocolError`` naming the rule it breaks; the state does not change when one
  raises, and the session then moves to ``failed``.

A trigger with no matching row is refused by ``Session._refuse`` with the rule that
explains why (a sample before the descriptor breaks DESC-1, a second descriptor DESC-2,
anything after the end LIFE-1, anything after a failure LIFE-3).

``avaproto diagram`` and spec/state-machine.md are drawn from this table.

Sessions do not dispatch through a ``transitions.Machine``: its general machinery (event
objects, callback resolution, logging) costs more than the protocol itself on small
messages. ``ROWS`` indexes the same table by (trigger, state), with the rows in table
order, and ``Dispatcher`` applies transitions' own semantics to it: the first row whose
conditions all hold and whose ``unless`` guards all fail runs its ``before`` callbacks,
then moves to ``dest`` (None: stays). A test checks that this agrees with a
``transitions.Machine`` built from the table for every state, trigger and guard value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from transitions import Machine

AWAITING_DESCRIPTOR: Final = "awaiting_descriptor"
NEGOTIATED: Final = "negotiated"
STREAMING: Final = "streaming"
CLOSING: Final = "closing"
CLOSED: Final = "closed"
FAILED: Final = "failed"

#: The lifecycle, in order, then the failure state.
STATES: Final = [AWAITING_DESCRIPTOR, NEGOTIATED, STREAMING, CLOSING, CLOSED, FAILED]

_OPEN = [NEGOTIATED, STREAMING]

TRANSITIONS: Final[list[dict[str, Any]]] = [
    # --- descriptors: each party's first message (DESC-1); both before any sample ---
    {"trigger": "send_descriptor", "source": AWAITING_DESCRIPTOR, "dest": NEGOTIATED,
     "conditions": "peer_described", "unless": ["own_described", "peer_closed"],
     "before": "check_own_descriptor"},
    {"trigger": "send_descriptor", "source": AWAITING_DESCRIPTOR, "dest": CLOSING,
     "conditions": ["peer_described", "peer_closed"], "unless": "own_described",
     "before": "check_own_descriptor"},
    {"trigger": "send_descriptor", "source": AWAITING_DESCRIPTOR, "dest": None,
     "unless": ["own_described", "peer_described", "own_closed"],
     "before": "check_own_descriptor"},
    {"trigger": "receive_descriptor", "source": AWAITING_DESCRIPTOR, "dest": NEGOTIATED,
     "conditions": "own_described", "unless": ["peer_described", "own_closed"],
     "before": ["check_peer_sequence", "check_peer_descriptor"]},
    {"trigger": "receive_descriptor", "source": AWAITING_DESCRIPTOR, "dest": CLOSING,
     "conditions": ["own_described", "own_closed"], "unless": "peer_described",
     "before": ["check_peer_sequence", "check_peer_descriptor"]},
    {"trigger": "receive_descriptor", "source": AWAITING_DESCRIPTOR, "dest": None,
     "unless": ["own_described", "peer_described", "peer_closed"],
     "before": ["check_peer_speaks_first", "check_peer_sequence", "check_peer_descriptor"]},
    # --- samples, each way, until that way closes ---
    {"trigger": "send_sample", "source": _OPEN, "dest": STREAMING,
     "before": "check_own_sample"},
    {"trigger": "send_sample", "source": CLOSING, "dest": None,
     "unless": "own_closed",
     "before": "check_own_sample"},
    {"trigger": "receive_sample", "source": _OPEN, "dest": STREAMING,
     "before": ["check_peer_answerable", "check_peer_sequence", "check_peer_ack",
                "check_peer_sample"]},
    {"trigger": "receive_sample", "source": CLOSING, "dest": None,
     "unless": "peer_closed",
     "before": ["check_peer_answerable", "check_peer_sequence", "check_peer_ack",
                "check_peer_sample"]},
    # --- the end of each direction; closed once both ended with every ack settled ---
    {"trigger": "send_end", "source": AWAITING_DESCRIPTOR, "dest": CLOSED,
     "unless": ["own_described", "peer_described"],
     "before": "check_own_end"},
    {"trigger": "send_end", "source": AWAITING_DESCRIPTOR, "dest": None,
     "conditions": "own_described", "unless": "own_closed",
     "before": "check_own_end"},
    {"trigger": "send_end", "source": _OPEN, "dest": CLOSING,
     "before": "check_own_end"},
    {"trigger": "send_end", "source": CLOSING, "dest": CLOSED,
     "conditions": "peer_closed",
     "before": "check_own_end"},
    {"trigger": "receive_end", "source": AWAITING_DESCRIPTOR, "dest": CLOSED,
     "unless": ["own_described", "peer_described"],
     "before": "check_peer_end"},
    {"trigger": "receive_end", "source": AWAITING_DESCRIPTOR, "dest": None,
     "conditions": "peer_described", "unless": "peer_closed",
     "before": "check_peer_end"},
    {"trigger": "receive_end", "source": _OPEN, "dest": CLOSING,
     "before": "check_peer_end"},
    {"trigger": "receive_end", "source": CLOSING, "dest": CLOSED,
     "conditions": "own_closed",
     "before": "check_peer_end"},
    # --- any broken rule, either side's ---
    {"trigger": "violation", "source": [AWAITING_DESCRIPTOR, *_OPEN, CLOSING], "dest": FAILED},
]  # fmt: skip

#: The triggers, in the order the table first names them.
TRIGGERS: Final = list(dict.fromkeys(row["trigger"] for row in TRANSITIONS))


@dataclass(frozen=True, slots=True)
class Row:
    """One row of ``TRANSITIONS`` for one source state, its names as tuples."""

    dest: str | None
    conditions: tuple[str, ...]
    unless: tuple[str, ...]
    before: tuple[str, ...]


def _names(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _index(table: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[Row, ...]]:
    rows: dict[tuple[str, str], list[Row]] = {}
    for entry in table:
        row = Row(
            entry["dest"],
            _names(entry.get("conditions")),
            _names(entry.get("unless")),
            _names(entry.get("before")),
        )
        for source in _names(entry["source"]):
            rows.setdefault((entry["trigger"], source), []).append(row)
    return {key: tuple(found) for key, found in rows.items()}


#: ``TRANSITIONS`` by (trigger, source state): the candidate rows, in table order.
ROWS: Final = _index(TRANSITIONS)


class _Machine(Machine):
    """A machine that binds nothing onto its model.

    transitions normally adds a method per trigger and state to the model; the session's
    namespace is its public API instead, and it fires triggers through ``machine.events``.
    """

    def _checked_assignment(self, model: object, name: str, func: Any) -> None:
        return None


def build_machine(model: object) -> Machine:
    """A machine for one stream's model; invalid triggers return False, never raise."""
    return _Machine(
        model=model,
        states=STATES,
        transitions=TRANSITIONS,
        initial=AWAITING_DESCRIPTOR,
        auto_transitions=False,
        ignore_invalid_triggers=True,
        model_attribute="state",
    )


class _Resolved:
    """A row with its names resolved to functions of the model's class, once."""

    __slots__ = ("before", "conditions", "dest", "unless")

    def __init__(self, row: Row, model: type) -> None:
        self.dest = row.dest
        self.conditions = tuple(getattr(model, name) for name in row.conditions)
        self.unless = tuple(getattr(model, name) for name in row.unless)
        self.before = tuple(getattr(model, name) for name in row.before)


class Dispatcher:
    """Fires ``TRANSITIONS`` on instances of one model class, through ``ROWS``."""

    def __init__(self, model: type) -> None:
        self._rows = {
            key: tuple(_Resolved(row, model) for row in rows) for key, rows in ROWS.items()
        }

    def fire(self, model: Any, trigger: str, *args: Any) -> bool:
        """Take the first row of ``trigger`` from ``model.state`` whose guards hold.

        Returns False when no row matches (the trigger is invalid here); a ``before``
        callback that raises leaves the state unchanged, as in transitions.
        """
        for row in self._rows.get((trigger, model.state), ()):
            if _holds(row, model):
                for callback in row.before:
                    callback(model, *args)
                if row.dest is not None:
                    model.state = row.dest
                return True
        return False


def _holds(row: _Resolved, model: Any) -> bool:
    """Every condition of ``row`` holds and none of its ``unless`` (loops, not generators:
    this runs twice per sample)."""
    for guard in row.conditions:
        if not guard(model):
            return False
    for guard in row.unless:  # noqa: SIM110 (a generator costs more than the loop)
        if guard(model):
            return False
    return True
