"""A stream's gRPC messages followed through its DATA frames, to bound how many each takes.

Both ends use it: the server on what a pipeline sends (CONN-9), the pipeline on what
an extension answers (PIPE-8).
"""

from __future__ import annotations

#: The smallest SETTINGS_MAX_FRAME_SIZE there is: what any sender can be made to use.
MIN_FRAME = 16 * 1024


class MessageMeter:
    """The gRPC messages of one stream, followed through its DATA frames (CONN-9, PIPE-8).

    Honest senders cut a message into frames of the peer's maximum frame size (16 KiB
    at least), a few more where flow control leaves a smaller window. One byte per
    frame costs the event loop a frame's parse per byte: a 1 MiB message, seconds.
    """

    __slots__ = ("allowed", "frames", "length", "opening", "prefix", "remaining", "slack")

    def __init__(self, slack: int) -> None:
        self.slack = slack
        # Frames until a message's length is known: what any message may take.
        self.opening = slack + 2
        self.allowed = self.opening
        self.frames = 0  # since the current message began
        self.prefix = b""
        self.remaining = -1  # -1: reading a prefix
        self.length = 0

    def data(self, payload: bytes | memoryview) -> bool:
        """Follow one DATA frame; False when its message takes too many frames."""
        n = len(payload)
        if (
            self.remaining < 0
            and not self.prefix
            and n >= 5
            and n == 5 + int.from_bytes(payload[1:5], "big")
            and self.frames < self.allowed  # empty frames may have come first
        ):
            # One whole message in the frame, as small messages come: nothing to follow.
            self.frames = 0
            self.allowed = self.opening
            return True
        self.frames += 1
        if self.frames > self.allowed:
            return False
        i = 0
        while i < n:
            if self.remaining < 0:
                take = min(5 - len(self.prefix), n - i)
                self.prefix += payload[i : i + take]
                i += take
                if len(self.prefix) < 5:
                    break
                self.length = self.remaining = int.from_bytes(self.prefix[1:], "big")
                self.prefix = b""
                self.allowed = self.slack + 2 * max(1, -(-self.length // MIN_FRAME))
            take = min(self.remaining, n - i)
            self.remaining -= take
            i += take
            if self.remaining == 0:
                self.remaining = -1
                self.frames = 1 if i < n else 0
                self.allowed = self.opening
        return True


class StreamMeters:
    """A ``MessageMeter`` per stream of one connection, made as each stream's first DATA
    frame arrives and dropped as the stream ends."""

    __slots__ = ("_meters", "slack")

    def __init__(self, slack: int) -> None:
        self.slack = slack
        self._meters: dict[int, MessageMeter] = {}

    def excess(self, stream_id: int, payload: bytes | memoryview) -> str | None:
        """Follow one DATA frame of ``stream_id``: None, or why its message takes too many."""
        meter = self._meters.get(stream_id)
        if meter is None:
            meter = self._meters[stream_id] = MessageMeter(self.slack)
        if meter.data(payload):
            return None
        length = f" of {meter.length} bytes" if meter.remaining >= 0 else ""
        return (
            f"a message{length} arrived in more than {meter.allowed} DATA frames on stream "
            f"{stream_id}; the limit is {self.slack} frames plus two per 16 KiB of its "
            "length, two at least"
        )

    def get(self, stream_id: int) -> MessageMeter | None:
        """The stream's meter, if a DATA frame of it arrived."""
        return self._meters.get(stream_id)

    def forget(self, stream_id: int) -> None:
        self._meters.pop(stream_id, None)
