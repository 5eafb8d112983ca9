"""The frames the server holds until it processed them, bounded (spec: serving, SRV-18).

The bound itself is tested first on its own (waits, order, refusals); then a real
server on a loopback port, driven by avaproto's pipeline and a raw HTTP/2 peer, shows
that a stream whose frame does not fit waits, reading nothing more, until others are
processed, loses nothing, that a wait past the timeout ends only the stream that
waited, and that answers held back by a pipeline's shut window hold no frame.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from h2.settings import SettingCodes

from avaproto.client import connect
from avaproto.codec import encode_framed
from avaproto.engine.frame import Frame
from avaproto.errors import ProtocolError, StreamFailed
from avaproto.media.shared_memory import SharedMemoryArena
from avaproto.messages import (
    ContentBytes,
    ContentReference,
    Encoding,
    MediaSample,
    MediaStreamMessage,
    PixelFormat,
)
from avaproto.protocol.descriptor import StreamDescriptor
from avaproto.protocol.video_format import VideoFormat
from avaproto.status import Status
from avaproto.transport.frame_memory import FrameMemory
from tests.builders import pipeline_descriptor
from tests.transport.test_hostile_http2 import (
    DESCRIPTOR,
    RGB24,
    TIMEOUT,
    Attacker,
    completes,
    eventually,
    sample,
    serving,
    warnings,
)

pytestmark = [pytest.mark.anyio, pytest.mark.rule("SRV-18")]

# 24 KiB frames: more than one DATA frame's worth
WIDE = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 128, 64)
# 1.1 MB frames: more than the 1 MiB of one DATA frame, admitted from their prefix
LARGE = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 640, 576)
FRAME = WIDE.frame_bytes
ONE, TWO = object(), object()  # two connections


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib runs on asyncio


async def _take(memory: FrameMemory, connection: object, size: int, done: list[int]) -> None:
    await memory.take(connection, size, "127.0.0.1:1")
    done.append(size)


# --- the bound on its own ---------------------------------------------------------------


async def test_a_frame_that_does_not_fit_waits_until_another_is_answered() -> None:
    memory, done = FrameMemory(100, 100, TIMEOUT), []
    await memory.take(ONE, 80, "127.0.0.1:1")
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_take, memory, TWO, 40, done)
        await anyio.wait_all_tasks_blocked()
        assert done == [] and memory.held == 80
        memory.give(ONE, 80)
    assert done == [40] and memory.held == 40


async def test_waiters_go_on_in_the_order_they_came() -> None:
    """A small frame that would fit still waits behind a larger one that came first:
    a stream of small frames never starves one of large frames."""
    memory, done = FrameMemory(100, 100, TIMEOUT), []
    await memory.take(ONE, 90, "127.0.0.1:1")
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_take, memory, TWO, 50, done)
        await anyio.wait_all_tasks_blocked()
        tasks.start_soon(_take, memory, TWO, 10, done)
        await anyio.wait_all_tasks_blocked()
        assert done == []
        memory.give(ONE, 90)
    assert done == [50, 10] and memory.held == 60


async def test_a_connection_at_its_own_bound_holds_back_no_other() -> None:
    memory, done = FrameMemory(1000, 50, TIMEOUT), []
    await memory.take(ONE, 50, "127.0.0.1:1")
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_take, memory, ONE, 10, done)
        await anyio.wait_all_tasks_blocked()
        await memory.take(TWO, 30, "127.0.0.1:2")  # at once, though ONE's frame waits
        assert done == [] and memory.held == 80
        memory.give(ONE, 50)
    assert done == [10] and memory.held == 40


@pytest.mark.parametrize(("total", "per_connection"), [(100, 1000), (1000, 100)])
async def test_a_frame_larger_than_a_bound_is_refused_at_once(
    total: int, per_connection: int, caplog: pytest.LogCaptureFixture
) -> None:
    memory = FrameMemory(total, per_connection, TIMEOUT)
    with anyio.fail_after(TIMEOUT), pytest.raises(ProtocolError) as refused:
        await memory.take(ONE, 101, "127.0.0.1:1")
    assert refused.value.rule == "SRV-18"
    assert refused.value.status is Status.RESOURCE_EXHAUSTED
    assert "a frame of 101 bytes is larger than the server holds" in str(refused.value)
    assert memory.held == 0
    [line] = warnings(caplog, "SRV-18")
    assert "127.0.0.1:1" in line and "--max-frame-memory" in line


async def test_a_frame_that_waits_past_the_timeout_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    memory = FrameMemory(100, 100, 0.05)
    await memory.take(ONE, 100, "127.0.0.1:1")
    with anyio.fail_after(TIMEOUT), pytest.raises(ProtocolError) as refused:
        await memory.take(TWO, 1, "127.0.0.1:2")
    assert refused.value.status is Status.RESOURCE_EXHAUSTED
    assert "a frame of 1 bytes waited 0.05 s for the server's frame memory" in str(refused.value)
    assert "(100 bytes held of 100 (the most, 100, by a connection of 127.0.0.1:1)," in str(
        refused.value
    )
    assert memory.held == 100
    memory.give(ONE, 100)
    await memory.take(TWO, 100, "127.0.0.1:2")  # no waiter was left behind
    waited, ended = warnings(caplog, "SRV-18")
    assert "127.0.0.1:2 waits for frame memory" in waited and "ended" in ended
    # The stream that waits is seldom the one holding the memory: the line says which.
    assert "held in the server (the most, 100, by a connection of 127.0.0.1:1)" in waited


async def test_a_waiter_cancelled_leaves_nothing_held() -> None:
    memory = FrameMemory(100, 100, TIMEOUT)
    await memory.take(ONE, 100, "127.0.0.1:1")
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(memory.take, TWO, 50, "127.0.0.1:2")
        await anyio.wait_all_tasks_blocked()
        tasks.cancel_scope.cancel()
    memory.give(ONE, 100)
    assert memory.held == 0
    await memory.take(TWO, 100, "127.0.0.1:2")  # the cancelled one holds no place


async def test_a_waiter_cancelled_once_granted_gives_its_bytes_back() -> None:
    memory = FrameMemory(100, 100, TIMEOUT)
    await memory.take(ONE, 100, "127.0.0.1:1")
    done: list[int] = []
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_take, memory, TWO, 50, done)
        await anyio.wait_all_tasks_blocked()
        memory.give(ONE, 100)  # granted: its bytes are counted before it runs
        assert memory.held == 50
        tasks.cancel_scope.cancel()  # and it is cancelled before it runs
    assert memory.held == (50 if done else 0)


# --- a real server ------------------------------------------------------------------------


class Gated:
    """An extension whose frames wait at a gate: they stay unanswered until it opens."""

    def __init__(self, gate: anyio.Event, entered: list[int]) -> None:
        self.gate, self.entered = gate, entered

    async def open(self, descriptor: StreamDescriptor) -> None: ...

    async def process(self, frame: Frame) -> list[object]:
        self.entered.append(frame.sequence_number)
        await self.gate.wait()
        return []

    async def close(self) -> None: ...


@pytest.mark.parametrize(
    ("transfer", "fmt"),
    [("embedded", WIDE), ("embedded", LARGE), ("shm", WIDE)],
    ids=["embedded-in-one-data-frame", "embedded-in-several", "shared-memory"],
)
async def test_frames_past_the_bound_wait_and_every_one_is_answered(
    transfer: Any, fmt: VideoFormat, caplog: pytest.LogCaptureFixture
) -> None:
    """Room for two frames and a half: of six sent, two are processed, the third waits
    and its stream reads nothing more (so the sender's window closes behind it) until
    the gate opens, and then all six are answered in order."""
    gate, entered = anyio.Event(), []
    frame_bytes = fmt.frame_bytes
    bound = 5 * frame_bytes // 2
    async with serving(lambda: Gated(gate, entered), max_frame_memory=bound) as server:
        memory = server.service.frame_memory
        with anyio.fail_after(TIMEOUT):
            async with connect(
                f"127.0.0.1:{server.port}", format=fmt, transfer=transfer, shm_bytes=1 << 20
            ) as pipe:

                async def send_six() -> None:  # the sends wait once the server stops reading
                    for t in range(6):
                        await pipe.send(bytes(frame_bytes), timestamp=t)

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(send_six)
                    await eventually(lambda: bool(warnings(caplog, "SRV-18")))
                    assert entered == [2, 3] and frame_bytes * 2 <= memory.held <= bound
                    gate.set()
                    answered = [(await pipe.results().receive()).acknowledged for _ in range(6)]
        assert answered == [2, 3, 4, 5, 6, 7]
        assert memory.held == 0  # every frame given back once processed
    [line] = warnings(caplog, "SRV-18")
    held = int(line.split("its frame of ")[1].split()[0])  # its message's length, if embedded
    assert "127.0.0.1:" in line and frame_bytes <= held < frame_bytes + 64


async def test_a_frame_that_does_not_fit_waits_counted_as_a_message_in_flight(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A frame in several DATA frames is read whole, then waits for frame memory still
    counted in the budget of messages in flight (SRV-13): the server holds no frame
    that no bound counts, and a waiting stream never leaves a body half read."""
    gate, entered = anyio.Event(), []
    limits = {"max_frame_memory": 3 * LARGE.frame_bytes // 2}
    async with serving(lambda: Gated(gate, entered), **limits) as server:
        target, service = f"127.0.0.1:{server.port}", server.service
        with anyio.fail_after(TIMEOUT):
            async with (
                connect(target, format=LARGE) as holder,
                connect(target, format=LARGE) as waiter,
            ):
                await holder.send(bytes(LARGE.frame_bytes), timestamp=0)
                await eventually(lambda: entered == [2])
                await waiter.send(bytes(LARGE.frame_bytes), timestamp=0)
                await eventually(lambda: bool(warnings(caplog, "SRV-18")))
                assert entered == [2] and service.budget.held >= LARGE.frame_bytes
                gate.set()
                for pipe in (holder, waiter):
                    assert (await pipe.results().receive()).acknowledged == 2
        assert service.budget.held == service.frame_memory.held == 0


async def test_a_frame_that_waits_too_long_ends_only_its_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One stream holds every byte the server allows; another stream's frame waits out
    the timeout and ends RESOURCE_EXHAUSTED; the first then completes, and the memory
    both held is free again."""
    caplog.set_level(logging.WARNING, logger="avaproto")
    gate, entered = anyio.Event(), []
    limits = {"max_frame_memory": FRAME, "frame_memory_timeout": 0.3}
    async with serving(lambda: Gated(gate, entered), **limits) as server:
        target = f"127.0.0.1:{server.port}"
        with anyio.fail_after(TIMEOUT):
            async with connect(target, format=WIDE) as holder:
                await holder.send(bytes(FRAME), timestamp=0)
                await eventually(lambda: entered == [2])
                with pytest.raises(StreamFailed) as failed:
                    async with connect(target, format=WIDE) as other:
                        await other.send(bytes(FRAME), timestamp=0)
                        await other.results().receive()
                gate.set()
                assert (await holder.results().receive()).acknowledged == 2
        assert failed.value.status is Status.RESOURCE_EXHAUSTED
        assert failed.value.detail.startswith(f"[SRV-18] a frame of {FRAME} bytes waited 0.3 s")
        assert entered == [2]  # the refused frame was never processed
        assert server.service.frame_memory.held == 0
        await completes(server.port)
    assert len(warnings(caplog, "SRV-18")) == 2  # its wait, then its end


async def test_a_stream_that_ends_with_frames_unanswered_gives_them_back() -> None:
    """A pipeline that goes away while its frames are being processed: the frames it
    sent, processed or not, are no longer held once its stream ended."""
    gate, entered = anyio.Event(), []
    async with serving(lambda: Gated(gate, entered)) as server:
        memory = server.service.frame_memory
        with anyio.fail_after(TIMEOUT):
            with anyio.CancelScope() as scope:
                async with connect(f"127.0.0.1:{server.port}", format=LARGE) as pipe:
                    for t in range(3):
                        await pipe.send(bytes(LARGE.frame_bytes), timestamp=t)
                    await eventually(lambda: entered == [2, 3, 4])
                    assert memory.held >= 3 * LARGE.frame_bytes
                    scope.cancel()  # the pipeline resets its stream and goes
            await eventually(lambda: server.service.active == 0)
        assert memory.held == 0
        gate.set()
        await completes(server.port)


async def answered_then_shut(attacker: Attacker, described: bytes) -> int:
    """A stream opened with its descriptor, answered; then the peer's window shut: no
    answer of the server's leaves from now on. Its id."""
    stream_id = await attacker.open_stream(described)
    await attacker.until(lambda: attacker.answers(stream_id) == 1)
    attacker.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 0})
    await attacker.flush()
    await attacker.settled()  # the server has the settings
    return stream_id


