"""What a stream reports: the one error it ends with, and the deviations it tolerated.

A task group raises every child's exception together. A stream ends with one status,
so the engine reports the first protocol error or the peer's failure (the cause), not the
cancellations it triggered in the other tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from ..errors import ProtocolError, StreamFailed
from ..protocol.events import Tolerated

log = logging.getLogger("avaproto.stream")


def log_tolerated(events: Iterable[object], peer: str) -> None:
    """One warning per rule and stream for a tolerated deviation; the session counts all.

    The line names the rule and the peer, so an operator can look the rule's ``field``
    note up in spec/ and tell which pipeline or extension to fix.
    """
    for event in events:
        if isinstance(event, Tolerated) and event.first:
            log.warning(
                "%s deviates from [%s], accepted (warned once per stream): %s",
                peer,
                event.rule,
                event.detail,
            )


def first_protocol_error(
    group: BaseExceptionGroup[BaseException],
    kinds: tuple[type[BaseException], ...] = (ProtocolError, StreamFailed),
) -> BaseException | None:
    """The first error of ``kinds`` in ``group`` (nested groups searched), or None.

    By default: the first protocol violation, or the peer's failure status.
    """
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):  # an ExceptionGroup is an Exception too
            found = first_protocol_error(error, kinds)
            if found is not None:
                return found
        elif isinstance(error, kinds):
            return error
    return None


def the_error(error: BaseException, also: tuple[type[BaseException], ...] = ()) -> BaseException:
    """The one error a failure comes to: out of a task group's exception group, the first
    protocol error (or the peer's failure); failing that, the first error of the kinds in
    ``also`` (``(Exception,)``: whatever a person can act on, such as a refused
    connection). Anything else, the group included, is ``error`` itself."""
    if not isinstance(error, BaseExceptionGroup):
        return error
    found = first_protocol_error(error)
    if found is None and also:
        found = first_protocol_error(error, also)
    return error if found is None else found


@contextmanager
def protocol_errors(also: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Around a task group: its failure surfaces as the one error the stream ends with
    (``the_error``); anything else is raised unchanged."""
    try:
        yield
    except BaseExceptionGroup as group:
        error = the_error(group, also)
        if error is group:
            raise
        raise error from None
