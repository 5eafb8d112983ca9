"""A short scheduling slice for the thread that runs the server's event loop (Linux).

Where the pipeline and the extension share cores, which is what shared memory is for,
a request wakes the extension's event loop from the sender's own system call, and
Linux queues the woken thread on the sender's core (a "synchronous" wake-up: the
sender is expected to sleep soon). Since Linux 6.6 (EEVDF) the thread that runs keeps
the core until it sleeps or its slice runs out, unless the woken thread asked for a
shorter slice than it runs with (6.12 and later), in which case the woken thread runs
at once. Measured with ``perf`` on a 2-core VM at 30 frames per second (grpcio's
client, two runs of 300 frames each way): with the kernel's slice, the server's loop
waited a median of 50 to 53 µs for the sending thread after its wake-up and was preempted
by the client's threads before answering in 112 and 114 of 317 frames; asking for
300 µs, it waited 6 µs and was preempted in 6 and 10 of 320. Over six alternating runs
of 300 frames, the median of the client's p50 latencies went from 0.91 to 0.86 ms.

The slice does not change the thread's share of the CPU (its weight, from its nice
value, sets that), only how soon it runs once woken and how long it runs before
another thread of the same share may. A thread runs through many slices to process
a burst of frames; what it costs is a switch more often when the cores are contended.

``request_slice`` asks for it with ``sched_setattr`` (no privilege needed for a normal
thread) and reads it back: kernels before 6.12 accept the call and ignore the slice,
and it then reports False. ``avaproto serve`` asks for ``DEFAULT_SLICE`` at start
(``--slice-us``); a program running the server itself may call it from the thread
that runs its event loop. Elsewhere than Linux on x86-64 or ARM64 it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import struct
import sys
from typing import Any

log = logging.getLogger("avaproto.scheduling")

#: The slice ``avaproto serve`` asks for, in seconds: below the kernel's default on any
#: machine (0.7 ms times one plus the base-2 logarithm of the cores, counting at most 8),
#: above what one small message costs the server on a cold core (about 0.4 ms).
DEFAULT_SLICE = 300e-6
#: The range Linux accepts for a normal thread's slice (``sched_setattr``), in seconds.
SHORTEST_SLICE, LONGEST_SLICE = 100e-6, 0.1

#: ``sched_setattr`` and ``sched_getattr`` system call numbers, by machine.
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275), "arm64": (274, 275)}
#: ``struct sched_attr`` as of its first version (SCHED_ATTR_SIZE_VER0): size, policy,
#: flags, nice, priority, runtime (the slice, in ns, for a normal thread), deadline, period.
_ATTR = struct.Struct("=IIQiIQQQ")
_SCHED_OTHER = 0


def _calls() -> tuple[Any, int, int] | None:
    if not sys.platform.startswith("linux"):
        return None
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return None
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    return syscall, *numbers


def _attributes(syscall: Any, getattr_number: int, thread: int) -> tuple[int, int, int] | None:
    """A thread's policy, nice value and slice in ns (0: none reported); None if unread."""
    buffer = ctypes.create_string_buffer(_ATTR.size)
    if syscall(getattr_number, thread, buffer, _ATTR.size, 0) != 0:
        return None
    _, policy, _, nice, _, runtime, _, _ = _ATTR.unpack(buffer.raw)
    return policy, nice, runtime


def current_slice(thread: int = 0) -> float | None:
    """A thread's slice in seconds (the calling thread's, or that of the thread or process
    id ``thread``), as the kernel reports it; None if it does not (not Linux, a kernel
    before 6.12, a policy other than the normal one, or no such thread)."""
    calls = _calls()
    read = None if calls is None else _attributes(calls[0], calls[2], thread)
    if read is None:
        return None
    policy, _, runtime = read
    return runtime / 1e9 if policy == _SCHED_OTHER and runtime else None


def request_slice(seconds: float) -> bool:
    """Ask the kernel to run the calling thread in slices of ``seconds``; True if it now
    does. A thread under another policy than the normal one (real-time, batch, idle) is
    left as it is."""
    if not SHORTEST_SLICE <= seconds <= LONGEST_SLICE:
        raise ValueError(
            f"a scheduling slice of {seconds * 1e6:g} µs: Linux accepts "
            f"{SHORTEST_SLICE * 1e6:g} µs to {LONGEST_SLICE * 1e3:g} ms"
        )
    calls = _calls()
    if calls is None:
        log.debug("no scheduling slice asked for: not Linux on x86-64 or ARM64")
        return False
    syscall, setattr_number, getattr_number = calls
    read = _attributes(syscall, getattr_number, 0)
    if read is None:
        log.debug("sched_getattr failed (errno %d)", ctypes.get_errno())
        return False
    policy, nice, before = read
    if policy != _SCHED_OTHER:
        log.debug("scheduling slice left as it is: the thread's policy is %d", policy)
        return False
    wanted = round(seconds * 1e9)
    attributes = ctypes.create_string_buffer(
        _ATTR.pack(_ATTR.size, _SCHED_OTHER, 0, nice, 0, wanted, 0, 0), _ATTR.size
    )
    if syscall(setattr_number, 0, attributes, 0) != 0:
        log.debug("sched_setattr refused the slice (errno %d)", ctypes.get_errno())
        return False
    done = current_slice() == wanted / 1e9
    log.debug(
        "scheduling slice %s: %g µs asked, %s before",
        "taken" if done else "ignored by this kernel (Linux 6.12 or later takes it)",
        seconds * 1e6,
        f"{before / 1e3:g} µs" if before else "the kernel's default",
    )
    return done
