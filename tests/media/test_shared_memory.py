"""Spec section 6, shared memory: regions, arenas and leases on real files.

Files are made under /dev/shm (the protocol's directory) or in a temporary directory
where a test needs a private place; every file made is removed by its fixture.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import itertools
import logging
import mmap
import os
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

import avaproto.media.shared_memory as shared_memory
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
TIMEOUT = 10
NOT_PLAIN = ["../segment", "../../etc/passwd", "/etc/passwd", "a/b", "seg\x00ment", ".", "..", ""]


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


@pytest.fixture
def in_dev_shm() -> Iterator[Callable[[str], Path]]:
    """Names for files a test makes by hand in /dev/shm; whatever exists is removed after."""
    made: list[Path] = []

    def name(stem: str) -> Path:
        path = Path(SHM) / f"avaproto-test-{os.getpid()}-{os.urandom(6).hex()}-{stem}"
        made.append(path)
        return path

    yield name
    for path in made:
        if path.is_symlink() or path.exists():
            path.unlink()


@pytest.fixture
def opened_files(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every os.open call from now on (they still happen)."""
    calls: list[object] = []
    real = os.open

    def spy(path: object, *args: object, **kwargs: object) -> int:
        calls.append(path)
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    return calls


def mappings_of(path: str) -> list[tuple[int, str]]:
    """(size, permissions) of this process's mappings of ``path``."""
    found = []
    with open("/proc/self/maps", encoding="utf-8") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == path:
                start, end = (int(bound, 16) for bound in fields[0].split("-"))
                found.append((end - start, fields[1]))
    return found


