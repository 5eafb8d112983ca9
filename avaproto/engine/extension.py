"""What an extension author provides: a processor function, or an extension class.

The simplest extension is one function from a ``Frame`` to inferences, synchronous or
asynchronous. A synchronous one runs in a worker thread (numpy and most model runtimes
release the GIL), so it never blocks the stream's other work. An extension class adds
per-stream state: ``open`` sees the pipeline's descriptor (and may refuse it with a
precise error), ``process`` handles each frame, ``close`` always runs at the end.

Frames of a stream are processed concurrently (up to ``max_in_flight``). An extension
whose result depends on the frames before it (a tracker, a motion detector) sets the
class attribute ``sequential = True``: the engine then calls ``process`` for one frame
at a time, in the order the frames were sent, while still reading ahead.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, runtime_checkable

import anyio.to_thread

from ..errors import ProtocolError
from ..messages import Inference
from ..protocol.descriptor import StreamDescriptor
from ..status import Status
from .frame import Frame

#: What a processor returns: inferences (any iterable), or None for "no result".
Result = Iterable[Inference] | None
SyncProcessor = Callable[[Frame], Result]
AsyncProcessor = Callable[[Frame], Awaitable[Result]]
Processor = SyncProcessor | AsyncProcessor


class ExtensionRefused(ProtocolError):
    """``Extension.open`` refuses a stream: its descriptor or configuration cannot be served.

    The stream ends with ``status`` (INVALID_ARGUMENT by default) and the message, so the
    pipeline's operator sees what to change.
    """

    def __init__(
        self, message: str, *, status: Status = Status.INVALID_ARGUMENT, rule: str = "CFG-3"
    ) -> None:
        super().__init__(rule, status, message)


@runtime_checkable
class Extension(Protocol):
    """One stream's extension: created per stream by the server's factory."""

    async def open(self, descriptor: StreamDescriptor) -> None:
        """Accept (return) or refuse (raise ``ExtensionRefused``) the pipeline's descriptor."""

    async def process(self, frame: Frame) -> Result:
        """The inferences for one frame; None or empty for none."""

    async def close(self) -> None:
        """Always called once the stream is over, however it ended."""


class FunctionExtension:
    """An ``Extension`` around a processor function, sync (in a worker thread) or async."""

    def __init__(
        self, processor: Processor, *, limiter: anyio.CapacityLimiter | None = None
    ) -> None:
        self._processor = processor
        self._is_async = inspect.iscoroutinefunction(processor) or inspect.iscoroutinefunction(
            getattr(processor, "__call__", None)  # noqa: B004 - a callable object's method
        )
        self._limiter = limiter

    async def open(self, descriptor: StreamDescriptor) -> None:
        return None

    async def process(self, frame: Frame) -> Result:
        if self._is_async:
            result = self._processor(frame)
            assert inspect.isawaitable(result)
            return await result
        return await anyio.to_thread.run_sync(self._processor, frame, limiter=self._limiter)  # type: ignore[arg-type]

    async def close(self) -> None:
        return None
