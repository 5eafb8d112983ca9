"""How many times avaproto's server copies a frame's bytes, and which lines of Python do it.

Method. A copy of a frame needs a buffer to land in, so counting the large allocations
counts the copies. tracemalloc's snapshots see only the blocks alive when they are
taken, and a copy made and freed while a message passes through would escape them;
glibc's ``mtrace`` logs *every* malloc, calloc and realloc with its size instead. The
server runs in a process of its own (``python -m bench.copies``:
``avaproto.server.running`` with ``bench.extensions:touch``, which reads each frame's
first and last byte as every server in the benchmark does, with ``shm_access="map"`` as
there; in the default ``"read"`` mode the frame's bytes are read with ``preadv`` into a
buffer reused from frame to frame, a copy this method cannot see, since nothing is
allocated for it) started with ``LD_PRELOAD=libc_malloc_debug.so.0`` (glibc 2.34 and later); it
switches tracing on just before a stream of N frames sent by the grpcio client (another
process, so none of its allocations are counted) and off when the stream has ended.
Two figures per sample:

* **frame-sized allocations**: blocks of at least one frame's size (a realloc counts
  when it grows a block past that size): each is a whole copy of the frame.
* **large-block bytes / frame**: the bytes written into blocks of 64 KiB or more
  (each block counted at most at its final size; a realloc counts what it adds),
  divided by the frame's size: it also sees a frame copied in pieces, like the
  socket's reads, which land in 256 KiB buffers. A read from the socket is a copy no
  server avoids; an ideal server shows about 1 for embedded frames and about 0 for
  frames in shared memory.

Per-stream costs (the connection's buffers, opening the segment) are spread over the N
frames, and Python's memory mapping of a segment is not a malloc, so it is not counted.
Where the library is missing these figures are reported as unavailable, with the reason.

Where. A second stream of N frames runs under ``tracemalloc`` with a line tracer
(``sys.settrace``): at every line of Python executed, the rise of tracemalloc's peak
since the previous line is charged to that previous line when it is 64 KiB or more,
and the peak is reset. A line's C calls (a slice, a ``join``, a socket read) are
charged to it; several transient blocks within one line count as the largest rise
only. A block is charged at its allocated size: asyncio's socket read allocates 256 KiB
whatever arrives, so that line shows about half a 416x416 frame per sample even with
shared memory, where mtrace's figure (the block's final size) shows the few bytes that
arrived. Slow (every line is traced), so only the attribution is kept from that
stream, never its timing. The same attribution runs in avaproto's client process
(``bench.worker``, ``where: true``) while it sends the same frames.

Neither view sees a copy into memory that exists already: the clients' write of each
frame into its shared-memory slot, the one copy that transfer needs, allocates nothing.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import anyio.to_thread

DEBUG_LIBRARY = "libc_malloc_debug.so.0"
ROOT = Path(__file__).resolve().parents[1]
#: Blocks at least this large count towards the bytes figure.
LARGE_BLOCK = 64 * 1024


def tracing_available() -> str | None:
    """None when mtrace can be used here, else why not."""
    if not sys.platform.startswith("linux"):
        return "mtrace needs Linux and glibc"
    try:
        ctypes.CDLL(DEBUG_LIBRARY)
    except OSError:
        return f"{DEBUG_LIBRARY} (glibc 2.34 or later) is not installed"
    return None


def _tracer() -> tuple[Callable[[], None], Callable[[], None]]:
    """glibc's mtrace and muntrace from the preloaded debug library.

    ``dlsym`` would find libc's own ``mtrace`` (a stub since glibc 2.34): the working
    one is the debug library's, reachable only by its symbol version.
    """
    libc = ctypes.CDLL(None)
    libc.dlvsym.restype = ctypes.c_void_p
    libc.dlvsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    handle = ctypes.CDLL(DEBUG_LIBRARY)._handle
    functions = []
    for name in (b"mtrace", b"muntrace"):
        address = libc.dlvsym(handle, name, b"GLIBC_2.2.5")
        if not address:
            raise RuntimeError(f"{DEBUG_LIBRARY} has no {name.decode()}")
        functions.append(ctypes.CFUNCTYPE(None)(address))
    return functions[0], functions[1]


@dataclass(frozen=True)
class Allocations:
    #: Blocks of at least ``frame_bytes`` (whole copies of a frame).
    frame_sized: int
    #: Bytes in blocks of at least ``LARGE_BLOCK``.
    large_bytes: int


def count_allocations(lines: Iterable[str], frame_bytes: int) -> Allocations:
    """Tally an mtrace log: ``@ caller + ADDR SIZE`` (malloc), ``< ADDR`` then ``> ADDR SIZE``
    (realloc's old and new block), ``- ADDR`` (free).

    A block's bytes count once, at most its final size: a socket read allocates 256 KiB
    and shrinks the block to what arrived, which is what was copied; a buffer grown by
    realloc counts what each growth added.
    """
    sizes: dict[str, int] = {}
    counted: dict[str, int] = {}  # bytes counted for each live large block so far
    frame_sized = large_bytes = 0
    old_size = old_counted = 0  # the block a realloc's "<" line named
    for line in lines:
        parts = line.split()
        if len(parts) < 3 or parts[0] != "@":
            continue
        kind = parts[-2] if parts[-2] in ("<", "-") else parts[-3] if len(parts) > 3 else ""
        if kind in ("<", "-"):
            old_size = sizes.pop(parts[-1], 0)
            old_counted = counted.pop(parts[-1], 0)
            if kind == "-":
                large_bytes += old_counted
                old_size = old_counted = 0
            continue
        if kind not in ("+", ">"):
            continue
        address, size = parts[-2], int(parts[-1], 16)
        if kind == "+":
            old_size = old_counted = 0
        sizes[address] = size
        if size >= frame_bytes > old_size:
            frame_sized += 1
        grown = old_counted + max(0, size - old_size) if size >= LARGE_BLOCK else old_counted
        counted[address] = min(grown, size)
        old_size = old_counted = 0
    large_bytes += sum(counted.values())
    return Allocations(frame_sized, large_bytes)


class LineAttribution:
    """Charges each rise of tracemalloc's peak of ``LARGE_BLOCK`` or more to a line."""

    def __init__(self) -> None:
        self.bytes: Counter[tuple[str, int, str]] = Counter()
        self.blocks: Counter[tuple[str, int, str]] = Counter()
        self._line: tuple[str, int, str] | None = None
        self._current = 0

    def trace(self, frame: FrameType, event: str, argument: Any) -> Any:
        current, peak = tracemalloc.get_traced_memory()
        if self._line is not None and peak - self._current >= LARGE_BLOCK:
            self.bytes[self._line] += peak - self._current
            self.blocks[self._line] += 1
        tracemalloc.reset_peak()
        self._current = current
        self._line = (frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)
        return self.trace

    def start(self) -> None:
        tracemalloc.start()
        sys.settrace(self.trace)

    def stop(self) -> list[dict[str, Any]]:
        sys.settrace(None)
        tracemalloc.stop()
        return [
            {"file": line[0], "line": line[1], "function": line[2], "bytes": total,
             "blocks": self.blocks[line]}
            for line, total in self.bytes.most_common()
        ]  # fmt: skip


def shorten(path: str) -> str:
    """A source path as people name it: ``h2/frame_buffer.py``, ``asyncio/events.py``."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    if "/lib/python3" in path:
        return path.split("/lib/python3", 1)[1].partition("/")[2]
    return path.removeprefix(f"{ROOT}{os.sep}")


async def _serve(trace_directory: str, mtrace: bool) -> None:
    """The traced server: its port on stdout; then, on stdin, ``mtrace NAME`` or
    ``where NAME`` to start tracing into NAME in ``trace_directory``, ``stop`` to stop.
    Every command is echoed once done."""
    from avaproto.engine.config import EngineConfig
    from avaproto.server import running
    from avaproto.transport.grpc_server import ServerConfig

    from .extensions import touch

    start_mtrace, stop_mtrace = _tracer() if mtrace else (None, None)
    attribution: tuple[LineAttribution, str] | None = None
    config = ServerConfig(host="127.0.0.1", port=0, engine=EngineConfig(shm_access="map"))
    async with running(touch, config) as server:
        print(server.port, flush=True)
        while True:
            line = (await anyio.to_thread.run_sync(sys.stdin.readline)).split()
            if not line:
                break
            if line[0] == "mtrace" and start_mtrace is not None:
                os.environ["MALLOC_TRACE"] = os.path.join(trace_directory, line[1])
                start_mtrace()
            elif line[0] == "where":
                attribution = (LineAttribution(), os.path.join(trace_directory, line[1]))
                attribution[0].start()
            elif line[0] == "stop":
                if stop_mtrace is not None:
                    stop_mtrace()
                if attribution is not None:
                    rows = attribution[0].stop()
                    with open(attribution[1], "w") as file:
                        json.dump(rows, file)
                    attribution = None
            print(" ".join(line), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.copies")
    parser.add_argument("trace_directory")
    parser.add_argument("--mtrace", action="store_true", help="glibc's mtrace is preloaded")
    args = parser.parse_args(argv)
    anyio.run(_serve, args.trace_directory, args.mtrace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
