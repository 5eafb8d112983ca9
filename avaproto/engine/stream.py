"""One stream, for either role: its session, its channel, one task group, one outcome.

Both ends of ``ProcessMediaStream`` do the same things around what they do with
samples: read the peer's messages into the protocol core and act on the events it
reports, wait with deadlines, run their own tasks in one task group so that nothing
outlives the stream, end with one precise status, and keep one record of figures.
``StreamRunner`` is that part, written once; a ``Handler`` is what a role adds:

    channel ──► runner: session.receive ──► handler.on_message(message, events)
                  ▲ handler.before_receive()   (backpressure, e.g. a free slot)
    handler.start(tasks): the role's own tasks, in the same task group

The runner's own loop does the reading for the pipeline; the extension's tasks read
themselves, one ``receive_one`` at a time (``Handler.reads_itself``), so that the task
that reads a sample can process it without waking another.

The extension (``engine.serve``) and the pipeline (``engine.drive``) are the two
handlers. The runner knows nothing of frames, shared memory or inferences, and the
handlers never touch the channel's receive side or the task group's error handling.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import ClassVar, Protocol

import anyio
import anyio.abc

from ..errors import LocalProtocolError, ProtocolError, StreamFailed
from ..messages import MediaStreamMessage
from ..protocol.events import Event
from ..protocol.roles import Role
from ..protocol.session import Session
from ..protocol.video_format import DEFAULT_LIMITS, FrameLimits
from ..status import Status
from .channel import MessageChannel
from .outcome import log_tolerated, protocol_errors
from .statistics import StreamStatistics


class Handler(Protocol):
    """What a role adds to the runner: its tasks, its backpressure, its reactions."""

    #: Whether the handler's own tasks read the stream, one ``receive_one`` at a time;
    #: the runner then starts no receive loop, and a task that reads a message can act
    #: on it without waking another (the extension's workers process what they read).
    reads_itself: ClassVar[bool]

    def start(self, tasks: anyio.abc.TaskGroup) -> None:
        """Start the role's own tasks in the stream's task group."""
        ...

    async def before_receive(self) -> None:
        """Wait until the next message may be read (the role's backpressure)."""
        ...

    async def on_message(self, message: MediaStreamMessage, events: list[Event]) -> None:
        """React to one of the peer's messages, already checked by the session."""
        ...

    def on_end(self) -> None:
        """The peer ended its direction, and the session found that in order."""
        ...

    async def on_failure(self, failure: StreamFailed) -> None:
        """The peer ended the stream with a failure, after the messages already read:
        hand those on before the failure ends the stream (at most ``PEER_FAILURE_GRACE``)."""
        ...


#: Seconds a stream the peer ended with a failure waits, at most, for its reader to take
#: what the peer sent before (``Handler.on_failure``) when that reader takes nothing.
PEER_FAILURE_GRACE = 5.0


class StreamRunner:
    """The part of a stream both roles share: one session on one channel, and its outcome."""

    def __init__(
        self,
        role: Role,
        channel: MessageChannel,
        *,
        limits: FrameLimits = DEFAULT_LIMITS,
        statistics: StreamStatistics | None = None,
    ) -> None:
        self.session = Session(role, limits=limits)
        self.channel = channel
        self.statistics = statistics if statistics is not None else StreamStatistics()
        self.statistics.peer = self.statistics.peer or channel.peer
        # One counter: the session counts the peer's deviations, the record shows them.
        self.session.tolerated.update(self.statistics.tolerated)
        self.statistics.tolerated = self.session.tolerated
        # The peer as log lines name it: "pipeline ipv4:…" on the extension's side.
        other = "pipeline" if role is Role.EXTENSION else "extension"
        self.peer = f"{other} {channel.peer}"

    async def receive(
        self, *, timeout: float | None = None, rule: str = "", awaited: str = ""
    ) -> tuple[MediaStreamMessage, list[Event]] | None:
        """The peer's next message and its events; None once the peer ended in order.

        With ``timeout``, a peer silent for that long ends the stream with
        DEADLINE_EXCEEDED under ``rule``; ``awaited`` completes the message "the
        extension … did not …" (e.g. "answer our descriptor").
        """
        if timeout is None:
            message = await self.channel.receive()
        else:
            with anyio.move_on_after(timeout) as waited:
                message = await self.channel.receive()
            if waited.cancelled_caught:
                raise ProtocolError(
                    rule,
                    Status.DEADLINE_EXCEEDED,
                    f"the {self.peer} did not {awaited} within {timeout:g} s",
                )
        if message is None:
            self.session.receive_end()
            return None
        events = self.session.receive(message)
        log_tolerated(events, self.peer)
        return message, events

    @asynccontextmanager
    async def running(self, handler: Handler) -> AsyncIterator[anyio.abc.TaskGroup]:
        """Run the receive loop and the handler's tasks; the block is the foreground.

        Leaving the block waits for every task (the receive loop ends with the peer's
        end of stream). A failure anywhere ends the stream with one error: the first
        protocol violation or the peer's failure, never the cancellations it caused;
        failing those, the first other error, as raised (the block's own, say: a
        caller's ``KeyError`` comes out a ``KeyError``, not a group of one).
        """
        with protocol_errors((Exception,)):
            async with anyio.create_task_group() as tasks:
                handler.start(tasks)
                if not handler.reads_itself:
                    tasks.start_soon(self._receive_all, handler)
                yield tasks

    @contextmanager
    def outcome(self) -> Iterator[None]:
        """Record how the stream ended in the statistics, and fail the session on an error."""
        try:
            yield
        except (ProtocolError, StreamFailed) as error:
            if isinstance(error, ProtocolError) and not self.session.failed:
                self.session.fail(error)
            self.statistics.status, self.statistics.message = error.status, str(error)
            raise
        except anyio.get_cancelled_exc_class():
            self.statistics.status, self.statistics.message = Status.CANCELLED, "cancelled"
            raise
        finally:
            self.statistics.ended = time.monotonic()

    async def _receive_all(self, handler: Handler) -> None:
        """Read until the peer's end; its failure ends the stream once the handler has
        handed on what came before it."""
        try:
            while await self.receive_one(handler):
                pass
        except StreamFailed as failure:
            await handler.on_failure(failure)
            raise

    async def receive_one(self, handler: Handler) -> bool:
        """Read the next message into the session and the handler; False at the end.

        Callers read one at a time (the session's order is the stream's).
        """
        await handler.before_receive()
        received = await self.receive()
        if received is None:
            handler.on_end()
            return False
        await handler.on_message(*received)
        return True

    async def send(
        self,
        message: MediaStreamMessage,
        *,
        timeout: float | None = None,
        rule: str = "",
        awaited: str = "",
    ) -> None:
        """Send a message the session produced; an interrupted send fails the session.

        Once a numbered message may or may not have left, the two sides' books can no
        longer agree, so nothing more may be sent on this stream (LIFE-3). A send that
        fails because the peer ended the stream (``StreamFailed``: its status, or the
        connection lost) is not that: the peer's account is in what it sent before,
        which the receive side reads in order and ends with, so the session stays as
        it is for those messages (PIPE-6). With ``timeout``, a peer that takes none of
        it for that long (its flow-control window left shut) ends the stream with
        DEADLINE_EXCEEDED under ``rule``, worded as ``receive`` words it.
        """
        try:
            if timeout is None:
                await self.channel.send(message)
            else:
                with anyio.move_on_after(timeout) as waited:
                    await self.channel.send(message)
                if waited.cancelled_caught:
                    raise ProtocolError(
                        rule,
                        Status.DEADLINE_EXCEEDED,
                        f"the {self.peer} did not {awaited} within {timeout:g} s",
                    )
        except StreamFailed:
            raise
        except ProtocolError as error:
            # The peer broke a rule as this went out (its connection refused for it, or
            # its window left shut past the deadline): that, not the interruption, is
            # why the stream fails.
            if not self.session.failed:
                self.session.fail(error)
            raise
        except BaseException:
            if not self.session.failed:
                self.session.fail(
                    LocalProtocolError(
                        "LIFE-3",
                        Status.CANCELLED,
                        f"sending message {message.sequence_number} was interrupted",
                    )
                )
            raise
