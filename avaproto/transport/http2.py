"""HTTP/2 settings for frame-sized messages, and the guard on every connection.

A video frame is a large message: a 416 x 416 RGB frame is 519 KB, a 1080p one 6 MB.
With HTTP/2's default SETTINGS_MAX_FRAME_SIZE of 16 KiB, a peer splits each such
message into dozens of DATA frames, and h2 (pure Python) spends more on each frame's
bookkeeping (parsing, flow-control acknowledgement, events) than on its bytes. The
server therefore advertises a larger maximum frame size; peers that honour it (all
gRPC implementations do) send each frame in a few DATA frames.

Every connection also gets the library fixes of ``_grpclib_private``: frame reprs whose
cost does not grow with the payload (h2 builds one for every frame it receives, for a
trace log that is off), and empty DATA frames kept out of grpclib's buffer, which would
take them for the end of the stream. And every connection is made through a
``ConnectionGuard`` (``avaproto.transport.guard``), which bounds what a hostile peer
can make the server hold, with the limits of ``ConnectionLimits``.

TLS is set up here too. grpclib hands its context to ``loop.create_server(ssl=...)``,
where asyncio drops a failed handshake without a word outside debug mode; an extension
refusing a plaintext pipeline would leave no trace. ``tune_server`` therefore takes
the context ``Server.start`` is given and wraps each accepted connection in
``DiagnosedServerTLS`` itself: the same asyncio TLS protocol, which logs the peer and
the reason of a failed handshake (see ``avaproto.transport.tls``).
"""

from __future__ import annotations

import ssl
from typing import Any

import grpclib.server

from ._grpclib_private import (
    keep_empty_data_frames_out,
    quiet_frame_repr,
    settle_call_cancellations,
    wrap_connections,
)
from .guard import ServerGuard
from .limits import ConnectionLimits

#: What the server advertises as SETTINGS_MAX_FRAME_SIZE (the protocol allows up to
#: 16 MiB - 1). 1 MiB keeps one frame's buffering small next to a message's.
MAX_FRAME_SIZE = 1 << 20


def tune_server(
    server: grpclib.server.Server,
    limits: ConnectionLimits | None = None,
    max_frame_size: int = MAX_FRAME_SIZE,
) -> ServerGuard:
    """Advertise ``max_frame_size`` on every connection ``server`` accepts, guard each
    with ``limits``, log failed TLS handshakes (call before ``server.start``)."""
    quiet_frame_repr()
    keep_empty_data_frames_out()
    settle_call_cancellations()
    guard = ServerGuard(limits or ConnectionLimits(), max_frame_size)
    tls: ssl.SSLContext | None = None

    def guarded(protocol: Any) -> Any:
        return guard.protocol(protocol, tls)

    start = server.start

    async def start_with_diagnosed_tls(
        *args: Any, ssl: ssl.SSLContext | None = None, **kw: Any
    ) -> None:
        nonlocal tls
        tls = ssl
        await start(*args, ssl=None, **kw)  # TLS is protocol_factory's

    wrap_connections(server, guarded)
    server.start = start_with_diagnosed_tls  # type: ignore[method-assign]
    return guard
