"""Extensions for ``avaproto serve --extension bench.extensions:NAME`` in the benchmark.

Every server in the benchmark does the same with each frame: it reads the frame's first
and last byte (the baselines in ``bench.baselines`` do it through their mapping of the
segment, or in the received bytes), so that no server is timed skipping the frame.
``touch`` is that and nothing else; ``sleepy`` stands for a remote model or an
accelerator: it touches the frame, then waits 20 ms without holding the CPU, as the
baselines' processing does in the latency-bound cell.
"""

from __future__ import annotations

import anyio

from avaproto.engine.frame import Frame

#: Seconds of processing per frame in the latency-bound cell, on every server.
DELAY = 0.02


def touched(frame: Frame) -> int:
    """The frame's first and last byte, added (0 for a sample without content)."""
    data = frame.data
    return data[0] + data[-1] if data else 0


async def touch(frame: Frame) -> None:
    """An async processor that reads two bytes of the frame and infers nothing."""
    touched(frame)


async def sleepy(frame: Frame) -> None:
    """An async processor that reads two bytes of the frame, awaits 20 ms and infers
    nothing."""
    touched(frame)
    await anyio.sleep(DELAY)
