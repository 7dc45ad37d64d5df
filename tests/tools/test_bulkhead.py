"""Tests of roost/tools/bulkhead.py: the per-tool concurrency limit and its waiting line."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

from roost.errors import ConfigurationError, ToolBusy
from roost.tools.bulkhead import Bulkhead


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_limit_holds_under_a_hundred_concurrent_callers() -> None:
    bulkhead = Bulkhead("search", limit=5, max_waiting=100)
    running = peak = finished = 0

    async def caller() -> None:
        nonlocal running, peak, finished
        async with bulkhead:
            running += 1
            peak = max(peak, running)
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            running -= 1
        finished += 1

    async with anyio.create_task_group() as tasks:
        for _ in range(100):
            tasks.start_soon(caller)

    assert (peak, finished) == (5, 100)
    stats = bulkhead.statistics()
    assert (stats.running, stats.waiting, stats.rejected) == (0, 0, 0)


@pytest.mark.anyio
async def test_callers_past_the_limit_and_the_waiting_line_get_tool_busy_at_once() -> None:
    bulkhead = Bulkhead("search", limit=1, max_waiting=2)
    release = anyio.Event()
    entered: list[int] = []

    async def caller(number: int) -> None:
        async with bulkhead:
            entered.append(number)
            await release.wait()

    async with anyio.create_task_group() as tasks:
        for number in range(3):
            tasks.start_soon(caller, number)
        await anyio.wait_all_tasks_blocked()
        assert bulkhead.statistics().waiting == 2
        with pytest.raises(ToolBusy, match=r"tool 'search' is busy: 1 calls running and 2 waiting"):
            async with bulkhead:
                pytest.fail("a fourth caller got in")
        release.set()

    assert entered == [0, 1, 2]
    assert bulkhead.statistics().rejected == 1


@pytest.mark.anyio
async def test_a_cancelled_waiter_leaves_the_line_without_taking_a_slot() -> None:
    bulkhead = Bulkhead("search", limit=1, max_waiting=1)
    release = anyio.Event()

    async def holder() -> None:
        async with bulkhead:
            await release.wait()

    async def waiter(scope: anyio.CancelScope) -> None:
        with scope:
            async with bulkhead:
                pytest.fail("the cancelled waiter got a slot")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(holder)
        scope = anyio.CancelScope()
        tasks.start_soon(waiter, scope)
        await anyio.wait_all_tasks_blocked()
        scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert bulkhead.statistics().waiting == 0
        release.set()

    assert bulkhead.statistics().running == 0
    async with bulkhead:
        assert bulkhead.statistics().running == 1


@pytest.mark.anyio
async def test_a_waiter_cancelled_just_after_being_handed_a_slot_passes_it_on() -> None:
    bulkhead = Bulkhead("search", limit=1, max_waiting=2)
    release = anyio.Event()
    log: list[str] = []

    async def first() -> None:
        async with bulkhead:
            log.append("first got a slot")

    async def second() -> None:
        async with bulkhead:
            log.append("second got a slot")

    async def holder() -> None:
        async with bulkhead:
            await release.wait()
        first_task.cancel()  # it was just handed the slot and has not resumed yet
        log.append("holder left")

    # Raw asyncio tasks: unlike anyio's cancel scopes, Task.cancel() can hit a
    # task whose wake-up is already scheduled, which is the race under test.
    holder_task = asyncio.create_task(holder())
    await anyio.wait_all_tasks_blocked()
    first_task = asyncio.create_task(first())
    await anyio.wait_all_tasks_blocked()
    second_task = asyncio.create_task(second())
    await anyio.wait_all_tasks_blocked()
    release.set()
    with anyio.fail_after(5):  # a leaked slot would leave `second` waiting forever
        await asyncio.gather(holder_task, first_task, second_task, return_exceptions=True)

    assert first_task.cancelled()
    assert log == ["holder left", "second got a slot"]
    assert bulkhead.statistics().running == 0


@pytest.mark.parametrize(
    ("limit", "max_waiting", "match"),
    [
        (0, 0, r"tool 'search': bulkhead limit=0 is invalid; use a whole number >= 1"),
        (2.5, 0, r"limit=2.5 is invalid"),
        (1, -1, r"bulkhead max_waiting=-1 is invalid; use a whole number >= 0"),
        (1, True, r"max_waiting=True is invalid"),
    ],
)
def test_bad_limits_name_the_tool_and_the_value(limit: int, max_waiting: int, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Bulkhead("search", limit=limit, max_waiting=max_waiting)
