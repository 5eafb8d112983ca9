"""Shared memory: the receiver's read-only regions and the sender's arenas, with leases.

The protocol's shared-memory transfer: the sender names a file in ``/dev/shm`` in its
descriptor (handle name, length); each sample refers to (offset, length) in it; the
receiver acknowledges the sample when done; the sender holds that memory until then.

Both sides hand out **leases**, explicit objects with explicit states, so that who may
touch which bytes is never left to the garbage collector:

* The receiver maps the sender's file read-only (``SharedMemoryRegion``). Each sample
  yields a ``ReceivedLease`` over its slice; the engine releases it right after the
  sample's acknowledgement is sent, and any later use of it raises.
* The sender owns a segment (``SharedMemoryArena``) and allocates a ``SentLease`` per
  sample: allocated -> sent (it travels in a message) -> acked (the peer is done) ->
  released (the slot is free again). Only the acknowledgement frees a sent slot; when
  nothing fits, allocation waits rather than overwrite a slot still in use.

Opening a region never leaves the shared-memory directory: the handle must be a plain
file name, the file is opened relative to the directory's descriptor with
``O_NOFOLLOW`` (a symlink planted there is refused), and its size is checked with
``fstat`` before mapping.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import logging
import mmap
import os
import secrets
import threading
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from types import TracebackType

import anyio

from ..errors import LeaseError, ProtocolError, SharedMemoryError
from ..protocol.descriptor import check_handle_name
from ..status import Status

log = logging.getLogger("avaproto.media.shared_memory")

#: Where the protocol's shared memory lives (a tmpfs on Linux).
DEFAULT_DIRECTORY = "/dev/shm"
#: Slots start on this boundary: a cache line, and aligned for any SIMD load.
ALIGNMENT = 64


def _check_name(handle_name: str) -> None:
    try:
        check_handle_name(handle_name)
    except ProtocolError as error:
        raise SharedMemoryError("SHM-3", Status.INVALID_ARGUMENT, str(error)) from None


# --- receiver ---------------------------------------------------------------------------


class LeaseState(Enum):
    ALLOCATED = "allocated"  # sender: written, not yet sent
    SENT = "sent"  # sender: travelling, the peer may read it
    ACKED = "acked"  # sender: acknowledged; freed at once
    LIVE = "live"  # receiver: being processed
    RELEASED = "released"  # both: no access any more


class ReceivedLease:
    """Read access to one sample's slice of a region, until released (after the ack)."""

    __slots__ = ("_view", "length", "offset", "region", "sequence_number", "state")

    def __init__(
        self, region: SharedMemoryRegion, sequence_number: int, offset: int, view: memoryview
    ) -> None:
        self.region = region
        self.sequence_number = sequence_number
        self.offset = offset
        self.length = len(view)
        self.state = LeaseState.LIVE
        self._view: memoryview | None = view

    @property
    def view(self) -> memoryview:
        """The slice, read-only; valid until ``release``."""
        if self._view is None:
            raise LeaseError(
                "SHM-7",
                Status.FAILED_PRECONDITION,
                f"the lease of sample {self.sequence_number} was released after its "
                "acknowledgement; its memory may not be read any more",
            )
        return self._view

    def release(self) -> None:
        """End access: the sender may now reuse these bytes. Twice is an error."""
        if self._view is None:
            raise LeaseError(
                "SHM-7",
                Status.FAILED_PRECONDITION,
                f"the lease of sample {self.sequence_number} is already released",
            )
        view, self._view = self._view, None
        self.state = LeaseState.RELEASED
        self.region._forget(self)
        view.release()

    def __repr__(self) -> str:
        return (
            f"ReceivedLease(sample={self.sequence_number}, offset={self.offset}, "
            f"length={self.length}, {self.state.value})"
        )


