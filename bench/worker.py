"""A client process: runs the loads it is sent, one at a time, and answers with the results.

``python -m bench.worker grpcio|avaproto`` reads one JSON object per line on stdin (a
load: target, transfer, width, height, frames, window, rate, streams, and
``rewrite_frames`` for shared memory; ``where: true``
runs it under ``bench.copies.LineAttribution``) and writes one JSON object per line on
stdout (``drive``'s result, or ``{"error": ...}``). A process per client, started once
and reused: its imports are paid once, and no client ever shares an interpreter with a
server or with the other client.

The avaproto worker imports avaproto only, never grpcio. It writes shared-memory frames
through a mapping (``shm_write="map"``), as the grpcio client does; avaproto's default,
``pwrite``, costs more per frame (``avaproto.media.shared_memory``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

from .copies import LineAttribution

Driver = Callable[..., Coroutine[Any, Any, dict[str, Any]]]


def _driver(kind: str) -> Driver:
    if kind == "grpcio":
        from .grpcio_client import drive
        from .official import official_messages

        official_messages()  # compile once, before the first load
        return drive
    from avaproto.bench.drive import drive_target

    async def drive_avaproto(
        target: str, *, width: int, height: int, **load: Any
    ) -> dict[str, Any]:
        # Frames go into shared memory through a mapping, as the grpcio client (and most
        # pipelines) write them: the clients are compared doing the same work.
        return await drive_target(
            target, size=(width, height), keep_latencies=True, shm_write="map", **load
        )

    return drive_avaproto


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None, for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("kind", choices=["grpcio", "avaproto"])
    args = parser.parse_args(argv)
    if args.kind == "avaproto":
        from avaproto.allocator import keep_large_buffers

        keep_large_buffers()  # as avaproto's command line does at its start
    drive = _driver(args.kind)
    print(json.dumps({"ready": args.kind}), flush=True)
    for line in sys.stdin:
        load = json.loads(line)
        target = load.pop("target")
        attribution = LineAttribution() if load.pop("where", False) else None
        try:
            if attribution is not None:
                attribution.start()
            try:
                result = asyncio.run(drive(target, **load))
            finally:
                lines = attribution.stop() if attribution is not None else None
            if lines is not None:
                result["where"] = lines
        except Exception as error:  # one load failed: say why, keep serving loads
            while isinstance(error, ExceptionGroup) and error.exceptions:
                error = error.exceptions[0]
            text = "".join(traceback.format_exception_only(type(error), error)).strip()
            result = {"error": f"{args.kind} client: {text}"}
        print(json.dumps(finite(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
