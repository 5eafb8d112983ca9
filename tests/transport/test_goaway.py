"""An extension going away (HTTP/2 GOAWAY) while the pipeline's stream runs (PIPE-7).

grpcio's server is the real peer (a dev dependency, as in the benchmark); the raw
HTTP/2 extensions below send what grpcio does not on demand: a GOAWAY with an error,
and one naming no stream.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from avaproto.client import connect
from avaproto.codec import decode_message, encode_framed
from avaproto.errors import StreamFailed
from avaproto.messages import MediaStreamMessage
from avaproto.status import Status
from tests.builders import extension_descriptor
from tests.transport.test_grpc import RGB24
from tests.transport.test_hostile_http2 import TIMEOUT, eventually, frame

pytestmark = pytest.mark.anyio

GOAWAY = 0x7
#: Longer than any test here runs: a stream that ends before it ended on its own.
ACK_TIMEOUT = 60.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib's transport runs on asyncio only


def goaway(last_stream_id: int, error: ErrorCodes, text: bytes = b"") -> bytes:
    head = last_stream_id.to_bytes(4, "big") + int(error).to_bytes(4, "big")
    return frame(GOAWAY, 0, 0, head + text)


@pytest.mark.rule("PIPE-7")
async def test_a_grpcio_extension_stopping_gracefully_answers_every_frame(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """grpcio's ``server.stop(grace)`` (what SIGTERM does in the published samples) sends
    GOAWAY, in two steps, and finishes its streams: every frame sent after it is
    answered, and the stream ends OK."""
    from bench.baselines import start_sync

    caplog.set_level(logging.INFO, "avaproto.client")
    server, port = start_sync()
    try:
        with anyio.fail_after(4 * TIMEOUT):
            async with connect(
                f"127.0.0.1:{port}", format=RGB24, window=2, ack_timeout=ACK_TIMEOUT
            ) as pipe:
                results = pipe.results()
                await pipe.send(bytes(RGB24.frame_bytes), timestamp=0)
                assert (await results.receive()).acknowledged == 2
                server.stop(grace=4 * TIMEOUT)  # GOAWAY now, then a grace to finish in
                await eventually(lambda: "is going away" in caplog.text)
                for timestamp in range(1, 6):
                    await pipe.send(bytes(RGB24.frame_bytes), timestamp=timestamp)
                    assert (await results.receive()).acknowledged == timestamp + 2
                await pipe.end()
                assert [result async for result in results] == []
    finally:
        server.stop(grace=None)
    [line] = [r.getMessage() for r in caplog.records if "is going away" in r.getMessage()]
    assert f"127.0.0.1:{port}" in line  # one line for grpcio's two GOAWAY frames


OnSamples = Callable[
    [anyio.abc.SocketStream, h2.connection.H2Connection, int, list[int]], Awaitable[bool | None]
]


_ANSWER_HEADERS = [(":status", "200"), ("content-type", "application/grpc")]


def extension_machine(window: int | None = None) -> h2.connection.H2Connection:
    """An extension's HTTP/2 state, its first SETTINGS queued; ``window``, if given, is
    its streams' initial flow-control window, in force from that SETTINGS frame."""
    machine = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
    )
    if window is not None:
        machine.local_settings = h2.settings.Settings(
            client=False, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
    machine.initiate_connection()
    return machine


async def serve_raw(
    client: anyio.abc.SocketStream,
    machine: h2.connection.H2Connection,
    on_data: Callable[[h2.events.DataReceived], Awaitable[bool]],
    headers: list[tuple[str, str]] = _ANSWER_HEADERS,
) -> None:
    """Run an extension's ``machine`` on ``client`` until the pipeline goes: its first
    SETTINGS, each stream answered with ``headers``, each DATA event handed to
    ``on_data`` (True: stop there), and what it queued sent after each read."""
    async with client:
        await client.send(machine.data_to_send())
        with contextlib.suppress(
            anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError
        ):
            while True:
                for event in machine.receive_data(await client.receive()):
                    if isinstance(event, h2.events.RequestReceived):
                        machine.send_headers(event.stream_id, headers)
                    elif isinstance(event, h2.events.DataReceived) and await on_data(event):
                        return
                await client.send(machine.data_to_send())


def _raw_extension(
    on_samples: OnSamples, samples: int = 1, headers: list[tuple[str, str]] = _ANSWER_HEADERS
) -> Callable[[anyio.abc.SocketStream], Awaitable[None]]:
    """An extension of raw HTTP/2: it answers the descriptor, then, once ``samples``
    samples are in, hands their numbers to ``on_samples(socket, h2, stream id,
    numbers)``, and reads on until the pipeline goes (or ``on_samples`` returns True)."""

    async def extension(client: anyio.abc.SocketStream) -> None:
        machine = extension_machine()
        received, numbers = b"", []

        async def on_data(event: h2.events.DataReceived) -> bool:
            nonlocal received
            stream_id = event.stream_id
            machine.acknowledge_received_data(len(event.data), stream_id)
            received += event.data
            while len(received) >= 5 + int.from_bytes(received[1:5], "big"):
                size = 5 + int.from_bytes(received[1:5], "big")
                numbers.append(decode_message(received[5:size]).sequence_number)
                received = received[size:]
                if len(numbers) == 1:
                    answer = MediaStreamMessage(
                        sequence_number=1,
                        ack_sequence_number=numbers[0],
                        media_stream_descriptor=extension_descriptor(),
                    )
                    machine.send_data(stream_id, encode_framed(answer))
                elif len(numbers) == 1 + samples:
                    await client.send(machine.data_to_send())
                    if await on_samples(client, machine, stream_id, numbers[1:]):
                        return True
            return False

        await serve_raw(client, machine, on_data, headers)

    return extension


@asynccontextmanager
async def _listening(
    extension: Callable[[anyio.abc.SocketStream], Awaitable[None]],
) -> AsyncIterator[int]:
    """``extension`` serving a loopback port of its own, for the block: the port."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, extension)
        yield listener.extra(anyio.abc.SocketAttribute.local_port)
        tasks.cancel_scope.cancel()


async def _first_sample_fails(on_sample: OnSamples) -> StreamFailed:
    """What ends a pipeline's stream whose first sample meets ``on_sample``."""
    async with _listening(_raw_extension(on_sample)) as port:
        with anyio.fail_after(TIMEOUT), pytest.raises(StreamFailed) as failed:
            async with connect(f"127.0.0.1:{port}", format=RGB24, ack_timeout=ACK_TIMEOUT) as pipe:
                await pipe.send(bytes(RGB24.frame_bytes), timestamp=0)
                await pipe.results().receive()
    return failed.value


@pytest.mark.rule("PIPE-7")
async def test_a_goaway_with_an_error_ends_the_stream_at_once() -> None:
    """The extension sends GOAWAY(ENHANCE_YOUR_CALM) and then nothing, the connection
    left open: the pipeline, waiting for an answer, ends with UNAVAILABLE naming the
    GOAWAY and its text at once, not at its acknowledgement deadline."""

    async def refuse(client: anyio.abc.SocketStream, _: object, stream_id: int, __: object) -> None:
        await client.send(goaway(stream_id, ErrorCodes.ENHANCE_YOUR_CALM, b"calm"))

    failure = await _first_sample_fails(refuse)
    assert failure.status is Status.UNAVAILABLE
    assert failure.detail == "the extension ended the connection (GOAWAY ENHANCE_YOUR_CALM: calm)"


@pytest.mark.rule("PIPE-7")
async def test_a_stream_the_extension_never_took_ends_as_connection_lost() -> None:
    """A GOAWAY without an error whose last stream id is below the pipeline's stream:
    that stream ends with UNAVAILABLE saying so, at once."""

    async def leave(client: anyio.abc.SocketStream, _: object, stream_id: int, __: object) -> None:
        await client.send(goaway(stream_id - 1, ErrorCodes.NO_ERROR))

    failure = await _first_sample_fails(leave)
    assert failure.status is Status.UNAVAILABLE
    assert "went away before taking stream 1" in failure.detail


# --- answers that arrive with the end of the call --------------------------------------


def _ending(ending: str) -> OnSamples:
    """The end of a call in one write, after the answers to the samples: trailers (error
    or OK) with a reset of the pipeline's direction (as gRPC servers end a call the
    pipeline still sends on), or trailers and the connection's end."""

    async def end(
        client: anyio.abc.SocketStream, machine: Any, stream_id: int, numbers: list[int]
    ) -> bool:
        for index, number in enumerate(numbers):
            answer = MediaStreamMessage(sequence_number=2 + index, ack_sequence_number=number)
            machine.send_data(stream_id, encode_framed(answer))
        status = "13" if ending == "error, reset" else "0"
        trailers = [("grpc-status", status), ("grpc-message", "over")]
        machine.send_headers(stream_id, trailers, end_stream=True)
        if ending == "OK, connection closed":
            machine.close_connection()
            await client.send(machine.data_to_send())
            return True
        machine.reset_stream(stream_id, ErrorCodes.NO_ERROR)
        await client.send(machine.data_to_send())
        return False

    return end


@pytest.mark.rule("PIPE-6")
@pytest.mark.parametrize("ending", ["error, reset", "OK, reset", "OK, connection closed"])
async def test_answers_that_arrive_with_the_end_of_the_call_reach_the_reader(
    ending: str,
) -> None:
    """Three answers and the call's end in one write: each answer is delivered, then the
    extension's status (an error ends the stream with it; OK ends it cleanly), however
    the reset or the connection's end cut the read short (PIPE-7's guard of the read)."""
    samples = 3
    read: list[int] = []
    async with _listening(_raw_extension(_ending(ending), samples)) as port:
        with anyio.fail_after(TIMEOUT), contextlib.ExitStack() as expect:
            if ending == "error, reset":
                failed = expect.enter_context(pytest.raises(StreamFailed))
            async with connect(f"127.0.0.1:{port}", format=RGB24, ack_timeout=ACK_TIMEOUT) as pipe:
                for timestamp in range(samples):
                    await pipe.send(bytes(RGB24.frame_bytes), timestamp=timestamp)
                async for result in pipe.results():
                    read.append(result.acknowledged)
                    if len(read) == samples:
                        break
                await pipe.end()
    assert read == [2, 3, 4]
    if ending == "error, reset":
        assert (failed.value.status, failed.value.detail) == (Status.INTERNAL, "over")


@pytest.mark.rule("CONN-15")
async def test_the_pipeline_ignores_a_frame_of_a_type_http2_does_not_define() -> None:
    """An extension sends an ORIGIN frame and one of an unknown type before its answer:
    the pipeline reads on (grpclib alone would drop the connection)."""

    async def answer(
        client: anyio.abc.SocketStream, machine: Any, stream_id: int, _: object
    ) -> None:
        await client.send(frame(0xC, 0, 0, b"\x00\x00") + frame(0xFA, 0, 0, b"extension"))
        acknowledgement = MediaStreamMessage(sequence_number=2, ack_sequence_number=2)
        machine.send_data(stream_id, encode_framed(acknowledgement))
        machine.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)
        await client.send(machine.data_to_send())

    async with _listening(_raw_extension(answer)) as port:
        with anyio.fail_after(TIMEOUT):
            async with connect(f"127.0.0.1:{port}", format=RGB24, ack_timeout=ACK_TIMEOUT) as pipe:
                await pipe.send(bytes(RGB24.frame_bytes), timestamp=0)
                assert (await pipe.results().receive()).acknowledged == 2
                await pipe.end()
