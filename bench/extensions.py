"""Extensions for ``avaproto serve --extension bench.extensions:NAME`` in the benchmark.

``null`` (built in) measures the transport alone; ``sleepy`` stands for a remote model
or an accelerator: each frame waits 20 ms without holding the CPU, as the baselines'
processing does in the latency-bound cell.
"""

from __future__ import annotations

import anyio

from avaproto.engine.frame import Frame

#: Seconds of processing per frame in the latency-bound cell, on every server.
DELAY = 0.02


async def sleepy(frame: Frame) -> None:
    """An async processor that awaits 20 ms and infers nothing."""
    await anyio.sleep(DELAY)
