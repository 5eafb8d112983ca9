"""What an extension may make the pipeline hold: the client's side of the connection limits.

A pipeline trusts the extension with answers, not with its own process. The server's
guard (``avaproto.transport.guard``) bounds what a pipeline can make the extension hold;
this bounds the same things the other way, with the same figures (``ConnectionLimits``):

* an answer cut into DATA frames of a byte each costs a parse, an event and a buffer
  entry per byte: a 3 MB answer grew a pipeline past 1.5 GB. An answer may take
  ``frames_per_message`` frames beyond two per 16 KiB of its length (PIPE-8, the
  server's CONN-9);
* acknowledgements of PING and SETTINGS pile up in the write buffer of a pipeline whose
  extension reads nothing (PIPE-8, the server's CONN-10, counted in frames only);
* h2 checks a frame's length only once the whole frame arrived, and buffers it until
  then: a header announcing 16 MiB held the stream until its deadline. A frame longer
  than the pipeline's SETTINGS_MAX_FRAME_SIZE is refused from its header (PIPE-8);
* frames that carry no message (PING, PRIORITY, SETTINGS entries, WINDOW_UPDATE,
  RST_STREAM, unknown types) cost a parse and an event each: a flood of them held a
  pipeline's core for as long as its extension acknowledged in time. Past
  ``max_frames_without_data`` beyond what the connection earns back, counted as the
  server counts them (its CONN-19), the connection ends (PIPE-8);
* what is not HTTP/2 a client can take ends the connection at once, naming it (PIPE-9):
  an HTTP/1.x response, a pushed stream, a stream the extension opens, a frame h2
  refuses.

Each refusal ends the connection with a GOAWAY whose debug data says why and the
stream with a ``RemoteProtocolError`` naming the rule, logged once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import h2.events
from h2.errors import ErrorCodes

from ..errors import RemoteProtocolError
from ..status import Status
from .limits import ConnectionLimits
from .message_meter import StreamMeters
from .quiet_frames import QuietFrames

log = logging.getLogger("avaproto.pipeline")

#: Closes the connection: a GOAWAY with the code and the error's text, then every call.
Close = Callable[[RemoteProtocolError, ErrorCodes], None]

_HTTP1 = (b"HTTP/1.", b"HTTP/0.", b"HTTP/2 ")


class AnswerGuard:
    """The limits of one of the pipeline's connections, fed by its protocol."""

    def __init__(
        self,
        limits: ConnectionLimits,
        peer: str,
        close: Close,
        sent: Callable[[], tuple[int, int]] = lambda: (0, 0),
    ) -> None:
        self._limits = limits
        self._peer = peer
        self._close = close
        # The frames of the reads so far: a header cut by a read's end, the body left.
        self._head = bytearray()
        self._body_left = 0
        # The allowance of frames without a message (PIPE-8), the server's (CONN-19).
        self._quiet = QuietFrames(limits.max_frames_without_data, sent)
        self._meters = StreamMeters(limits.frames_per_message)
        #: Acknowledgements (of PING, SETTINGS) owed since the write buffer was empty.
        self.control_owed = 0
        self._first = True
        #: Set by the extension's first SETTINGS frame: it speaks HTTP/2 (PIPE-3).
        self.settings = asyncio.Event()
        #: Why the connection was ended here, if it was.
        self.refusal: RemoteProtocolError | None = None
        #: The error code of each stream the extension reset (RST_STREAM).
        self.resets: dict[int, int] = {}

    # --- what the protocol reports ----------------------------------------------------

    def read(self, data: bytes) -> bool:
        """Bytes arrived; False once the connection is ended (nothing more to do)."""
        if self.refusal is not None:
            return False
        if self._first and data:
            self._first = False
            if data.startswith(_HTTP1):
                line = bytes(data[: data.find(b"\r\n") if b"\r\n" in data else 80])
                self.refuse(
                    "PIPE-9",
                    Status.UNAVAILABLE,
                    f"the extension at {self._peer} answered in HTTP/1, not HTTP/2 "
                    f"({line.decode('latin-1')!r}): it is no gRPC server, or a proxy or "
                    "a TLS port in front of one",
                )
                return False
        return self._frames(data)

    def _frames(self, data: bytes) -> bool:
        """Count the frames that begin in ``data`` against the allowance of frames
        without a message; False once past it (the connection is ended)."""
        i, n = 0, len(data)
        while i < n:
            if self._body_left:
                take = min(self._body_left, n - i)
                self._body_left -= take
                i += take
                continue
            if self._head or n - i < 9:
                take = min(9 - len(self._head), n - i)
                self._head += data[i : i + take]
                i += take
                if len(self._head) < 9:
                    break
                length, kind = int.from_bytes(self._head[:3], "big"), self._head[3]
                self._head.clear()
            else:
                length, kind = int.from_bytes(data[i : i + 3], "big"), data[i + 3]
                i += 9
            self._body_left = length
            if not self._quiet.frame(kind, length):
                self.refuse(
                    "PIPE-8",
                    Status.RESOURCE_EXHAUSTED,
                    f"more than {self._quiet.limit} frames that carry no message (PING, "
                    "PRIORITY, SETTINGS entries, WINDOW_UPDATE, RST_STREAM, unknown types) "
                    "beyond what the connection's messages earn back",
                )
                return False
        return True

    def data_frame(self, stream_id: int, payload: bytes | memoryview) -> bool:
        """A DATA frame about to be taken; False when its answer takes too many."""
        excess = self._meters.excess(stream_id, payload)
        if excess is None:
            return True
        self.refuse("PIPE-8", Status.RESOURCE_EXHAUSTED, f"an answer: {excess}")
        return False

    def event(self, event: object) -> bool:
        """One of h2's events, before grpclib handles it; False to drop it."""
        if self.refusal is not None:
            return False
        if isinstance(event, h2.events.DataReceived):
            return self.data_frame(event.stream_id, event.data)
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings.set()
            self.control_owed += 1
        elif isinstance(event, h2.events.PingReceived):
            self.control_owed += 1
        elif isinstance(event, h2.events.PushedStreamReceived):
            self.refuse(
                "PIPE-9",
                Status.INTERNAL,
                f"the extension pushed a stream (PUSH_PROMISE for stream "
                f"{event.pushed_stream_id}), which a gRPC client never accepts",
                ErrorCodes.PROTOCOL_ERROR,
            )
            return False
        elif isinstance(event, h2.events.RequestReceived):
            self.refuse(
                "PIPE-9",
                Status.INTERNAL,
                f"the extension opened a stream (HEADERS on stream {event.stream_id}); "
                "only the pipeline opens streams",
                ErrorCodes.PROTOCOL_ERROR,
            )
            return False
        elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
            self._meters.forget(event.stream_id)
            if isinstance(event, h2.events.StreamReset) and event.remote_reset:
                self.resets[event.stream_id] = event.error_code
        return True

    def frame_announced(self, length: int, largest: int) -> None:
        """A frame not yet whole announced ``length`` bytes; the pipeline takes ``largest``."""
        if length > largest and self.refusal is None:
            self.refuse(
                "PIPE-8",
                Status.RESOURCE_EXHAUSTED,
                f"a frame of {length} bytes announced, larger than the "
                f"{largest} the pipeline takes (SETTINGS_MAX_FRAME_SIZE)",
                ErrorCodes.FRAME_SIZE_ERROR,
            )

    def unread(self, size: int) -> None:
        """After a read that owed acknowledgements (``control_owed``): the bytes the
        extension has not read yet.

        Only the acknowledgements count: what else waits in the write buffer is the
        pipeline's own frames, as much as flow control lets it send (a frame alone may
        be 16 MiB), which grpclib stops writing while the buffer is full.
        """
        if not size:
            self.control_owed = 0
        elif self.control_owed > self._limits.max_control_frames and self.refusal is None:
            self.refuse(
                "PIPE-8",
                Status.RESOURCE_EXHAUSTED,
                f"{self.control_owed} acknowledgements (PING, SETTINGS) queued for an "
                f"extension that reads nothing; the limit is {self._limits.max_control_frames}",
            )

    def broken(self, reason: str) -> None:
        """h2 refused what the extension sent (it queued its GOAWAY already)."""
        self.refuse(
            "PIPE-9",
            Status.INTERNAL,
            f"the extension broke HTTP/2: {reason}",
            ErrorCodes.PROTOCOL_ERROR,
        )

    # --- ending the connection --------------------------------------------------------

    def refuse(
        self,
        rule: str,
        status: Status,
        why: str,
        code: ErrorCodes = ErrorCodes.ENHANCE_YOUR_CALM,
    ) -> None:
        """End the connection once, naming ``rule``; later refusals add nothing."""
        if self.refusal is not None:
            return
        self.refusal = RemoteProtocolError(rule, status, why)
        log.info("closing the connection to %s: %s", self._peer, self.refusal)
        self._close(self.refusal, code)
