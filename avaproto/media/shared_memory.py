"""Shared memory: the receiver's regions of a sender's segment and the sender's arenas.

The protocol's shared-memory transfer: the sender names a file in ``/dev/shm`` in its
descriptor (handle name, length); each sample refers to (offset, length) in it; the
receiver acknowledges the sample when done; the sender holds that memory until then.

Both sides hand out **leases**, explicit objects with explicit states, so that who may
touch which bytes is never left to the garbage collector:

* The receiver opens the sender's file read-only (``SharedMemoryRegion``). Each sample
  yields a ``ReceivedLease`` over its slice (live -> released), whose ``view`` gives the
  bytes on first use; the engine releases it right after the sample's acknowledgement is
  sent, and any later use of it raises.
* The sender owns a segment (``SharedMemoryArena``) and allocates a ``SentLease`` per
  sample: allocated (``write`` copies the frame in) -> sent (it travels in a message) ->
  acked (the peer is done) -> released (the slot is free again). Only the
  acknowledgement frees a sent slot; when nothing fits, allocation waits rather than
  overwrite a slot still in use.

Opening a region never leaves the shared-memory directory: the handle must be a plain
file name (SHM-3), the file is opened relative to the directory's descriptor with
``O_NOFOLLOW`` (a symlink planted there is refused), ``O_NONBLOCK`` (a FIFO cannot
hang the receiver) and ``O_NOCTTY``; only a regular file is accepted, a device never
opened at all, and its size is checked with ``fstat`` (SHM-5, SHM-6). A region or an
arena holds exactly one descriptor while open and none once closed.

Memory another process owns. Either party can shrink the segment with ``ftruncate``
while the other uses it, by mistake or on purpose. A mapped page past the end of its
file raises SIGBUS on access, and Python cannot recover from it (a handler written in
Python runs between bytecodes, never inside the C code that faulted): the whole process
dies, and every other stream it serves with it. A peer may end its own stream, never
the process (SHM-15), so:

* The receiver by default (``access="read"``) never maps the sender's file. The first
  use of a lease's ``view`` reads the sample's bytes with ``os.preadv`` into a buffer of
  the region's; a file that ends before the sample does gives a short read, which ends
  the stream with SHM-15, not a fault. Buffers come from a pool per region (at most as
  many as leases read at once, each as large as the largest frame seen; ``POOL_BYTES``
  across the process), so a steady stream allocates nothing; a buffer that something
  still holds when its lease ends (an array made from the view) leaves the pool and is
  never reused under its holder.
  The price is one copy of each frame whose bytes are used, by the kernel out of the
  page cache; a processor that never touches ``frame.data`` pays nothing. Measured with
  ``python -m avaproto.bench --only shm --repeat 500`` (per frame: the lease, its bytes,
  a ``max`` over every byte, the release; medians on a 2-core VM): 416x416 RGB24, read
  49 µs, map 10 µs, the same ``max`` over a resident private buffer 7 µs; 1920x1080
  RGB24, read 0.63 ms (best 0.49), map 74 µs, resident 73 µs; a lease whose bytes are
  never used, 4 µs in both sizes (its size check). So the copy adds about 40 µs to a
  416x416 frame and half a millisecond to a full-HD one: small beside any model, and
  beside decoding (a YUV420P full-HD frame's ``to_rgb`` takes about 20 ms here).
* ``access="map"`` maps the file read-only and gives views of the mapping: no copy, for
  a sender trusted not to shrink its segment (in the same pod, under the same owner).
  Its one guard, the ``fstat`` size check below, is not enough on its own: the check
  and the processor's read happen at two different moments, and a sender that shrinks
  the file between them, or while the processor reads, still faults the receiver.
  Pinning the pages (``mlock``, ``MAP_POPULATE``) does not help, since truncation takes
  them out of every mapping; only not mapping closes that window.
* In both modes every new lease checks the file's size with ``fstat`` (one system call
  per sample), so a segment shrunk before the sample was sent ends the stream with
  SHM-15 even when the processor never reads the bytes.
* The sender by default (``write="pwrite"``) has no mapping of its own segment either.
  ``SentLease.write`` copies a frame in with ``pwrite``, which a shrunk file cannot turn
  into a fault (a write past the end extends the file again), then checks the size: a
  segment the extension shrank ends the stream with SHM-15, and is unlinked with the
  arena as always. The kernel's write path copies a page at a time: a 1920x1080 RGB24
  frame took 1.25 ms to ``pwrite`` into /dev/shm here against 0.40 ms to copy into a
  mapping of the same file (300 frames each, on a 2-core VM).
* ``write="map"`` copies frames in through a read-write mapping, as most pipelines do,
  for an extension trusted not to shrink the segment. Its size checks before and after
  each write catch a segment shrunk between frames, but not one shrunk during the copy,
  which faults this process (the same window as a receiver's ``access="map"``). The
  segment is mode 0600, so only a process of the same user can open it at all.

Views and their lifetimes. A lease's ``view`` is a read-only ``memoryview``: of the
region's buffer (read) or of the mapping (map). numpy arrays made from it
(``np.frombuffer``) share its memory without a copy, and keep that memory alive on
their own, past the lease (SHM-12). Releasing a lease therefore ends the *lease* (its
bookkeeping, its ``view``) at once, always; a buffer still held is dropped from the
pool, a mapping still held is unmapped when the last array made from it goes, and a
warning says so instead of raising midway: the protocol's state (which samples are
acknowledged, which slots are free) never depends on when Python collects an array.
Nothing is freed or unmapped under a reader.

Threads. A region belongs to the engine's event loop, which takes, releases and closes
its leases; but a lease's bytes may be read first from a worker thread (a synchronous
processor calling ``frame.data``), so the region's bookkeeping is under a lock, and its
descriptor is closed only once no read is using it (a number closed under a running
``preadv`` could be handed to another file, and the read land there). An arena's
synchronous operations (``try_allocate``, ``allocate``, ``ack``, ``cancel``,
``mark_sent``, ``write``, ``close``) are thread-safe. ``allocate_async`` waits on an
``anyio.Event`` that frees set; an anyio event may only be set from its own event loop,
so while a task waits in ``allocate_async`` the acks, cancels and close that can wake it
must come from that loop (as in the engine, where acknowledgements arrive on it), or be
passed to it with ``anyio.from_thread.run_sync``.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import logging
import mmap
import os
import secrets
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Literal

import anyio

from ..errors import LeaseError, ProtocolError, SharedMemoryError
from ..protocol.descriptor import check_handle_name
from ..status import Status
from .held_bytes import HeldBytes

log = logging.getLogger("avaproto.media.shared_memory")

#: Where the protocol's shared memory lives (a tmpfs on Linux).
DEFAULT_DIRECTORY = "/dev/shm"
#: Slots start on this boundary by default (SHM-13): a cache line, and aligned for any
#: SIMD load, since the mapping itself starts on a page boundary.
ALIGNMENT = 64

#: How a receiver reaches the sender's bytes: copied out by checked reads (safe against
#: a sender that shrinks its file), or mapped in place (zero-copy, trusts the sender).
Access = Literal["read", "map"]
ACCESS_MODES: tuple[Access, ...] = ("read", "map")
#: How a sender puts frames in its segment: by checked writes (safe against an extension
#: that shrinks the file), or through a mapping (a third of the cost, trusts the extension).
WriteMode = Literal["pwrite", "map"]
WRITE_MODES: tuple[WriteMode, ...] = ("pwrite", "map")

#: Bytes of read buffers the pools of all regions of the process keep for their next
#: leases: a buffer given back past it is let go. Each stream's pool keeps as many
#: buffers as it read at once, of its largest frame; without a bound across streams,
#: pools of large frames on many long streams would add up to many times what the
#: server holds at any moment (SRV-18 bounds the frames held until processed).
POOL_BYTES = 256 * 1024 * 1024


#: The bytes pooled across regions, against ``POOL_BYTES``.
_pooled = HeldBytes()

#: Address space the segments of the process mapped with ``access="map"`` may take
#: together (SHM-17): a pipeline names a sparse file of any size at no cost to itself,
#: and mappings of terabytes each exhaust the 128 TiB a process has, until allocations
#: of the server's own fail.
DEFAULT_MAX_MAPPED_BYTES = 64 * 1024**3
#: The bytes of every open mapped region, against the limit given at each mapping.
_mapped = HeldBytes()


def _unpool(free: list[bytearray]) -> None:
    """Give back what a region's pool held when the region goes."""
    _pooled.release(sum(map(len, free)))
    free.clear()


