"""The two grpcio servers avaproto is measured against, written as the samples are.

Both answer the pipeline's descriptor, then handle one frame at a time per stream, as
the published sample extensions do: read a message, touch its frame (embedded: the
bytes; shared memory: the slice of the segment the descriptor names, mapped read-only
once per stream), optionally wait ``--delay`` seconds as a remote model would, and
answer with a message that acknowledges it (its own sequence numbers 1, 2, ...; the
sample's timestamp echoed, no inferences: the bytes avaproto's server sends with
``bench.extensions:touch``, which touches each frame the same way). Touching reads the
first and the last byte, so the frame is really reached and no copy is made beyond what
grpcio and protobuf make to hand it over.

* ``sync``: ``grpc.server(ThreadPoolExecutor(max_workers=3))``, as in the samples: each
  stream holds one of the 3 threads for its whole life, so a 4th stream waits.
* ``aio``: ``grpc.aio.server()``, the handler an async generator on the event loop; the
  delay is ``await asyncio.sleep``, so no thread is needed for the processing.

``python -m bench.baselines sync|aio [--delay S]`` prints the port it listens on (bound
to port 0 on 127.0.0.1) on stdout and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import mmap
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

from .official import GRPC_OPTIONS, METHOD, SERVICE, official_messages

#: The samples' worker pool: ``grpc.server(futures.ThreadPoolExecutor(max_workers=3))``.
SYNC_WORKERS = 3
SHM_DIRECTORY = "/dev/shm"


class _Stream:
    """One stream's state: its sequence numbers and its mapped segment, if any."""

    def __init__(self, pb: ModuleType, identifier: str) -> None:
        self.pb = pb
        self.identifier = identifier
        self.number = 0
        self.mapping: mmap.mmap | None = None
        self.view: memoryview | None = None
        self.touched = 0

    def answer_descriptor(self, request: Any) -> Any:
        descriptor = request.media_stream_descriptor
        if descriptor.HasField("shared_memory_buffer_transfer_properties"):
            properties = descriptor.shared_memory_buffer_transfer_properties
            path = os.path.join(SHM_DIRECTORY, os.path.basename(properties.handle_name))
            fd = os.open(path, os.O_RDONLY)
            try:
                self.mapping = mmap.mmap(
                    fd, properties.length_bytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ
                )
            finally:
                os.close(fd)
            self.view = memoryview(self.mapping)
        self.number += 1
        reply = self.pb.MediaStreamMessage(
            sequence_number=self.number, ack_sequence_number=request.sequence_number
        )
        reply.media_stream_descriptor.extension_identifier = self.identifier
        reply.media_stream_descriptor.media_descriptor.timescale = (
            descriptor.media_descriptor.timescale
        )
        return reply

    def touch_and_answer(self, request: Any) -> Any:
        sample = request.media_sample
        if sample.HasField("content_reference"):
            assert self.view is not None, "a content reference without a segment"
            reference = sample.content_reference
            frame = self.view[
                reference.address_offset : reference.address_offset + reference.length_bytes
            ]
            self.touched += frame[0] + frame[-1]
            frame.release()
        elif sample.HasField("content_bytes"):
            data = sample.content_bytes.bytes
            self.touched += data[0] + data[-1]
        self.number += 1
        reply = self.pb.MediaStreamMessage(
            sequence_number=self.number, ack_sequence_number=request.sequence_number
        )
        reply.media_sample.timestamp = sample.timestamp
        return reply

    def close(self) -> None:
        if self.view is not None:
            self.view.release()
        if self.mapping is not None:
            self.mapping.close()


def _handler(pb: ModuleType, behaviour: Any) -> Any:
    import grpc

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            METHOD: grpc.stream_stream_rpc_method_handler(
                behaviour,
                request_deserializer=pb.MediaStreamMessage.FromString,
                response_serializer=pb.MediaStreamMessage.SerializeToString,
            )
        },
    )


def serve_sync(delay: float, announce: Any) -> None:
    """grpcio's synchronous server: a thread per stream, one frame at a time."""
    server, port = start_sync(delay)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    announce(port)
    stopped.wait()
    server.stop(grace=1).wait()


def start_sync(delay: float = 0.0) -> tuple[Any, int]:
    """grpcio's synchronous server (``serve_sync``'s) started on a loopback port of its
    own: (the server, its port)."""
    import grpc

    pb = official_messages()

    def process(requests: Iterator[Any], context: Any) -> Iterator[Any]:
        stream = _Stream(pb, "grpcio-sync")
        try:
            first = next(requests, None)
            if first is None:
                return
            yield stream.answer_descriptor(first)
            for request in requests:
                if not request.HasField("media_sample"):
                    continue  # an acknowledgement alone
                if delay:
                    time.sleep(delay)
                yield stream.touch_and_answer(request)
        finally:
            stream.close()

    server = grpc.server(ThreadPoolExecutor(max_workers=SYNC_WORKERS), options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers([_handler(pb, process)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


async def serve_aio(delay: float, announce: Any) -> None:
    """grpcio's asyncio server: the handler an async generator, one frame at a time."""
    import grpc

    pb = official_messages()

    async def process(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        stream = _Stream(pb, "grpcio-aio")
        try:
            first = True
            async for request in requests:
                if first:
                    first = False
                    yield stream.answer_descriptor(request)
                    continue
                if not request.HasField("media_sample"):
                    continue
                if delay:
                    await asyncio.sleep(delay)
                yield stream.touch_and_answer(request)
        finally:
            stream.close()

    server = grpc.aio.server(options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers([_handler(pb, process)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    announce(port)
    await stopped.wait()
    await server.stop(grace=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__)
    parser.add_argument("kind", choices=["sync", "aio"])
    parser.add_argument("--delay", type=float, default=0.0, help="seconds of processing")
    args = parser.parse_args(argv)

    def announce(port: int) -> None:
        print(port, flush=True)

    if args.kind == "sync":
        serve_sync(args.delay, announce)
    else:
        asyncio.run(serve_aio(args.delay, announce))
    return 0


if __name__ == "__main__":
    sys.exit(main())