class SharedMemoryRegion:
    """The sender's segment, mapped read-only by the receiver."""

    def __init__(self, path: str, length_bytes: int, mapping: mmap.mmap) -> None:
        self.path = path
        self.length_bytes = length_bytes
        self._mapping: mmap.mmap | None = mapping
        self._whole = memoryview(mapping)
        self._leases: set[ReceivedLease] = set()

    @classmethod
    def open(
        cls, handle_name: str, length_bytes: int, *, directory: str = DEFAULT_DIRECTORY
    ) -> SharedMemoryRegion:
        """Map ``directory/handle_name`` read-only; refuse anything that could leave it."""
        _check_name(handle_name)
        if length_bytes <= 0:
            raise SharedMemoryError(
                "SHM-2", Status.INVALID_ARGUMENT, f"length_bytes must be > 0, got {length_bytes}"
            )
        path = os.path.join(directory, handle_name)
        try:
            directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            raise SharedMemoryError(
                "SHM-5",
                Status.FAILED_PRECONDITION,
                f"cannot open the shared-memory directory {directory}: {error.strerror}",
            ) from None
        try:
            fd = os.open(
                handle_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory_fd
            )
        except OSError as error:
            reason = (
                "is a symbolic link, which is never followed"
                if error.errno == errno.ELOOP
                else f"cannot be opened: {error.strerror}"
            )
            raise SharedMemoryError(
                "SHM-5", Status.FAILED_PRECONDITION, f"shared memory {path} {reason}"
            ) from None
        finally:
            os.close(directory_fd)
        try:
            size = os.fstat(fd).st_size
            if size < length_bytes:
                raise SharedMemoryError(
                    "SHM-6",
                    Status.FAILED_PRECONDITION,
                    f"shared memory {path} has {size} bytes, fewer than the {length_bytes} "
                    "the descriptor announces",
                )
            mapping = mmap.mmap(fd, length_bytes, prot=mmap.PROT_READ)
        finally:
            os.close(fd)  # the mapping holds its own duplicate, closed with it
        return cls(path, length_bytes, mapping)

    @property
    def live_leases(self) -> int:
        return len(self._leases)

    def lease(self, sequence_number: int, offset: int, length: int) -> ReceivedLease:
        """The slice a sample refers to, bounds-checked (SHM-4), as a live lease."""
        if self._mapping is None:
            raise LeaseError("SHM-7", Status.FAILED_PRECONDITION, f"{self.path} is closed")
        # Python integers: offset + length cannot overflow, however large the uint64s.
        if offset < 0 or length < 0 or offset + length > self.length_bytes:
            raise SharedMemoryError(
                "SHM-4",
                Status.OUT_OF_RANGE,
                f"sample {sequence_number} refers to bytes {offset}..{offset + length} of "
                f"shared memory {self.path}, which has {self.length_bytes}",
            )
        lease = ReceivedLease(self, sequence_number, offset, self._whole[offset : offset + length])
        self._leases.add(lease)
        return lease

    def _forget(self, lease: ReceivedLease) -> None:
        self._leases.discard(lease)

    def close(self, *, force: bool = False) -> None:
        """Unmap. Live leases refuse it, unless ``force`` releases them first.

        A numpy array still made from a released view keeps the mapping alive (Python
        cannot unmap memory that is exported); it is then unmapped when the last such
        array goes, and a warning says so.
        """
        if self._mapping is None:
            return
        if self._leases and not force:
            raise LeaseError(
                "SHM-7",
                Status.FAILED_PRECONDITION,
                f"{len(self._leases)} leases of {self.path} are still live; release them "
                "or close with force=True",
            )
        for lease in list(self._leases):
            lease.release()
        mapping, self._mapping = self._mapping, None
        try:
            self._whole.release()
            mapping.close()
        except BufferError:
            log.warning("%s is still referenced by an array; it unmaps when that goes", self.path)

    def __enter__(self) -> SharedMemoryRegion:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(force=True)


# --- sender -----------------------------------------------------------------------------