#: posix_fallocate errors that mean "this file system cannot reserve", not "no room".
_CANNOT_RESERVE = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS})


def _not_permitted(name: str, directory_fd: int) -> str:
    """Why a segment cannot be opened for reading, with what would let it be."""
    try:
        info = os.stat(name, dir_fd=directory_fd, follow_symlinks=False)
    except OSError:
        return "cannot be opened: permission denied"
    return (
        f"cannot be opened for reading: it is {stat.filemode(info.st_mode)}, owned by uid "
        f"{info.st_uid} gid {info.st_gid}, and this process runs as uid {os.geteuid()} "
        f"gid {os.getegid()}; run both as one user, or have the pipeline make its "
        "segments readable by a group both are in (avaproto send --shm-mode 640)"
    )


def _check_name(handle_name: str) -> None:
    try:
        check_handle_name(handle_name)
    except ProtocolError as error:
        raise SharedMemoryError("SHM-3", Status.INVALID_ARGUMENT, error.detail) from None


def _release_view(view: memoryview, what: str, held: Callable[[str], None] | None = None) -> bool:
    """Release ``view``; if something still exports it, say so (``held``, by default a
    warning) and let it go with that.

    The memory stays valid until the exporter drops it (Python never frees or unmaps
    exported memory), so nothing dangles; the warning names the rule so the holder can
    be found.
    """
    try:
        view.release()
    except BufferError:
        (held or _warn_held)(what)
        return False
    return True


def _warn_held(what: str, *, once: bool = False) -> None:
    log.warning(
        "[SHM-12] %s ended, but an object made from its view still holds the bytes; "
        "the memory stays valid until it goes (copy what must outlive a lease)%s",
        what,
        " (warned once per stream)" if once else "",
    )


def _exported(buffer: bytearray) -> bool:
    """Whether anything still holds an export of ``buffer`` (a view, an array made from one).

    A memoryview made from our view shares its export without counting on it, so only
    the bytearray knows. It refuses to change size while exported; popping its last
    byte and putting it back asks that without moving or touching the memory.
    """
    try:
        last = buffer.pop()
    except BufferError:
        return True
    buffer.append(last)
    return False


