"""The event loop's scheduling slice (``avaproto.scheduling``), asked of the real kernel.

Each request is made from a thread of its own: the slice belongs to the thread that
asks, and the test process's own threads keep the kernel's.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

from avaproto.scheduling import (
    DEFAULT_SLICE,
    LONGEST_SLICE,
    SHORTEST_SLICE,
    current_slice,
    request_slice,
)

T = TypeVar("T")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def in_thread(work: Callable[[], T]) -> T:
    """``work()`` run in a new thread; its result, or its exception raised here."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as error:  # handed to the caller
            failure.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    if failure:
        raise failure[0]
    return outcome[0]


def kernel_takes_slices() -> bool:
    return in_thread(lambda: request_slice(DEFAULT_SLICE))


def test_a_slice_asked_for_is_the_one_the_kernel_reports() -> None:
    if not kernel_takes_slices():
        pytest.skip("this kernel ignores a normal thread's slice (Linux 6.12 and later)")

    def ask() -> tuple[bool, float | None, float | None]:
        before = current_slice()
        return request_slice(250e-6), before, current_slice()

    taken, before, after = in_thread(ask)
    assert taken and after == pytest.approx(250e-6)
    assert before != after  # a new thread starts with the kernel's own, not this one


def test_a_slice_outside_what_linux_accepts_is_refused_with_the_range() -> None:
    for seconds in (SHORTEST_SLICE / 2, LONGEST_SLICE * 2, 0.0):
        with pytest.raises(ValueError, match=r"Linux accepts 100 µs to 100 ms"):
            request_slice(seconds)


def test_a_thread_under_another_policy_is_left_as_it_is() -> None:
    def batch() -> tuple[bool, int]:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        return request_slice(DEFAULT_SLICE), os.sched_getscheduler(0)

    taken, policy = in_thread(batch)
    assert not taken and policy == os.SCHED_BATCH


def test_no_such_thread_has_no_slice() -> None:
    assert current_slice(2**22 + 12345) is None  # beyond pid_max's largest value