class SentLease:
    """One slot of an arena: written by the sender, freed only by its acknowledgement."""

    __slots__ = ("_view", "arena", "length", "offset", "sequence_number", "size", "state")

    def __init__(self, arena: SharedMemoryArena, offset: int, length: int, size: int) -> None:
        self.arena = arena
        self.offset = offset
        self.length = length
        self.size = size  # the slot, rounded up to the alignment
        self.sequence_number: int | None = None
        self.state = LeaseState.ALLOCATED
        self._view: memoryview | None = arena._whole[offset : offset + length]

    @property
    def view(self) -> memoryview:
        """The slot's bytes, writable until the lease is sent."""
        if self._view is None or self.state is not LeaseState.ALLOCATED:
            raise LeaseError(
                "SHM-8",
                Status.FAILED_PRECONDITION,
                f"the slot at {self.offset} is {self.state.value}; it may only be written "
                "before it is sent",
            )
        return self._view

    def mark_sent(self, sequence_number: int) -> None:
        """The message carrying this slot is sent as ``sequence_number``."""
        if self.state is not LeaseState.ALLOCATED:
            raise LeaseError(
                "SHM-8",
                Status.FAILED_PRECONDITION,
                f"the slot at {self.offset} is {self.state.value}, not allocated",
            )
        self._drop_view()
        self.state = LeaseState.SENT
        self.sequence_number = sequence_number
        self.arena._sent(self)

    def cancel(self) -> None:
        """The slot was never sent (the send failed or was cancelled): free it now."""
        if self.state is not LeaseState.ALLOCATED:
            raise LeaseError(
                "SHM-8",
                Status.FAILED_PRECONDITION,
                f"the slot at {self.offset} is {self.state.value}; only an unsent slot "
                "can be cancelled (a sent one waits for its acknowledgement)",
            )
        self._drop_view()
        self.state = LeaseState.RELEASED
        self.arena._free(self)

    def _drop_view(self) -> None:
        view, self._view = self._view, None
        if view is not None:
            view.release()

    def __repr__(self) -> str:
        return (
            f"SentLease(offset={self.offset}, length={self.length}, "
            f"sample={self.sequence_number}, {self.state.value})"
        )


