"""``avaproto check TARGET``: drive any extension through the rules of spec/, say which it keeps.

Integrators point it at an extension (avaproto's or anyone's: DL Streamer, a YOLO
container, a hand-written grpcio server) and get one line per rule: PASS, FAIL with
what the extension did, WARN where it deviates as the field does (quoting the rule's
field note) or serves a violation the text leaves it free to serve, SKIP where this run
cannot probe it (or its probe met a failure the extension has on every stream, which
the report names first). The probes are in ``probes``, the
rules' table in ``rules``, the verdict in ``report``.

    report = await avaproto.check.run_check("localhost:5001", CheckOptions(shm=False))
    print("\\n".join(report.lines()))
"""

from __future__ import annotations

from .probes import DEFAULT_FORMATS, DEFAULT_TIMEOUT, CheckOptions
from .report import CheckReport, Finding, Outcome, RuleResult
from .run import CheckAborted, run_check, select

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_TIMEOUT",
    "CheckAborted",
    "CheckOptions",
    "CheckReport",
    "Finding",
    "Outcome",
    "RuleResult",
    "run_check",
    "select",
]
