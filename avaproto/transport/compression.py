"""gRPC's message compression, read with bounds: gzip and deflate in, nothing out.

A gRPC peer may compress its messages (the prefix's flag, the stream's
``grpc-encoding``): grpcio does it for every message once a channel or server is
given ``compression=grpc.Compression.Gzip``. avaproto reads such messages and sends
its own uncompressed, which every peer must read (gRPC's compression.md). Refusing
them would refuse a working pipeline over a choice the protocol leaves to it.

A compressed message is a promise of its size, not its size: a few hundred kilobytes
of gzip inflate to gigabytes. So the limit on a message (SRV-5, PIPE-5) bounds what
it inflates to, checked as it inflates; at most ``ON_LOOP`` bytes are inflated on the
event loop, the rest in a worker thread (zlib releases the GIL), holding the server's
budget of bytes in flight (SRV-13) for as much as it may still inflate to.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import anyio.to_thread

from ..errors import RemoteProtocolError
from ..status import Status

#: What avaproto reads, as ``grpc-accept-encoding`` lists them, and the zlib window
#: bits of each: gRPC's "deflate" is the zlib format (RFC 1950), "gzip" RFC 1952.
ENCODINGS = {"gzip": 31, "deflate": 15}
ACCEPTED = "identity, gzip, deflate"
#: Bytes inflated on the event loop before the rest goes to a worker thread.
ON_LOOP = 256 * 1024
#: Bytes inflated per step in the worker: the limit is checked between steps.
STEP = 4 * 1024 * 1024


def check_encoding(name: str | None) -> str | None:
    """The stream's ``grpc-encoding``: None for identity (or none), else one avaproto
    reads; another is refused with UNIMPLEMENTED naming those it reads (WIRE-3)."""
    if name is None:
        return None
    name = name.strip().lower()
    if name in ("", "identity"):
        return None
    if name not in ENCODINGS:
        raise RemoteProtocolError(
            "WIRE-3",
            Status.UNIMPLEMENTED,
            f"grpc-encoding {name[:64]!r} is not one avaproto reads; it reads {ACCEPTED}",
        )
    return name


async def inflate(
    data: bytes | bytearray | memoryview,
    encoding: str | None,
    max_bytes: int,
    *,
    limit_rule: str,
    hold: Callable[[int], AbstractContextManager[object]] | None = None,
) -> bytes:
    """The message ``data`` compressed with the stream's ``encoding``, inflated to at
    most ``max_bytes``; a message past that raises RESOURCE_EXHAUSTED under
    ``limit_rule``, one that is not a whole stream of its encoding WIRE-3."""
    if encoding is None:
        raise RemoteProtocolError(
            "WIRE-3",
            Status.INVALID_ARGUMENT,
            "a message flagged compressed on a stream whose grpc-encoding names no compression",
        )
    inflater = zlib.decompressobj(ENCODINGS[encoding])
    try:
        out = inflater.decompress(data, min(ON_LOOP, max_bytes + 1))
        if not inflater.eof and len(out) == ON_LOOP <= max_bytes:  # more to come
            left = max_bytes + 1 - len(out)
            with hold(left) if hold is not None else contextlib.nullcontext():
                out += await anyio.to_thread.run_sync(_inflate_rest, inflater, left)
    except zlib.error as error:
        raise RemoteProtocolError(
            "WIRE-3",
            Status.INVALID_ARGUMENT,
            f"a {encoding} message that does not inflate: {error}",
        ) from None
    if len(out) > max_bytes:
        raise RemoteProtocolError(
            limit_rule,
            Status.RESOURCE_EXHAUSTED,
            f"a {encoding} message of {len(data)} bytes inflates past the limit of "
            f"{max_bytes} bytes",
        )
    if not inflater.eof:
        raise RemoteProtocolError(
            "WIRE-3", Status.INVALID_ARGUMENT, f"a {encoding} message cut short"
        )
    if inflater.unused_data:
        raise RemoteProtocolError(
            "WIRE-3",
            Status.INVALID_ARGUMENT,
            f"{len(inflater.unused_data)} bytes after the end of a {encoding} message",
        )
    return out


def _inflate_rest(inflater: zlib._Decompress, left: int) -> bytes:
    """What is left to inflate, at most ``left`` bytes (one more says "too long")."""
    pieces = []
    while left > 0 and not inflater.eof:
        piece = inflater.decompress(inflater.unconsumed_tail, min(STEP, left))
        if not piece:
            break  # the input ends before the stream does: cut short
        pieces.append(piece)
        left -= len(piece)
    return b"".join(pieces)
