"""``avaproto demo``: the motion extension on a free port, fed a short clip.

Without ``--source``, the clip is generated: moving shapes, encoded to a real video file
on the fly when PyAV is installed (so the frames go through a real decoder), or sent as
synthetic frames otherwise.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .client import Transfer
from .engine.drive import Result
from .messages import Encoding, PixelFormat
from .protocol.video_format import VideoFormat

if TYPE_CHECKING:
    from .sources import SourceFrame

DEMO_SIZE = (640, 360)
DEMO_RATE = 30.0


def _clip(directory: Path, frames: int) -> tuple[Iterator[SourceFrame], str]:
    from .sources import open_source
    from .sources.synthetic import synthetic_frames

    generated = synthetic_frames(*DEMO_SIZE, count=frames, rate=DEMO_RATE)
    try:
        from .sources.video import encode_test_clip

        path = directory / "demo.mp4"
        encode_test_clip(path, (frame.rgb for frame in generated), DEMO_RATE)
    except ImportError:
        return iter(synthetic_frames(*DEMO_SIZE, count=frames, rate=DEMO_RATE)), "synthetic frames"
    return iter(
        open_source(str(path), size=None, frames=frames, rate=None)
    ), f"a clip encoded to {path.name}"


def _describe(result: Result, timescale: int) -> str | None:
    boxes = [i.motion.box for i in result.inferences if i.motion is not None and i.motion.box]
    if not boxes:
        return None
    shown = "; ".join(f"l={b.l:.2f} t={b.t:.2f} w={b.w:.2f} h={b.h:.2f}" for b in boxes[:3])
    more = f" (+{len(boxes) - 3})" if len(boxes) > 3 else ""
    seconds = result.timestamp / timescale
    # By its sequence number, as send and the server's log name samples (the first is 2).
    return f"sample {result.acknowledged} at {seconds:6.2f} s: motion {shown}{more}"


async def run_demo(source: str | None, *, frames: int, transfer: Transfer) -> int:
    from .extensions import load_extension
    from .send import SendOptions, send_frames
    from .server import running
    from .sources import open_source
    from .transport.grpc_server import ServerConfig

    with tempfile.TemporaryDirectory(prefix="avaproto-demo-") as scratch:
        if source is None:
            clip, what = _clip(Path(scratch), frames)
        else:
            clip, what = iter(open_source(source, size=None, frames=frames, rate=None)), source
        first = next(clip, None)
        if first is None:
            print(f"avaproto demo: {what} has no frames", file=sys.stderr)
            return 1
        height, width = first.rgb.shape[:2]
        fmt = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, width, height)

        def chained() -> Iterator[SourceFrame]:
            yield first
            yield from clip

        config = ServerConfig(port=0)
        async with running(load_extension("motion"), config, grace=2) as server:
            target = f"127.0.0.1:{server.port}"
            print(f"motion extension serving on {target}")
            print(f"sending {what}: {fmt}, {transfer} transfer")
            options = SendOptions(target=target, format=fmt, transfer=transfer)

            def show(result: Result) -> None:
                line = _describe(result, options.timescale)
                if line:
                    print(line)

            report = await send_frames(chained(), options, on_result=show)
    for line in report.lines():
        print(line)
    return 0 if report.answered == report.sent else 1
