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
    # A threshold and a block well above the lags a loaded machine has on its own.
    with capture_logs() as logs:
        async with roost.ActorSystem(loop_lag_threshold=0.25) as system:
            blocker = system.spawn(Blocker, name="blocker")
            assert await blocker.ask(Crunch(0.8), timeout=10) == "done"
            with anyio.fail_after(10):  # until the periodic probe has woken since the block
                while system.statistics()["loop_lag"]["max"] == 0:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            lag = system.statistics()["loop_lag"]

    blocked = [e for e in logs if e["event"] == "event_loop_blocked" and e["actor"] is not None]
    assert len(blocked) == 1
    assert blocked[0]["actor"] == "/blocker" and blocked[0]["message_type"] == "Crunch"
    # Reported rounded to the millisecond: just past the threshold reads as 0.25.
    assert blocked[0]["log_level"] == "warning" and blocked[0]["blocked_for"] >= 0.25
    assert lag["max"] >= 0.7 and lag["blocks"] >= 1
    [unblocked] = [e for e in logs if e["event"] == "event_loop_unblocked"
                   and e["blocked_for"] >= 0.7]
    assert unblocked["blocked_for"] < 5  # the whole block, not just the threshold


async def test_a_loop_that_never_blocks_past_the_threshold_logs_nothing() -> None:
    with capture_logs() as logs:
        async with roost.ActorSystem(loop_lag_threshold=1.0) as system:
            blocker = system.spawn(Blocker, name="blocker")
            for _ in range(3):
                await blocker.ask(Crunch(0.01), timeout=5)

    assert [e for e in logs if e["event"] == "event_loop_blocked"] == []


async def test_the_monitor_can_be_turned_off() -> None:
    async with roost.ActorSystem(loop_lag_threshold=None) as system:
        assert "loop_lag" not in system.statistics()
