"""``avaproto.serve``: serve an extension in a few lines.

    def detect(frame: avaproto.Frame) -> list[Inference]:
        return [avaproto.inferences.motion(box) for box in model(frame.rgb())]

    anyio.run(avaproto.serve, detect)   # port 5001, until SIGTERM or Ctrl-C

``serve`` takes a processor function (sync or async, from a ``Frame`` to inferences),
or an extension class (one instance per stream, with ``open``/``process``/``close``).
"""

from __future__ import annotations

import inspect
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace

import anyio

from .engine.config import EngineConfig
from .engine.extension import (
    FunctionExtension,
    Processing,
    Processor,
    check_extension_class,
)
from .engine.outcome import protocol_errors
from .transport.grpc_server import ExtensionFactory, ExtensionServer, ServerConfig, start_server
from .transport.watchdog import watch_loop_lag

log = logging.getLogger("avaproto.server")

#: What ``serve`` and ``running`` take: a processor function, an extension class (its
#: methods plain or async), or a factory of extension objects.
Servable = Processor | type[Processing] | ExtensionFactory


def as_factory(
    target: Servable, *, limiter: anyio.CapacityLimiter | None = None
) -> ExtensionFactory:
    """One extension per stream from a class, a factory, or a processor function.

    A class, or a callable taking no argument, is a factory; a callable taking one
    argument (the frame) is a processor, wrapped in ``FunctionExtension``.
    """
    if isinstance(target, type):
        check_extension_class(target)
        return target
    if not callable(target):
        raise TypeError(f"cannot serve {target!r}: expected a processor, a class or a factory")
    try:
        parameters = [
            p
            for p in inspect.signature(target).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        parameters = []
    if not parameters:
        return target  # type: ignore[return-value]
    processor: Processor = target  # type: ignore[assignment]
    return lambda: FunctionExtension(processor, limiter=limiter)


@asynccontextmanager
async def running(
    target: Servable, config: ServerConfig | None = None, *, grace: float = 5.0
) -> AsyncIterator[ExtensionServer]:
    """A server for the duration of the block, drained gracefully on the way out.

    The loop-lag watch (SRV-14) runs beside the block, in the server's task group.
    """
    config = config or ServerConfig()
    server = await start_server(as_factory(target, limiter=config.engine.thread_limiter), config)
    failed: Exception | None = None
    # The watch's own scope, not the group's: cancelling the group would cancel this
    # task too, the block's, which a grpclib client may have left with a cancellation
    # request it never withdrew (its calls cancel their task when a stream is reset).
    watching = anyio.CancelScope()

    async def watch(threshold: float) -> None:
        streams, guard = server.service.streams, server.guard
        with watching:
            await watch_loop_lag(
                threshold, lambda: streams, (lambda: guard.reading) if guard else lambda: 0.0
            )

    try:
        async with anyio.create_task_group() as tasks:
            if config.loop_lag_warning is not None:
                tasks.start_soon(watch, config.loop_lag_warning)
            try:
                yield server
            except Exception as error:  # raised below as itself, not in a group
                failed = error
            finally:
                watching.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await server.drain(grace)
    if failed is not None:
        raise failed


async def serve(
    target: Servable,
    *,
    host: str | None = None,
    port: int | None = None,
    config: ServerConfig | None = None,
    grace: float = 5.0,
    ready: Callable[[ExtensionServer], None] | None = None,
) -> None:
    """Serve ``target`` until cancelled or until SIGTERM/SIGINT, then drain for ``grace`` s.

    ``host`` and ``port``, when given, override ``config``'s (127.0.0.1 and 5001 by
    default).
    """
    config = config or ServerConfig(engine=EngineConfig())
    config = replace(
        config,
        host=config.host if host is None else host,
        port=config.port if port is None else port,
    )
    # The signals are caught before the server listens (and logs that it does), so a
    # supervisor that stops it the moment it is ready gets a drain, not an abrupt exit.
    # protocol_errors: a port in use is an OSError of its own, not a group of one.
    with _stop_signals() as signals, protocol_errors((Exception,)):
        async with anyio.create_task_group() as tasks:
            async with running(target, config, grace=grace) as server:
                if ready is not None:
                    ready(server)
                async for received in signals:
                    log.info("%s: draining for up to %.1f s", signal.Signals(received).name, grace)
                    break
                # The drain runs as the block ends; a second signal ends its grace.
                tasks.start_soon(_cut_short_on_signal, signals, server)
            tasks.cancel_scope.cancel()  # drained: the second signal is not awaited


@contextmanager
def _stop_signals() -> Iterator[AsyncIterator[int]]:
    """SIGTERM and SIGINT as they come; off the main thread, where none can be received,
    nothing (the caller's cancellation stops the server)."""
    if threading.current_thread() is threading.main_thread():
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            yield signals
    else:
        yield _none()


async def _none() -> AsyncIterator[int]:
    await anyio.sleep_forever()
    yield 0  # never reached: an async generator that yields nothing


async def _cut_short_on_signal(signals: AsyncIterator[int], server: ExtensionServer) -> None:
    async for received in signals:
        name, active = signal.Signals(received).name, server.service.active
        if active:
            streams = "the stream" if active == 1 else f"the {active} streams"
            log.warning("%s again: ending %s still open now", name, streams)
        else:  # GNU timeout signals the command, then its process group: twice
            log.info("%s again: no stream is open, stopping", name)
        server.cut_short()
        return


__all__ = [
    "ExtensionFactory",
    "ExtensionServer",
    "Servable",
    "ServerConfig",
    "as_factory",
    "running",
    "serve",
]
