"""Running the check: pick the rules, make sure the target answers at all, run each probe.

Probes run one after another: an extension that serves a few streams at a time (the
samples' thread pool of three) is not starved by the check itself, and a probe that
breaks the extension shows as the first of a run of failures, not as noise. A target
that cannot be reached, does not serve the method, or refuses the credentials it was
given (or asks for some) stops the check at once with one error: no probe could say
anything useful about it.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable, Sequence

import anyio

from ..errors import AvaprotoError, ProtocolError, StreamFailed
from ..messages import METHOD_PATH
from ..status import Status
from .probes import (
    CONFIGURATION,
    CheckOptions,
    Context,
    Probe,
    probes,
    skip_reason,
    video_format,
)
from .report import CheckReport, Finding, Outcome, combine, deviation
from .rules import CATALOGUE, PROBED
from .wire import Target, Unreachable, call, connection

log = logging.getLogger("avaproto.check")


class CheckAborted(AvaprotoError):
    """The target cannot be checked at all (unreachable, not an extension, wrong credentials)."""


def select(patterns: Sequence[str]) -> list[str]:
    """The rule ids matching any of ``patterns`` (globs like ``SHM-*``), all when none.

    A pattern that matches no rule raises ValueError, naming it.
    """
    ids = [entry.id for entry in CATALOGUE]
    if not patterns:
        return ids
    chosen: set[str] = set()
    for pattern in patterns:
        matched = fnmatch.filter(ids, pattern.strip().upper())
        if not matched:
            raise ValueError(f"{pattern!r} matches no rule id (like DESC-1, SHM-*, AUTH-?)")
        chosen.update(matched)
    return [rule for rule in ids if rule in chosen]


async def _preflight(ctx: Context) -> list[Finding]:
    """Open a stream and end it at once: reachable, the method served, the credentials good."""
    with anyio.fail_after(ctx.options.timeout):
        async with connection(ctx.target) as channel, call(channel, ctx.target) as opened:
            ending = await opened.finish()
    where = ctx.target.address
    if ending.status is Status.UNIMPLEMENTED:
        raise CheckAborted(f"{where} does not serve {METHOD_PATH} ({ending.describe()})")
    if ending.status is Status.UNAUTHENTICATED:
        if ctx.options.credentials is None:
            raise CheckAborted(
                f"{where} requires credentials ({ending.describe()}): give its --username "
                "and --password"
            )
        raise CheckAborted(f"{where} refused the credentials given ({ending.describe()})")
    if ending.status is Status.UNAVAILABLE:
        raise CheckAborted(f"{where}: {ending.describe()}")
    what = "a stream ended before any message"
    if ending.ok:
        return [Finding("LIFE-4", Outcome.PASS, f"{what} closed cleanly")]
    if ending.status is None:  # its answers were malformed: no field note covers that
        return [deviation("LIFE-4", f"{what}: {ending.describe()}; expected a clean end (OK)")]
    return [
        Finding(
            "LIFE-4",
            Outcome.WARN,
            f"{what}: {ending.describe()}; a clean end (OK) leaves a closed, empty stream",
            True,
        )
    ]


async def run_probe(ctx: Context, probe: Probe) -> list[Finding]:
    reason = skip_reason(probe, ctx.options)
    if reason is not None:
        return [Finding(rule, Outcome.SKIP, reason) for rule in probe.rules]
    log.info("probe: %s (%s)", probe.name, ", ".join(probe.rules))
    timeout = ctx.options.timeout
    try:
        with anyio.fail_after(timeout):
            found = await probe.run(ctx)
    except TimeoutError:
        return [
            deviation(
                rule,
                f"{probe.name}: no answer within {timeout:g} s (--timeout: an extension "
                "slower than that needs more)",
            )
            for rule in probe.rules
        ]
    except Unreachable as error:
        return [
            deviation(rule, f"{probe.name}: {error} (did an earlier probe stop the extension?)")
            for rule in probe.rules
        ]
    except (StreamFailed, ProtocolError) as error:  # a probe that did not say which rule
        return [deviation(rule, f"{probe.name}: {error}") for rule in probe.rules]
    except Exception as error:  # what the extension did, no probe foresaw: the rest go on
        log.debug("probe %s failed", probe.name, exc_info=True)
        detail = (
            f"{probe.name}: the probe could not judge what the extension did, and failed "
            f"with {type(error).__name__}: {error} (-v shows where; please report it)"
        )
        return [deviation(rule, detail) for rule in probe.rules]
    for finding in found:
        log.debug("%s: %s %s %s", probe.name, finding.rule, finding.outcome.value, finding.detail)
    return found


async def run_check(
    target: str, options: CheckOptions | None = None, *, rules: Iterable[str] = ()
) -> CheckReport:
    """Check the extension at ``target`` (``host:port``) against the rules of spec/.

    ``rules`` selects rule ids by glob (``SHM-*``); all by default. Raises
    ``CheckAborted`` when the target cannot be checked at all.
    """
    options = options or CheckOptions()
    selected = select(list(rules))
    wanted = set(selected) & set(PROBED)
    metadata = options.credentials.metadata() if options.credentials else ()
    configured = CONFIGURATION.set(options.configuration)  # the probes' tasks inherit it
    try:
        return await _run(target, options, selected, wanted, metadata)
    finally:
        CONFIGURATION.reset(configured)


async def _run(
    target: str,
    options: CheckOptions,
    selected: list[str],
    wanted: set[str],
    metadata: Sequence[tuple[str, str]],
) -> CheckReport:
    ctx = Context(
        Target(target, options.tls, tuple(metadata)),
        options,
        [video_format(name, options.size) for name in options.formats],
    )
    try:
        findings = await _preflight(ctx)
    except TimeoutError:
        raise CheckAborted(
            f"{target} did not answer an empty stream within {options.timeout:g} s"
        ) from None
    except Unreachable as error:
        raise CheckAborted(str(error)) from None
    healthy = 0
    failing: str | None = None
    for probe in probes(ctx):
        if not wanted.intersection(probe.rules):
            continue
        found = await run_probe(ctx, probe)
        if probe.healthy:
            healthy += skip_reason(probe, ctx.options) is None  # those that ran
        else:
            if failing is None and healthy:
                failing = _failing_everywhere(ctx, healthy)
            if failing:
                found = [_not_judged(finding, failing) for finding in found]
        findings += found
    report = combine(target, findings, selected)
    if failing:
        not_judged = sum(result.detail.startswith(_NOT_JUDGED) for result in report.results)
        report.notice = (
            f"every stream as a pipeline sends it failed: {ctx.healthy_failures[0]}; the "
            f"{not_judged} rules whose probes met the same failure are SKIP, not judged "
            "(fix that first, then check again)"
        )
    return report


_NUMBERS = re.compile(r"\d+")
_NOT_JUDGED = "not judged: "


def _shape(text: str) -> str:
    """A failure's text without its numbers: the same failure on another sample."""
    return _NUMBERS.sub("#", text)


def _failing_everywhere(ctx: Context, healthy: int) -> str:
    """The shape of the one failure every healthy stream met (``ctx.healthy_failures``),
    or "" if any was served or they failed differently. Only a failure with words is
    told apart: a bare status could be any probe's refusal."""
    failures = ctx.healthy_failures
    if len(failures) != healthy:
        return ""
    shapes = {_shape(failure) for failure in failures}
    shape = shapes.pop()
    return "" if shapes or ":" not in shape else shape


def _not_judged(finding: Finding, failing: str) -> Finding:
    """A probe's FAIL or WARN that only saw the extension's failure on every stream
    (``failing``): not a word on its rule, whose probe never got an answer to judge."""
    if finding.outcome not in (Outcome.FAIL, Outcome.WARN) or failing not in _shape(finding.detail):
        return finding
    return Finding(
        finding.rule, Outcome.SKIP, f"{_NOT_JUDGED}its probe met the failure every stream met"
    )
