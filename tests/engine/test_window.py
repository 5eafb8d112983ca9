"""The pipeline's window of unacknowledged samples, and its one tolerance (spec: PIPE-2).

``Window`` on its own, without a stream: what goes beyond it, when, and how it is paid
back; ``tests/transport/test_field_peers.py`` drives it against extensions that hold
their answers.
"""

from __future__ import annotations

import anyio
import pytest

from avaproto.engine.drive import Window

pytestmark = [pytest.mark.anyio, pytest.mark.rule("PIPE-2")]


def taken(window: Window) -> int:
    """How many slots can be taken now, taking them."""
    count = 0
    while True:
        try:
            window.acquire_nowait()
        except anyio.WouldBlock:
            return count
        count += 1


async def test_the_first_sample_beyond_widens_the_window_and_later_ones_are_lent() -> None:
    window = Window(2)
    assert taken(window) == 2
    window.beyond()  # the first time: the window stays one wider
    assert (window.size, taken(window)) == (3, 1)
    assert not window.may_go_beyond  # nothing was answered since
    window.free()
    assert window.may_go_beyond and taken(window) == 1  # 3 in flight, the wider window
    window.beyond()  # later: lent
    assert (window.size, taken(window)) == (3, 1)  # 4 in flight
    assert not window.may_go_beyond  # never two lent at once
    window.free()  # the next answer pays the loan back: no slot for it
    assert taken(window) == 0 and window.may_go_beyond
    window.free()
    assert taken(window) == 1  # and the one after frees a slot again


async def test_a_watcher_wakes_when_a_sample_may_go_beyond_again() -> None:
    """One answer after a lent sample: the sender still waits (the answer paid the loan
    back), so only the freed slot can tell the watcher another may go."""
    window = Window(1)
    assert taken(window) == 1
    window.beyond()
    window.beyond()  # widened, then lent: 3 in flight
    assert taken(window) == 2
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(window.acquire)  # the sender waits for a slot
        await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(5):  # far less than the watcher's own timeout
            async with anyio.create_task_group() as watching:
                watching.start_soon(window.until_changed, 60)
                await anyio.wait_all_tasks_blocked()
                window.free()  # pays back the loan, and another may go beyond
        assert window.filling and window.may_go_beyond
        tasks.cancel_scope.cancel()


async def test_the_window_fills_while_any_sender_waits() -> None:
    """Two senders wait; one gets a slot: the other still waits, and the window is
    still full for the watcher (a flag cleared by the first hid it)."""
    window = Window(1)
    assert taken(window) == 1
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(window.acquire)
        tasks.start_soon(window.acquire)
        await anyio.wait_all_tasks_blocked()
        window.free()
        await anyio.wait_all_tasks_blocked()
        assert window.filling
        window.free()
    assert not window.filling
