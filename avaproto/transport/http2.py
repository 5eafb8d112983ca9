"""HTTP/2 settings for frame-sized messages, applied to grpclib's connections.

A video frame is a large message: a 416 x 416 RGB frame is 519 KB, a 1080p one 6 MB.
With HTTP/2's default SETTINGS_MAX_FRAME_SIZE of 16 KiB, a peer splits each such
message into dozens of DATA frames, and h2 (pure Python) spends more on each frame's
bookkeeping (parsing, flow-control acknowledgement, events) than on its bytes. The
server therefore advertises a larger maximum frame size; peers that honour it (all
gRPC implementations do) send each frame in a few DATA frames.

h2 also formats a ``repr`` of every frame it receives for a trace log that is off by
default, and hyperframe's repr hexlifies the *whole* payload before keeping its first
20 hex digits. ``quiet_frame_repr`` makes it hexlify only the bytes it shows: the
text is identical, the cost no longer grows with the payload.

TLS is set up here too. grpclib hands its context to ``loop.create_server(ssl=...)``,
where asyncio drops a failed handshake without a word outside debug mode; an extension
refusing a plaintext pipeline would leave no trace. ``tune_server`` therefore takes
the context ``Server.start`` is given and wraps each accepted connection in
``DiagnosedServerTLS`` itself: the same asyncio TLS protocol, which logs the peer and
the reason of a failed handshake (see ``avaproto.transport.tls``).
"""

from __future__ import annotations

import asyncio
import binascii
import ssl
from typing import Any

import grpclib.server
import hyperframe.frame
from h2.settings import SettingCodes

from .tls import DiagnosedServerTLS

#: What the server advertises as SETTINGS_MAX_FRAME_SIZE (the protocol allows up to
#: 16 MiB - 1). 1 MiB keeps one frame's buffering small next to a message's.
MAX_FRAME_SIZE = 1 << 20

_SHOWN_BYTES = 10  # hyperframe shows 20 hex digits
#: hyperframe's own functions, kept before ``quiet_frame_repr`` replaces them: the
#: replacements must give their text (tests/transport/test_http2.py compares).
LIBRARY_RAW_DATA_REPR = hyperframe.frame._raw_data_repr
LIBRARY_DATA_BODY_REPR = hyperframe.frame.DataFrame._body_repr


def _raw_data_repr(data: bytes | None) -> str:
    """hyperframe's ``_raw_data_repr``, same output, without hexlifying what it drops."""
    if not data:
        return "None"
    shown = binascii.hexlify(data[: _SHOWN_BYTES + 1]).decode("ascii")
    if len(shown) > 2 * _SHOWN_BYTES:
        shown = shown[: 2 * _SHOWN_BYTES] + "..."
    return "<hex:" + shown + ">"


def _data_body_repr(frame: hyperframe.frame.DataFrame) -> str:
    """What ``Frame._body_repr`` shows of a DATA frame, without serializing its body.

    The generic method serializes the whole body (a copy of the payload, padding
    included) to show its first bytes; h2 asks for it on every frame it receives, for
    a trace log that is off. Only the first bytes are built here: the text is the same.
    """
    head = frame.data[: _SHOWN_BYTES + 1]
    if "PADDED" in frame.flags:
        head = bytes([frame.pad_length]) + head
        if len(head) < _SHOWN_BYTES + 1:
            head += b"\0" * frame.pad_length
    return _raw_data_repr(head[: _SHOWN_BYTES + 1])


def quiet_frame_repr() -> None:
    """Install the payload-independent frame reprs (idempotent)."""
    hyperframe.frame._raw_data_repr = _raw_data_repr
    hyperframe.frame.DataFrame._body_repr = _data_body_repr  # type: ignore[method-assign,assignment]


def tune_server(server: grpclib.server.Server, max_frame_size: int = MAX_FRAME_SIZE) -> None:
    """Advertise ``max_frame_size`` on every connection ``server`` accepts; log failed
    TLS handshakes (call before ``server.start``)."""
    quiet_frame_repr()
    make_protocol: Any = server._protocol_factory
    tls: ssl.SSLContext | None = None

    def protocol_factory() -> Any:
        protocol: Any = make_protocol()
        connection_made = protocol.connection_made

        def tuned_connection_made(transport: Any) -> None:
            connection_made(transport)
            protocol.connection._connection.update_settings(
                {SettingCodes.MAX_FRAME_SIZE: max_frame_size}
            )
            protocol.connection.flush()

        protocol.connection_made = tuned_connection_made
        if tls is not None:
            return DiagnosedServerTLS(asyncio.get_running_loop(), protocol, tls)
        return protocol

    start = server.start

    async def start_with_diagnosed_tls(
        *args: Any, ssl: ssl.SSLContext | None = None, **kw: Any
    ) -> None:
        nonlocal tls
        tls = ssl
        await start(*args, ssl=None, **kw)  # TLS is protocol_factory's

    server._protocol_factory = protocol_factory  # type: ignore[method-assign]
    server.start = start_with_diagnosed_tls  # type: ignore[method-assign]
