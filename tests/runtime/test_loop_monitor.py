"""Tests of roost/runtime/loop_monitor.py: a blocked event loop is noticed and the actor named."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

import roost

pytestmark = pytest.mark.anyio


class Crunch(roost.Message):
    seconds: float


class Blocker(roost.Actor):
    async def receive(self, message: Any) -> Any:
        time.sleep(message.seconds)  # noqa: ASYNC251 - the bug the monitor is for
        return "done"


async def test_a_receive_that_blocks_the_loop_is_logged_with_its_actor_and_message_type() -> None:
    with capture_logs() as logs:
        async with roost.ActorSystem(loop_lag_threshold=0.1) as system:
            blocker = system.spawn(Blocker, name="blocker")
            assert await blocker.ask(Crunch(0.5), timeout=5) == "done"
            with anyio.fail_after(2):  # until the periodic probe has woken since the block
                while system.statistics()["loop_lag"]["max"] == 0:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            lag = system.statistics()["loop_lag"]

    blocked = [e for e in logs if e["event"] == "event_loop_blocked"]
    assert len(blocked) == 1
    assert blocked[0]["actor"] == "/blocker" and blocked[0]["message_type"] == "Crunch"
    # Reported rounded to the millisecond: just past the threshold reads as 0.1.
    assert blocked[0]["log_level"] == "warning" and blocked[0]["blocked_for"] >= 0.1
    assert lag["max"] >= 0.4 and lag["blocks"] == 1
    [unblocked] = [e for e in logs if e["event"] == "event_loop_unblocked"]
    assert unblocked["blocked_for"] >= 0.4  # the whole block, not just the threshold


async def test_a_loop_that_never_blocks_past_the_threshold_logs_nothing() -> None:
    with capture_logs() as logs:
        async with roost.ActorSystem(loop_lag_threshold=0.3) as system:
            blocker = system.spawn(Blocker, name="blocker")
            for _ in range(3):
                await blocker.ask(Crunch(0.01), timeout=5)

    assert [e for e in logs if e["event"] == "event_loop_blocked"] == []


async def test_the_monitor_can_be_turned_off() -> None:
    async with roost.ActorSystem(loop_lag_threshold=None) as system:
        assert "loop_lag" not in system.statistics()
