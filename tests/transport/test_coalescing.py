"""The answers of one read leave in one write (``avaproto.transport.coalescing``).

The unit tests drive ``CoalescingTransport`` over a stand-in for the socket's transport
that records what it is given (the class wraps any transport; what it must do is about
the order and the grouping of writes). The others run a real server on loopback and a
raw HTTP/2 client that sees how the server's bytes arrive.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any, cast

import anyio
import anyio.abc
import anyio.lowlevel
import h2.events
import pytest

from avaproto.transport.coalescing import JOIN_BELOW, CoalescingTransport
from tests.transport.test_hostile_http2 import (
    DESCRIPTOR,
    TIMEOUT,
    Attacker,
    sample,
    serving,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the server's transports are asyncio's


class Recorded:
    """What the socket's transport was asked to do, in order."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.calls: list[str] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        self.calls.append("write")

    def writelines(self, pieces: list[bytes]) -> None:
        self.writes.append(b"".join(pieces))
        self.calls.append("writelines")

    def write_eof(self) -> None:
        self.calls.append("write_eof")

    def close(self) -> None:
        self.calls.append("close")

    def abort(self) -> None:
        self.calls.append("abort")

    def is_closing(self) -> bool:
        return False


def coalescing() -> tuple[CoalescingTransport, Recorded]:
    socket = Recorded()
    return CoalescingTransport(cast(asyncio.Transport, socket)), socket


async def test_held_answers_leave_with_the_next_write_in_order() -> None:
    writer, socket = coalescing()
    writer.write_later(b"one")
    writer.write_later(b"two")
    assert socket.writes == [] and writer.holding == 6
    writer.write(b"three")
    assert socket.writes == [b"onetwothree"]
    assert writer.holding == 0


async def test_what_is_held_leaves_at_the_loops_next_turn_at_the_latest() -> None:
    writer, socket = coalescing()
    writer.write_later(b"alone")
    await anyio.lowlevel.checkpoint()  # one turn of the loop
    assert socket.writes == [b"alone"]
    await anyio.lowlevel.checkpoint()
    assert socket.writes == [b"alone"]  # once


async def test_a_large_write_after_held_ones_is_not_copied_to_join_them() -> None:
    writer, socket = coalescing()
    writer.write_later(b"held")
    large = memoryview(bytes(JOIN_BELOW))
    writer.write(large)
    assert socket.writes == [b"held", bytes(JOIN_BELOW)]


async def test_closing_writes_what_is_held_first_and_an_abort_drops_it() -> None:
    writer, socket = coalescing()
    writer.write_later(b"held")
    writer.close()
    assert socket.calls == ["write", "close"] and socket.writes == [b"held"]
    for end in ("write_eof", "writelines"):
        writer, socket = coalescing()
        writer.write_later(b"held")
        getattr(writer, end)(*([[b"more"]] if end == "writelines" else []))
        assert socket.calls == ["write", end] and socket.writes[0] == b"held"
    writer, socket = coalescing()
    writer.write_later(b"held")
    writer.abort()
    await anyio.lowlevel.checkpoint()  # the turn's flush finds nothing left
    assert socket.calls == ["abort"] and writer.holding == 0


async def test_everything_else_is_the_transports() -> None:
    writer, socket = coalescing()
    assert writer.is_closing() is False
    assert cast(Any, writer)._transport is socket


async def stream_with_descriptor_answered(attacker: Attacker) -> int:
    stream_id = await attacker.open_stream(DESCRIPTOR)
    await attacker.until(lambda: attacker.answers(stream_id) == 1)
    return stream_id


async def process(frame: object) -> list[object]:
    """An async processor that never suspends: a read's samples are answered in one step."""
    return []


def data_frames(data: bytes) -> int:
    """How many DATA frames ``data`` (whole HTTP/2 frames) holds."""
    count = 0
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        count += data[3] == 0
        data = data[9 + length :]
    return count


async def test_the_answers_to_samples_read_together_leave_in_one_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[CoalescingTransport] = []
    original = CoalescingTransport.__init__

    def recording(self: CoalescingTransport, transport: asyncio.Transport) -> None:
        original(self, transport)
        made.append(self)

    monkeypatch.setattr(CoalescingTransport, "__init__", recording)
    async with serving(process) as server, Attacker.connect(server.port) as attacker:
        with anyio.fail_after(TIMEOUT):
            stream_id = await stream_with_descriptor_answered(attacker)
            # The server's socket transport, spied on: what each of its writes holds.
            (writer,) = made
            socket = cast(Any, writer)._transport
            writes: list[int] = []
            real = socket.write
            socket.write = lambda data: (writes.append(data_frames(bytes(data))), real(data))
            for number in range(2, 6):  # four samples, one read
                attacker.h2.send_data(stream_id, sample(number))
            assert await attacker.flush()
            await attacker.until(lambda: attacker.answers(stream_id) == 5)
    assert [count for count in writes if count] == [4]


async def test_nothing_held_is_lost_or_comes_after_the_trailers() -> None:
    async with serving(process) as server, Attacker.connect(server.port) as attacker:
        with anyio.fail_after(TIMEOUT):
            stream_id = await attacker.open_stream(
                DESCRIPTOR, *(sample(number) for number in range(2, 6)), end=True
            )
            await attacker.until(lambda: attacker.status(stream_id) is not None)
    assert attacker.status(stream_id) == ("0", "")
    assert attacker.answers(stream_id) == 5
    ended = [
        index
        for index, event in enumerate(attacker.events)
        if isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id
    ]
    data = [
        index
        for index, event in enumerate(attacker.events)
        if isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id
    ]
    assert ended and max(data) < ended[0]


async def test_an_answer_held_when_the_pipeline_ends_its_side_still_leaves() -> None:
    """The pipeline's FIN read in the turn an answer was held in: asyncio closes the
    transport once the guard's ``eof_received`` returns, and the answer goes first."""
    async with serving(process) as server, Attacker.connect(server.port) as attacker:
        with anyio.fail_after(TIMEOUT):
            stream_id = await stream_with_descriptor_answered(attacker)
            attacker.h2.send_data(stream_id, sample(2))
            attacker.h2.send_data(stream_id, sample(3)[:20])  # more to read: 2's answer is held
            raw = attacker.stream.extra(anyio.abc.SocketAttribute.raw_socket)
            data = attacker.h2.data_to_send()
            async with attacker.writing:  # the data and the FIN before the server looks
                assert os.write(raw.fileno(), data) == len(data)  # small: never partial
                raw.shutdown(socket.SHUT_WR)
            await attacker.ended.wait()
    assert attacker.answers(stream_id) == 2
