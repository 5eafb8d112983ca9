"""``null``: acknowledges every frame and infers nothing.

It measures the protocol and the transport alone: what is left of a run's cost with
this extension is avaproto's (and the pipeline's), not a model's.
"""

from __future__ import annotations

from typing import ClassVar

from ..engine.extension import Result
from ..engine.frame import Frame
from ..protocol.descriptor import StreamDescriptor


class NullExtension:
    sequential: ClassVar[bool] = False

    async def open(self, descriptor: StreamDescriptor) -> None:
        return None

    async def process(self, frame: Frame) -> Result:
        return None

    async def close(self) -> None:
        return None