class SharedMemoryArena:
    """The sender's segment: a file of its own under the shared-memory directory.

    Slots are handed out first-fit from a free list kept sorted and coalesced, so
    acknowledgements may come in any order (an extension answering in completion
    order) and everything is reusable once all is acknowledged. Thread-safe; the
    awaitable ``allocate_async`` is meant for one event loop.
    """

    def __init__(self, path: Path, size: int, mapping: mmap.mmap) -> None:
        self.path = path
        self.length_bytes = size
        self._mapping: mmap.mmap | None = mapping
        self._whole = memoryview(mapping)
        self._free_list: list[tuple[int, int]] = [(0, size)]  # (offset, size), sorted
        self._leases: set[SentLease] = set()
        self._by_number: dict[int, SentLease] = {}
        self._in_use = 0
        self._lock = threading.RLock()
        self._freed = threading.Condition(self._lock)
        self._waiters: list[anyio.Event] = []

    @classmethod
    def create(
        cls, size: int, *, directory: str = DEFAULT_DIRECTORY, prefix: str = "avaproto-"
    ) -> SharedMemoryArena:
        """A new segment of ``size`` bytes, mode 0600, with a name no one else has."""
        if size <= 0:
            raise ValueError(f"an arena needs a size above zero, got {size}")
        name = f"{prefix}{os.getpid()}-{secrets.token_hex(8)}"
        _check_name(name)
        path = Path(directory) / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        return cls(path, size, mapping)

    @property
    def handle_name(self) -> str:
        """What the descriptor names: the file's name in the shared-memory directory."""
        return self.path.name

    @property
    def in_use(self) -> int:
        """Bytes held by live slots (allocated or sent), alignment included."""
        return self._in_use

    @property
    def live_leases(self) -> int:
        return len(self._leases)

    def leases(self) -> Iterator[SentLease]:
        return iter(sorted(self._leases, key=lambda lease: lease.offset))

    def try_allocate(self, length: int) -> SentLease | None:
        """A slot of ``length`` bytes now, or None when no free run is large enough."""
        size = self._slot_size(length)
        with self._lock:
            self._check_open()
            for index, (offset, free) in enumerate(self._free_list):
                if free >= size:
                    if free == size:
                        del self._free_list[index]
                    else:
                        self._free_list[index] = (offset + size, free - size)
                    lease = SentLease(self, offset, length, size)
                    self._leases.add(lease)
                    self._in_use += size
                    return lease
        return None

    def allocate(self, length: int, timeout: float | None = None) -> SentLease:
        """A slot, waiting (blocking this thread) until acknowledgements free one."""
        self._slot_size(length)
        with self._freed:
            while True:
                lease = self.try_allocate(length)
                if lease is not None:
                    return lease
                if not self._freed.wait(timeout):
                    raise TimeoutError(
                        f"no {length}-byte slot freed in {timeout} s in {self.handle_name}"
                    )

    async def allocate_async(self, length: int) -> SentLease:
        """A slot, waiting (without blocking the event loop) for acknowledgements."""
        self._slot_size(length)
        while True:
            lease = self.try_allocate(length)
            if lease is not None:
                return lease
            freed = anyio.Event()
            with self._lock:
                self._waiters.append(freed)
            try:
                # An ack between try_allocate and here set nothing: try once more first.
                lease = self.try_allocate(length)
                if lease is not None:
                    return lease
                await freed.wait()
            finally:
                with self._lock:
                    if freed in self._waiters:
                        self._waiters.remove(freed)

    def ack(self, sequence_number: int) -> None:
        """The peer acknowledged ``sequence_number``: its slot is free again."""
        with self._lock:
            lease = self._by_number.pop(sequence_number, None)
        if lease is None:
            raise LeaseError(
                "SHM-8",
                Status.FAILED_PRECONDITION,
                f"acknowledgement of {sequence_number}, which holds no slot of "
                f"{self.handle_name} (unknown, or acknowledged already)",
            )
        lease.state = LeaseState.ACKED
        self._free(lease)
        lease.state = LeaseState.RELEASED

    def _slot_size(self, length: int) -> int:
        if length <= 0:
            raise ValueError(f"a slot needs a length above zero, got {length}")
        size = -(-length // ALIGNMENT) * ALIGNMENT
        if size > self.length_bytes:
            raise SharedMemoryError(
                "SHM-8",
                Status.RESOURCE_EXHAUSTED,
                f"a {length}-byte frame cannot fit in the {self.length_bytes}-byte segment "
                f"{self.handle_name}; make the segment larger",
            )
        return size

    def _check_open(self) -> None:
        if self._mapping is None:
            raise LeaseError("SHM-8", Status.FAILED_PRECONDITION, f"{self.path} is closed")

    def _sent(self, lease: SentLease) -> None:
        assert lease.sequence_number is not None
        with self._lock:
            if lease.sequence_number in self._by_number:
                raise LeaseError(
                    "SHM-8",
                    Status.FAILED_PRECONDITION,
                    f"sample {lease.sequence_number} already holds a slot",
                )
            self._by_number[lease.sequence_number] = lease

    def _free(self, lease: SentLease) -> None:
        with self._lock:
            if lease not in self._leases:
                return
            self._leases.discard(lease)
            self._in_use -= lease.size
            self._insert_free(lease.offset, lease.size)
            self._freed.notify_all()
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.set()

    def _insert_free(self, offset: int, size: int) -> None:
        """Return a run to the sorted free list, merging it with its neighbours."""
        free = self._free_list
        index = bisect.bisect_left(free, (offset, 0))
        if index < len(free) and offset + size == free[index][0]:
            size += free[index][1]
            del free[index]
        if index > 0 and free[index - 1][0] + free[index - 1][1] == offset:
            offset, size = free[index - 1][0], free[index - 1][1] + size
            del free[index - 1]
            index -= 1
        free.insert(index, (offset, size))

    def close(self) -> None:
        """Unlink the segment and unmap it; every lease ends. Safe to call twice."""
        with self._lock:
            mapping, self._mapping = self._mapping, None
            leases, self._leases = list(self._leases), set()
            self._by_number.clear()
            waiters, self._waiters = self._waiters, []
        if mapping is None:
            return
        for lease in leases:
            lease._drop_view()
            lease.state = LeaseState.RELEASED
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        try:
            self._whole.release()
            mapping.close()
        except BufferError:
            log.warning("%s is still referenced by an array; it unmaps when that goes", self.path)
        for waiter in waiters:
            waiter.set()

    def __enter__(self) -> SharedMemoryArena:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


__all__ = [
    "ALIGNMENT",
    "DEFAULT_DIRECTORY",
    "LeaseState",
    "ReceivedLease",
    "SentLease",
    "SharedMemoryArena",
    "SharedMemoryRegion",
]
