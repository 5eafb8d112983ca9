"""Draw the session lifecycle from the very machine the sessions run.

The drawing walks the events of a live ``transitions`` machine built from
``protocol.lifecycle.TRANSITIONS`` (not a copy of it), so the diagram cannot disagree
with the code. Arrows are labelled ``trigger [guards]``; ``!guard`` is an ``unless``.
Self-loops of internal transitions are drawn too: they are where a message is accepted
without changing state.
"""

from __future__ import annotations

from dataclasses import dataclass

from .protocol.lifecycle import STATES, build_machine


@dataclass(frozen=True)
class Arrow:
    source: str
    dest: str
    trigger: str
    guards: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.trigger} [{', '.join(self.guards)}]" if self.guards else self.trigger


class _Model:
    """A bare model: the diagram needs the machine's structure, not a session's rules."""

    state: str


def arrows() -> list[Arrow]:
    machine = build_machine(_Model())
    found: list[Arrow] = []
    for trigger, event in machine.events.items():
        for source, transitions in event.transitions.items():
            for transition in transitions:
                guards = tuple(
                    (name if condition.target else f"!{name}")
                    for condition in transition.conditions
                    for name in [
                        condition.func
                        if isinstance(condition.func, str)
                        else getattr(condition.func, "__name__", repr(condition.func))
                    ]
                )
                found.append(Arrow(source, transition.dest or source, trigger, guards))
    return found


def mermaid() -> str:
    """A Mermaid ``stateDiagram-v2`` (GitHub renders it)."""
    lines = ["stateDiagram-v2", f"    [*] --> {STATES[0]}"]
    lines += [f"    {a.source} --> {a.dest}: {a.label}" for a in arrows()]
    lines.append("    closed --> [*]")
    return "\n".join(lines) + "\n"


def dot() -> str:
    """A Graphviz ``digraph``."""
    lines = ["digraph session {", "    rankdir=LR;", "    node [shape=box, style=rounded];"]
    lines += [f"    {state};" for state in STATES]
    lines += [f'    {a.source} -> {a.dest} [label="{a.label}"];' for a in arrows()]
    lines.append("}")
    return "\n".join(lines) + "\n"
