"""What the probes found, one line per rule, and the check's verdict.

A probe reports findings: a rule, an outcome, what it saw. A rule checked by several
probes (every healthy stream checks ACK-1) gets the most severe of its findings: one
FAIL among passes is a FAIL. The outcomes, from most to least severe:

* FAIL: the extension breaks a MUST of the rule;
* WARN: it deviates where the spec tolerates it: a ``field`` note of the rule (what
  real peers do, quoted in the report), or a SHOULD or MAY it does not follow;
* PASS: every probe of the rule saw the extension keep it;
* SKIP: the rule can be probed, but not in this run (no credentials given, ``--no-shm``,
  no inference returned to check), or no probe got that far.

Rules no probe can reach are not listed one by one: the summary counts them, and the
JSON form lists each with the reason.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .rules import BY_ID, CATALOGUE, FIELD_NOTES, ORDER


class Outcome(enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    WARN = "WARN"
    SKIP = "SKIP"


SEVERITY = {Outcome.SKIP: 0, Outcome.PASS: 1, Outcome.WARN: 2, Outcome.FAIL: 3}


@dataclass(frozen=True)
class Finding:
    """One probe's word on one rule."""

    rule: str
    outcome: Outcome
    detail: str = ""
    #: A deviation the rule's ``field`` note tolerates: the report quotes the note.
    field: bool = False


def level(rule: str) -> str:
    return BY_ID[rule].level if rule in BY_ID else "MUST"


def deviation(rule: str, detail: str) -> Finding:
    """The extension does not do what ``rule`` says: FAIL for a MUST, else WARN."""
    return Finding(rule, Outcome.FAIL if level(rule) == "MUST" else Outcome.WARN, detail)


@dataclass(frozen=True)
class RuleResult:
    rule: str
    level: str
    outcome: Outcome
    detail: str
    field: str = ""

    def as_dict(self) -> dict[str, str]:
        entry = {
            "rule": self.rule,
            "level": self.level,
            "outcome": self.outcome.value,
            "detail": self.detail,
        }
        if self.field:
            entry["field"] = self.field
        return entry


@dataclass
class CheckReport:
    """The check of one target: a result per probed rule, and the rules out of reach."""

    target: str
    results: list[RuleResult]
    #: (rule, level, why) of the selected rules no probe can reach.
    out_of_reach: list[tuple[str, str, str]] = field(default_factory=list)
    #: What to read first: the extension failed every stream as a pipeline sends it.
    notice: str = ""

    def count(self, outcome: Outcome) -> int:
        return sum(result.outcome is outcome for result in self.results)

    @property
    def failed(self) -> bool:
        return self.count(Outcome.FAIL) > 0

    def summary(self) -> dict[str, int]:
        counts = {outcome.value: self.count(outcome) for outcome in Outcome}
        return {**counts, "out_of_reach": len(self.out_of_reach)}

    def summary_line(self) -> str:
        counts = ", ".join(f"{self.count(outcome)} {outcome.value}" for outcome in Outcome)
        checked = len(self.results)
        return (
            f"{checked} rule{'' if checked == 1 else 's'} checked: {counts}; "
            f"{len(self.out_of_reach)} rules "
            "cannot be checked from outside an extension (--json lists them and why)"
        )

    def lines(self, *, verbose: bool = False) -> list[str]:
        """One line per rule, then the summary; ``verbose`` shows what each PASS saw too."""
        width = max((len(result.rule) for result in self.results), default=0)
        text = [f"NOTE: {self.notice}"] if self.notice else []
        for result in self.results:
            line = f"{result.rule:<{width}}  {result.level:<6}  {result.outcome.value}"
            shown = result.detail if result.outcome is not Outcome.PASS or verbose else ""
            if result.field:
                shown += f"; in the field: {result.field}"
            text.append(f"{line} ({shown})" if shown else line)
        text.append(self.summary_line())
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            **({"notice": self.notice} if self.notice else {}),
            "rules": [result.as_dict() for result in self.results],
            "summary": self.summary(),
            "out_of_reach": [
                {"rule": rule, "level": level, "why": why} for rule, level, why in self.out_of_reach
            ],
        }


def _join(details: Iterable[str], limit: int = 3) -> str:
    unique = list(dict.fromkeys(detail for detail in details if detail))
    shown = "; ".join(unique[:limit])
    return shown + (f"; and {len(unique) - limit} more" if len(unique) > limit else "")


def combine(target: str, findings: Iterable[Finding], selected: Iterable[str]) -> CheckReport:
    """The report: each selected rule's most severe finding, in the catalogue's order.

    A probed rule with no finding at all is a SKIP: the probes that check it ended early.
    """
    chosen = set(selected)
    by_rule: dict[str, list[Finding]] = {}
    for finding in findings:
        if finding.rule in chosen:
            by_rule.setdefault(finding.rule, []).append(finding)
    results = []
    for rule in sorted(chosen, key=lambda r: ORDER.get(r, len(ORDER))):
        entry = BY_ID.get(rule)
        if entry is not None and entry.out_of_reach is not None and rule not in by_rule:
            continue
        found = by_rule.get(rule)
        if not found:
            results.append(
                RuleResult(
                    rule,
                    level(rule),
                    Outcome.SKIP,
                    "not reached: the probes that check it ended early",
                )
            )
            continue
        worst = max(SEVERITY[finding.outcome] for finding in found)
        top = [finding for finding in found if SEVERITY[finding.outcome] == worst]
        note = FIELD_NOTES.get(rule, "") if any(finding.field for finding in top) else ""
        results.append(
            RuleResult(rule, level(rule), top[0].outcome, _join(f.detail for f in top), note)
        )
    out_of_reach = [
        (entry.id, entry.level, entry.out_of_reach)
        for entry in CATALOGUE
        if entry.id in chosen and entry.out_of_reach is not None and entry.id not in by_rule
    ]
    return CheckReport(target, results, out_of_reach)
