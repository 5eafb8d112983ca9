"""The public API as authors use it, checked by ``mypy --strict`` (``make typecheck``).

Never run: the types are the test. Each use is one the README or a docstring shows; a
change that makes one of them a type error fails the type check.
"""

from __future__ import annotations

import avaproto
from avaproto.media import inferences
from avaproto.messages import Inference
from avaproto.protocol.descriptor import StreamDescriptor
from avaproto.server import ExtensionServer, ServerConfig, running, serve


def detect(frame: avaproto.Frame) -> list[Inference]:
    return [inferences.motion(inferences.rectangle(0.1, 0.2, 0.3, 0.4))]


async def detect_later(frame: avaproto.Frame) -> list[Inference]:
    return detect(frame)


class Tracker:
    """Plain def methods, as the README allows: each runs in a worker thread."""

    sequential = True

    def open(self, descriptor: StreamDescriptor) -> None:
        if descriptor.extension_configuration == "refuse":
            raise avaproto.ExtensionRefused("this tracker needs video")

    def process(self, frame: avaproto.Frame) -> list[Inference]:
        return detect(frame)

    def close(self) -> None:
        pass


class OnlyProcess:
    async def process(self, frame: avaproto.Frame) -> list[Inference]:
        return []


class Based(avaproto.ExtensionBase):
    async def process(self, frame: avaproto.Frame) -> list[Inference]:
        return []


def ready(server: ExtensionServer) -> None:
    print(f"serving on port {server.port}", flush=True)


async def uses() -> None:
    await serve(detect, port=0, ready=ready)
    await serve(detect_later, config=ServerConfig(port=0))
    await serve(Tracker)
    await serve(OnlyProcess)
    await serve(Based)
    await serve(lambda: Tracker())
    async with running(Tracker, ServerConfig(port=0)) as server:
        assert server.port > 0
