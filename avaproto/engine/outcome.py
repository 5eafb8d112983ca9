"""Picking the error a failed stream reports from what its task group raised.

A task group raises every child's exception together. A stream ends with one status,
so the engine reports the first protocol error or the peer's failure (the cause), not the
cancellations it triggered in the other tasks.
"""

from __future__ import annotations

from ..errors import ProtocolError, StreamFailed


def first_protocol_error(
    group: BaseExceptionGroup[BaseException],
) -> ProtocolError | StreamFailed | None:
    """The first protocol violation, or the peer's failure status, found in ``group``."""
    for error in group.exceptions:
        if isinstance(error, ProtocolError | StreamFailed):
            return error
        if isinstance(error, BaseExceptionGroup):
            found = first_protocol_error(error)
            if found is not None:
                return found
    return None
