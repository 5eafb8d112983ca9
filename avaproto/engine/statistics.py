"""What happened on one stream, for either role: one record, kept as the stream runs.

The server's closing log line, ``send``'s summary and the benchmarks read the same
figures: samples sent and answered, inferences by kind, latencies (the pipeline's), the
peer's tolerated deviations by rule, the stream's status and its duration.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..messages import Inference, InferenceType
from ..protocol.descriptor import StreamDescriptor
from ..status import Status

if TYPE_CHECKING:
    from .drive import Result

#: Latencies kept for percentiles (8 bytes each in a list of floats: under 1 MB).
MAX_LATENCIES = 100_000

_KINDS = ("classification", "motion", "entity", "text", "event", "other")


def kind_of(inference: Inference) -> str:
    """The inference's kind in lower case; AUTO is named by its value's kind, and every
    type the contract does not name is "unknown" (a count per number would let a peer
    grow the record, and the summary's line, by one entry per inference)."""
    kind = inference.type
    if kind is InferenceType.AUTO:
        return next((name for name in _KINDS if getattr(inference, name) is not None), "auto")
    return kind.name.lower() if kind.name else "unknown"


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in [0, 1]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass
class StreamStatistics:
    """One stream's figures; ``lines()`` is what a person reads at its end."""

    peer: str = ""
    #: The peer's descriptor, once received.
    descriptor: StreamDescriptor | None = None
    #: Samples this side sent (the pipeline's frames).
    sent: int = 0
    #: Samples acknowledged: answers received (pipeline) or answers sent (extension).
    answered: int = 0
    inferences: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    #: Seconds from sending a sample to its acknowledgement (the pipeline's view): every
    #: one up to ``MAX_LATENCIES``, then a uniform sample of that many (``latency_count``
    #: counts them all), so a stream that runs for days keeps a bounded record.
    latencies: list[float] = field(default_factory=list)
    latency_count: int = 0
    #: Chooses what the sample keeps; seeded, so a run's figures repeat.
    _chance: random.Random = field(
        default_factory=lambda: random.Random(0), repr=False, compare=False
    )
    #: The peer's deviations accepted, by rule (see the rules' ``field`` notes).
    tolerated: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    status: Status = Status.OK
    message: str = ""

    @property
    def frames(self) -> int:
        """Samples answered (the extension's count of frames served)."""
        return self.answered

    @property
    def seconds(self) -> float:
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    @seconds.setter
    def seconds(self, value: float) -> None:
        self.ended = self.started + value

    @property
    def fps(self) -> float:
        seconds = self.seconds
        return self.answered / seconds if seconds > 0 else math.nan

    def count_answer(self, inferences: Iterable[Inference]) -> None:
        """One sample answered with ``inferences`` (either side)."""
        self.answered += 1
        for inference in inferences:
            self.inferences += 1
            self.by_type[kind_of(inference)] += 1

    def add(self, result: Result) -> None:
        """An answer as the pipeline receives it (counted when it acknowledges a sample)."""
        if result.acknowledged is not None:
            self.count_answer(result.inferences)
        else:
            for inference in result.inferences:
                self.inferences += 1
                self.by_type[kind_of(inference)] += 1
        if result.latency is not None:
            self.add_latency(result.latency)

    def add_latency(self, seconds: float) -> None:
        """Keep ``seconds`` in a bounded, uniform sample of all latencies (reservoir)."""
        self.latency_count += 1
        if len(self.latencies) < MAX_LATENCIES:
            self.latencies.append(seconds)
            return
        # Algorithm R: each latency so far is in the sample with the same probability.
        slot = self._chance.randrange(self.latency_count)
        if slot < MAX_LATENCIES:
            self.latencies[slot] = seconds

    def lines(self) -> list[str]:
        if self.latencies:
            p50 = percentile(self.latencies, 0.5) * 1000
            p99 = percentile(self.latencies, 0.99) * 1000
            latency = f"latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        else:
            latency = "latency: none measured (no frame was acknowledged)"
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.by_type.items())) or "none"
        lines = [
            f"frames: {self.sent} sent, {self.answered} answered in {self.seconds:.2f} s "
            f"({self.fps:.1f} fps)",
            latency,
            f"inferences: {kinds}",
        ]
        if self.tolerated:
            lines.append(f"tolerated deviations of the extension: {self.tolerated_text()}")
        return lines

    def tolerated_text(self) -> str:
        return ", ".join(f"{rule} x{n}" for rule, n in sorted(self.tolerated.items()))
