"""Frame-sized buffers from the heap: the command line tunes glibc once at its start."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's mallopt",
)

PROBE = """
import ctypes, sys
from avaproto.allocator import keep_large_buffers
tuned = keep_large_buffers() if sys.argv[1] == "tune" else None
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.mallinfo2.restype = Info
before = libc.mallinfo2().hblks  # blocks glibc mapped on their own
block = libc.malloc(6 << 20)  # a 1080p frame
print(tuned, libc.mallinfo2().hblks - before)
"""


def probe(env: dict[str, str], tune: bool = True) -> list[str]:
    """Run the tuning in a process of its own: it changes the whole process's malloc."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "tune" if tune else "leave"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, **env},
    )
    return done.stdout.split()


@glibc
def test_a_frame_sized_buffer_comes_from_the_heap() -> None:
    assert probe({}, tune=False) == ["None", "1"]  # glibc's default: a mapping of its own
    assert probe({}) == ["True", "0"]


@glibc
def test_the_operators_own_settings_are_kept() -> None:
    assert probe({"MALLOC_TRIM_THRESHOLD_": "131072"}) == ["False", "1"]
