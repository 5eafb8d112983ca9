"""Spec section 6, shared memory: regions, arenas and leases on real files.

Files are made under /dev/shm (the protocol's directory) or in a temporary directory
where a test needs a private place; every file made is removed by its fixture.
"""

from __future__ import annotations

import contextlib
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
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

import avaproto.media.shared_memory as shared_memory
from avaproto.bench import __main__ as bench
from avaproto.bench import shm as shm_bench
from avaproto.engine.frame import Frame
from avaproto.errors import LeaseError, SharedMemoryError
from avaproto.media import frames
from avaproto.media.held_bytes import HeldBytes
from avaproto.media.shared_memory import (
    ACCESS_MODES,
    ALIGNMENT,
    Access,
    LeaseState,
    ReceivedLease,
    SentLease,
    SharedMemoryArena,
    SharedMemoryRegion,
    WriteMode,
)
from avaproto.messages import Encoding, PixelFormat
from avaproto.protocol.descriptor import SharedMemoryProperties, StreamDescriptor
from avaproto.protocol.roles import Role
from avaproto.protocol.video_format import VideoFormat
from avaproto.status import Status

SHM = "/dev/shm"
U64_MAX = 2**64 - 1
TIMEOUT = 10
NOT_PLAIN = [
    *("../segment", "../../etc/passwd", "/etc/passwd", "a/b", "seg\x00ment", ".", "..", ""),
    *("seg\nment", "seg\u2028ment", "s" * 256, "é" * 128),  # a line break; past NAME_MAX
]


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
    def test_a_name_is_quoted_short_and_on_one_line(self, opened_files: list[object]) -> None:
        """A name of a million characters, one a line break: refused at once, and the
        refusal (a status message, a log line) quotes 64 of them, escaped."""
        name = "x" * 100 + "\nFORGED" + "y" * 1_000_000
        with pytest.raises(SharedMemoryError) as caught:
            SharedMemoryRegion.open(name, 16)
        assert caught.value.rule == "SHM-3"
        assert "\n" not in str(caught.value) and "FORGED" not in str(caught.value)
        assert f"'{'x' * 64}'… (1000107 characters)" in str(caught.value)
        assert opened_files == []

    @pytest.mark.rule("SHM-3")
    def test_the_longest_plain_name_linux_allows_is_accepted(
        self, segment: tuple[str, Path]
    ) -> None:
        directory, path = segment
        longest = Path(directory) / ("n" * 255)
        os.link(path, longest)
        try:
            SharedMemoryRegion.open(longest.name, 16, directory=directory).close()
        finally:
            longest.unlink()

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
    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
    def test_a_segment_of_another_user_says_what_would_open_it(self) -> None:
        """A real process of another user (nobody) opens a segment made as this one:
        refused at 0600 with the owner, the modes and the flag that opens it; read at 0644."""
        import subprocess
        import sys

        child = (
            "import os, sys\n"
            "from avaproto.errors import SharedMemoryError\n"
            "from avaproto.media.shared_memory import SharedMemoryRegion\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "try:\n"
            "    SharedMemoryRegion.open(sys.argv[1], 4096).close()\n"
            "    print('opened')\n"
            "except SharedMemoryError as error:\n"
            "    print(error.rule, error.status.name, error)\n"
        )
        for mode in (0o600, 0o644):
            with SharedMemoryArena.create(4096, mode=mode) as arena:
                done = subprocess.run(
                    [sys.executable, "-c", child, arena.handle_name],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=True,
                )
            said = done.stdout.strip()
            if mode == 0o644:
                assert said == "opened"
                continue
            assert said.startswith("SHM-5 FAILED_PRECONDITION"), said
            assert "-rw-------, owned by uid 0" in said and "runs as uid 65534" in said
            assert "--shm-mode 640" in said

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
    def test_a_device_is_refused_without_being_opened(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Opening some devices acts on them (a tape rewinds); a terminal could become
        the server's. /dev/null's numbers stand for one here."""
        try:
            os.mknod(tmp_path / "tape", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node needs CAP_MKNOD")
        opened: list[object] = []
        real_open = os.open

        def recording(path: Any, *args: Any, **kwargs: Any) -> int:
            opened.append(path)
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", recording)
        with pytest.raises(SharedMemoryError, match=r"not a regular file \(mode crw"):
            SharedMemoryRegion.open("tape", 16, directory=str(tmp_path))
        assert "tape" not in opened and opened  # the directory was, the device never

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
        with SharedMemoryRegion.open(arena.handle_name, 3 * mmap.PAGESIZE, access="map") as region:
            assert region.path == f"{SHM}/{arena.handle_name}"
            # One descriptor: mmap's own duplicate, read-only, closed with the mapping.
            [extra] = set(open_fds()) - set(before)
            assert open_fds()[extra] == region.path
            assert fcntl.fcntl(extra, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
            # The region's mapping only (the arena maps nothing): read-only, shared, exact.
            assert mappings_of(region.path) == [(3 * mmap.PAGESIZE, "r--s")]
            lease = region.lease(2, 0, 16)
        assert lease.state is LeaseState.RELEASED
        assert region.closed
        assert mappings_of(region.path) == []
        assert open_fds() == before

    @pytest.mark.rule("SHM-17")
    def test_mapped_regions_stay_within_the_process_budget(self, arena: SharedMemoryArena) -> None:
        """A sparse file of any size costs its sender nothing; mapping it whole costs the
        server address space, so all mapped regions together are bounded."""
        page = mmap.PAGESIZE
        budget = shared_memory._mapped.held + 5 * page  # other tests' regions may be open
        first = SharedMemoryRegion.open(
            arena.handle_name, 3 * page, access="map", max_mapped_bytes=budget
        )
        with pytest.raises(SharedMemoryError) as caught:
            SharedMemoryRegion.open(
                arena.handle_name, 3 * page, access="map", max_mapped_bytes=budget
            )
        assert (caught.value.rule, caught.value.status) == ("SHM-17", Status.RESOURCE_EXHAUSTED)
        assert f"of {3 * page} bytes would be mapped beside" in caught.value.detail
        assert f"the limit is {budget} (--max-mapped-bytes)" in caught.value.detail
        assert mappings_of(first.path) == [(3 * page, "r--s")]  # the refused one mapped nothing
        # Read access maps nothing, so it is not counted; a closed region is counted no more.
        SharedMemoryRegion.open(arena.handle_name, 3 * page, max_mapped_bytes=budget).close()
        first.close()
        SharedMemoryRegion.open(
            arena.handle_name, 3 * page, access="map", max_mapped_bytes=budget
        ).close()

    @pytest.mark.rule("SHM-5", "SHM-15")
    def test_read_access_maps_nothing_and_keeps_one_read_only_descriptor(
        self, arena: SharedMemoryArena
    ) -> None:
        arena_fds = [fd for fd, target in open_fds().items() if target == str(arena.path)]
        assert len(arena_fds) == 1  # the arena's own, read-write, for pwrite and its lock
        assert fcntl.fcntl(arena_fds[0], fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
        before = open_fds()
        with SharedMemoryRegion.open(arena.handle_name, arena.length_bytes) as region:
            assert region.access == "read"
            [extra] = set(open_fds()) - set(before)
            assert open_fds()[extra] == region.path
            assert fcntl.fcntl(extra, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
            lease = region.lease(2, 0, arena.length_bytes)
            assert len(lease.view) == arena.length_bytes  # read, every byte
            assert mappings_of(region.path) == []  # no page of the sender's file, ever
        assert lease.state is LeaseState.RELEASED and region.closed
        assert open_fds() == before

    def test_an_unknown_access_mode_is_refused(self, arena: SharedMemoryArena) -> None:
        with pytest.raises(ValueError, match="access must be one of read, map"):
            SharedMemoryRegion.open(arena.handle_name, 16, access="mmap")  # type: ignore[arg-type]


class TestReadingThroughLeases:
    """Every check here holds whether the region reads the file or maps it."""

    @pytest.fixture(params=ACCESS_MODES)
    def access(self, request: pytest.FixtureRequest) -> Access:
        return request.param  # type: ignore[no-any-return]

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
        self, segment: tuple[str, Path], access: Access, offset: int, length: int
    ) -> None:
        with SharedMemoryRegion.open(
            "segment", 4096, directory=segment[0], access=access
        ) as region:
            with pytest.raises(SharedMemoryError) as caught:
                region.lease(2, offset, length)
            assert (caught.value.rule, caught.value.status) == ("SHM-4", Status.OUT_OF_RANGE)
            assert "sample 2" in str(caught.value)
            assert region.live_leases == 0

    @pytest.mark.rule("SHM-4")
    def test_the_last_byte_is_inside(self, segment: tuple[str, Path], access: Access) -> None:
        with SharedMemoryRegion.open(
            "segment", 4096, directory=segment[0], access=access
        ) as region:
            lease = region.lease(2, 4095, 1)
            assert bytes(lease.view) == bytes([255])
            whole = region.lease(3, 0, 4096)
            assert bytes(whole.view) == segment[1].read_bytes()
            assert region.live_leases == 2

    @pytest.mark.rule("SHM-10")
    @pytest.mark.parametrize("offset", [0, 100, 4096])
    def test_an_empty_reference_is_an_empty_lease(
        self, segment: tuple[str, Path], access: Access, offset: int
    ) -> None:
        with SharedMemoryRegion.open(
            "segment", 4096, directory=segment[0], access=access
        ) as region:
            lease = region.lease(2, offset, 0)
            assert (lease.length, bytes(lease.view)) == (0, b"")
            lease.release()
            assert region.live_leases == 0

    @pytest.mark.rule("SHM-7")
    def test_the_view_is_read_only(self, segment: tuple[str, Path], access: Access) -> None:
        with SharedMemoryRegion.open(
            "segment", 4096, directory=segment[0], access=access
        ) as region:
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
    def test_use_after_release_raises(self, segment: tuple[str, Path], access: Access) -> None:
        with SharedMemoryRegion.open(
            "segment", 4096, directory=segment[0], access=access
        ) as region:
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
    def test_double_release_raises(self, segment: tuple[str, Path], access: Access) -> None:
        with SharedMemoryRegion.open(
            "segment", 4096, directory=segment[0], access=access
        ) as region:
            lease = region.lease(2, 0, 16)
            lease.release()
            with pytest.raises(LeaseError, match="already released") as caught:
                lease.release()
            assert caught.value.rule == "SHM-7"

    @pytest.mark.rule("SHM-7")
    def test_a_lease_releases_itself_as_a_context(
        self, segment: tuple[str, Path], access: Access
    ) -> None:
        with SharedMemoryRegion.open(
            "segment", 4096, directory=segment[0], access=access
        ) as region:
            with region.lease(2, 16, 4) as lease:
                assert bytes(lease.view) == bytes([16, 17, 18, 19])
                assert region.live_leases == 1
            assert lease.state is LeaseState.RELEASED
            assert region.live_leases == 0

    @pytest.mark.rule("SHM-7")
    def test_closing_under_live_leases_is_refused_unless_forced(
        self, segment: tuple[str, Path], access: Access
    ) -> None:
        region = SharedMemoryRegion.open("segment", 4096, directory=segment[0], access=access)
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
        slot.write(frames.encode(picture, fmt))
        offset = slot.offset
        slot.mark_sent(2)
        with SharedMemoryRegion.open(arena.handle_name, arena.length_bytes, access="map") as region:
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

    @pytest.mark.rule("SHM-7", "MEDIA-7")
    def test_read_access_copies_once_then_numpy_sees_that_copy(
        self, arena: SharedMemoryArena
    ) -> None:
        fmt = VideoFormat.checked(Encoding.RAW, PixelFormat.BGR24, 64, 32)
        picture = np.random.default_rng(2).integers(0, 256, (32, 64, 3), dtype=np.uint8)
        slot = arena.allocate(fmt.frame_bytes)
        slot.write(frames.encode(picture, fmt))
        slot.mark_sent(2)
        with SharedMemoryRegion.open(arena.handle_name, arena.length_bytes) as region:
            lease = region.lease(2, slot.offset, fmt.frame_bytes)
            read = np.frombuffer(lease.view, np.uint8)
            rgb = frames.to_rgb(frames.decode(lease.view, fmt), fmt)
            assert np.shares_memory(rgb, read)  # decoding made no second copy
            assert np.array_equal(rgb, picture)
            del read, rgb
            lease.release()
        arena.ack(2)

    @pytest.mark.rule("SHM-7", "SHM-8")
    def test_the_receiver_sees_the_senders_bytes_in_place(self, arena: SharedMemoryArena) -> None:
        slot = arena.allocate(5)
        slot.write(b"hello")
        slot.mark_sent(2)
        with SharedMemoryRegion.open(arena.handle_name, arena.length_bytes, access="map") as region:
            lease = region.lease(2, slot.offset, 5)
            seen = np.frombuffer(lease.view, np.uint8)
            assert seen.tobytes() == b"hello"
            lease.release()
            arena.ack(2)
            again = arena.allocate(5)  # the freed slot, rewritten by the sender
            assert again.offset == slot.offset
            again.write(b"world")
            assert seen.tobytes() == b"world"  # the same memory: no copy was ever made
            del seen
            again.cancel()


class TestViewsOutlivingTheirLease:
    @pytest.mark.rule("SHM-12")
    def test_an_array_keeps_the_mapping_until_it_goes(
        self, arena: SharedMemoryArena, caplog: pytest.LogCaptureFixture
    ) -> None:
        slot = arena.allocate(4)
        slot.write(b"keep")
        slot.mark_sent(2)
        region = SharedMemoryRegion.open(arena.handle_name, 4096, access="map")
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

    @pytest.mark.rule("SHM-12")
    def test_an_array_keeps_its_read_buffer_which_is_never_reused(
        self, arena: SharedMemoryArena, caplog: pytest.LogCaptureFixture
    ) -> None:
        slot = arena.allocate(4)
        slot.write(b"keep")
        slot.mark_sent(2)
        with SharedMemoryRegion.open(arena.handle_name, arena.length_bytes) as region:
            lease = region.lease(2, slot.offset, 4)
            kept = np.frombuffer(lease.view, np.uint8)
            with caplog.at_level(logging.WARNING, "avaproto.media.shared_memory"):
                lease.release()
            assert "[SHM-12] the lease of sample 2" in caplog.text
            assert region.pooled_buffers == 0  # held: out of the pool, not reused
            arena.ack(2)
            again = arena.allocate(4)
            assert again.offset == slot.offset
            again.write(b"next")
            again.mark_sent(3)
            later = region.lease(3, again.offset, 4)
            assert bytes(later.view) == b"next"
            assert kept.tobytes() == b"keep"  # its own buffer, untouched by the next read
            later.release()
            assert region.pooled_buffers == 1
            del kept

    @pytest.mark.rule("SHM-12")
    @pytest.mark.parametrize(
        "pixels", [PixelFormat.RGB24, PixelFormat.RGB565LE, PixelFormat.YUV420P]
    )
    @pytest.mark.parametrize("access", ["read", "map"])
    def test_a_decoded_frame_kept_past_its_lease_keeps_its_bytes(
        self,
        arena: SharedMemoryArena,
        caplog: pytest.LogCaptureFixture,
        pixels: PixelFormat,
        access: Access,
    ) -> None:
        """What ``frame.rgb()`` and ``frame.image`` give, kept by a tracker for the next
        frame: numpy's strided views of a memoryview hold the bytearray or mmap under
        it without an export, so the buffer went back to the pool and the next frame
        was read into it under the kept array, or the mapping was unmapped under it
        (a segmentation fault on its next read)."""
        fmt = VideoFormat.checked(Encoding.RAW, pixels, 4, 2)
        slot = arena.allocate(fmt.frame_bytes)
        slot.write(b"\x01" * fmt.frame_bytes)
        slot.mark_sent(2)
        region = SharedMemoryRegion.open(arena.handle_name, 4096, access=access)
        kept = frames.decode(region.lease(2, slot.offset, fmt.frame_bytes).view, fmt)
        with caplog.at_level(logging.WARNING, "avaproto.media.shared_memory"):
            region.close(force=True)  # releases the lease
        assert "[SHM-12]" in caplog.text
        if access == "map":
            assert (4096, "r--s") in mappings_of(region.path)  # before any read of it
        else:
            assert region.pooled_buffers == 0
        planes = list(kept) if isinstance(kept, frames.YuvPlanes) else [kept]
        assert all(plane.tobytes() == b"\x01" * plane.nbytes for plane in planes)
        arena.ack(2)
        del kept, planes

    @pytest.mark.rule("SHM-12")
    def test_a_view_made_from_the_view_also_keeps_the_buffer_out_of_the_pool(
        self, segment: tuple[str, Path], caplog: pytest.LogCaptureFixture
    ) -> None:
        with SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as region:
            lease = region.lease(2, 0, 4)
            copy_of_view = memoryview(lease.view)  # shares the buffer, not the view's count
            with caplog.at_level(logging.WARNING, "avaproto.media.shared_memory"):
                lease.release()
            assert "[SHM-12]" in caplog.text
            assert region.pooled_buffers == 0
            assert bytes(copy_of_view) == bytes(range(4))
            copy_of_view.release()

    @pytest.mark.rule("SRV-18")
    def test_the_pools_of_all_regions_keep_at_most_their_bound(
        self, segment: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Two regions read a 1 KiB frame each at once, with room in the process's pools
        for one buffer: the second given back is let go, and a closed region's buffers
        make room again."""
        monkeypatch.setattr(shared_memory, "POOL_BYTES", 1024)
        monkeypatch.setattr(shared_memory, "_pooled", HeldBytes())
        with (
            SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as one,
            SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as two,
        ):
            first, second = one.lease(2, 0, 1024), two.lease(2, 1024, 1024)
            assert bytes(first.view) == bytes(range(256)) * 4 and len(second.view) == 1024
            first.release()
            second.release()
            assert (one.pooled_buffers, two.pooled_buffers) == (1, 0)
            one.close()
            again = two.lease(3, 0, 1024)
            assert len(again.view) == 1024
            again.release()
            assert two.pooled_buffers == 1
        assert shared_memory._pooled.held == 0
        dropped = SharedMemoryRegion.open("segment", 4096, directory=segment[0])
        lease = dropped.lease(2, 0, 1024)
        assert len(lease.view) == 1024
        lease.release()
        assert shared_memory._pooled.held == 1024
        dropped._descriptor.close()  # type: ignore[union-attr]  # as close() would
        del dropped, lease
        gc.collect()
        assert shared_memory._pooled.held == 0  # a region never closed gives it back too


class TestASegmentThatShrinks:
    """A peer that shrinks the segment ends its stream with SHM-15; the process lives on."""

    @pytest.mark.rule("SHM-15")
    @pytest.mark.parametrize("access", ACCESS_MODES)
    def test_a_lease_on_a_segment_shrunk_before_the_sample_is_refused(
        self, arena: SharedMemoryArena, access: Access
    ) -> None:
        with SharedMemoryRegion.open(
            arena.handle_name, arena.length_bytes, access=access
        ) as region:
            region.lease(2, 0, 16).release()
            os.truncate(arena.path, 4096)  # the sender shrinks its own file
            if access == "read":
                # Each read is checked instead: bytes still in the file read whole,
                # bytes past its new end are refused.
                with region.lease(3, 0, 16) as inside:
                    assert len(inside.view) == 16
                past = region.lease(3, 8192, 16)
                with pytest.raises(SharedMemoryError) as caught:
                    past.view  # noqa: B018
                past.release()
                assert caught.value.rule == "SHM-15"
                return
            with pytest.raises(SharedMemoryError) as caught:
                region.lease(3, 0, 16)  # inside the new size, still refused: checked now
            assert (caught.value.rule, caught.value.status) == (
                "SHM-15",
                Status.FAILED_PRECONDITION,
            )
            message = str(caught.value)
            assert region.path in message and "4096 bytes now" in message
            assert f"the {arena.length_bytes} bytes its descriptor announced" in message
            assert "sample 3" in message
            assert region.live_leases == 0
            if access == "read":
                assert mappings_of(region.path) == []

    @pytest.mark.rule("SHM-15")
    @pytest.mark.parametrize("new_size", [0, 8192, 10000, 12287])
    def test_a_read_past_the_new_end_is_a_short_read_not_a_fault(
        self, arena: SharedMemoryArena, new_size: int
    ) -> None:
        arena.allocate(arena.length_bytes).write(bytes([7]) * arena.length_bytes)
        with SharedMemoryRegion.open(arena.handle_name, arena.length_bytes) as region:
            lease = region.lease(2, 8192, 4096)  # the size is still whole here
            os.truncate(arena.path, new_size)  # then the sender shrinks it, before the read
            with pytest.raises(SharedMemoryError) as caught:
                _ = lease.view
            assert (caught.value.rule, caught.value.status) == (
                "SHM-15",
                Status.FAILED_PRECONDITION,
            )
            assert f"{new_size} bytes now" in str(caught.value)
            assert "sample 2's bytes [8192, 12288)" in str(caught.value)
            assert lease.state is LeaseState.LIVE and region.pooled_buffers == 1
            lease.release()  # the engine still ends it as usual
            assert region.live_leases == 0

    @pytest.mark.rule("SHM-15")
    @pytest.mark.parametrize("write", ["pwrite", "map"])
    @pytest.mark.parametrize("new_size", [0, 100, 4096])
    @pytest.mark.parametrize("length", [100, 1 << 16])  # the first slot, or the whole segment
    def test_a_write_into_a_segment_the_receiver_shrank_raises(
        self, write: WriteMode, new_size: int, length: int
    ) -> None:
        # Through a mapping, a write past the file's end would kill this process (SIGBUS):
        # the check before it is what keeps this test alive.
        with SharedMemoryArena.create(1 << 16, prefix="avaproto-test-", write=write) as arena:
            slot = arena.allocate(length)
            os.truncate(arena.path, new_size)  # the receiver shrinks the sender's file
            with pytest.raises(SharedMemoryError) as caught:
                slot.write(bytes(length))
            assert (caught.value.rule, caught.value.status) == (
                "SHM-15",
                Status.FAILED_PRECONDITION,
            )
            assert f"has {new_size} bytes, fewer than the {arena.length_bytes}" in str(caught.value)
            assert str(arena.path) in str(caught.value)
            assert arena.path.stat().st_size == new_size  # reported, not silently grown back

    @pytest.mark.rule("SHM-15")
    def test_a_shrink_during_the_write_is_caught_after_it(
        self, arena: SharedMemoryArena, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        real = os.pwrite

        def shrunk_meanwhile(fd: int, data: memoryview, offset: int) -> int:
            os.truncate(arena.path, 0)  # the receiver, between the check and the write
            return real(fd, data, offset)

        slot = arena.allocate(100)
        monkeypatch.setattr(os, "pwrite", shrunk_meanwhile)
        with pytest.raises(SharedMemoryError, match=r"^\[SHM-15\] .* has 100 bytes"):
            slot.write(bytes(100))  # the write extended the file again, to 100 bytes

    def test_the_first_write_after_making_an_arena_passes_the_check(
        self, arena: SharedMemoryArena
    ) -> None:
        slot = arena.allocate(arena.length_bytes)
        slot.write(bytes(range(256)) * (arena.length_bytes // 256))
        assert arena.path.stat().st_size == arena.length_bytes


class TestReadBuffers:
    """Read access copies each used frame into a pooled buffer of the region's."""

    def test_nothing_is_read_until_the_view_is_used(self, arena: SharedMemoryArena) -> None:
        with SharedMemoryRegion.open(arena.handle_name, arena.length_bytes) as region:
            for number in range(2, 10):
                region.lease(number, 0, 4096).release()
            assert region.pooled_buffers == 0  # no buffer was ever needed

    def test_a_steady_stream_reuses_one_buffer_and_allocates_nothing(
        self, arena: SharedMemoryArena
    ) -> None:
        frame = 1 << 14
        payloads = [bytes([number]) * frame for number in range(43)]  # made beforehand
        addresses = set()
        with SharedMemoryRegion.open(arena.handle_name, arena.length_bytes) as region:

            def one(number: int) -> None:
                slot = arena.allocate(frame)
                slot.write(payloads[number])
                slot.mark_sent(number)
                with region.lease(number, slot.offset, frame) as lease:
                    pixels = np.frombuffer(lease.view, np.uint8)
                    assert pixels[0] == pixels[-1] == number
                    addresses.add(pixels.ctypes.data)
                    del pixels  # before the release: the buffer goes back to the pool
                arena.ack(number)
                assert region.pooled_buffers == 1

            one(2)
            tracemalloc.start()
            try:
                for number in range(3, 43):
                    one(number)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        assert len(addresses) == 1  # every frame read into the same buffer
        assert peak < frame // 2  # and no frame-sized allocation on the way

    def test_a_larger_frame_replaces_the_buffer_then_smaller_ones_use_it(
        self, segment: tuple[str, Path]
    ) -> None:
        with SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as region:
            addresses = []
            for length in (100, 300, 100, 300):
                with region.lease(2, 0, length) as lease:
                    assert bytes(lease.view) == segment[1].read_bytes()[:length]
                    addresses.append(np.frombuffer(lease.view, np.uint8).ctypes.data)
                assert region.pooled_buffers == 1
            assert addresses[1] == addresses[2] == addresses[3]

    def test_leases_read_at_once_get_buffers_of_their_own(self, segment: tuple[str, Path]) -> None:
        with SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as region:
            leases = [region.lease(n, n * 100, 100) for n in range(3)]
            views = [bytes(lease.view) for lease in leases]
            whole = segment[1].read_bytes()
            assert views == [whole[n * 100 : n * 100 + 100] for n in range(3)]
            for lease in leases:
                lease.release()
            assert region.pooled_buffers == 3  # at most as many as were read at once

    def test_descriptors_return_to_the_baseline(self, arena: SharedMemoryArena) -> None:
        before = open_fds()
        for _ in range(3):
            region = SharedMemoryRegion.open(arena.handle_name, arena.length_bytes)
            leases = [region.lease(n, 0, 4096) for n in range(2, 5)]
            assert len(leases[0].view) == 4096
            region.close(force=True)  # live leases, one of them read
            assert open_fds() == before

    def test_the_descriptor_is_never_closed_under_a_running_read(
        self, arena: SharedMemoryArena
    ) -> None:
        before = open_fds()
        region = SharedMemoryRegion.open(arena.handle_name, arena.length_bytes)
        lease = region.lease(2, 0, 16)
        assert region._descriptor is not None
        with region._descriptor.use() as fd:  # as a worker thread inside preadv would be
            assert fd is not None
            region.close(force=True)
            os.fstat(fd)  # still this file: its number cannot go to another open yet
            assert open_fds()[fd] == region.path
        assert open_fds() == before  # closed by the last use
        with pytest.raises(LeaseError):
            _ = lease.view


class TestFrameData:
    """A frame's ``data`` over a lease is read on first use, once."""

    @staticmethod
    def frame_of(lease: ReceivedLease) -> Frame:
        fmt = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 4, 4)
        descriptor = StreamDescriptor(
            role=Role.PIPELINE,
            graph_identifier=None,
            extension_identifier=None,
            extension_configuration="",
            timescale=90000,
            video_format=fmt,
            shared_memory=SharedMemoryProperties(lease.region.path, lease.region.length_bytes),
        )
        return Frame(2, 0, lease, fmt, descriptor)

    def test_read_on_first_use_then_the_same_view(self, segment: tuple[str, Path]) -> None:
        with SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as region:
            lease = region.lease(2, 16, 48)
            frame = self.frame_of(lease)
            assert lease._view is None  # making the frame read nothing
            assert frame.has_data and lease._view is None  # nor asking if it has bytes
            data = frame.data
            assert data is not None and bytes(data) == bytes(range(16, 64))
            assert frame.data is data and lease.view is data
            assert frame.rgb()[0, 0].tolist() == [16, 17, 18]
            del data
            lease.release()
            with pytest.raises(ValueError, match="released"):
                bytes(frame.data or b"")

    def test_after_the_lease_ended_unread_the_data_is_a_released_view(
        self, segment: tuple[str, Path]
    ) -> None:
        with SharedMemoryRegion.open("segment", 4096, directory=segment[0]) as region:
            lease = region.lease(2, 0, 48)
            frame = self.frame_of(lease)
            lease.release()
            with pytest.raises(ValueError, match="released"):
                bytes(frame.data or b"")
            assert region.pooled_buffers == 0  # nothing was read for it

    @pytest.mark.rule("SHM-15")
    def test_a_shrunk_segment_surfaces_from_frame_data(self, arena: SharedMemoryArena) -> None:
        with SharedMemoryRegion.open(arena.handle_name, arena.length_bytes) as region:
            frame = self.frame_of(region.lease(2, 0, 48))
            os.truncate(arena.path, 0)
            with pytest.raises(SharedMemoryError, match=r"^\[SHM-15\]"):
                _ = frame.data


class TestTheSendersArena:
    def test_a_mapped_arena_writes_through_its_mapping_and_unmaps_on_close(self) -> None:
        def mapped(path: Path) -> bool:
            with open("/proc/self/maps", encoding="utf-8") as maps:
                return any(str(path) in line for line in maps)

        with SharedMemoryArena.create(1 << 16, prefix="avaproto-test-", write="map") as arena:
            assert arena.write_mode == "map" and mapped(arena.path)
            first, second = arena.allocate(100), arena.allocate(5000)
            first.write(bytes([1]) * 100)
            second.write(bytes(range(250)) * 20)
            written = arena.path.read_bytes()
            assert written[:100] == bytes([1]) * 100
            assert written[second.offset : second.offset + 5000] == bytes(range(250)) * 20
        assert not mapped(arena.path) and not arena.path.exists()

    def test_a_pwrite_arena_maps_nothing(self, arena: SharedMemoryArena) -> None:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            assert arena.handle_name not in maps.read()
        assert arena.write_mode == "pwrite"

    def test_an_unknown_write_mode_is_refused_and_leaves_no_file(self) -> None:
        before = set(os.listdir(SHM))
        with pytest.raises(ValueError, match="write must be one of pwrite, map"):
            SharedMemoryArena.create(4096, write="mmap")  # type: ignore[arg-type]
        assert set(os.listdir(SHM)) <= before

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
    @pytest.mark.parametrize("mode", [0o640, 0o644, 0o660])
    def test_a_segment_others_may_read_and_its_group_write(
        self, mode: int, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Group write, for extensions that open segments read-write, is warned of."""
        caplog.set_level(logging.WARNING, logger="avaproto")
        previous = os.umask(0o077)  # even under the most restrictive umask
        try:
            with SharedMemoryArena.create(4096, mode=mode) as arena:
                assert stat.S_IMODE(arena.path.stat().st_mode) == mode
        finally:
            os.umask(previous)
        warned = [r.getMessage() for r in caplog.records]
        if mode != 0o660:
            assert warned == []
            return
        [line] = warned
        assert line.startswith(f"[SHM-9] segment {arena.path} is mode 0o660: any process of ")
        assert "may change its frames before the extension reads them" in line

    @pytest.mark.rule("SHM-9")
    @pytest.mark.parametrize(
        "mode", [0o666, 0o664, 0o670, 0o662, 0o400, 0o4600, 0o700, 0o606, 0o604]
    )
    def test_a_mode_that_lets_others_write_is_refused(self, mode: int) -> None:
        before = set(os.listdir(SHM))
        with pytest.raises(ValueError, match="0o600, 0o640, 0o644 or 0o660"):
            SharedMemoryArena.create(4096, mode=mode)
        assert set(os.listdir(SHM)) <= before

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
        def no_lock(fd: int, operation: int) -> None:
            raise OSError(errno.ENOLCK, "No locks available")

        monkeypatch.setattr(shared_memory.fcntl, "flock", no_lock)
        with pytest.raises(OSError, match="No locks"):
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

    @pytest.mark.rule("SHM-9")
    @pytest.mark.parametrize("planted", ["directory", "symbolic link", "file"])
    def test_what_another_process_put_in_its_place_is_left_and_its_own_let_go(
        self, tmp_path: Path, planted: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An extension of the same user may unlink the segment and put something else
        under its name: closing removes nothing of another's, raises nothing, and still
        lets go of the segment's descriptor (its memory and its liveness lock)."""
        made = SharedMemoryArena.create(4096, directory=str(tmp_path))
        target = tmp_path / "kept"
        target.write_bytes(b"another's")
        made.path.unlink()
        if planted == "directory":
            made.path.mkdir()
        elif planted == "symbolic link":
            made.path.symlink_to(target)
        else:
            made.path.write_bytes(b"another's")
        caplog.set_level(logging.WARNING)
        made.close()
        assert made.path.exists() or made.path.is_symlink()
        assert target.read_bytes() == b"another's"
        assert f"[SHM-9] {made.path} no longer names this process's segment" in caplog.text
        assert f"put a {planted} there" in caplog.text or planted == "file"
        held = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # the listing's own descriptor, closed
                held.append(os.readlink(f"/proc/self/fd/{fd}"))
        assert not any(link.startswith(str(made.path)) for link in held)

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
        assert [lease.length for lease in leases] == [1, 100, 64, 4000, 7]
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
        slot.write(b"abcd")
        slot.write(memoryview(np.frombuffer(b"ABCD", np.uint8).reshape(2, 2)))  # C-contiguous
        assert arena.path.read_bytes()[slot.offset : slot.offset + 4] == b"ABCD"
        slot.mark_sent(2)
        with pytest.raises(LeaseError, match="sent") as caught:
            slot.write(b"efgh")
        assert caught.value.rule == "SHM-8"
        assert arena.path.read_bytes()[slot.offset : slot.offset + 4] == b"ABCD"
        with pytest.raises(LeaseError, match="not allocated"):
            slot.mark_sent(3)

    @pytest.mark.rule("SHM-8")
    def test_a_write_fills_exactly_its_slot(self, arena: SharedMemoryArena) -> None:
        first, second = arena.allocate(4), arena.allocate(4)
        second.write(b"2222")
        for wrong in (b"abc", b"abcde", b""):
            with pytest.raises(ValueError, match="holds 4 bytes"):
                first.write(wrong)
        assert arena.path.read_bytes()[second.offset : second.offset + 4] == b"2222"

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
            slot.write(bytes(100))
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
        fds = open_fds()
        arena.close()
        assert sent.state is unsent.state is LeaseState.RELEASED
        assert (arena.in_use, arena.live_leases) == (0, 0)
        assert str(arena.path) in fds.values()
        assert str(arena.path) not in open_fds().values()  # its one descriptor is closed
        with pytest.raises(LeaseError):
            unsent.write(bytes(10))
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
        assert lease.length == length
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


class TestTheAccessBenchmark:
    def test_it_reports_each_access_mode_against_the_resident_floor(self) -> None:
        results = shm_bench.measure(16, 8, repeat=2)
        assert [t.access for t in results] == [
            "resident (floor)",
            "map",
            "read",
            "read, bytes unused",
        ]
        assert all(t.median > 0 and t.best > 0 for t in results)
        table = shm_bench.report(results)
        assert "16x8" in table and "ratio" in table and "µs" in table
        assert not list(Path(SHM).glob("avaproto-bench-*"))  # its segment is gone

    def test_the_bench_command_selects_it(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setitem(
            bench.BENCHMARKS, "shm", lambda repeat=10: shm_bench.run(repeat, sizes=((8, 8),))
        )
        assert bench.main(["--only", "shm", "--repeat", "1"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("== shm") and "8x8" in out and "read, bytes unused" in out