class _Descriptor:
    """A file descriptor that is closed only once no read or write is using it.

    A descriptor closed while another thread is inside ``preadv``/``pwrite`` on it is a
    number the next ``open`` may get: the running call would then read or write some
    other file. ``close`` marks it closed at once (no new use starts) and the last use
    closes it.
    """

    __slots__ = ("_closing", "_fd", "_lock", "_users", "mapping")

    def __init__(self, fd: int, mapping: mmap.mmap | None = None) -> None:
        self._fd: int | None = fd
        #: A mapping of the file that goes with the descriptor: usable inside ``use()``
        #: while the descriptor is, unmapped when it is closed.
        self.mapping = mapping
        self._users = 0
        self._closing = False
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._closing

    @contextlib.contextmanager
    def use(self) -> Iterator[int | None]:
        """The descriptor for one call, or None once closed."""
        with self._lock:
            if self._closing or self._fd is None:
                fd = None
            else:
                fd = self._fd
                self._users += 1
        try:
            yield fd
        finally:
            if fd is not None:
                with self._lock:
                    self._users -= 1
                    last = self._closing and self._users == 0
                if last:
                    self._close_now()

    def close(self) -> None:
        """Close now, or when the last use ends. Twice does nothing."""
        with self._lock:
            self._closing = True
            idle = self._users == 0
        if idle:
            self._close_now()

    def _close_now(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            mapping, self.mapping = self.mapping, None
        if mapping is not None:
            mapping.close()  # no view of it is ever handed out
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class LeaseState(Enum):
    """Where a lease is in its life; receivers use LIVE, senders the first three."""

    ALLOCATED = "allocated"  # sender: being written, not yet sent
    SENT = "sent"  # sender: travelling, the peer may read it
    ACKED = "acked"  # sender: acknowledged, the peer will not read it any more
    LIVE = "live"  # receiver: being processed
    RELEASED = "released"  # both: no access any more; a sender's slot is free again


# --- receiver ---------------------------------------------------------------------------


class ReceivedLease:
    """Read access to one sample's slice of a region, until released (after the ack).

    The bytes are fetched on the first use of ``view`` (read) or sliced from the mapping
    (map), so a sample nobody looks at costs no copy. The view must not outlive the
    lease: once the acknowledgement is sent the sender may write the next frame there
    (SHM-7). A lease is also a context manager that releases it on exit if it is still
    live.
    """

    __slots__ = ("_buffer", "_view", "length", "offset", "region", "sequence_number", "state")

    def __init__(
        self, region: SharedMemoryRegion, sequence_number: int, offset: int, length: int
    ) -> None:
        self.region = region
        self.sequence_number = sequence_number
        self.offset = offset
        self.length = length
        self.state = LeaseState.LIVE
        self._view: memoryview | None = None
        self._buffer: bytearray | None = None

    @property
    def released(self) -> bool:
        return self.state is LeaseState.RELEASED

    @property
    def view(self) -> memoryview:
        """The slice, read-only; valid until ``release``.

        The first use reads the bytes: ``SharedMemoryError`` (SHM-15) if the sender's
        file no longer holds them.
        """
        view = self._view
        if view is not None:
            return view
        if self.state is LeaseState.RELEASED:
            raise LeaseError(
                "SHM-7",
                Status.FAILED_PRECONDITION,
                f"the lease of sample {self.sequence_number} was released after its "
                "acknowledgement; its memory may not be read any more (copy what you need "
                "before the sample is acknowledged)",
            )
        return self.region._view_of(self)

    def release(self) -> None:
        """End access: the sender may now reuse these bytes. Twice is an error.

        The lease ends whatever happens to the memoryview: if an object made from it
        still holds the memory, a warning says so (SHM-12) and the memory stays valid
        until that object goes.
        """
        if not self.region._end(self):
            raise LeaseError(
                "SHM-7",
                Status.FAILED_PRECONDITION,
                f"the lease of sample {self.sequence_number} is already released",
            )

    def __enter__(self) -> ReceivedLease:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.state is LeaseState.LIVE:
            self.release()

    def __repr__(self) -> str:
        return (
            f"ReceivedLease(sample={self.sequence_number}, offset={self.offset}, "
            f"length={self.length}, {self.state.value})"
        )


class SharedMemoryRegion:
    """The sender's segment as the receiver reaches it: read (default) or mapped.

    Make one with ``open``. ``access`` says which; see the module's notes on memory
    another process owns.
    """

    def __init__(
        self,
        path: str,
        length_bytes: int,
        *,
        descriptor: _Descriptor | None = None,
        mapping: mmap.mmap | None = None,
    ) -> None:
        if (descriptor is None) == (mapping is None):
            raise ValueError("a region is either read through a descriptor or mapped")
        self.path = path
        self.length_bytes = length_bytes
        self.access: Access = "map" if mapping is not None else "read"
        self._descriptor = descriptor
        self._mapping = mapping
        self._whole = memoryview(mapping) if mapping is not None else None
        self._leases: set[ReceivedLease] = set()
        self._leases_held = 0  # leases that ended with their bytes held (SHM-12)
        self._lock = threading.Lock()
        self._closed = False
        #: Read buffers not lent to any lease, and the size new ones get.
        self._free: list[bytearray] = []
        self._largest = 0
        # A region dropped without close() gives its pooled bytes back all the same.
        weakref.finalize(self, _unpool, self._free)
        if mapping is not None:  # admitted by ``open``; given back however it goes
            self._unmapped = weakref.finalize(self, _mapped.release, length_bytes)

    @classmethod
    def open(
        cls,
        handle_name: str,
        length_bytes: int,
        *,
        directory: str = DEFAULT_DIRECTORY,
        access: Access = "read",
        max_mapped_bytes: int = DEFAULT_MAX_MAPPED_BYTES,
    ) -> SharedMemoryRegion:
        """Open ``directory/handle_name`` read-only; refuse anything that could leave it.

        ``access="read"`` keeps the descriptor and reads each sample out of the file;
        ``"map"`` maps exactly ``length_bytes`` read-only and closes our descriptor (the
        mapping keeps a duplicate of its own), if the process's mapped regions stay
        within ``max_mapped_bytes`` with it (SHM-17, RESOURCE_EXHAUSTED).

        Raises ``SharedMemoryError``: SHM-3 (not a plain name, checked before anything
        is opened), SHM-2 (length not above zero), SHM-5 (missing, a symlink, not a
        regular file, cannot be opened or mapped), SHM-6 (shorter than ``length_bytes``).
        """
        if access not in ACCESS_MODES:
            raise ValueError(f"access must be one of {', '.join(ACCESS_MODES)}, got {access!r}")
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
            # A device is never opened (opening some, a tape, acts on them); the check
            # after opening still catches a name swapped meanwhile.
            planted = os.stat(handle_name, dir_fd=directory_fd, follow_symlinks=False)
            if not stat.S_ISREG(planted.st_mode) and not stat.S_ISLNK(planted.st_mode):
                os.close(directory_fd)
                raise SharedMemoryError(
                    "SHM-5",
                    Status.FAILED_PRECONDITION,
                    f"shared memory {path} is not a regular file "
                    f"(mode {stat.filemode(planted.st_mode)})",
                )
        except OSError:
            pass  # opening it says why (a link, none, no permission)
        try:
            # Relative to the directory's descriptor: the name cannot reach elsewhere.
            # O_NONBLOCK: opening a FIFO planted under that name returns at once;
            # O_NOCTTY: a terminal planted there never becomes this process's.
            fd = os.open(
                handle_name,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY,
                dir_fd=directory_fd,
            )
        except OSError as error:
            if error.errno == errno.ELOOP:
                reason = "is a symbolic link, which is never followed"
            elif error.errno == errno.ENOENT:
                reason = (
                    "does not exist (do sender and receiver share the same /dev/shm, "
                    "e.g. the same IPC namespace?)"
                )
            elif error.errno in (errno.EACCES, errno.EPERM):
                reason = _not_permitted(handle_name, directory_fd)
            else:
                reason = f"cannot be opened: {error.strerror}"
            raise SharedMemoryError(
                "SHM-5", Status.FAILED_PRECONDITION, f"shared memory {path} {reason}"
            ) from None
        finally:
            os.close(directory_fd)
        keep = False
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SharedMemoryError(
                    "SHM-5",
                    Status.FAILED_PRECONDITION,
                    f"shared memory {path} is not a regular file "
                    f"(mode {stat.filemode(info.st_mode)})",
                )
            if info.st_size < length_bytes:
                raise SharedMemoryError(
                    "SHM-6",
                    Status.FAILED_PRECONDITION,
                    f"shared memory {path} has {info.st_size} bytes, fewer than the "
                    f"{length_bytes} the descriptor announces",
                )
            if access == "read":
                keep = True
                return cls(path, length_bytes, descriptor=_Descriptor(fd))
            if not _mapped.admit(length_bytes, max_mapped_bytes):
                raise SharedMemoryError(
                    "SHM-17",
                    Status.RESOURCE_EXHAUSTED,
                    f"shared memory {path} of {length_bytes} bytes would be mapped beside "
                    f"{_mapped.held} bytes of segments mapped already; the limit is "
                    f"{max_mapped_bytes} (--max-mapped-bytes)",
                )
            try:
                mapping = mmap.mmap(fd, length_bytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            except (OSError, OverflowError, ValueError) as error:
                _mapped.release(length_bytes)
                raise SharedMemoryError(
                    "SHM-5",
                    Status.FAILED_PRECONDITION,
                    f"shared memory {path} cannot be mapped ({length_bytes} bytes): {error}",
                ) from None
        finally:
            if not keep:
                os.close(fd)  # a mapping keeps its own duplicate, closed with it
        return cls(path, length_bytes, mapping=mapping)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def live_leases(self) -> int:
        """Leases handed out and not yet released."""
        return len(self._leases)

    @property
    def pooled_buffers(self) -> int:
        """Read buffers waiting in the pool for the next lease (read access only)."""
        return len(self._free)

    def lease(self, sequence_number: int, offset: int, length: int) -> ReceivedLease:
        """The slice a sample refers to, bounds-checked (SHM-4), as a live lease.

        Nothing is read yet. With mapped access the file's size is checked now
        (SHM-15), the only check before the processor touches the mapping; with read
        access every read is checked as it is made, and a processor that never reads
        the bytes costs no system call at all. A zero-length reference inside the
        segment gives an empty lease (SHM-10).
        """
        if self._closed:
            raise LeaseError(
                "SHM-7",
                Status.FAILED_PRECONDITION,
                f"shared memory {self.path} is closed; no lease can be taken on it",
            )
        # Python integers: offset + length cannot overflow, however large the uint64s.
        if offset < 0 or length < 0 or offset + length > self.length_bytes:
            raise SharedMemoryError(
                "SHM-4",
                Status.OUT_OF_RANGE,
                f"sample {sequence_number} refers to bytes [{offset}, {offset + length}) of "
                f"shared memory {self.path}, which has {self.length_bytes}",
            )
        size = self._size() if self.access == "map" else None
        if size is not None and size < self.length_bytes:
            raise self._shrunk(
                size,
                f"the {self.length_bytes} bytes its descriptor announced, as sample "
                f"{sequence_number} arrived",
            )
        lease = ReceivedLease(self, sequence_number, offset, length)
        with self._lock:
            self._leases.add(lease)
        return lease

    def _size(self) -> int | None:
        """The file's size now (None: closed meanwhile)."""
        if self.access == "map":
            mapping = self._mapping
            try:
                return None if mapping is None else mapping.size()  # fstat, its descriptor
            except ValueError:
                return None
        assert self._descriptor is not None
        with self._descriptor.use() as fd:
            return None if fd is None else os.fstat(fd).st_size

    def _shrunk(self, size: int, than: str) -> SharedMemoryError:
        return SharedMemoryError(
            "SHM-15",
            Status.FAILED_PRECONDITION,
            f"shared memory {self.path} has {size} bytes now, fewer than {than}: the "
            "sender shrank its segment after the receiver opened it; a segment must keep "
            "its size for as long as its stream lasts",
        )

    def _view_of(self, lease: ReceivedLease) -> memoryview:
        """Make ``lease``'s view: the first use of its bytes."""
        if self.access == "map" or lease.length == 0:
            with self._lock:
                if lease._view is None:
                    self._check_live(lease)
                    whole = self._whole
                    lease._view = (
                        memoryview(b"")
                        if whole is None or lease.length == 0
                        else whole[lease.offset : lease.offset + lease.length]
                    )
                return lease._view
        with self._lock:
            if lease._view is not None:
                return lease._view  # another thread read it meanwhile
            self._check_live(lease)
            buffer = self._take(lease.length)
        try:
            self._read(lease, buffer)
        except BaseException:
            self._give_back(buffer)
            raise
        view = memoryview(buffer)[: lease.length].toreadonly()
        with self._lock:
            if lease._view is None and lease.state is LeaseState.LIVE:
                lease._view, lease._buffer = view, buffer
                return view
        # Read twice at once, or released while reading: this copy is not needed.
        view.release()
        self._give_back(buffer)
        return lease.view

    def _check_live(self, lease: ReceivedLease) -> None:
        """Under the lock: the lease may still be read."""
        if lease.state is not LeaseState.LIVE or self._closed:
            raise LeaseError(
                "SHM-7",
                Status.FAILED_PRECONDITION,
                f"the lease of sample {lease.sequence_number} was released (or its region "
                "closed) before its bytes were read",
            )

    def _read(self, lease: ReceivedLease, buffer: bytearray) -> None:
        """Copy the lease's bytes out of the file; a file that ends first is SHM-15."""
        assert self._descriptor is not None
        start, length = lease.offset, lease.length
        with self._descriptor.use() as fd, memoryview(buffer) as whole:
            if fd is None:
                raise LeaseError(
                    "SHM-7", Status.FAILED_PRECONDITION, f"shared memory {self.path} is closed"
                )
            done = 0
            while done < length:
                try:
                    got = os.preadv(fd, [whole[done:length]], start + done)
                except OSError as error:
                    raise SharedMemoryError(
                        "SHM-5",
                        Status.FAILED_PRECONDITION,
                        f"shared memory {self.path} cannot be read: {error.strerror}",
                    ) from None
                if got == 0:  # the end of the file, inside the sample
                    raise self._shrunk(
                        os.fstat(fd).st_size,
                        f"the end of sample {lease.sequence_number}'s bytes "
                        f"[{start}, {start + length})",
                    )
                done += got

    def _take(self, length: int) -> bytearray:
        """Under the lock: a pooled buffer of at least ``length`` bytes, or a new one."""
        self._largest = max(self._largest, length)
        while self._free:
            buffer = self._free.pop()
            _pooled.release(len(buffer))
            if len(buffer) >= length:
                return buffer
            # Smaller than frames are now: let it go, a larger one replaces it.
        return bytearray(self._largest)

    def _give_back(self, buffer: bytearray) -> None:
        with self._lock:
            if (
                not self._closed
                and len(buffer) >= self._largest
                and _pooled.admit(len(buffer), POOL_BYTES)
            ):
                self._free.append(buffer)

    def _end(self, lease: ReceivedLease) -> bool:
        """Release ``lease``; False if it was released already."""
        with self._lock:
            if lease.state is LeaseState.RELEASED:
                return False
            lease.state = LeaseState.RELEASED
            view, buffer = lease._view, lease._buffer
            lease._view = lease._buffer = None
            self._leases.discard(lease)
        if view is None:
            return True
        what = f"the lease of sample {lease.sequence_number}"
        released = _release_view(view, what, self._held)
        if buffer is not None:
            if _exported(buffer):
                if released:  # held through a view made from ours: warn all the same
                    self._held(what)
            else:
                self._give_back(buffer)
        return True

    def _held(self, what: str) -> None:
        """A lease ended with its bytes still held: warned once per region (a stream's),
        not for every frame of an extension that keeps them all."""
        self._leases_held += 1
        if self._leases_held == 1:
            _warn_held(what, once=True)
        else:
            log.debug("[SHM-12] %s ended, its bytes still held", what)

    def close(self, *, force: bool = False) -> None:
        """Close. Live leases refuse it, unless ``force`` releases them first.

        An array still made from a lease's view keeps its memory (a read buffer, or the
        mapping, which Python cannot unmap while exported): the region is closed all the
        same, a warning says so (SHM-12), and the memory goes with the last such array.
        Closing a closed region does nothing.
        """
        with self._lock:
            if self._closed:
                return
            if self._leases and not force:
                raise LeaseError(
                    "SHM-7",
                    Status.FAILED_PRECONDITION,
                    f"{len(self._leases)} leases of {self.path} are still live; release them "
                    "or close with force=True",
                )
            leases = list(self._leases)
        for lease in leases:
            self._end(lease)
        with self._lock:
            self._closed = True
            _unpool(self._free)
        if self._mapping is not None:
            self._unmapped()  # counted no more, even if an array keeps it mapped a while
        if self._descriptor is not None:
            self._descriptor.close()
        # Dropped here: an array still made from the mapping is then its last holder.
        mapping, self._mapping = self._mapping, None
        whole, self._whole = self._whole, None
        if mapping is None or whole is None:
            return
        if _release_view(whole, f"the mapping of {self.path}"):
            try:
                mapping.close()
            except BufferError:
                log.warning(
                    "[SHM-12] %s is closed, but an array made from one of its leases is "
                    "still alive; it is unmapped when the last such array goes",
                    self.path,
                )

    def __enter__(self) -> SharedMemoryRegion:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(force=True)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._leases)} live leases"
        return (
            f"SharedMemoryRegion({self.path!r}, {self.length_bytes} bytes, {self.access}, {state})"
        )


