"""Every use of grpclib's private names, in one place, each guarded by a test.

grpclib's public API sends one message per call, and each call is one HTTP/2 DATA frame
and one socket write. The engine answers a window of samples at once; sending them as
one DATA frame needs the call's HTTP/2 stream, which grpclib keeps private. Should
grpclib change under these functions, tests/transport/test_grpclib_private.py fails
(it checks the names against the library's own objects), not a user's stream.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from typing import Any

import grpclib.server

_PREFIX = struct.Struct(">?I")


async def send_messages(stream: grpclib.server.Stream[Any, Any], encoded: Sequence[bytes]) -> None:
    """Send encoded messages on a server stream as one DATA frame (one write).

    What ``grpclib.server.Stream.send_message`` does for each message: initial metadata
    first, the 5-byte gRPC prefix before each message, the stream's counters after.
    """
    if not stream._send_initial_metadata_done:
        await stream.send_initial_metadata()
    payload = b"".join(part for data in encoded for part in (_PREFIX.pack(False, len(data)), data))
    await stream._stream.send_data(payload)
    count = len(encoded)
    stream._send_message_done = True
    stream._messages_sent += count
    connection = stream._stream.connection
    connection.messages_sent += count
    connection.last_message_sent = time.monotonic()
