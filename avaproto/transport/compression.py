"""gRPC's message compression, read with bounds: gzip and deflate in, nothing out.

A gRPC peer may compress its messages (the prefix's flag, the stream's
``grpc-encoding``): grpcio does it for every message once a channel or server is
given ``compression=grpc.Compression.Gzip``. avaproto reads such messages and sends
its own uncompressed, which every peer must read (gRPC's compression.md). Refusing
them would refuse a working pipeline over a choice the protocol leaves to it.

A compressed message is a promise of its size, not its size: a few hundred kilobytes
of gzip inflate to gigabytes, and 64 MiB of empty deflate blocks to nothing, after
seconds of zlib's work. So the limit on a message (SRV-5, PIPE-5) bounds what it
inflates to, checked a step at a time; only a small message is inflated on the event
loop, any other in a worker thread (zlib releases the GIL); and each step inflated
holds the server's budget of bytes in flight (SRV-13) until the message is decoded.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager

import anyio.to_thread

from ..errors import RemoteProtocolError
from ..status import Status
from .budget import BudgetRefused

#: The encodings avaproto reads, by their ``grpc-encoding`` names, and the zlib window
#: bits of each: gRPC's "deflate" is the zlib format (RFC 1950), "gzip" RFC 1952.
ENCODINGS = {"gzip": 31, "deflate": 15}
ACCEPTED = "identity, gzip, deflate"
#: A message compressed into at most this many bytes is inflated on the event loop,
#: up to ``STEP`` bytes of it; any other in a worker thread. zlib's work grows with its
#: input as much as with its output: 64 MiB of empty deflate blocks, which inflate to
#: nothing, took 4.7 s of a loop.
ON_LOOP = 16 * 1024
#: Bytes inflated per step: the limit and the budget are checked between steps.
STEP = 1024 * 1024


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


@contextlib.asynccontextmanager
async def inflate(
    data: bytes | bytearray | memoryview,
    encoding: str | None,
    max_bytes: int,
    *,
    limit_rule: str,
    hold: Callable[[int], AbstractContextManager[object]] | None = None,
) -> AsyncIterator[bytearray]:
    """The message ``data`` compressed with the stream's ``encoding``, inflated to at
    most ``max_bytes``, for the block; a message past that raises RESOURCE_EXHAUSTED
    under ``limit_rule``, one that is not a whole stream of its encoding WIRE-3.

    ``hold(n)``, if given, holds the server's budget of bytes in flight (SRV-13) for
    each step inflated, until the block ends: what a peer's few bytes make the server
    hold is counted as if it had sent them.
    """
    if encoding is None:
        raise RemoteProtocolError(
            "WIRE-3",
            Status.INVALID_ARGUMENT,
            "a message flagged compressed on a stream whose grpc-encoding names no compression",
        )
    inflater = zlib.decompressobj(ENCODINGS[encoding])
    out = bytearray()
    pending: bytes | bytearray | memoryview = data
    with contextlib.ExitStack() as held:
        try:
            while not inflater.eof and len(out) <= max_bytes:
                step = min(STEP, max_bytes + 1 - len(out))
                if len(pending) <= ON_LOOP and len(out) < STEP:
                    piece = inflater.decompress(pending, step)
                else:
                    piece = await anyio.to_thread.run_sync(inflater.decompress, pending, step)
                pending = inflater.unconsumed_tail
                if not piece:
                    break  # the input ends before the stream does
                if hold is not None:
                    try:
                        held.enter_context(hold(len(piece)))
                    except BudgetRefused as refused:
                        raise _refused_while_inflating(refused, encoding, len(out)) from None
                out += piece
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
        yield out


def _refused_while_inflating(
    refused: BudgetRefused, encoding: str, inflated: int
) -> RemoteProtocolError:
    """The budget's refusal, said of a message being inflated rather than sent."""
    return RemoteProtocolError(
        refused.rule,
        refused.status,
        f"a {encoding} message refused while inflating, at {inflated} bytes: {refused.over}",
    )
