"""The cells of the benchmark: each one load, driven through every server by every client.

Frame counts are per stream and per run, sized on a 2-core machine so that one run
lasts about half a second (shorter runs move by more than the differences measured)
and one round of a cell (every server, every client) a few seconds; ``--frames``
overrides them. Through shared memory the clients write each slot of their segment once
(``avaproto.bench.drive``; ``--rewrite-frames`` writes every frame), so those cells
measure what the messages cost: with every 1080p frame's 6 MB copied in, the client's
copying set the pace whatever the server (it used 500 to 570 µs of CPU a frame, the
servers 115 to 170), and the cell compared nothing. The latency-bound cell runs 160
frames, twenty windows of 8: it measures what a slow processor sustains, and in a run of
four windows the first (the connection's start, every frame sent at once) was a quarter
of the time and set the figure. Its runs on the baselines, one frame at a time, take
about 3.5 s.
``rss`` and ``copies`` are not cells of this kind: they watch avaproto's server alone.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The servers and the clients, in the order of a round (rotated round by round).
SERVERS = ("grpcio-sync", "grpcio-aio", "avaproto")
BASELINES = ("grpcio-sync", "grpcio-aio")
CLIENTS = ("grpcio", "avaproto")
#: What ``--cells`` accepts besides the cells below.
SPECIAL = ("rss", "copies")


@dataclass(frozen=True)
class Cell:
    name: str
    #: One line saying what the cell measures, for the table's legend.
    title: str
    transfer: str
    width: int
    height: int
    #: Frames per stream in one measured run.
    frames: int
    window: int = 8
    #: Frames per second per stream (None: as fast as the window allows).
    rate: float | None = None
    #: Seconds of processing per frame on every server (0: none).
    delay: float = 0.0
    streams: int = 1
    #: Whether latency, not throughput, is the figure of this cell.
    latency: bool = False

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    def load(self, target: str, frames: int | None = None) -> dict[str, object]:
        """What a client worker is sent for one run of this cell against ``target``."""
        return {
            "target": target,
            "transfer": self.transfer,
            "width": self.width,
            "height": self.height,
            "frames": frames or self.frames,
            "window": self.window,
            "rate": self.rate,
            "streams": self.streams,
        }


CELLS: dict[str, Cell] = {
    cell.name: cell
    for cell in (
        Cell("embedded-416", "416x416 RGB24 embedded, no-op", "embedded", 416, 416, 600),
        Cell("shm-416", "416x416 RGB24 shared memory, no-op", "shm", 416, 416, 6000),
        Cell("embedded-1080", "1920x1080 RGB24 embedded, no-op", "embedded", 1920, 1080, 60),
        Cell("shm-1080", "1920x1080 RGB24 shared memory, no-op", "shm", 1920, 1080, 6000),
        Cell(
            "latency-bound",
            "416x416 embedded, 20 ms of processing per frame",
            "embedded",
            416,
            416,
            160,
            delay=0.02,
            latency=True,
        ),
        Cell(
            "latency-30fps",
            "416x416 shared memory paced at 30 fps: per-frame latency",
            "shm",
            416,
            416,
            30,
            rate=30.0,
            latency=True,
        ),
        Cell(
            "streams-8",
            "8 concurrent streams, 416x416 shared memory: aggregate fps",
            "shm",
            416,
            416,
            800,
            streams=8,
        ),
    )
}
