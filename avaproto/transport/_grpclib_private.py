"""Every use of grpclib's private names, in one place, each guarded by a test.

grpclib's public API sends one message per call, and each call is one HTTP/2 DATA frame
and one socket write, after one more copy of the message to prepend gRPC's prefix. The
engine answers a window of samples at once, and the pipeline sends frames of megabytes;
sending them as one DATA frame, copied once, needs the call's HTTP/2 stream, which
grpclib keeps private. Should
grpclib change under these functions, tests/transport/test_grpclib_private.py fails
(it checks the names against the library's own objects), not a user's stream.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpclib.client
import grpclib.exceptions
import grpclib.server


async def send_messages(stream: grpclib.server.Stream[Any, Any], framed: Sequence[bytes]) -> None:
    """Send messages (each with its gRPC prefix) on a server stream as one DATA frame.

    What ``grpclib.server.Stream.send_message`` does for each message: initial metadata
    first, then the data, then the stream's counters.
    """
    if not stream._send_initial_metadata_done:
        await stream.send_initial_metadata()
    await stream._stream.send_data(framed[0] if len(framed) == 1 else b"".join(framed))
    count = len(framed)
    stream._send_message_done = True
    stream._messages_sent += count
    connection = stream._stream.connection
    connection.messages_sent += count
    connection.last_message_sent = time.monotonic()


async def send_client_message(stream: grpclib.client.Stream[Any, Any], framed: bytes) -> None:
    """Send one message (with its gRPC prefix) on a client stream, as grpclib would.

    ``grpclib.client.Stream.send_message`` encodes the message, then copies it once more
    to prepend the prefix; an embedded frame already is one buffer with its prefix.
    """
    if not stream._send_request_done:
        await stream.send_request()
    if stream._end_done:
        raise grpclib.exceptions.ProtocolError("Stream is ended")
    with stream._wrapper:
        await stream._stream.send_data(framed)
        stream._send_message_done = True
        stream._messages_sent += 1
        connection = stream._stream.connection
        connection.messages_sent += 1
        connection.last_message_sent = time.monotonic()
