"""The allowance of frames that carry no message, one per connection, either side.

Every HTTP/2 frame but DATA, HEADERS and CONTINUATION (PING, PRIORITY, SETTINGS
entries, WINDOW_UPDATE, RST_STREAM, types HTTP/2 does not define) costs its receiver a
parse and an event and carries nothing: a flood of them slowed every stream of a
server (CONN-19), and held a pipeline's core for as long as its extension acknowledged
in time (PIPE-8). Honest peers send them too, about what the connection carries: a
WINDOW_UPDATE for what they read, grpc-core a PING of its bandwidth estimate per read,
a keepalive PING now and then. So the allowance is a token bucket, earned back by what
the connection carries either way, and the same figures bound both sides.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: How a connection earns back frames that carry no message: so many a second, one per
#: this many bytes of DATA either way, so many per DATA frame received and per message
#: sent (grpc-core's client answers each read with a PING of its bandwidth estimate,
#: and returns credit in WINDOW_UPDATEs), so many per HEADERS.
QUIET_FRAMES_PER_SECOND = 10.0
QUIET_BYTES = 1024
QUIET_PER_FRAME = 4
QUIET_PER_HEADERS = 10
#: What the connection's own sends earn is kept up to this many times the limit, apart
#: (a burst of 5,000 frames at most with the defaults, after 1,250 answers sent):
#: a peer answers them when it reads them, which may be long after, all at once (grpcio
#: returns credit for thousands of small answers it read in a burst), and capped with
#: the rest at the limit, that credit was lost before it came.
OWED_LIMITS = 5

_DATA, _HEADERS, _SETTINGS, _CONTINUATION = 0x0, 0x1, 0x4, 0x9


class QuietFrames:
    """A token bucket of ``limit`` frames that carry no message.

    ``sent()`` gives the bytes of DATA and the messages the connection sent so far,
    which earn frames back as those received do, kept in a bucket of their own (up to
    ``OWED_LIMITS`` times the limit) spent once the first is empty: a peer owes them for
    what it was sent, however late it answers.
    """

    def __init__(self, limit: int, sent: Callable[[], tuple[int, int]]) -> None:
        self.limit = limit
        self._sent = sent
        self._left = float(limit)
        self._owed = 0.0  # earned by what the connection sent, not yet spent
        self._at = time.monotonic()
        self._sent_then = (0, 0)  # what ``sent()`` gave when last counted

    def earn(self, frames: float) -> None:
        """Allow ``frames`` more (capped at the limit)."""
        self._left = min(self.limit, self._left + frames)

    def spend(self, frames: int) -> bool:
        """Count ``frames`` that carry no message; False once past the allowance."""
        now, sent = time.monotonic(), self._sent()
        then = self._sent_then
        owed = (sent[0] - then[0]) / QUIET_BYTES + (sent[1] - then[1]) * QUIET_PER_FRAME
        self._owed = min(self.limit * OWED_LIMITS, self._owed + owed)
        left = min(self.limit, self._left + (now - self._at) * QUIET_FRAMES_PER_SECOND) - frames
        if left < 0:
            self._owed += left
            left = 0.0
        self._left = left
        self._at, self._sent_then = now, sent
        return self._owed >= 0

    def frame(self, kind: int, length: int) -> bool:
        """A frame's header arrived: a DATA frame or HEADERS earns, one that carries no
        message spends (a SETTINGS frame once per entry); False once past the allowance.
        A DATA frame of one byte earns a few, not the whole bucket."""
        if kind == _DATA:
            self.earn(QUIET_PER_FRAME + length // QUIET_BYTES)
        elif kind == _HEADERS:
            self.earn(QUIET_PER_HEADERS)
        elif kind != _CONTINUATION:
            return self.spend(max(1, length // 6) if kind == _SETTINGS else 1)
        return True
