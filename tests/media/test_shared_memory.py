"""Spec section 6, shared memory: regions, arenas and leases on real files.

Files are made under /dev/shm (the protocol's directory) or in a temporary directory
where a test needs to plant symlinks; every file made is removed by its fixture.
"""

from __future__ import annotations

import itertools
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from avaproto.errors import LeaseError, SharedMemoryError
from avaproto.media import frames
from avaproto.media.shared_memory import (
    ALIGNMENT,
    LeaseState,
    SentLease,
    SharedMemoryArena,
    SharedMemoryRegion,
)
from avaproto.messages import Encoding, PixelFormat
from avaproto.protocol.video_format import VideoFormat
from avaproto.status import Status

SHM = "/dev/shm"
U64_MAX = 2**64 - 1


@pytest.fixture
def arena() -> Iterator[SharedMemoryArena]:
    with SharedMemoryArena.create(1 << 16, prefix="avaproto-test-") as made:
        yield made
    assert not made.path.exists()


@pytest.fixture
def segment(tmp_path: Path) -> tuple[str, Path]:
    """A 4 KiB file in a private directory (removed with it): (directory, file)."""
    path = tmp_path / "segment"
    path.write_bytes(bytes(range(256)) * 16)
    return str(tmp_path), path


class TestOpeningARegion:
    @pytest.mark.rule("SHM-3")
    @pytest.mark.parametrize(
        "name", ["../segment", "/etc/passwd", "a/b", "seg\x00ment", ".", "..", ""]
    )
    def test_only_plain_file_names(self, segment: tuple[str, Path], name: str) -> None:
        with pytest.raises(SharedMemoryError) as caught:
            SharedMemoryRegion.open(name, 16, directory=segment[0])
        assert (caught.value.rule, caught.value.status) == ("SHM-3", Status.INVALID_ARGUMENT)

    @pytest.mark.rule("SHM-5")
    def test_a_symlink_is_never_followed(self, segment: tuple[str, Path]) -> None:
        directory, target = segment
        os.symlink(target, Path(directory) / "link")
        with pytest.raises(SharedMemoryError, match="symbolic link") as caught:
            SharedMemoryRegion.open("link", 16, directory=directory)
        assert caught.value.status is Status.FAILED_PRECONDITION

    @pytest.mark.rule("SHM-5")
    def test_missing_file(self, segment: tuple[str, Path]) -> None:
        with pytest.raises(SharedMemoryError, match="nothere") as caught:
            SharedMemoryRegion.open("nothere", 16, directory=segment[0])
        assert (caught.value.rule, caught.value.status) == ("SHM-5", Status.FAILED_PRECONDITION)

    @pytest.mark.rule("SHM-5")
    def test_missing_directory(self, tmp_path: Path) -> None:
        with pytest.raises(SharedMemoryError, match="directory"):
            SharedMemoryRegion.open("x", 16, directory=str(tmp_path / "none"))

    @pytest.mark.rule("SHM-6")
    def test_file_shorter_than_announced(self, segment: tuple[str, Path]) -> None:
        with pytest.raises(SharedMemoryError, match="4096 bytes, fewer than the 4097") as caught:
            SharedMemoryRegion.open("segment", 4097, directory=segment[0])
        assert caught.value.rule == "SHM-6"

    @pytest.mark.rule("SHM-2")
    def test_zero_length(self, segment: tuple[str, Path]) -> None:
        with pytest.raises(SharedMemoryError, match="length_bytes"):
            SharedMemoryRegion.open("segment", 0, directory=segment[0])

    @pytest.mark.rule("SHM-5", "SHM-7")
    def test_opened_in_dev_shm_and_closed_without_a_trace(self, arena: SharedMemoryArena) -> None:
        before = sorted(os.listdir("/proc/self/fd"))
        with SharedMemoryRegion.open(arena.handle_name, arena.length_bytes) as region:
            assert region.path == f"{SHM}/{arena.handle_name}"
            lease = region.lease(2, 0, 16)
        assert lease.state is LeaseState.RELEASED
        assert sorted(os.listdir("/proc/self/fd")) == before


