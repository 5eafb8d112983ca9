"""A watch on the event loop: one line when an extension blocks it (SRV-14).

Every stream of a server shares one event loop. An extension whose ``async def
process`` calls blocking code (``time.sleep``, a synchronous model, a file read) stops
every stream for as long as it blocks, and nothing fails: acknowledgements are late on
all of them, and the log is silent. The watch wakes every 100 ms and compares when it
woke with when it asked to; a lag over the threshold is logged once per stream, naming
the extension being served and how to fix it.

A lag cannot say which stream blocked, only which were being served: a server serves
one extension, so the name is the culprit's, and the first line says when it began.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol

import anyio

log = logging.getLogger("avaproto.server")

#: How often the watch wakes (seconds); a lag shorter than this goes unseen.
INTERVAL = 0.1


class Served(Protocol):
    """What the watch needs of a stream being served."""

    @property
    def peer(self) -> str: ...

    @property
    def extension(self) -> str: ...


async def watch_loop_lag(
    threshold: float,
    streams: Callable[[], Mapping[int, Served]],
    reading: Callable[[], float] = lambda: 0.0,
    *,
    interval: float = INTERVAL,
) -> None:
    """Log when the loop wakes more than ``threshold`` s late; run until cancelled.

    ``reading()`` is the time the loop has spent reading HTTP/2 so far: a lag mostly
    spent there is a peer's flood, which the connection limits end, not an extension's.
    """
    warned: set[int] = set()
    quiet = flooded = False  # the lag outside any stream, or in HTTP/2, was reported
    while True:
        asked = anyio.current_time() + interval
        read_before = reading()
        await anyio.sleep(interval)
        lag = anyio.current_time() - asked
        if lag <= threshold:
            continue
        read = reading() - read_before
        if read >= lag / 2:
            if not flooded:
                flooded = True
                log.warning(
                    "[SRV-14] the event loop was blocked for %.0f ms; of the last %.0f ms it "
                    "spent %.0f reading HTTP/2 frames: a peer floods the server (the "
                    "connection limits close such connections, in lines naming the peer) "
                    "(--loop-lag-warning %g s)",
                    lag * 1000,
                    (interval + lag) * 1000,
                    read * 1000,
                    threshold,
                )
            continue
        serving = streams()
        warned &= serving.keys()
        fresh = {key: stream for key, stream in serving.items() if key not in warned}
        if not serving and not quiet:
            quiet = True
            log.warning(
                "[SRV-14] the event loop was blocked for %.0f ms outside any stream; every "
                "connection waited meanwhile (--loop-lag-warning %g s)",
                lag * 1000,
                threshold,
            )
        by_extension: dict[str, list[str]] = {}
        for stream in fresh.values():
            by_extension.setdefault(stream.extension, []).append(stream.peer)
        warned |= fresh.keys()
        for extension, peers in by_extension.items():
            more = f" and {len(peers) - 1} more" if len(peers) > 1 else ""
            log.warning(
                "[SRV-14] the event loop was blocked for %.0f ms while serving %s (the stream "
                "of %s%s); every stream waited meanwhile. If its process is an async def, it "
                "must not block: make process a plain def (avaproto then runs it in a worker "
                "thread), or move the blocking call into anyio.to_thread.run_sync "
                "(--loop-lag-warning %g s)",
                lag * 1000,
                extension,
                peers[0],
                more,
                threshold,
            )
