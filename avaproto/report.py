"""The summary of a run of ``send`` or ``demo``: what a person reads at the end."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from .engine.drive import Result
from .messages import Inference, InferenceType


def _type_name(inference: Inference) -> str:
    kind = inference.type
    if kind is InferenceType.AUTO:
        return next(
            (
                name
                for name in ("classification", "motion", "entity", "text", "event", "other")
                if getattr(inference, name) is not None
            ),
            "auto",
        )
    return (kind.name or str(int(kind))).lower()


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in [0, 1]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Report:
    sent: int = 0
    answered: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    by_type: Counter[str] = field(default_factory=Counter)
    #: The extension's deviations accepted, by rule (see the rules' ``field`` notes).
    tolerated: Counter[str] = field(default_factory=Counter)

    def add(self, result: Result) -> None:
        if result.acknowledged is not None:
            self.answered += 1
        if result.latency is not None:
            self.latencies.append(result.latency)
        self.by_type.update(_type_name(i) for i in result.inferences)

    @property
    def fps(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else math.nan

    def lines(self) -> list[str]:
        p50 = percentile(self.latencies, 0.5) * 1000
        p99 = percentile(self.latencies, 0.99) * 1000
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.by_type.items())) or "none"
        lines = [
            f"frames: {self.sent} sent, {self.answered} answered in {self.seconds:.2f} s "
            f"({self.fps:.1f} fps)",
            f"latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms",
            f"inferences: {kinds}",
        ]
        if self.tolerated:
            noted = ", ".join(f"{rule} x{n}" for rule, n in sorted(self.tolerated.items()))
            lines.append(f"tolerated deviations of the extension: {noted}")
        return lines
