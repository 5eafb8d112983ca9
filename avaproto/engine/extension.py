"""What an extension author provides: a processor function, or an extension class.

The simplest extension is one function from a ``Frame`` to inferences, synchronous or
asynchronous. A synchronous one runs in a worker thread (numpy and most model runtimes
release the GIL), so it never blocks the stream's other work. An extension class adds
per-stream state: ``open`` sees the pipeline's descriptor (and may refuse it with a
precise error), ``process`` handles each frame, ``close`` always runs at the end. Its
methods may be plain ``def`` too (each then runs in a worker thread), and ``open`` and
``close`` may be left out.

Frames of a stream are processed concurrently (up to ``max_in_flight``). An extension
whose result depends on the frames before it (a tracker, a motion detector) sets the
class attribute ``sequential = True``: the engine then calls ``process`` for one frame
at a time, in the order the frames were sent, while still reading ahead.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar, Protocol, runtime_checkable

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


class Processing(Protocol):
    """What the server takes an extension object as: anything with ``process(frame)``,
    plain or async, with or without ``open``, ``close`` and ``sequential``
    (``as_async_extension`` makes an ``Extension`` of it)."""

    def process(self, frame: Frame, /) -> Any: ...


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
    """One stream's extension: created per stream by the server's factory.

    Classes need not spell all of it out: ``as_async_extension`` turns any class with a
    ``process`` method (plain or async, with or without ``open``, ``close`` and
    ``sequential``) into this, once per stream.
    """

    #: True: ``process`` sees one frame at a time, in stream order (a tracker, a motion
    #: detector); False: frames are processed concurrently, up to ``max_in_flight``.
    sequential: ClassVar[bool]

    async def open(self, descriptor: StreamDescriptor) -> None:
        """Accept (return) or refuse (raise ``ExtensionRefused``) the pipeline's descriptor."""

    async def process(self, frame: Frame) -> Result:
        """The inferences for one frame; None or empty for none."""

    async def close(self) -> None:
        """Always called once the stream is over, however it ended."""


class _ThreadedExtension:
    """An extension class whose plain ``def`` methods run in worker threads.

    A blocking method called on the event loop would stall every stream of the server;
    one awaited as if it were a coroutine would fail on the first frame. A call is
    abandoned when what awaits it is cancelled: ``process`` when its stream's frame
    timeout expires (SRV-4), ``open`` when its stream ends or the server drains,
    ``close`` past the close timeout (SRV-8). The thread cannot be killed, but the
    stream ends on time and the thread's result is dropped; one that never returns held
    the server's drain for ever.
    """

    sequential: ClassVar[bool] = False

    def __init__(self, extension: object, limiter: anyio.CapacityLimiter | None) -> None:
        self._extension = extension
        self._limiter = limiter
        self._open = getattr(extension, "open", None)
        self._process = extension.process  # type: ignore[attr-defined]
        self._close = getattr(extension, "close", None)

    async def _call(self, method: Callable[..., Any] | None, *args: Any) -> Any:
        if method is None:
            return None
        if inspect.iscoroutinefunction(method):
            return await method(*args)
        result = await anyio.to_thread.run_sync(
            method, *args, limiter=self._limiter, abandon_on_cancel=True
        )
        return await result if inspect.isawaitable(result) else result

    async def open(self, descriptor: StreamDescriptor) -> None:
        await self._call(self._open, descriptor)

    async def process(self, frame: Frame) -> Result:
        result: Result = await self._call(self._process, frame)
        return result

    async def close(self) -> None:
        await self._call(self._close)


class _SequentialThreadedExtension(_ThreadedExtension):
    sequential: ClassVar[bool] = True


def check_extension_class(cls: type) -> None:
    """Refuse, when it is loaded, a class that cannot serve a stream (not on the first frame)."""
    process = getattr(cls, "process", None)
    if not callable(process):
        raise TypeError(
            f"extension class {cls.__qualname__} has no process(frame) method; an extension "
            "class needs process(frame) (open(descriptor) and close() are optional), and "
            "each may be 'def' or 'async def'"
        )
    for name in ("open", "close"):
        method = getattr(cls, name, None)
        if method is not None and not callable(method):
            raise TypeError(f"extension class {cls.__qualname__}: {name} is not a method")


def as_async_extension(
    extension: object, *, limiter: anyio.CapacityLimiter | None = None
) -> Extension:
    """``extension`` itself when it is the whole protocol, else an adapter that is.

    The one place where an author's class is taken as it comes: plain ``def`` methods
    run in worker threads, a missing ``open`` or ``close`` does nothing, a missing
    ``sequential`` is False.
    """
    methods = [getattr(extension, name, None) for name in ("open", "process", "close")]
    declared = isinstance(getattr(type(extension), "sequential", None), bool)
    if declared and all(inspect.iscoroutinefunction(method) for method in methods):
        return extension  # type: ignore[return-value]  # the whole protocol, as it is
    if not callable(methods[1]):
        check_extension_class(type(extension))
    if getattr(extension, "sequential", False):
        return _SequentialThreadedExtension(extension, limiter)
    return _ThreadedExtension(extension, limiter)


class ExtensionBase:
    """A base for extension classes: concurrent, accepting every descriptor, no cleanup.

    Subclass it and write ``process``; override ``open`` to refuse descriptors, ``close``
    to free what ``open`` took, ``sequential`` for frames one at a time in order.
    """

    sequential: ClassVar[bool] = False

    async def open(self, descriptor: StreamDescriptor) -> None:
        return None

    async def process(self, frame: Frame) -> Result:
        raise NotImplementedError(f"{type(self).__qualname__} does not define process(frame)")

    async def close(self) -> None:
        return None


class FunctionExtension:
    """An ``Extension`` around a processor function, sync (in a worker thread) or async."""

    sequential: ClassVar[bool] = False

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
        # Abandoned when the frame timeout expires (SRV-4): the stream ends on time.
        return await anyio.to_thread.run_sync(
            self._processor,  # type: ignore[arg-type]  # not async, checked above
            frame,
            limiter=self._limiter,
            abandon_on_cancel=True,
        )

    async def close(self) -> None:
        return None