class TestReadingThroughLeases:
    @pytest.mark.rule("SHM-4")
    @pytest.mark.parametrize(
        ("offset", "length"),
        [(4096, 1), (4000, 97), (U64_MAX, 2), (2, U64_MAX), (U64_MAX, U64_MAX), (2**63, 2**63)],
    )
    def test_references_outside_the_segment(
        self, segment: tuple[str, Path], offset: int, length: int
    ) -> None:
        with SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as region:
            with pytest.raises(SharedMemoryError) as caught:
                region.lease(2, offset, length)
            assert (caught.value.rule, caught.value.status) == ("SHM-4", Status.OUT_OF_RANGE)
            assert region.live_leases == 0

    @pytest.mark.rule("SHM-4")
    def test_the_last_byte_is_inside(self, segment: tuple[str, Path]) -> None:
        with SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as region:
            lease = region.lease(2, 4095, 1)
            assert bytes(lease.view) == bytes([255])
            lease.release()

    @pytest.mark.rule("SHM-7")
    def test_the_view_is_read_only(self, segment: tuple[str, Path]) -> None:
        with SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as region:
            lease = region.lease(2, 0, 16)
            assert lease.view.readonly
            with pytest.raises(TypeError):
                lease.view[0] = 1
            array = np.frombuffer(lease.view, np.uint8)
            assert not array.flags.writeable
            with pytest.raises(ValueError, match="read-only"):
                array[0] = 1
            del array
            lease.release()
        assert segment[1].read_bytes()[:16] == bytes(range(16))

    @pytest.mark.rule("SHM-7")
    def test_use_after_release_raises(self, segment: tuple[str, Path]) -> None:
        with SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as region:
            lease = region.lease(5, 0, 16)
            view = lease.view
            lease.release()
            assert lease.state is LeaseState.RELEASED
            with pytest.raises(LeaseError, match="sample 5"):
                _ = lease.view
            with pytest.raises(ValueError, match="released"):
                bytes(view)  # even a reference taken earlier is dead

    @pytest.mark.rule("SHM-7")
    def test_double_release_raises(self, segment: tuple[str, Path]) -> None:
        with SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as region:
            lease = region.lease(2, 0, 16)
            lease.release()
            with pytest.raises(LeaseError, match="already released"):
                lease.release()

    @pytest.mark.rule("SHM-7")
    def test_closing_under_live_leases_is_refused_unless_forced(
        self, segment: tuple[str, Path]
    ) -> None:
        region = SharedMemoryRegion.open("segment", 4096, directory=segment[0])
        leases = [region.lease(n, n * 16, 16) for n in range(2, 5)]
        with pytest.raises(LeaseError, match="3 leases"):
            region.close()
        region.close(force=True)
        assert all(lease.state is LeaseState.RELEASED for lease in leases)
        assert region.live_leases == 0
        with pytest.raises(LeaseError):
            region.lease(9, 0, 1)

    @pytest.mark.rule("SHM-7", "MEDIA-7")
    def test_a_frame_reaches_numpy_with_zero_copies(self, arena: SharedMemoryArena) -> None:
        fmt = VideoFormat.checked(Encoding.RAW, PixelFormat.BGR24, 64, 32)
        picture = np.random.default_rng(1).integers(0, 256, (32, 64, 3), dtype=np.uint8)
        slot = arena.allocate(fmt.frame_bytes)
        slot.view[:] = frames.encode(picture, fmt)
        offset = slot.offset
        slot.mark_sent(2)
        with SharedMemoryRegion.open(arena.handle_name, arena.length_bytes) as region:
            whole = np.frombuffer(region._whole, np.uint8)  # the receiver's entire mapping
            lease = region.lease(2, offset, fmt.frame_bytes)
            image = frames.decode(lease.view, fmt)
            rgb = frames.to_rgb(image, fmt)
            assert np.shares_memory(rgb, whole)
            assert np.array_equal(rgb, picture)
            del image, rgb, whole
            lease.release()
        arena.ack(2)