async def test_answers_waiting_for_a_shut_window_hold_no_frame_memory() -> None:
    """A pipeline that reads no answer (its window shut once the descriptor's answer
    went) holds its stream's slots until the send timeout, but not the frames it sent:
    each is let go once processed, so the memory they took serves the others at once."""
    entered: list[int] = []

    def record(frame: Frame) -> list[object]:
        entered.append(frame.sequence_number)
        return []

    bound = RGB24.frame_bytes  # room for the frames of ``completes``, one at a time
    async with serving(record, max_frame_memory=bound, send_timeout=4 * TIMEOUT) as server:
        memory = server.service.frame_memory
        with anyio.fail_after(TIMEOUT):
            async with Attacker.connect(server.port) as attacker:
                stream_id = await answered_then_shut(attacker, DESCRIPTOR)
                attacker.h2.send_data(stream_id, sample(2) + sample(3))
                await attacker.flush()
                # Both fit at once: their worker threads may enter in either order.
                await eventually(lambda: sorted(entered) == [2, 3])
                assert memory.held == 0  # though neither answer could leave
                await completes(server.port)  # frames of the whole bound, served meanwhile
                assert attacker.answers(stream_id) == 1 and attacker.status(stream_id) is None


@pytest.mark.rule("SRV-7")
async def test_answers_waiting_for_a_shut_window_hold_no_shared_memory_lease() -> None:
    """Through shared memory: each sample's lease ends once it is processed, so the
    views of its frame are released while its answer still waits for the window."""
    views: list[memoryview] = []

    def record(frame: Frame) -> list[object]:
        assert frame.data is not None
        views.append(frame.data)
        return []

    size = RGB24.frame_bytes
    with SharedMemoryArena.create(1 << 16, prefix="avaproto-test-") as arena:
        described = encode_framed(
            MediaStreamMessage(
                sequence_number=1,
                media_stream_descriptor=pipeline_descriptor(
                    shm=(arena.handle_name, arena.length_bytes)
                ),
            )
        )
        referring = b"".join(
            encode_framed(
                MediaStreamMessage(
                    sequence_number=number,
                    media_sample=MediaSample(
                        content_reference=ContentReference(
                            address_offset=slot * 4096, length_bytes=size
                        )
                    ),
                )
            )
            for slot, number in enumerate((2, 3))
        )
        async with serving(record, send_timeout=4 * TIMEOUT) as server:
            with anyio.fail_after(TIMEOUT):
                async with Attacker.connect(server.port) as attacker:
                    stream_id = await answered_then_shut(attacker, described)
                    attacker.h2.send_data(stream_id, referring)
                    await attacker.flush()
                    await eventually(lambda: len(views) == 2)
                    for view in views:
                        with pytest.raises(ValueError, match="released memoryview"):  # ended
                            view[0]
                    assert attacker.answers(stream_id) == 1 and attacker.status(stream_id) is None


