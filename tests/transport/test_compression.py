"""Compressed messages (spec: WIRE-3): read, inflated within the message limit.

grpcio's client, given ``compression=``, compresses every message: the real peer
here. Raw HTTP/2 peers send what grpcio does not on demand (a bomb, broken streams,
an encoding avaproto does not read); the server is a real one on a loopback port.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest

from avaproto.client import connect
from avaproto.codec import encode_framed
from avaproto.errors import ProtocolError
from avaproto.messages import ContentBytes, MediaSample, MediaStreamMessage
from avaproto.status import Status
from avaproto.transport import compression
from avaproto.transport.compression import ON_LOOP, STEP, inflate
from tests.builders import pipeline_descriptor, video_format
from tests.transport.test_goaway import ACK_TIMEOUT, _listening, _raw_extension
from tests.transport.test_grpc import RGB24
from tests.transport.test_hostile_http2 import (
    DESCRIPTOR,
    REQUEST,
    TIMEOUT,
    Attacker,
    eventually,
    frame,
    pipeline_during,
    serving,
    warnings,
)

pytestmark = pytest.mark.anyio

MiB = 1 << 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib runs on asyncio


def compressed(message: bytes, encoding: str = "gzip") -> bytes:
    """``message`` (framed, uncompressed) framed again compressed with ``encoding``."""
    body = gzip.compress(message[5:]) if encoding == "gzip" else zlib.compress(message[5:])
    return b"\x01" + struct.pack(">I", len(body)) + body


# --- a real peer ----------------------------------------------------------------------


@pytest.mark.rule("WIRE-3")
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_grpcio_pipeline_that_compresses_is_served(encoding: str) -> None:
    import grpc

    from bench.official import descriptor_message, official_messages

    pb = official_messages()
    chosen = {"gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}[encoding]
    async with serving() as server:
        with anyio.fail_after(TIMEOUT):
            target = f"127.0.0.1:{server.port}"
            async with grpc.aio.insecure_channel(target, compression=chosen) as channel:
                call = channel.stream_stream(
                    "/microsoft.azure.media.live_video_analytics.extensibility.grpc.v1."
                    "MediaGraphExtension/ProcessMediaStream",
                    request_serializer=pb.MediaStreamMessage.SerializeToString,
                    response_deserializer=pb.MediaStreamMessage.FromString,
                )()
                await call.write(descriptor_message(pb, RGB24.width, RGB24.height))
                assert (await call.read()).ack_sequence_number == 1
                for number in range(2, 7):
                    sample = pb.MediaStreamMessage(sequence_number=number)
                    sample.media_sample.content_bytes.bytes = bytes(RGB24.frame_bytes)
                    await call.write(sample)
                    assert (await call.read()).ack_sequence_number == number
                await call.done_writing()
                assert await call.code() == grpc.StatusCode.OK


@pytest.mark.rule("WIRE-3")
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_health_checks_from_a_compressing_channel_are_answered(
    encoding: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A channel made with compression compresses a health check that shrinks by it
    (grpc-core sends one that does not, a short service name, uncompressed)."""
    import grpc

    from avaproto._generated.grpc.health.v1 import HealthCheckRequest, HealthCheckResponse
    from avaproto.transport.health import ServingStatus

    chosen = {"gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}[encoding]
    request = HealthCheckRequest(service="x" * 1000)
    async with serving() as server:
        with anyio.fail_after(TIMEOUT):
            target = f"127.0.0.1:{server.port}"
            async with grpc.aio.insecure_channel(target, compression=chosen) as channel:
                check = channel.unary_unary(
                    "/grpc.health.v1.Health/Check",
                    request_serializer=bytes,
                    response_deserializer=HealthCheckResponse.parse,
                )
                with pytest.raises(grpc.aio.AioRpcError) as unknown:
                    await check(request)
                watch = channel.unary_stream(
                    "/grpc.health.v1.Health/Watch",
                    request_serializer=bytes,
                    response_deserializer=HealthCheckResponse.parse,
                )
                call = watch(request)
                first = await call.read()
                call.cancel()
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "unknown service 'xxx" in str(unknown.value.details())
    assert first.status == ServingStatus.SERVICE_UNKNOWN
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# --- hostile or broken peers ----------------------------------------------------------


async def _status_of(port: int, headers: list[tuple[str, str]], *data: bytes) -> tuple[str, str]:
    """A raw stream with ``headers`` sending ``data`` (each a DATA frame): how it ended."""
    async with Attacker.connect(port) as attacker:
        with anyio.fail_after(TIMEOUT):
            await attacker.settled()  # the server's SETTINGS (its windows) are in
            stream_id = attacker.h2.get_next_available_stream_id()
            attacker.h2.send_headers(stream_id, headers)
            for piece in data:
                attacker.h2.send_data(stream_id, piece)
            await attacker.flush()
            await attacker.until(lambda: attacker.status(stream_id) is not None)
        return attacker.status(stream_id) or ("", "")


@pytest.mark.rule("WIRE-3", "SRV-5")
async def test_a_compression_bomb_is_refused_as_it_inflates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 200 MiB frame of zeros, gzipped to 200 KiB: refused at the message limit (1 MiB
    here) while inflating, holding no more than that, as a real pipeline is served."""
    bomb = encode_framed(
        MediaStreamMessage(
            sequence_number=2,
            media_sample=MediaSample(content_bytes=ContentBytes(bytes(200 * MiB))),
        )
    )
    packed = compressed(bomb)
    assert len(packed) < MiB
    async with serving(max_message_bytes=MiB) as server, pipeline_during(server.port):
        tracemalloc.start()
        try:
            status, message = await _status_of(
                server.port, [*REQUEST, ("grpc-encoding", "gzip")], DESCRIPTOR, packed
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert status == str(Status.RESOURCE_EXHAUSTED.value)
    assert message.startswith("[SRV-5] a gzip message of") and "inflates past the limit" in message
    assert peak < 8 * MiB, peak
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.rule("WIRE-3")
async def test_a_request_naming_two_encodings_is_refused() -> None:
    two = [*REQUEST, ("grpc-encoding", "gzip"), ("grpc-encoding", "identity")]
    async with serving() as server:
        status, message = await _status_of(server.port, two)
    assert status == str(Status.INVALID_ARGUMENT.value)
    assert message == "[WIRE-3] the request names two encodings: grpc-encoding ['gzip', 'identity']"


@pytest.mark.rule("WIRE-3")
async def test_an_encoding_avaproto_does_not_read_is_refused_naming_those_it_does() -> None:
    async with serving() as server:
        status, message = await _status_of(server.port, [*REQUEST, ("grpc-encoding", "br")])
    assert status == str(Status.UNIMPLEMENTED.value)
    assert (
        message
        == "[WIRE-3] grpc-encoding 'br' is not one avaproto reads; it reads identity, gzip, deflate"
    )


@pytest.mark.rule("WIRE-3")
@pytest.mark.parametrize(
    ("encoding", "body", "words"),
    [
        ("gzip", b"\x1f\x8b not gzip at all", "does not inflate"),
        ("gzip", gzip.compress(bytes(1000))[:-12], "cut short"),
        ("deflate", zlib.compress(bytes(1000)) + b"extra", "5 bytes after the end"),
        (None, gzip.compress(bytes(1000)), "names no compression"),
    ],
    ids=["corrupt", "cut-short", "trailing-bytes", "no-encoding"],
)
async def test_a_compressed_message_that_is_no_whole_stream_is_refused(
    encoding: str | None, body: bytes, words: str
) -> None:
    with anyio.fail_after(TIMEOUT), pytest.raises(ProtocolError) as refused:
        async with inflate(body, encoding, MiB, limit_rule="SRV-5"):
            pass
    assert (refused.value.rule, refused.value.status) == ("WIRE-3", Status.INVALID_ARGUMENT)
    assert words in refused.value.detail


@pytest.mark.rule("WIRE-3")
@pytest.mark.parametrize("size", [1000, STEP - 1, STEP, STEP + 1, 3 * STEP + 7])
@pytest.mark.parametrize("random", [False, True], ids=["compressible", "random"])
async def test_a_message_inflates_whole_up_to_the_limit_and_not_a_byte_past_it(
    size: int, random: bool
) -> None:
    """Inflated on the event loop when it came small (``ON_LOOP``), else in a worker
    thread, a step at a time: the same bytes whichever way, the limit exact, and each
    step held in the budget until the message is read."""
    data = os.urandom(size) if random else bytes(range(256)) * (size // 256) + bytes(size % 256)
    held: list[int] = []

    @contextmanager
    def hold(n: int) -> Iterator[None]:
        held.append(n)
        yield
        held.append(-n)

    async with inflate(
        gzip.compress(data), "gzip", 4 * STEP, limit_rule="SRV-5", hold=hold
    ) as body:
        assert body == data
        assert sum(held) == size  # all of it held while it is read
    assert sum(held) == 0 and max(held) <= STEP
    with pytest.raises(ProtocolError) as refused:
        async with inflate(gzip.compress(data + b"!"), "gzip", size, limit_rule="PIPE-5"):
            pass
    assert (refused.value.rule, refused.value.status) == ("PIPE-5", Status.RESOURCE_EXHAUSTED)


@pytest.mark.rule("WIRE-3")
async def test_only_a_small_message_inflates_on_the_event_loop() -> None:
    """zlib's work grows with its input: empty deflate blocks inflate to nothing and
    cost a loop seconds. Input past ``ON_LOOP`` is inflated in a worker thread."""
    loop_thread = threading.get_ident()
    seen: list[bool] = []
    original = zlib.decompressobj

    class Watched:
        def __init__(self, wbits: int) -> None:
            self._inner = original(wbits)

        def decompress(self, data: Any, limit: int) -> bytes:
            seen.append(threading.get_ident() == loop_thread)
            return self._inner.decompress(data, limit)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    small, large = gzip.compress(bytes(100)), gzip.compress(os.urandom(2 * ON_LOOP))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compression.zlib, "decompressobj", Watched)
        async with inflate(small, "gzip", MiB, limit_rule="SRV-5"):
            pass
        assert seen == [True]
        seen.clear()
        async with inflate(large, "gzip", MiB, limit_rule="SRV-5"):
            pass
    assert seen and not any(seen)


async def _six_gzipped_full_hd_streams(attacker: Attacker) -> list[int]:
    """Six streams, each a descriptor and a 6 MB frame of zeros gzipped to a few KiB."""
    fmt = video_format(width=1920, height=1080)
    descriptor = encode_framed(
        MediaStreamMessage(sequence_number=1, media_stream_descriptor=pipeline_descriptor(fmt))
    )
    zeros = MediaSample(content_bytes=ContentBytes(bytes(1920 * 1080 * 3)))
    packed = compressed(encode_framed(MediaStreamMessage(sequence_number=2, media_sample=zeros)))
    await attacker.settled()
    streams = []
    for _ in range(6):
        stream_id = attacker.h2.get_next_available_stream_id()
        attacker.h2.send_headers(stream_id, [*REQUEST, ("grpc-encoding", "gzip")])
        attacker.h2.send_data(stream_id, descriptor + packed, end_stream=True)
        streams.append(stream_id)
    await attacker.flush()
    return streams


@pytest.mark.rule("WIRE-3", "SRV-13")
async def test_compressing_streams_on_one_connection_hold_what_they_inflate_to() -> None:
    """Six streams on one connection, each a 6 MiB frame gzipped to a few KiB, all at
    once: each holds the budget for what it inflates to, not for the message limit
    (which let only four inflate at a time and refused the others)."""
    async with serving() as server, Attacker.connect(server.port) as attacker:
        with anyio.fail_after(TIMEOUT):
            streams = await _six_gzipped_full_hd_streams(attacker)
            await attacker.until(lambda: all(attacker.status(s) for s in streams))
        assert [attacker.status(s) for s in streams] == [("0", "")] * 6
        assert [attacker.answers(s) for s in streams] == [2] * 6


@pytest.mark.rule("WIRE-3", "SRV-13", "SRV-18")
async def test_what_compressed_frames_inflate_to_is_held_in_the_frame_memory(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Six streams, each a 6 MB frame gzipped to a few KiB, against room for two frames
    and a half: what each inflates to is held until answered, the others wait (what
    they inflated to counted in the budget of bytes in flight), and all six are
    answered once the extension goes on."""
    gate, bound = anyio.Event(), 5 * 1920 * 1080 * 3 // 2

    async def gated(frame: object) -> list[object]:
        await gate.wait()
        return []

    async with serving(gated, max_frame_memory=bound) as server:
        memory = server.service.frame_memory
        async with Attacker.connect(server.port) as attacker:
            with anyio.fail_after(TIMEOUT):
                streams = await _six_gzipped_full_hd_streams(attacker)
                await eventually(lambda: bool(warnings(caplog, "SRV-18")))
                assert memory.held <= bound
                # A frame waiting inflated is counted meanwhile, in SRV-13's budget.
                assert server.service.budget.held >= 1920 * 1080 * 3
                gate.set()
                await attacker.until(lambda: all(attacker.status(s) for s in streams))
        assert [attacker.status(s) for s in streams] == [("0", "")] * 6
        assert memory.held == 0


@pytest.mark.rule("WIRE-3")
async def test_the_pipeline_reads_answers_an_extension_compressed() -> None:
    """An extension that says grpc-encoding gzip in its headers and compresses its
    answers (grpcio's servers do only for clients that accept it; this one does not ask)."""

    async def answer(client: Any, machine: Any, stream_id: int, got: list[int]) -> None:
        reply = encode_framed(MediaStreamMessage(sequence_number=2, ack_sequence_number=got[0]))
        await client.send(frame(0x0, 0, stream_id, compressed(reply)))
        machine.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)
        await client.send(machine.data_to_send())

    headers = [(":status", "200"), ("content-type", "application/grpc"), ("grpc-encoding", "gzip")]
    async with _listening(_raw_extension(answer, headers=headers)) as port:
        with anyio.fail_after(TIMEOUT):
            async with connect(f"127.0.0.1:{port}", format=RGB24, ack_timeout=ACK_TIMEOUT) as pipe:
                await pipe.send(bytes(RGB24.frame_bytes), timestamp=0)
                assert [result.acknowledged async for result in pipe.results()] == [2]


@pytest.mark.rule("WIRE-3")
async def test_the_pipeline_refuses_an_answer_naming_two_encodings() -> None:
    """Which of the two its messages use cannot be known (the server refuses the same)."""

    async def never(client: Any, machine: Any, stream_id: int, got: list[int]) -> None:
        raise AssertionError("no sample should reach the extension")

    headers = [
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-encoding", "gzip"),
        ("grpc-encoding", "identity"),
    ]
    async with _listening(_raw_extension(never, headers=headers)) as port:
        with anyio.fail_after(TIMEOUT), pytest.raises(ProtocolError) as raised:
            async with connect(f"127.0.0.1:{port}", format=RGB24, ack_timeout=ACK_TIMEOUT):
                pass
    assert raised.value.rule == "WIRE-3" and raised.value.status is Status.INVALID_ARGUMENT
    assert "names two encodings: grpc-encoding ['gzip', 'identity']" in str(raised.value)