class TestTheSendersArena:
    @pytest.mark.rule("SHM-9")
    def test_a_private_uniquely_named_file(self) -> None:
        with (
            SharedMemoryArena.create(4096) as one,
            SharedMemoryArena.create(4096) as two,
        ):
            assert one.handle_name != two.handle_name
            assert one.path.parent == Path(SHM)
            info = one.path.stat()
            assert stat.S_IMODE(info.st_mode) == 0o600
            assert info.st_size == 4096
        assert not one.path.exists() and not two.path.exists()

    @pytest.mark.rule("SHM-9")
    def test_unlinked_when_the_block_fails(self) -> None:
        with pytest.raises(RuntimeError), SharedMemoryArena.create(4096) as made:
            raise RuntimeError("boom")
        assert not made.path.exists()

    @pytest.mark.rule("SHM-9")
    def test_close_twice(self, arena: SharedMemoryArena) -> None:
        arena.close()
        arena.close()
        assert not arena.path.exists()

    @pytest.mark.rule("SHM-8")
    def test_slots_are_aligned_disjoint_and_inside(self, arena: SharedMemoryArena) -> None:
        leases = [arena.allocate(n) for n in (1, 100, 64, 4000, 7)]
        spans = sorted((lease.offset, lease.offset + lease.length) for lease in leases)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
        assert all(lease.offset % ALIGNMENT == 0 for lease in leases)
        assert spans[-1][1] <= arena.length_bytes
        assert arena.in_use == 64 + 128 + 64 + 4032 + 64

    @pytest.mark.rule("SHM-8")
    def test_a_sent_slot_is_freed_only_by_its_ack(self, arena: SharedMemoryArena) -> None:
        whole = arena.allocate(arena.length_bytes)
        whole.mark_sent(7)
        assert whole.state is LeaseState.SENT
        assert arena.try_allocate(1) is None  # never overwrites
        with pytest.raises(LeaseError, match="only an unsent slot"):
            whole.cancel()
        arena.ack(7)
        assert whole.state is LeaseState.RELEASED
        assert arena.in_use == 0
        assert arena.try_allocate(arena.length_bytes) is not None

    @pytest.mark.rule("SHM-8")
    def test_acks_of_unknown_or_acknowledged_numbers(self, arena: SharedMemoryArena) -> None:
        slot = arena.allocate(10)
        slot.mark_sent(3)
        with pytest.raises(LeaseError, match="acknowledgement of 4"):
            arena.ack(4)
        arena.ack(3)
        with pytest.raises(LeaseError, match="acknowledged already"):
            arena.ack(3)

    @pytest.mark.rule("SHM-8")
    def test_a_slot_is_written_only_before_it_is_sent(self, arena: SharedMemoryArena) -> None:
        slot = arena.allocate(4)
        slot.view[:] = b"abcd"
        slot.mark_sent(2)
        with pytest.raises(LeaseError, match="sent"):
            slot.view[:] = b"efgh"
        with pytest.raises(LeaseError, match="not allocated"):
            slot.mark_sent(3)

    @pytest.mark.rule("SHM-8")
    def test_cancel_frees_an_unsent_slot_once(self, arena: SharedMemoryArena) -> None:
        slot = arena.allocate(100)
        slot.cancel()
        assert arena.in_use == 0
        with pytest.raises(LeaseError):
            slot.cancel()

    @pytest.mark.rule("SHM-8")
    def test_too_large_is_refused_at_once(self, arena: SharedMemoryArena) -> None:
        with pytest.raises(SharedMemoryError, match="cannot fit") as caught:
            arena.allocate(arena.length_bytes + 1)
        assert caught.value.status is Status.RESOURCE_EXHAUSTED
        with pytest.raises(ValueError, match="above zero"):
            arena.try_allocate(0)

    @pytest.mark.rule("SHM-8")
    def test_blocking_allocation_times_out_when_nothing_is_acked(
        self, arena: SharedMemoryArena
    ) -> None:
        arena.allocate(arena.length_bytes).mark_sent(2)
        with pytest.raises(TimeoutError, match="no 10-byte slot"):
            arena.allocate(10, timeout=0.01)

    @pytest.mark.rule("SHM-8")
    def test_blocking_allocation_is_woken_by_an_ack_from_another_thread(
        self, arena: SharedMemoryArena
    ) -> None:
        arena.allocate(arena.length_bytes).mark_sent(2)
        acker = threading.Timer(0.0, arena.ack, args=(2,))
        acker.start()
        slot = arena.allocate(10, timeout=10)
        acker.join(10)
        assert slot.state is LeaseState.ALLOCATED

    @pytest.mark.rule("SHM-8", "SHM-7")
    def test_receiver_reads_what_the_sender_wrote(self, arena: SharedMemoryArena) -> None:
        slot = arena.allocate(5)
        slot.view[:] = b"hello"
        slot.mark_sent(2)
        with SharedMemoryRegion.open(arena.handle_name, arena.length_bytes) as region:
            lease = region.lease(2, slot.offset, 5)
            assert bytes(lease.view) == b"hello"
            lease.release()
        arena.ack(2)