@asynccontextmanager
async def memory_held_elsewhere(**limits: Any) -> AsyncIterator[Attacker]:
    """A server whose frame memory one stream's frame holds, at a gate until the block
    ends (then it is answered), and a raw HTTP/2 peer on a connection of its own."""
    gate, entered = anyio.Event(), []
    async with serving(lambda: Gated(gate, entered), max_frame_memory=FRAME, **limits) as server:
        with anyio.fail_after(TIMEOUT):
            async with (
                connect(f"127.0.0.1:{server.port}", format=WIDE) as holder,
                Attacker.connect(server.port) as attacker,
            ):
                await holder.send(bytes(FRAME), timestamp=0)
                await eventually(lambda: entered == [2])
                yield attacker
                gate.set()
                assert (await holder.results().receive()).acknowledged == 2


@pytest.mark.rule("SRV-20", "SRV-18")
async def test_a_message_held_back_by_a_sibling_waiting_for_frame_memory_is_not_blamed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stream B's message is half here when stream A, on the same connection, waits for
    frame memory and its next bytes, unread, take the whole connection window: B's
    pipeline cannot send the rest, and its arrival deadline must not end it for that."""
    async with memory_held_elsewhere(message_timeout=0.3) as attacker:
        h2 = attacker.h2
        wanted = sample(2, 100_000)  # never whole: it never takes frame memory
        b = await attacker.open_stream(DESCRIPTOR, wanted[:1000])
        await attacker.until(lambda: attacker.answers(b) == 1)
        a = await attacker.open_stream(DESCRIPTOR, sample(2))  # waits for frame memory
        await attacker.until(lambda: attacker.answers(a) == 1)
        filler = encode_framed(
            MediaStreamMessage(
                sequence_number=3,
                media_sample=MediaSample(content_bytes=ContentBytes(bytes=bytes(8 << 20))),
            )
        )
        sent = 0
        while (room := min(h2.local_flow_control_window(a), h2.max_outbound_frame_size)) > 0:
            h2.send_data(a, filler[sent : sent + room])
            sent += room
            await attacker.flush()
        await attacker.settled()  # the server has all of it: the connection's window is 0
        assert h2.local_flow_control_window(b) == 0
        await anyio.sleep(1.0)  # three arrival deadlines pass; B's pipeline could not send
        assert attacker.status(b) is None
        assert not warnings(caplog, "SRV-20")
    # The block's end freed the memory: A reads on, the window opens, B could go on.


@pytest.mark.rule("SRV-20")
async def test_a_window_shut_on_purpose_puts_the_deadline_off_only_so_long(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pipeline that reads no answer of stream A leaves A's next bytes unread, which
    take the connection's window; its stream B announced 50 MiB and sends no more. B's
    deadline is put off while the window is shut, but no longer than the frame-memory
    timeout besides (A's own send timeout, here longer, would come later): it held the
    budget of incomplete messages for as long as it liked."""
    limits = {"message_timeout": 0.3, "send_timeout": 4 * TIMEOUT, "frame_memory_timeout": 0.6}
    async with serving(**limits) as server:
        with anyio.fail_after(TIMEOUT):
            async with Attacker.connect(server.port) as attacker:
                h2 = attacker.h2
                big = sample(2, 50 << 20)
                b = await attacker.open_stream(DESCRIPTOR, big[:1000])
                await attacker.until(lambda: attacker.answers(b) == 1)
                a = await answered_then_shut(attacker, DESCRIPTOR)
                filler = b"".join(sample(n) for n in range(2, 12)) + sample(12, 8 << 20)
                sent = 0
                while (
                    room := min(h2.local_flow_control_window(a), h2.max_outbound_frame_size)
                ) > 0:
                    h2.send_data(a, filler[sent : sent + room])
                    sent += room
                    await attacker.flush()
                await attacker.until(lambda: attacker.status(b) is not None)
                assert attacker.status(a) is None  # A, which holds the window, goes on
        assert server.service.budget.held == 0
    status = attacker.status(b)
    assert status is not None and status[0] == str(Status.DEADLINE_EXCEEDED.value)
    assert "[SRV-20]" in status[1] and "while the server held its bytes back" in status[1]