def open_fds() -> dict[int, str]:
    """This process's open descriptors and what they refer to."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, closed since
    return found


class TestOpeningARegion:
    @pytest.mark.rule("SHM-3")
    @pytest.mark.parametrize("name", NOT_PLAIN)
    def test_only_plain_file_names_and_nothing_is_opened(
        self, segment: tuple[str, Path], opened_files: list[object], name: str
    ) -> None:
        with pytest.raises(SharedMemoryError) as caught:
            SharedMemoryRegion.open(name, 16, directory=segment[0])
        assert (caught.value.rule, caught.value.status) == ("SHM-3", Status.INVALID_ARGUMENT)
        assert "plain file name" in str(caught.value)
        assert opened_files == []

    @pytest.mark.rule("SHM-3")
    @pytest.mark.parametrize("name", ["../shm/x", "/dev/shm/x", "..", ""])
    def test_the_default_directory_is_guarded_too(
        self, opened_files: list[object], name: str
    ) -> None:
        with pytest.raises(SharedMemoryError) as caught:
            SharedMemoryRegion.open(name, 16)
        assert caught.value.rule == "SHM-3"
        assert opened_files == []

    @pytest.mark.rule("SHM-5")
    def test_a_symlink_is_never_followed(self, segment: tuple[str, Path]) -> None:
        directory, target = segment
        os.symlink(target, Path(directory) / "link")
        with pytest.raises(SharedMemoryError, match="link is a symbolic link") as caught:
            SharedMemoryRegion.open("link", 16, directory=directory)
        assert (caught.value.rule, caught.value.status) == ("SHM-5", Status.FAILED_PRECONDITION)

    @pytest.mark.rule("SHM-5")
    def test_a_symlink_in_dev_shm_to_a_real_segment_is_refused(
        self, arena: SharedMemoryArena, in_dev_shm: Callable[[str], Path]
    ) -> None:
        link = in_dev_shm("link")
        link.symlink_to(arena.path)
        with pytest.raises(SharedMemoryError, match="symbolic link") as caught:
            SharedMemoryRegion.open(link.name, 16)
        assert caught.value.rule == "SHM-5"
        assert str(link) in str(caught.value)

    @pytest.mark.rule("SHM-5")
    def test_missing_file_names_the_path(self, segment: tuple[str, Path]) -> None:
        with pytest.raises(SharedMemoryError, match="nothere does not exist") as caught:
            SharedMemoryRegion.open("nothere", 16, directory=segment[0])
        assert (caught.value.rule, caught.value.status) == ("SHM-5", Status.FAILED_PRECONDITION)
        assert str(Path(segment[0]) / "nothere") in str(caught.value)

    @pytest.mark.rule("SHM-5")
    def test_missing_file_in_dev_shm(self, in_dev_shm: Callable[[str], Path]) -> None:
        missing = in_dev_shm("missing")
        with pytest.raises(SharedMemoryError, match=str(missing)) as caught:
            SharedMemoryRegion.open(missing.name, 16)
        assert caught.value.status is Status.FAILED_PRECONDITION

    @pytest.mark.rule("SHM-5")
    def test_missing_directory(self, tmp_path: Path) -> None:
        with pytest.raises(SharedMemoryError, match="directory") as caught:
            SharedMemoryRegion.open("x", 16, directory=str(tmp_path / "none"))
        assert caught.value.rule == "SHM-5"

    @pytest.mark.rule("SHM-5")
    def test_a_fifo_is_refused_without_blocking(self, tmp_path: Path) -> None:
        os.mkfifo(tmp_path / "pipe")
        errors: list[BaseException] = []

        def opening() -> None:
            try:
                SharedMemoryRegion.open("pipe", 16, directory=str(tmp_path))
            except BaseException as error:
                errors.append(error)

        opener = threading.Thread(target=opening, daemon=True)
        opener.start()
        opener.join(TIMEOUT)
        assert not opener.is_alive(), "opening a FIFO blocked"
        assert isinstance(errors[0], SharedMemoryError)
        assert errors[0].rule == "SHM-5"
        assert "not a regular file" in str(errors[0])

    @pytest.mark.rule("SHM-5")
    def test_a_directory_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "sub").mkdir()
        with pytest.raises(SharedMemoryError, match="not a regular file"):
            SharedMemoryRegion.open("sub", 16, directory=str(tmp_path))

    @pytest.mark.rule("SHM-6")
    def test_file_shorter_than_announced(self, segment: tuple[str, Path]) -> None:
        with pytest.raises(SharedMemoryError, match="4096 bytes, fewer than the 4097") as caught:
            SharedMemoryRegion.open("segment", 4097, directory=segment[0])
        assert (caught.value.rule, caught.value.status) == ("SHM-6", Status.FAILED_PRECONDITION)

    @pytest.mark.rule("SHM-6")
    def test_file_in_dev_shm_shorter_than_announced(
        self, in_dev_shm: Callable[[str], Path]
    ) -> None:
        short = in_dev_shm("short")
        short.write_bytes(b"x" * 100)
        with pytest.raises(SharedMemoryError, match="100 bytes, fewer than the 101 ") as caught:
            SharedMemoryRegion.open(short.name, 101)
        assert caught.value.rule == "SHM-6"

    @pytest.mark.rule("SHM-2")
    def test_zero_length(self, segment: tuple[str, Path]) -> None:
        with pytest.raises(SharedMemoryError, match="length_bytes") as caught:
            SharedMemoryRegion.open("segment", 0, directory=segment[0])
        assert caught.value.rule == "SHM-2"

    @pytest.mark.rule("SHM-5", "SHM-6", "SHM-7")
    def test_mapped_read_only_shared_exactly_and_no_descriptor_kept(
        self, arena: SharedMemoryArena
    ) -> None:
        before = open_fds()
        with SharedMemoryRegion.open(arena.handle_name, 3 * mmap.PAGESIZE) as region:
            assert region.path == f"{SHM}/{arena.handle_name}"
            # One descriptor: mmap's own duplicate, read-only, closed with the mapping.
            [extra] = set(open_fds()) - set(before)
            assert open_fds()[extra] == region.path
            assert fcntl.fcntl(extra, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
            mapped = mappings_of(region.path)
            # The arena's read-write mapping, and the region's: read-only, shared, exact.
            assert (3 * mmap.PAGESIZE, "r--s") in mapped
            assert (arena.length_bytes, "rw-s") in mapped
            lease = region.lease(2, 0, 16)
        assert lease.state is LeaseState.RELEASED
        assert region.closed
        assert mappings_of(region.path) == [(arena.length_bytes, "rw-s")]
        assert open_fds() == before


class TestReadingThroughLeases:
    @pytest.mark.rule("SHM-4")
    @pytest.mark.parametrize(
        ("offset", "length"),
        [
            (4096, 1),
            (4000, 97),
            (4097, 0),
            (U64_MAX, 2),
            (2, U64_MAX),
            (U64_MAX, U64_MAX),
            (2**63, 2**63),
            (2**64, 0),
            (-1, 2),
        ],
    )
    def test_references_outside_the_segment(
        self, segment: tuple[str, Path], offset: int, length: int
    ) -> None:
        with SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as region:
            with pytest.raises(SharedMemoryError) as caught:
                region.lease(2, offset, length)
            assert (caught.value.rule, caught.value.status) == ("SHM-4", Status.OUT_OF_RANGE)
            assert "sample 2" in str(caught.value)
            assert region.live_leases == 0

    @pytest.mark.rule("SHM-4")
    def test_the_last_byte_is_inside(self, segment: tuple[str, Path]) -> None:
        with SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as region:
            lease = region.lease(2, 4095, 1)
            assert bytes(lease.view) == bytes([255])
            whole = region.lease(3, 0, 4096)
            assert bytes(whole.view) == segment[1].read_bytes()
            assert region.live_leases == 2

    @pytest.mark.rule("SHM-10")
    @pytest.mark.parametrize("offset", [0, 100, 4096])
    def test_an_empty_reference_is_an_empty_lease(
        self, segment: tuple[str, Path], offset: int
    ) -> None:
        with SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as region:
            lease = region.lease(2, offset, 0)
            assert (lease.length, bytes(lease.view)) == (0, b"")
            lease.release()
            assert region.live_leases == 0

    @pytest.mark.rule("SHM-7")
    def test_the_view_is_read_only(self, segment: tuple[str, Path]) -> None:
        with SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as region:
            lease = region.lease(2, 0, 16)
            assert lease.view.readonly
            with pytest.raises(TypeError):
                lease.view[0] = 1
            with pytest.raises(TypeError):
                lease.view[:4] = b"abcd"
            array = np.frombuffer(lease.view, np.uint8)
            assert not array.flags.writeable
            with pytest.raises(ValueError, match="read-only"):
                array[0] = 1
            with pytest.raises(ValueError, match="WRITEABLE"):
                array.flags.writeable = True
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
            assert region.live_leases == 0
            with pytest.raises(LeaseError, match="sample 5 was released") as caught:
                _ = lease.view
            assert caught.value.rule == "SHM-7"
            with pytest.raises(ValueError, match="released"):
                bytes(view)  # even a reference taken earlier is dead

    @pytest.mark.rule("SHM-7")
    def test_double_release_raises(self, segment: tuple[str, Path]) -> None:
        with SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as region:
            lease = region.lease(2, 0, 16)
            lease.release()
            with pytest.raises(LeaseError, match="already released") as caught:
                lease.release()
            assert caught.value.rule == "SHM-7"

    @pytest.mark.rule("SHM-7")
    def test_a_lease_releases_itself_as_a_context(self, segment: tuple[str, Path]) -> None:
        with SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as region:
            with region.lease(2, 16, 4) as lease:
                assert bytes(lease.view) == bytes([16, 17, 18, 19])
                assert region.live_leases == 1
            assert lease.state is LeaseState.RELEASED
            assert region.live_leases == 0

    @pytest.mark.rule("SHM-7")
    def test_closing_under_live_leases_is_refused_unless_forced(
        self, segment: tuple[str, Path]
    ) -> None:
        region = SharedMemoryRegion.open("segment", 4096, directory=segment[0])
        leases = [region.lease(n, n * 16, 16) for n in range(2, 5)]
        with pytest.raises(LeaseError, match="3 leases") as caught:
            region.close()
        assert caught.value.rule == "SHM-7"
        assert not region.closed and bytes(leases[0].view) == bytes(range(32, 48))
        region.close(force=True)
        assert all(lease.state is LeaseState.RELEASED for lease in leases)
        assert region.live_leases == 0
        with pytest.raises(LeaseError, match="closed"):
            region.lease(9, 0, 1)
        region.close()  # twice: nothing to do

    @pytest.mark.rule("SHM-7", "MEDIA-7")
    def test_a_frame_reaches_numpy_with_zero_copies(self, arena: SharedMemoryArena) -> None:
        fmt = VideoFormat.checked(Encoding.RAW, PixelFormat.BGR24, 64, 32)
        picture = np.random.default_rng(1).integers(0, 256, (32, 64, 3), dtype=np.uint8)
        slot = arena.allocate(fmt.frame_bytes)
        slot.view[:] = frames.encode(picture, fmt)
        offset = slot.offset
        slot.mark_sent(2)
        with SharedMemoryRegion.open(arena.handle_name, arena.length_bytes) as region:
            everything = region.lease(1, 0, region.length_bytes)
            whole = np.frombuffer(everything.view, np.uint8)  # the receiver's entire mapping
            lease = region.lease(2, offset, fmt.frame_bytes)
            image = frames.decode(lease.view, fmt)
            rgb = frames.to_rgb(image, fmt)
            assert np.shares_memory(rgb, whole)
            assert np.array_equal(rgb, picture)
            del image, rgb, whole
            lease.release()
            everything.release()
        arena.ack(2)

    @pytest.mark.rule("SHM-7", "SHM-8")
    def test_the_receiver_sees_the_senders_bytes_in_place(self, arena: SharedMemoryArena) -> None:
        slot = arena.allocate(5)
        slot.view[:] = b"hello"
        slot.mark_sent(2)
        with SharedMemoryRegion.open(arena.handle_name, arena.length_bytes) as region:
            lease = region.lease(2, slot.offset, 5)
            seen = np.frombuffer(lease.view, np.uint8)
            assert seen.tobytes() == b"hello"
            lease.release()
            arena.ack(2)
            again = arena.allocate(5)  # the freed slot, rewritten by the sender
            assert again.offset == slot.offset
            again.view[:] = b"world"
            assert seen.tobytes() == b"world"  # the same memory: no copy was ever made
            del seen
            again.cancel()


class TestViewsOutlivingTheirLease:
    @pytest.mark.rule("SHM-12")
    def test_an_array_keeps_the_mapping_until_it_goes(
        self, arena: SharedMemoryArena, caplog: pytest.LogCaptureFixture
    ) -> None:
        slot = arena.allocate(4)
        slot.view[:] = b"keep"
        slot.mark_sent(2)
        region = SharedMemoryRegion.open(arena.handle_name, 4096)
        kept = np.frombuffer(region.lease(2, slot.offset, 4).view, np.uint8)
        with caplog.at_level(logging.WARNING, "avaproto.media.shared_memory"):
            region.close(force=True)  # releases the lease, cannot unmap yet
        assert region.closed and region.live_leases == 0
        assert "SHM-12" in caplog.text and region.path in caplog.text
        assert kept.tobytes() == b"keep"  # still mapped: no crash, no dangling pointer
        assert (4096, "r--s") in mappings_of(region.path)
        del kept
        gc.collect()
        assert (4096, "r--s") not in mappings_of(region.path)  # unmapped, not leaked
        arena.ack(2)

    @pytest.mark.rule("SHM-12", "SHM-7")
    def test_an_export_of_the_view_does_not_stop_the_release(
        self, segment: tuple[str, Path], caplog: pytest.LogCaptureFixture
    ) -> None:
        with SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as region:
            lease = region.lease(7, 0, 4)
            holder = struct.iter_unpack("B", lease.view)  # holds a buffer export
            with caplog.at_level(logging.WARNING, "avaproto.media.shared_memory"):
                lease.release()
            assert lease.state is LeaseState.RELEASED and region.live_leases == 0
            assert "[SHM-12] the lease of sample 7" in caplog.text
            with pytest.raises(LeaseError):
                _ = lease.view
            assert [value for (value,) in holder] == [0, 1, 2, 3]

    @pytest.mark.rule("SHM-12", "SHM-9")
    def test_closing_an_arena_under_an_export_still_unlinks(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        made = SharedMemoryArena.create(4096, prefix="avaproto-test-")
        slot = made.allocate(8)
        holder = struct.iter_unpack("B", slot.view)
        with caplog.at_level(logging.WARNING, "avaproto.media.shared_memory"):
            made.close()
        assert not made.path.exists()
        assert slot.state is LeaseState.RELEASED and made.live_leases == 0
        assert "SHM-12" in caplog.text
        del holder


class TestTheSendersArena:
    @pytest.mark.rule("SHM-9")
    def test_a_private_uniquely_named_file(self) -> None:
        previous = os.umask(0)  # even under the most permissive umask
        try:
            with (
                SharedMemoryArena.create(4096) as one,
                SharedMemoryArena.create(4096) as two,
            ):
                assert one.handle_name != two.handle_name
                assert one.handle_name.startswith(f"avaproto-{os.getpid()}-")
                assert one.path.parent == Path(SHM)
                info = one.path.stat()
                assert stat.S_IMODE(info.st_mode) == 0o600
                assert info.st_uid == os.getuid()
                assert info.st_size == 4096
        finally:
            os.umask(previous)
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
        assert arena.closed and not arena.path.exists()

    @pytest.mark.rule("SHM-9")
    def test_unlinked_when_making_it_fails(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def no_mapping(*args: object, **kwargs: object) -> mmap.mmap:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")

        monkeypatch.setattr(shared_memory.mmap, "mmap", no_mapping)
        with pytest.raises(OSError, match="Cannot allocate"):
            SharedMemoryArena.create(4096, directory=str(tmp_path))
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.rule("SHM-9")
    def test_unlinked_when_dropped_unclosed(self) -> None:
        made = SharedMemoryArena.create(4096, prefix="avaproto-test-")
        path = made.path
        assert path.exists()
        del made
        gc.collect()
        assert not path.exists()

    @pytest.mark.rule("SHM-3")
    def test_a_prefix_cannot_leave_the_directory(self, tmp_path: Path) -> None:
        with pytest.raises(SharedMemoryError) as caught:
            SharedMemoryArena.create(4096, directory=str(tmp_path), prefix="../x")
        assert caught.value.rule == "SHM-3"
        assert list(tmp_path.parent.glob("x*")) == []

    @pytest.mark.rule("SHM-11")
    def test_the_memory_is_reserved_when_made(self) -> None:
        with SharedMemoryArena.create(1 << 20, prefix="avaproto-test-") as made:
            assert made.path.stat().st_blocks * 512 >= 1 << 20

    @pytest.mark.rule("SHM-11", "SHM-9")
    def test_no_room_is_reported_when_made(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def full(fd: int, offset: int, length: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "posix_fallocate", full)
        with pytest.raises(SharedMemoryError, match="No space left") as caught:
            SharedMemoryArena.create(4096, directory=str(tmp_path))
        assert (caught.value.rule, caught.value.status) == ("SHM-11", Status.RESOURCE_EXHAUSTED)
        assert str(tmp_path) in str(caught.value)
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.rule("SHM-11")
    def test_a_file_system_that_cannot_reserve_still_gets_its_size(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def unsupported(fd: int, offset: int, length: int) -> None:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")

        monkeypatch.setattr(os, "posix_fallocate", unsupported)
        with SharedMemoryArena.create(5000, directory=str(tmp_path)) as made:
            assert made.path.stat().st_size == 5000
            assert made.try_allocate(5000) is not None

    @pytest.mark.rule("SHM-8", "SHM-13")
    def test_slots_are_aligned_disjoint_and_inside(self, arena: SharedMemoryArena) -> None:
        leases = [arena.allocate(n) for n in (1, 100, 64, 4000, 7)]
        spans = sorted((lease.offset, lease.offset + lease.length) for lease in leases)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
        assert all(lease.offset % ALIGNMENT == 0 for lease in leases)
        assert [len(lease.view) for lease in leases] == [1, 100, 64, 4000, 7]
        assert spans[-1][1] <= arena.length_bytes
        assert arena.in_use == 64 + 128 + 64 + 4032 + 64
        assert arena.live_leases == 5

    @pytest.mark.rule("SHM-13")
    @pytest.mark.parametrize("alignment", [1, 8, 4096])
    def test_the_alignment_is_configurable(self, tmp_path: Path, alignment: int) -> None:
        with SharedMemoryArena.create(
            1 << 16, directory=str(tmp_path), alignment=alignment
        ) as made:
            first, second = made.allocate(3), made.allocate(3)
            assert (first.offset, second.offset) == (0, alignment if alignment > 1 else 3)

    @pytest.mark.rule("SHM-13")
    @pytest.mark.parametrize("alignment", [0, -64, 48])
    def test_an_alignment_is_a_power_of_two(self, tmp_path: Path, alignment: int) -> None:
        with pytest.raises(ValueError, match="power of two"):
            SharedMemoryArena.create(4096, directory=str(tmp_path), alignment=alignment)
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.rule("SHM-8", "SHM-13")
    def test_a_segment_of_odd_size_is_usable_to_its_last_byte(self, tmp_path: Path) -> None:
        with SharedMemoryArena.create(1000, directory=str(tmp_path)) as made:
            whole = made.allocate(1000)
            assert (whole.offset, whole.size) == (0, 1000)
            whole.cancel()
            head, tail = made.allocate(960), made.allocate(40)
            assert (head.offset, tail.offset, tail.size) == (0, 960, 40)
            assert made.in_use == 1000 and made.try_allocate(1) is None

    @pytest.mark.rule("SHM-8")
    def test_a_sent_slot_is_freed_only_by_its_ack(self, arena: SharedMemoryArena) -> None:
        whole = arena.allocate(arena.length_bytes)
        whole.mark_sent(7)
        assert (whole.state, whole.sequence_number) == (LeaseState.SENT, 7)
        assert arena.try_allocate(1) is None  # never overwrites
        with pytest.raises(LeaseError, match="only an unsent slot") as caught:
            whole.cancel()
        assert caught.value.rule == "SHM-8"
        arena.ack(7)
        assert whole.state is LeaseState.RELEASED
        assert arena.in_use == 0 and arena.live_leases == 0
        assert arena.try_allocate(arena.length_bytes) is not None

    @pytest.mark.rule("SHM-8", "ACK-8")
    def test_acks_in_any_order_free_the_whole_segment(self, arena: SharedMemoryArena) -> None:
        quarter = arena.length_bytes // 4
        for number in range(1, 5):
            arena.allocate(quarter).mark_sent(number)
        assert arena.try_allocate(1) is None
        arena.ack(2)
        arena.ack(4)
        assert arena.in_use == 2 * quarter
        assert arena.try_allocate(quarter + 1) is None  # two free quarters, not adjacent
        arena.ack(1)  # merges with the free second quarter
        merged = arena.try_allocate(2 * quarter)
        assert merged is not None and merged.offset == 0
        merged.cancel()
        arena.ack(3)
        assert arena.in_use == 0
        assert arena.try_allocate(arena.length_bytes) is not None

    @pytest.mark.rule("SHM-8")
    def test_acks_of_unknown_or_acknowledged_numbers(self, arena: SharedMemoryArena) -> None:
        slot = arena.allocate(10)
        slot.mark_sent(3)
        with pytest.raises(LeaseError, match="acknowledgement of 4") as caught:
            arena.ack(4)
        assert caught.value.rule == "SHM-8"
        arena.ack(3)
        with pytest.raises(LeaseError, match="acknowledged already"):
            arena.ack(3)

    @pytest.mark.rule("SHM-8")
    def test_a_slot_is_written_only_before_it_is_sent(self, arena: SharedMemoryArena) -> None:
        slot = arena.allocate(4)
        assert not slot.view.readonly and len(slot.view) == 4
        slot.view[:] = b"abcd"
        earlier = slot.view
        slot.mark_sent(2)
        with pytest.raises(LeaseError, match="sent"):
            slot.view[:] = b"efgh"
        with pytest.raises(ValueError, match="released"):
            earlier[0] = 0  # a view taken before sending is dead too
        with pytest.raises(LeaseError, match="not allocated"):
            slot.mark_sent(3)

    @pytest.mark.rule("SHM-8", "ACK-2")
    def test_a_slot_is_sent_under_one_valid_number(self, arena: SharedMemoryArena) -> None:
        first, second = arena.allocate(4), arena.allocate(4)
        with pytest.raises(ValueError, match="above 0"):
            first.mark_sent(0)
        first.mark_sent(2)
        with pytest.raises(LeaseError, match="sample 2 already holds a slot"):
            second.mark_sent(2)
        assert second.state is LeaseState.ALLOCATED  # untouched: it can still be used
        second.cancel()
        assert arena.live_leases == 1

    @pytest.mark.rule("SHM-8")
    def test_cancel_frees_an_unsent_slot_once(self, arena: SharedMemoryArena) -> None:
        slot = arena.allocate(100)
        slot.cancel()
        assert slot.state is LeaseState.RELEASED
        assert arena.in_use == 0 and arena.live_leases == 0
        with pytest.raises(LeaseError, match="released"):
            slot.cancel()
        with pytest.raises(LeaseError):
            _ = slot.view
        with pytest.raises(LeaseError):
            slot.mark_sent(2)

    @pytest.mark.rule("SHM-8")
    def test_too_large_is_refused_at_once(self, arena: SharedMemoryArena) -> None:
        for allocate in (arena.try_allocate, arena.allocate):
            with pytest.raises(SharedMemoryError, match="cannot fit") as caught:
                allocate(arena.length_bytes + 1)
            assert (caught.value.rule, caught.value.status) == (
                "SHM-8",
                Status.RESOURCE_EXHAUSTED,
            )
        for length in (0, -1):
            with pytest.raises(ValueError, match="above zero"):
                arena.try_allocate(length)
        assert arena.live_leases == 0

    @pytest.mark.rule("SHM-8")
    def test_blocking_allocation_times_out_when_nothing_is_acked(
        self, arena: SharedMemoryArena
    ) -> None:
        arena.allocate(arena.length_bytes).mark_sent(2)
        with pytest.raises(TimeoutError, match="no 10-byte slot"):
            arena.allocate(10, timeout=0.01)
        assert arena.live_leases == 1

    @pytest.mark.rule("SHM-8")
    def test_blocking_allocation_is_woken_by_an_ack_from_another_thread(
        self, arena: SharedMemoryArena
    ) -> None:
        arena.allocate(arena.length_bytes).mark_sent(2)
        got: list[SentLease] = []
        waiter = threading.Thread(target=lambda: got.append(arena.allocate(10, timeout=TIMEOUT)))
        waiter.start()
        arena.ack(2)
        waiter.join(TIMEOUT)
        assert not waiter.is_alive()
        assert got[0].state is LeaseState.ALLOCATED and got[0].offset == 0

    @pytest.mark.rule("SHM-8", "SHM-9")
    def test_close_ends_every_lease(self, arena: SharedMemoryArena) -> None:
        sent, unsent = arena.allocate(10), arena.allocate(10)
        sent.mark_sent(2)
        view = unsent.view
        arena.close()
        assert sent.state is unsent.state is LeaseState.RELEASED
        assert (arena.in_use, arena.live_leases) == (0, 0)
        with pytest.raises(ValueError, match="released"):
            view[0] = 1
        with pytest.raises(LeaseError, match="closed"):
            arena.try_allocate(1)
        with pytest.raises(LeaseError):
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

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(sender)
                await anyio.wait_all_tasks_blocked()
                assert got == []  # still waiting: nothing was overwritten
                arena.ack(2)
        assert got[0].offset == 0 and got[0].state is LeaseState.ALLOCATED

    @pytest.mark.rule("SHM-8")
    async def test_a_cancel_wakes_the_waiting_sender(self, arena: SharedMemoryArena) -> None:
        unsent = arena.allocate(arena.length_bytes)
        got: list[SentLease] = []

        async def sender() -> None:
            got.append(await arena.allocate_async(arena.length_bytes))

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(sender)
                await anyio.wait_all_tasks_blocked()
                unsent.cancel()
        assert got[0].length == arena.length_bytes

    @pytest.mark.rule("SHM-8")
    async def test_a_cancelled_wait_takes_no_slot(self, arena: SharedMemoryArena) -> None:
        arena.allocate(arena.length_bytes).mark_sent(2)
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(arena.allocate_async, 100)
                await anyio.wait_all_tasks_blocked()
                tasks.cancel_scope.cancel()
        arena.ack(2)
        assert arena.in_use == 0 and arena.live_leases == 0
        assert arena._waiters == []
        assert arena.try_allocate(arena.length_bytes) is not None

    @pytest.mark.rule("SHM-8")
    async def test_too_large_never_waits(self, arena: SharedMemoryArena) -> None:
        with anyio.fail_after(TIMEOUT), pytest.raises(SharedMemoryError, match="cannot fit"):
            await arena.allocate_async(arena.length_bytes + 1)
        with pytest.raises(ValueError, match="above zero"):
            await arena.allocate_async(0)

    @pytest.mark.rule("SHM-9")
    async def test_closing_wakes_a_waiter_with_an_error(self, arena: SharedMemoryArena) -> None:
        arena.allocate(arena.length_bytes).mark_sent(2)
        errors: list[Exception] = []

        async def sender() -> None:
            try:
                await arena.allocate_async(100)
            except LeaseError as error:
                errors.append(error)

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(sender)
                await anyio.wait_all_tasks_blocked()
                arena.close()
        assert errors and "closed" in str(errors[0])
        assert not arena.path.exists()


class ArenaModel(RuleBasedStateMachine):
    """Random allocations, sends, cancels and out-of-order acks against a simple model.

    The model knows only the live slots (offset, size); the free runs are what lies
    between them. The segment's size is not a multiple of the alignment, so the short
    tail slot is exercised too.
    """

    SIZE = 4000
    unsent = Bundle("unsent")
    sent = Bundle("sent")

    def __init__(self) -> None:
        super().__init__()
        self.arena = SharedMemoryArena.create(self.SIZE, prefix="avaproto-model-")
        self.live: dict[int, tuple[int, int]] = {}  # id(lease) or number -> (offset, size)
        self.number = 1

    def _free_runs(self) -> list[tuple[int, int]]:
        runs, position = [], 0
        for offset, size in sorted(self.live.values()):
            runs.append((position, offset - position))
            position = offset + size
        runs.append((position, self.SIZE - position))
        return [(offset, size) for offset, size in runs if size]

    @rule(target=unsent, length=st.integers(1, 1500))
    def allocate(self, length: int) -> SentLease | None:
        rounded = -(-length // ALIGNMENT) * ALIGNMENT
        first_fit = next(
            (
                (offset, min(rounded, size))
                for offset, size in self._free_runs()
                if size >= rounded or (size >= length and offset + size == self.SIZE)
            ),
            None,
        )
        lease = self.arena.try_allocate(length)
        # None exactly when no free run can take it; otherwise the first one that can.
        assert (None if lease is None else (lease.offset, lease.size)) == first_fit
        if lease is None:
            return None
        assert lease.offset % ALIGNMENT == 0 and lease.offset + lease.size <= self.SIZE
        assert lease.length == length == len(lease.view)
        self.live[id(lease)] = (lease.offset, lease.size)
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

    @rule(number=st.integers(1, 200))
    def ack_of_a_number_without_a_slot(self, number: int) -> None:
        if number not in self.live:
            try:
                self.arena.ack(number)
            except LeaseError:
                pass
            else:
                raise AssertionError(f"ack({number}) freed nothing and did not raise")

    @invariant()
    def no_overlap_and_accounted(self) -> None:
        spans = sorted(self.live.values())
        for (a, a_size), (b, _) in itertools.pairwise(spans):
            assert a + a_size <= b
        assert all(offset + size <= self.SIZE for offset, size in spans)
        assert self.arena.in_use == sum(size for _, size in spans)
        assert self.arena.live_leases == len(spans)
        assert sorted((lease.offset, lease.size) for lease in self.arena.leases()) == spans

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


@pytest.mark.rule("SHM-8", "SHM-13")
class TestArenaAgainstAModel(ArenaModel.TestCase):  # type: ignore[name-defined]
    settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
