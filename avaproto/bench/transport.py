"""Frames per second through a server: avaproto's against a grpcio server, same run.

Each server runs in a process of its own and answers every sample with an empty
acknowledgement (avaproto's ``null`` extension; for grpcio, a handler that parses each
message with the official protobuf runtime and answers it). One load generator, the
same for both, streams pre-encoded 416 x 416 RGB24 samples embedded in the messages,
keeping a window of samples in flight, as a pipeline does. The load generator is
grpcio with the official runtime (C code), so that it is not what limits either
server; the ratio avaproto / grpcio is the figure to watch.

Run as ``python -m avaproto.bench --only transport``; ``python -m
avaproto.bench.transport serve KIND`` is the server process it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.resources
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from ..messages import METHOD_PATH

PROTOS = Path(__file__).resolve().parents[2] / "protos"
SERVICE, _, METHOD = METHOD_PATH.strip("/").rpartition("/")


def official_messages(directory: str) -> ModuleType:
    """The protos compiled by protoc for the official runtime (a dev dependency)."""
    from grpc_tools import protoc

    include = importlib.resources.files("grpc_tools") / "_proto"
    sources = sorted(p.name for p in PROTOS.glob("*.proto"))
    if protoc.main(
        ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={directory}", *sources]
    ):
        raise RuntimeError(f"protoc failed on {sources}")
    sys.path.insert(0, directory)
    return importlib.import_module("extension_pb2")


async def _serve_grpcio(ready: Any) -> None:
    import grpc

    with tempfile.TemporaryDirectory() as scratch:
        pb = official_messages(scratch)

        async def process(requests: Any, context: Any) -> Any:
            number = 0
            async for request in requests:
                number += 1
                reply = pb.MediaStreamMessage(
                    sequence_number=number, ack_sequence_number=request.sequence_number
                )
                if request.HasField("media_stream_descriptor"):
                    descriptor = reply.media_stream_descriptor
                    descriptor.extension_identifier = "grpcio"
                    descriptor.media_descriptor.timescale = (
                        request.media_stream_descriptor.media_descriptor.timescale
                    )
                else:
                    reply.media_sample.timestamp = request.media_sample.timestamp
                yield reply

        server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", 64 << 20)],
        )
        handler = grpc.stream_stream_rpc_method_handler(
            process,
            request_deserializer=pb.MediaStreamMessage.FromString,
            response_serializer=pb.MediaStreamMessage.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready(port)
        await server.wait_for_termination()


async def _serve_avaproto(ready: Any) -> None:
    from ..extensions.null import NullExtension
    from ..server import serve

    await serve(NullExtension, port=0, ready=lambda server: ready(server.port))


def serve_main(kind: str) -> None:
    """The server process: print the port, serve until killed."""

    def ready(port: int) -> None:
        print(port, flush=True)

    runner = _serve_grpcio if kind == "grpcio" else _serve_avaproto
    asyncio.run(runner(ready))


async def _drive(pb: ModuleType, port: int, frames: int, window: int, size: int) -> float:
    """Stream ``frames`` samples through the server at ``port``; return frames per second."""
    import grpc

    content = bytes(size * size * 3)
    descriptor = pb.MediaStreamMessage(sequence_number=1)
    stream_descriptor = descriptor.media_stream_descriptor
    stream_descriptor.graph_identifier.graph_instance_name = "bench"
    media = stream_descriptor.media_descriptor
    media.timescale = 90000
    sample_format = media.video_frame_sample_format
    sample_format.encoding = 3  # RAW
    sample_format.pixel_format = 60  # RGB24
    sample_format.dimensions.width = size
    sample_format.dimensions.height = size
    samples = [
        pb.MediaStreamMessage(
            sequence_number=n + 2,
            media_sample=pb.MediaSample(timestamp=n * 3000, content_bytes={"bytes": content}),
        ).SerializeToString()
        for n in range(frames)
    ]
    slots = asyncio.Semaphore(window)
    answered = 0

    async def requests() -> Any:
        yield descriptor.SerializeToString()
        for sample in samples:
            await slots.acquire()
            yield sample

    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        call = channel.stream_stream(
            METHOD_PATH, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )(requests())
        started = time.perf_counter()
        first = True
        async for _ in call:
            if first:
                first = False  # the descriptor's answer takes no slot
                continue
            answered += 1
            slots.release()
            if answered == frames:
                break
        elapsed = time.perf_counter() - started
        call.cancel()
    return frames / elapsed


def _start(kind: str) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "avaproto.bench.transport", "serve", kind],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def measure(
    frames: int = 600, window: int = 8, size: int = 416, repeat: int = 3
) -> dict[str, list[float]]:
    """Frames per second of each server, alternating runs so drift hits both alike."""
    results: dict[str, list[float]] = {"grpcio": [], "avaproto": []}
    servers = {kind: _start(kind) for kind in results}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            pb = official_messages(scratch)
            for _, port in servers.values():  # warm up each once
                asyncio.run(_drive(pb, port, min(frames, 50), window, size))
            for _ in range(repeat):
                for kind, (_, port) in servers.items():
                    results[kind].append(asyncio.run(_drive(pb, port, frames, window, size)))
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(10)
    return results


def report(results: dict[str, list[float]], frames: int, size: int) -> str:
    baseline = statistics.median(results["grpcio"])
    lines = [
        f"{frames} embedded {size}x{size} RGB24 samples per run, answered with acks only; "
        "ratio = median fps / grpcio median fps",
        f"{'server':<16} {'median fps':>11} {'min':>8} {'max':>8} {'ratio':>7}",
    ]
    for kind, runs in results.items():
        lines.append(
            f"{kind:<16} {statistics.median(runs):>11.0f} {min(runs):>8.0f} {max(runs):>8.0f} "
            f"{statistics.median(runs) / baseline:>7.2f}"
        )
    return "\n".join(lines)


def run(repeat: int = 3, frames: int = 600, size: int = 416) -> str:
    return report(measure(frames=frames, size=size, repeat=repeat), frames, size)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m avaproto.bench.transport")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("kind", choices=["grpcio", "avaproto"])
    arguments = parser.parse_args()
    serve_main(arguments.kind)
