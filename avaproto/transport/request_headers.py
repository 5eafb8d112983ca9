"""The request headers avaproto's server reads: credentials, grpc-timeout, grpc-encoding.

Read one way for every service it serves (the extension's and the health service's).
The connection guard moves ``grpc-timeout`` and ``grpc-encoding`` aside before grpclib
sees them (``guard.DEADLINE_HEADER``, ``guard.ENCODING_HEADER``): grpclib would act on
them in its own way (a traceback for a deadline already past, no compression at all).
A header that breaks its rule ends the call with one precise status naming the rule.
"""

from __future__ import annotations

import re
from typing import Any

import grpclib.const
import grpclib.metadata
import grpclib.server
from grpclib.exceptions import GRPCError

from ..errors import ProtocolError, bounded
from .compression import check_encoding
from .guard import DEADLINE_HEADER, ENCODING_HEADER

#: gRPC's TimeoutValue is at most 8 digits: longer ones overflow the clock's arithmetic.
_TIMEOUT = re.compile(r"[0-9]{1,8}[HMSmun]")


def header_values(stream: grpclib.server.Stream[Any, Any], name: str) -> list[str]:
    """The values the request's headers give ``name``, in order (binary ones as Latin-1)."""
    values = stream.metadata.getall(name, []) if stream.metadata else []
    return [v if isinstance(v, str) else v.decode("latin-1") for v in values]


def request_encoding(stream: grpclib.server.Stream[Any, Any]) -> str | None:
    """The compression the request's messages may use (WIRE-3): None for identity.

    One avaproto does not read ends the call with UNIMPLEMENTED naming those it does;
    two different ones with INVALID_ARGUMENT, as which one the messages use cannot be
    known.
    """
    values = header_values(stream, ENCODING_HEADER)
    if len(set(values)) > 1:
        raise GRPCError(
            grpclib.const.Status.INVALID_ARGUMENT,
            bounded(f"[WIRE-3] the request names two encodings: grpc-encoding {values!r}"),
        )
    try:
        return check_encoding(values[-1] if values else None)
    except ProtocolError as error:
        raise GRPCError(grpclib.const.Status(int(error.status)), str(error)) from None


def request_deadline(stream: grpclib.server.Stream[Any, Any]) -> tuple[float | None, str]:
    """The call's deadline from now, in seconds (None: none), and the header it came in.

    A malformed one ends the call (SRV-15); of several, the shortest holds.
    """
    texts = header_values(stream, DEADLINE_HEADER)
    if not texts:
        return None, ""
    if not all(_TIMEOUT.fullmatch(text) for text in texts):
        raise GRPCError(
            grpclib.const.Status.INVALID_ARGUMENT,
            bounded(
                f"[SRV-15] grpc-timeout {', '.join(texts)!r} is not a gRPC timeout "
                "(1 to 8 digits and one of H, M, S, m, u, n)"
            ),
        )
    timeouts = [grpclib.metadata.decode_timeout(text) for text in texts]
    shortest = min(timeouts)
    return shortest, texts[timeouts.index(shortest)]


__all__ = ["header_values", "request_deadline", "request_encoding"]
