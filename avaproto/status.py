"""gRPC status codes, without depending on a gRPC implementation.

The protocol core decides *which* status a violation deserves; only the transports
know how to put it on the wire. Keeping the codes here lets the core stay free of
grpclib (and of HTTP/2) while the numbers stay the standard ones, so a transport
converts with ``grpclib.const.Status(int(status))``.
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """The canonical gRPC status codes (same names and numbers as every gRPC runtime)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16
