"""The errors avaproto raises, each naming the spec/ rule it enforces.

Like h11, a violation is either the peer's (``RemoteProtocolError``: the stream ends
with the error's gRPC status and message) or our own caller's
(``LocalProtocolError``: a bug in the code driving the session, raised before any
bad message could leave). Both carry the rule id from spec/ and the gRPC status the
violation maps to, so a transport can answer with one precise status whose message
names the rule broken.
"""

from __future__ import annotations

from .status import Status

#: The most characters of an error's message: a status message, a log line.
MAX_MESSAGE = 2048


def bounded(message: str) -> str:
    """``message`` fit for a status message and one log line, whatever of the peer's it
    quotes: control characters escaped (a newline in a peer's string cannot forge log
    lines) and at most ``MAX_MESSAGE`` characters. hpack encodes a header in time that
    grows with the square of its length: a status message quoting a 300,000-character
    name held the event loop for 11 s, and every other stream with it."""
    if not message.isprintable():
        # Every character Python would not print (controls, C1 and line separators
        # included), as a repr writes it.
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    if len(message) > MAX_MESSAGE:
        cut = MAX_MESSAGE - 32
        message = f"{message[:cut]}… ({len(message) - cut} characters more)"
    return message


class AvaprotoError(Exception):
    """Base of every error avaproto raises on purpose."""


class ProtocolError(AvaprotoError):
    """A rule of the protocol was broken.

    ``rule`` is the id of the rule in spec/ (``"SEQ-2"``); ``status`` the gRPC status
    the violation maps to. ``str(error)`` starts with the rule id, so a status message
    or a log line always says which rule, and a person can look it up.
    """

    def __init__(self, rule: str, status: Status, message: str) -> None:
        self.rule = rule
        self.status = status
        self.detail = message = bounded(message)
        super().__init__(f"[{rule}] {message}")

    def __reduce__(self) -> tuple[type[ProtocolError], tuple[str, Status, str]]:
        return (type(self), (self.rule, self.status, self.detail))


class RemoteProtocolError(ProtocolError):
    """The peer broke a rule; the stream must end with ``status``."""


class LocalProtocolError(ProtocolError):
    """This side tried to break a rule; nothing was sent."""


class StreamFailed(AvaprotoError):
    """The peer ended the stream with a non-OK gRPC status (as seen by the pipeline)."""

    def __init__(self, status: Status, message: str) -> None:
        self.status = status
        self.detail = message = bounded(message)
        super().__init__(f"{status.name}: {message}" if message else status.name)


class FrameError(ProtocolError):
    """A frame's bytes do not match its format (size, stride, dimensions, pixel format)."""


class SharedMemoryError(ProtocolError):
    """A shared-memory handle, segment or content reference breaks a rule."""


class LeaseError(ProtocolError):
    """A shared-memory lease was used against its lifecycle (use after release, double release)."""


class InferenceError(ProtocolError):
    """An inference is not well formed (value against type, a confidence or box out of [0, 1])."""