# --- sender -----------------------------------------------------------------------------


class SentLease:
    """One slot of an arena: written by the sender, freed only by its acknowledgement.

    ``write`` fills it, exactly ``length`` bytes, and only while the lease is allocated:
    once sent, the peer may be reading it. ``size`` is the slot the lease holds
    (``length`` rounded up to the arena's alignment).
    """

    __slots__ = ("arena", "length", "offset", "sequence_number", "size", "state")

    def __init__(self, arena: SharedMemoryArena, offset: int, length: int, size: int) -> None:
        self.arena = arena
        self.offset = offset
        self.length = length
        self.size = size
        self.sequence_number: int | None = None
        self.state = LeaseState.ALLOCATED

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` (exactly ``length`` bytes, C-contiguous) into the slot.

        Written with ``pwrite``, never through a mapping: a segment the peer shrank
        cannot fault this process. Raises ``SharedMemoryError`` SHM-15 when the segment
        turns out shorter than it was made (the peer shrank it; the stream must end).
        """
        if self.state is not LeaseState.ALLOCATED:
            raise LeaseError(
                "SHM-8",
                Status.FAILED_PRECONDITION,
                f"the slot at {self.offset} is {self.state.value}; it may only be written "
                "before it is sent",
            )
        with memoryview(data) as view, view.cast("B") as octets:
            if len(octets) != self.length:
                raise ValueError(
                    f"the slot at {self.offset} holds {self.length} bytes; {len(octets)} were given"
                )
            self.arena._write(self.offset, octets)

    def mark_sent(self, sequence_number: int) -> None:
        """The message carrying this slot is sent as ``sequence_number`` (> 0, ACK-2).

        From now on only ``arena.ack(sequence_number)`` frees the slot.
        """
        self.arena._mark_sent(self, sequence_number)

    def cancel(self) -> None:
        """The slot was never sent (the send failed or was cancelled): free it now."""
        self.arena._cancel(self)

    def __repr__(self) -> str:
        return (
            f"SentLease(offset={self.offset}, length={self.length}, "
            f"sample={self.sequence_number}, {self.state.value})"
        )


def _unlink_segment(path: str, owner: int, descriptor: _Descriptor, made: tuple[int, int]) -> None:
    """Remove the segment's file, once, and only in the process that made it, and only
    if its name still names it (``made``: its device and inode): the extension may have
    unlinked it and put something else there (SHM-9). The descriptor is closed
    whatever is found; it held the segment's memory and its liveness lock."""
    if os.getpid() != owner:
        return
    try:
        found = os.lstat(path)
        if (found.st_dev, found.st_ino) == made:
            os.unlink(path)
        else:
            log.warning(
                "[SHM-9] %s no longer names this process's segment (another process "
                "unlinked it and put %s there): left as it is",
                path,
                _kind(found.st_mode),
            )
    except FileNotFoundError:
        pass  # unlinked by another process: nothing of ours is left on disk
    except OSError as error:
        log.warning("[SHM-9] the segment %s could not be removed: %s", path, error)
    finally:
        descriptor.close()  # releases the liveness lock too (see remove_stale_segments)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a file of its own" if stat.S_ISREG(mode) else "a special file"


#: The sender's segment: read and written by its owner only (SHM-9).
SEGMENT_MODE = 0o600
#: The modes a segment may be given (SHM-9): others may read it (0o640, 0o644), and its
#: group may write it too (0o660), never anyone else.
SEGMENT_MODES = (0o600, 0o640, 0o644, 0o660)


def check_segment_mode(mode: int) -> None:
    """A segment's mode lets its owner read and write it, its group at most read and
    write it, and others at most read it.

    An extension only needs to read, and write access for anyone but the sender lets
    another process change a frame between the sender's write and the extension's
    read, or after the extension checked it. Group write (0o660) is there because the
    published extensions open the segment read-write (``open(path, "r+b")`` before
    ``mmap``), which 0o640 refuses them; ``SharedMemoryArena.create`` warns of it.
    """
    if mode not in SEGMENT_MODES:
        raise ValueError(
            "a segment's mode must be 0o600, 0o640, 0o644 or 0o660 (its owner reads and "
            f"writes, its group at most reads and writes, others at most read), got {mode:#o}"
        )


class SharedMemoryArena:
    """The sender's segment: a file of its own under the shared-memory directory.

    Slots are handed out first-fit from a free list kept sorted and coalesced, so
    acknowledgements may come in any order (an extension answering in completion
    order) and the whole segment is reusable once everything is acknowledged. Slots
    start on ``alignment`` boundaries (SHM-13); the last slot of a segment whose size is
    not a multiple of it may be shorter than a rounded-up slot, so any frame up to the
    segment's size fits. The arena holds one descriptor of its file (read-write), which
    holds the liveness lock and which frames are written through (``write="pwrite"``),
    or a mapping of it too, which frames are copied into (``write="map"``; see the
    module's notes on memory another process owns).
    """

    def __init__(
        self,
        path: Path,
        size: int,
        fd: int,
        alignment: int = ALIGNMENT,
        *,
        write: WriteMode = "pwrite",
    ) -> None:
        if write not in WRITE_MODES:
            raise ValueError(f"write must be one of {', '.join(WRITE_MODES)}, got {write!r}")
        self.path = path
        self.length_bytes = size
        self.alignment = alignment
        self.write_mode: WriteMode = write
        mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED) if write == "map" else None
        self._descriptor = _Descriptor(fd, mapping)
        self._closed = False
        self._free_list: list[tuple[int, int]] = [(0, size)]  # (offset, size), sorted
        self._leases: set[SentLease] = set()
        self._by_number: dict[int, SentLease] = {}
        self._in_use = 0
        self._lock = threading.RLock()
        self._freed = threading.Condition(self._lock)
        self._waiters: list[anyio.Event] = []
        # Unlinks the file if the arena is dropped unclosed, or at interpreter exit.
        made = os.fstat(fd)
        self._unlink = weakref.finalize(
            self,
            _unlink_segment,
            str(path),
            os.getpid(),
            self._descriptor,
            (made.st_dev, made.st_ino),
        )

    @classmethod
    def create(
        cls,
        size: int,
        *,
        directory: str = DEFAULT_DIRECTORY,
        prefix: str = "avaproto-",
        alignment: int = ALIGNMENT,
        write: WriteMode = "pwrite",
        mode: int = SEGMENT_MODE,
    ) -> SharedMemoryArena:
        """A new segment of ``size`` bytes, mode 0600, with a name no one else has (SHM-9).

        ``mode`` 0o640 or 0o644 lets an extension running as another user of the
        owner's group, or any user, read the frames; 0o660 lets one of the group open
        them read-write, as the published extensions do, with a warning: any process
        of that group can then change a frame before the extension reads it
        (``check_segment_mode``).

        The memory is reserved now (SHM-11): a full shared-memory directory raises
        ``SharedMemoryError`` (RESOURCE_EXHAUSTED) here rather than a bus error on some
        later write. If anything fails, the file is removed again. ``write`` says how
        frames go in (see the module's notes): ``"pwrite"``, safe against an extension
        that shrinks the segment, or ``"map"``, a third of the cost, for a trusted one.
        """
        if size <= 0:
            raise ValueError(f"an arena needs a size above zero, got {size}")
        check_segment_mode(mode)
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"the alignment must be a power of two, got {alignment}")
        name = f"{prefix}{os.getpid()}-{secrets.token_hex(8)}"
        _check_name(name)
        path = Path(directory) / name
        # O_EXCL: a name that exists (a file, a symlink planted there) is never reused.
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, SEGMENT_MODE)
        try:
            os.fchmod(fd, mode)  # exactly, whatever the umask
            _reserve(fd, size, directory)
            # Held while the arena lives: tells remove_stale_segments in any process,
            # whatever its pid namespace, that the segment is in use.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            made = cls(path, size, fd, alignment, write=write)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        if mode & stat.S_IWGRP:
            log.warning(
                "[SHM-9] segment %s is mode %#o: any process of group %d may change its "
                "frames before the extension reads them (for an extension of that group "
                "that opens segments read-write, as the published ones do)",
                path,
                mode,
                os.fstat(fd).st_gid,
            )
        return made

    @property
    def handle_name(self) -> str:
        """What the descriptor names: the file's name in the shared-memory directory."""
        return self.path.name

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_use(self) -> int:
        """Bytes held by live slots (allocated or sent), alignment included."""
        return self._in_use

    @property
    def live_leases(self) -> int:
        """Slots allocated or sent, not yet freed."""
        return len(self._leases)

    def leases(self) -> Iterator[SentLease]:
        """The live leases, by offset (a snapshot)."""
        with self._lock:
            return iter(sorted(self._leases, key=lambda lease: lease.offset))

    def try_allocate(self, length: int) -> SentLease | None:
        """A slot of ``length`` bytes now, or None when no free run is large enough."""
        self._check_length(length)
        with self._lock:
            self._check_open()
            rounded = -(-length // self.alignment) * self.alignment
            for index, (offset, free) in enumerate(self._free_list):
                if free >= rounded:
                    size = rounded
                elif free >= length and offset + free == self.length_bytes:
                    size = free  # the segment's unaligned tail: the rest of it
                else:
                    continue
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
        """A slot, blocking this thread until acknowledgements free one.

        Raises ``TimeoutError`` when none is freed within ``timeout`` seconds.
        """
        self._check_length(length)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._freed:
            while True:
                lease = self.try_allocate(length)
                if lease is not None:
                    return lease
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"no {length}-byte slot was freed in {timeout} s in {self.handle_name} "
                        f"({self._in_use} of {self.length_bytes} bytes await acknowledgement)"
                    )
                self._freed.wait(remaining)

    async def allocate_async(self, length: int) -> SentLease:
        """A slot, waiting (without blocking the event loop) for acknowledgements.

        Cancelling the wait takes no slot. See the module's notes on threads.
        """
        self._check_length(length)
        while True:
            lease = self.try_allocate(length)
            if lease is not None:
                return lease
            freed = anyio.Event()
            with self._lock:
                self._waiters.append(freed)
            try:
                # A free between try_allocate and the append set no event: try again.
                lease = self.try_allocate(length)
                if lease is not None:
                    return lease
                await freed.wait()
            finally:
                with self._lock:
                    if freed in self._waiters:
                        self._waiters.remove(freed)

    def ack(self, sequence_number: int) -> None:
        """The peer acknowledged ``sequence_number``: its slot is free again (SHM-8).

        The only way a sent slot is freed. A number that holds no slot (never sent with
        one, or acknowledged already) raises ``LeaseError``.
        """
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

    def _check_length(self, length: int) -> None:
        if length <= 0:
            raise ValueError(f"a slot needs a length above zero, got {length}")
        if length > self.length_bytes:
            raise SharedMemoryError(
                "SHM-8",
                Status.RESOURCE_EXHAUSTED,
                f"a {length}-byte frame cannot fit in the {self.length_bytes}-byte segment "
                f"{self.handle_name}, however many acknowledgements come; make the segment "
                "larger",
            )

    def _check_open(self) -> None:
        if self._closed:
            raise LeaseError(
                "SHM-8", Status.FAILED_PRECONDITION, f"shared memory {self.path} is closed"
            )

    def _write(self, offset: int, data: memoryview) -> None:
        """Put ``data`` at ``offset``, with the file's size checked before and after.

        Before: a segment shrunk since the last frame is reported, not silently grown
        back by this write (or faulted on, through a mapping). After: a shrink during a
        ``pwrite`` is caught too.
        """
        with self._descriptor.use() as fd:
            if fd is None:
                raise LeaseError(
                    "SHM-8", Status.FAILED_PRECONDITION, f"shared memory {self.path} is closed"
                )
            self._check_size(fd)
            mapping = self._descriptor.mapping
            if mapping is not None:
                mapping[offset : offset + len(data)] = data
                self._check_size(fd)
                return
            done, length = 0, len(data)
            try:
                while done < length:
                    done += os.pwrite(fd, data[done:], offset + done)
            except OSError as error:
                self._check_size(fd)  # no room because the peer shrank it: say that
                if error.errno == errno.ENOSPC:
                    raise SharedMemoryError(
                        "SHM-11",
                        Status.RESOURCE_EXHAUSTED,
                        f"cannot write a frame into {self.path}: {error.strerror}",
                    ) from None
                raise
            self._check_size(fd)

    def _check_size(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if size < self.length_bytes:
            raise SharedMemoryError(
                "SHM-15",
                Status.FAILED_PRECONDITION,
                f"shared memory {self.path} has {size} bytes, fewer than the "
                f"{self.length_bytes} it was made with: the extension shrank the pipeline's "
                "segment, which a receiver must only read",
            )

    def _mark_sent(self, lease: SentLease, sequence_number: int) -> None:
        if sequence_number <= 0:
            raise ValueError(f"a sent message has a sequence number above 0, not {sequence_number}")
        with self._lock:
            if lease.state is not LeaseState.ALLOCATED:
                raise LeaseError(
                    "SHM-8",
                    Status.FAILED_PRECONDITION,
                    f"the slot at {lease.offset} is {lease.state.value}, not allocated; "
                    "only an allocated slot can be sent",
                )
            if sequence_number in self._by_number:
                raise LeaseError(
                    "SHM-8",
                    Status.FAILED_PRECONDITION,
                    f"sample {sequence_number} already holds a slot of {self.handle_name}",
                )
            lease.state = LeaseState.SENT
            lease.sequence_number = sequence_number
            self._by_number[sequence_number] = lease

    def _cancel(self, lease: SentLease) -> None:
        with self._lock:
            if lease.state is not LeaseState.ALLOCATED:
                raise LeaseError(
                    "SHM-8",
                    Status.FAILED_PRECONDITION,
                    f"the slot at {lease.offset} is {lease.state.value}; only an unsent slot "
                    "can be cancelled (a sent one waits for its acknowledgement)",
                )
            self._free(lease)

    def _free(self, lease: SentLease) -> None:
        """Return a live slot to the free list and wake whoever waits. Under the lock."""
        lease.state = LeaseState.RELEASED
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
        """Unlink the segment and close its descriptor; every lease ends. Safe twice.

        The file goes first, so nothing that follows can keep it on disk (SHM-9). Tasks
        waiting for a slot wake up with ``LeaseError``. A write running in another
        thread finishes before the descriptor is closed.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            leases, self._leases = list(self._leases), set()
            self._by_number.clear()
            self._in_use = 0
            waiters, self._waiters = self._waiters, []
            self._freed.notify_all()
            for lease in leases:
                lease.state = LeaseState.RELEASED
        self._unlink()
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

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._in_use} bytes in use"
        return f"SharedMemoryArena({str(self.path)!r}, {self.length_bytes} bytes, {state})"


def _reserve(fd: int, size: int, directory: str) -> None:
    """Give the new file its size, with its pages reserved where the file system can.

    On tmpfs a file only truncated to size gets its pages on first write, and a write
    that finds the file system full fails then (with ENOSPC through ``pwrite``, with a
    SIGBUS that kills the process through a mapping). Reserving them up front turns
    that into an error here, before any frame (SHM-11).
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        if error.errno not in _CANNOT_RESERVE:
            raise SharedMemoryError(
                "SHM-11",
                Status.RESOURCE_EXHAUSTED,
                f"cannot reserve a {size}-byte shared-memory segment in {directory}: "
                f"{error.strerror}; free memory there (its size limit, e.g. a container's "
                "--shm-size) or use a smaller segment",
            ) from None
        os.ftruncate(fd, size)  # nothing to reserve with: size only


__all__ = [
    "ACCESS_MODES",
    "ALIGNMENT",
    "DEFAULT_DIRECTORY",
    "WRITE_MODES",
    "Access",
    "LeaseState",
    "ReceivedLease",
    "SentLease",
    "SharedMemoryArena",
    "SharedMemoryRegion",
    "WriteMode",
]


def remove_stale_segments(directory: str = DEFAULT_DIRECTORY) -> list[str]:
    """Remove the segments left by senders that died unclean; return their names.

    A sender unlinks its segment when it closes, on errors, on cancellation and at
    interpreter exit; only a process killed outright (SIGKILL, a crash) leaves its file,
    which then holds its size of shared memory until the machine restarts. Such a file
    is recognised strictly: named exactly as ``SharedMemoryArena.create`` names them
    (``avaproto-<pid>-<16 hex digits>``), a regular file (never a symlink), owned by the
    current user, and its pid not a running process. A pid that exists, or that belongs
    to someone else (``PermissionError``), keeps its file.

    A pid is only meaningful in its own pid namespace, and containers often share a
    shared-memory directory but not their pids; so a live arena also holds a shared
    ``flock`` on its file, and a segment whose lock cannot be taken is in use, whatever
    its pid says.
    """
    prefix = "avaproto-"
    removed: list[str] = []
    try:
        directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return removed
    try:
        for name in os.listdir(directory_fd):
            pid_text, dash, token = name.removeprefix(prefix).partition("-")
            if not (
                name.startswith(prefix)
                and dash
                and pid_text.isascii()
                and pid_text.isdigit()
                and not pid_text.startswith("0")
                and len(token) == 16
                and all(c in "0123456789abcdef" for c in token)
            ):
                continue
            pid = int(pid_text)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                pass  # no such process: the segment is stale
            except (PermissionError, OverflowError):
                continue  # alive (another user's), or not a pid this system can have
            else:
                continue
            try:
                info = os.lstat(name, dir_fd=directory_fd)
                if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                    continue
                if _locked(name, directory_fd):
                    continue  # a live sender in another pid namespace
                os.unlink(name, dir_fd=directory_fd)
            except OSError:
                continue  # removed meanwhile, or not ours to remove after all
            log.info(
                "removed stale shared-memory segment %s/%s (%d bytes) of process %d, "
                "which no longer exists",
                directory,
                name,
                info.st_size,
                pid,
            )
            removed.append(name)
    finally:
        os.close(directory_fd)
    return removed


def _locked(name: str, directory_fd: int) -> bool:
    """Whether a live arena holds the segment's lock (its file opened without following)."""
    fd = os.open(
        name,
        os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY,
        dir_fd=directory_fd,
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # and with it the lock just taken
    return False
