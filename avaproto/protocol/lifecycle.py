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
"""

from __future__ import annotations

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
     "conditions": "peer_described", "unless": "peer_closed",
     "before": "check_own_descriptor"},
    {"trigger": "send_descriptor", "source": AWAITING_DESCRIPTOR, "dest": CLOSING,
     "conditions": ["peer_described", "peer_closed"],
     "before": "check_own_descriptor"},
    {"trigger": "send_descriptor", "source": AWAITING_DESCRIPTOR, "dest": None,
     "unless": "peer_described",
     "before": "check_own_descriptor"},
    {"trigger": "receive_descriptor", "source": AWAITING_DESCRIPTOR, "dest": NEGOTIATED,
     "conditions": "own_described", "unless": "own_closed",
     "before": ["check_peer_sequence", "check_peer_descriptor"]},
    {"trigger": "receive_descriptor", "source": AWAITING_DESCRIPTOR, "dest": CLOSING,
     "conditions": ["own_described", "own_closed"],
     "before": ["check_peer_sequence", "check_peer_descriptor"]},
    {"trigger": "receive_descriptor", "source": AWAITING_DESCRIPTOR, "dest": None,
     "unless": "own_described",
     "before": ["check_peer_sequence", "check_peer_descriptor"]},
    # --- samples, each way, until that way closes ---
    {"trigger": "send_sample", "source": _OPEN, "dest": STREAMING,
     "before": "check_own_sample"},
    {"trigger": "send_sample", "source": CLOSING, "dest": None,
     "unless": "own_closed",
     "before": "check_own_sample"},
    {"trigger": "receive_sample", "source": _OPEN, "dest": STREAMING,
     "before": ["check_peer_sequence", "check_peer_ack", "check_peer_sample"]},
    {"trigger": "receive_sample", "source": CLOSING, "dest": None,
     "unless": "peer_closed",
     "before": ["check_peer_sequence", "check_peer_ack", "check_peer_sample"]},
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