@pytest.mark.anyio
class TestWaitingForASlot:
    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.mark.rule("SHM-8")
    async def test_an_ack_wakes_the_waiting_sender(self, arena: SharedMemoryArena) -> None:
        arena.allocate(arena.length_bytes).mark_sent(2)
        got: list[SentLease] = []

        async def sender() -> None:
            got.append(await arena.allocate_async(100))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(sender)
                await anyio.wait_all_tasks_blocked()
                assert got == []  # still waiting: nothing was overwritten
                arena.ack(2)
        assert got[0].offset == 0

    @pytest.mark.rule("SHM-8")
    async def test_a_cancelled_wait_takes_no_slot(self, arena: SharedMemoryArena) -> None:
        arena.allocate(arena.length_bytes).mark_sent(2)
        with anyio.move_on_after(0.01):
            await arena.allocate_async(100)
        arena.ack(2)
        assert arena.in_use == 0 and arena.live_leases == 0
        assert arena._waiters == []

    @pytest.mark.rule("SHM-9")
    async def test_closing_wakes_a_waiter_with_an_error(self, arena: SharedMemoryArena) -> None:
        arena.allocate(arena.length_bytes).mark_sent(2)
        errors: list[Exception] = []

        async def sender() -> None:
            try:
                await arena.allocate_async(100)
            except LeaseError as error:
                errors.append(error)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(sender)
                await anyio.wait_all_tasks_blocked()
                arena.close()
        assert errors and "closed" in str(errors[0])


class ArenaModel(RuleBasedStateMachine):
    """Random allocations, sends, cancels and out-of-order acks against a simple model."""

    SIZE = 4096
    unsent = Bundle("unsent")
    sent = Bundle("sent")

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(f"{SHM}")
        self.arena = SharedMemoryArena.create(self.SIZE, prefix="avaproto-model-")
        self.live: dict[int, tuple[int, int]] = {}  # id(lease) -> (offset, slot size)
        self.number = 1

    def _free_runs(self) -> list[int]:
        taken = sorted(self.live.values())
        runs, position = [], 0
        for offset, size in taken:
            runs.append(offset - position)
            position = offset + size
        runs.append(self.SIZE - position)
        return runs

    @rule(target=unsent, length=st.integers(1, 1500))
    def allocate(self, length: int) -> SentLease | None:
        slot = -(-length // ALIGNMENT) * ALIGNMENT
        lease = self.arena.try_allocate(length)
        fits = any(run >= slot for run in self._free_runs())
        # First fit over a coalesced free list finds a slot exactly when a run is free.
        assert (lease is not None) == fits
        if lease is None:
            return None
        assert lease.offset % ALIGNMENT == 0 and lease.offset + slot <= self.SIZE
        self.live[id(lease)] = (lease.offset, slot)
        return lease

    @rule(target=sent, lease=consumes(unsent))
    def send(self, lease: SentLease | None) -> int | None:
        if lease is None:
            return None
        self.number += 1
        lease.mark_sent(self.number)
        self.live[self.number] = self.live.pop(id(lease))
        return self.number

    @rule(lease=consumes(unsent))
    def cancel(self, lease: SentLease | None) -> None:
        if lease is not None:
            lease.cancel()
            del self.live[id(lease)]

    @rule(number=consumes(sent))
    def ack(self, number: int | None) -> None:
        if number is not None:
            self.arena.ack(number)
            del self.live[number]

    @invariant()
    def no_overlap_and_accounted(self) -> None:
        spans = sorted(self.live.values())
        for (a, a_size), (b, _) in itertools.pairwise(spans):
            assert a + a_size <= b
        assert self.arena.in_use == sum(size for _, size in spans)
        assert self.arena.live_leases == len(spans)

    def teardown(self) -> None:
        try:
            for lease in list(self.arena.leases()):
                if lease.state is LeaseState.ALLOCATED:
                    lease.cancel()
                else:
                    assert lease.sequence_number is not None
                    self.arena.ack(lease.sequence_number)
            # Everything acknowledged: the whole segment is one free run again.
            assert self.arena.in_use == 0
            whole = self.arena.try_allocate(self.SIZE)
            assert whole is not None and whole.offset == 0
        finally:
            self.arena.close()
            assert not self.arena.path.exists()


ArenaModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestArenaAgainstAModel = pytest.mark.rule("SHM-8")(ArenaModel.TestCase)