async def test_a_descriptor_in_several_data_frames_never_waits_for_frame_memory() -> None:
    """Every byte of frame memory held by another stream: a descriptor whose prefix
    arrives in a DATA frame of its own is answered at once, since a message is held
    only once read, and only if it is a sample's."""
    async with memory_held_elsewhere() as attacker:
        described = encode_framed(
            MediaStreamMessage(
                sequence_number=1,
                media_stream_descriptor=pipeline_descriptor(configuration="x" * 4000),
            )
        )
        stream_id = await attacker.open_stream(described[:5], described[5:])
        await attacker.until(lambda: attacker.answers(stream_id) == 1)
        assert attacker.status(stream_id) is None


@pytest.mark.rule("SRV-18", "SHM-1", "SHM-4")
@pytest.mark.parametrize(
    ("segment", "length", "rule"),
    [(None, 2**40, "SHM-1"), (1 << 20, 600 << 20, "SHM-4"), (1024, 8192, "SHM-4")],
    ids=["no-segment", "past-a-small-segment", "past-it-while-memory-is-full"],
)
async def test_a_reference_outside_its_segment_is_refused_by_its_rule_at_once(
    segment: int | None, length: int, rule: str
) -> None:
    """Frame memory full (another stream's frame waits at a gate): a reference that
    does not lie inside the declared segment is not held, nor made to wait, but left
    to the session, which names the rule it breaks."""
    with SharedMemoryArena.create(1 << 20, prefix="avaproto-test-") as arena:
        shm = None if segment is None else (arena.handle_name, segment)
        described = encode_framed(
            MediaStreamMessage(
                sequence_number=1, media_stream_descriptor=pipeline_descriptor(shm=shm)
            )
        )
        reference = ContentReference(address_offset=0, length_bytes=length)
        referring = encode_framed(
            MediaStreamMessage(
                sequence_number=2, media_sample=MediaSample(content_reference=reference)
            )
        )
        async with memory_held_elsewhere(frame_memory_timeout=2 * TIMEOUT) as attacker:
            stream_id = await attacker.open_stream(described, referring)
            await attacker.until(lambda: attacker.status(stream_id) is not None)
    status = attacker.status(stream_id)
    assert status is not None and status[1].startswith(f"[{rule}]")


async def test_a_stream_whose_frames_could_never_be_held_is_refused_at_its_descriptor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving(max_frame_memory_per_connection=FRAME - 1) as server:
        with anyio.fail_after(TIMEOUT), pytest.raises(StreamFailed) as refused:
            async with connect(f"127.0.0.1:{server.port}", format=WIDE):
                pass
        await completes(server.port)  # smaller frames are served
    assert refused.value.status is Status.RESOURCE_EXHAUSTED
    assert refused.value.detail.startswith(
        f"[SRV-18] its {WIDE} frames of {FRAME} bytes are larger than the server holds "
        f"for one connection ({FRAME - 1} bytes;"
    )
    [line] = warnings(caplog, "SRV-18")
    assert "127.0.0.1:" in line
