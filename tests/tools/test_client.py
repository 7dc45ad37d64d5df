"""A tool call runs in its caller's trace, and a breaker's cooldown ending mid-call is harmless."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import roost
from roost.trace import handling

pytestmark = pytest.mark.anyio


async def test_a_side_effecting_tool_runs_in_its_callers_trace_not_as_the_proxy() -> None:
    seen: dict[int, tuple[Any, Any]] = {}

    @roost.tool(idempotent=True)
    async def charge(n: int) -> int:
        cell = handling.get()
        seen[n] = (None if cell is None else cell.path, roost.current_trace())
        await asyncio.sleep(0.01)
        return n

    class Caller(roost.Actor):
        async def receive(self, message: Any) -> Any:
            mine = roost.current_trace()
            await self.ctx.tools.call("charge", n=message)
            return mine

    async with roost.ActorSystem(log_format="json", log_level="critical") as system:
        system.tools.register(charge)
        a, b = system.spawn(Caller, name="a"), system.spawn(Caller, name="b")
        trace_a, trace_b = await asyncio.gather(a.ask(1), b.ask(2))
    assert seen[1][0] is None and seen[2][0] is None  # not running as /tool-proxy
    assert seen[1][1].trace_id == trace_a.trace_id
    assert seen[2][1].trace_id == trace_b.trace_id


class SteppingClock:
    """A clock that moves `step` seconds every time it is read."""

    def __init__(self) -> None:
        self.now = 0.0
        self.step = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


async def test_a_cooldown_ending_between_the_callers_checks_lets_the_call_probe() -> None:
    clock = SteppingClock()
    healthy = False

    @roost.tool(idempotent=True, breaker=roost.Breaker(failures=1, cooldown=10.0))
    async def flaky(n: int) -> int:
        if not healthy:
            raise ConnectionError("down")
        return n

    async with roost.ActorSystem(log_format="json", log_level="critical", clock=clock) as system:
        system.tools.register(flaky)
        with pytest.raises(ConnectionError):
            await system.tools.call("flaky", n=1)
        breaker = system.tools.state.breakers["flaky"]
        assert system.tools.breaker_states() == {"flaky": "open"}
        # The caller reads "open", then the cooldown ends before it asks for a permit.
        clock.now = breaker.statistics().retry_at - 0.5
        clock.step = 0.4
        healthy = True
        assert await system.tools.call("flaky", n=2) == 2
        clock.step = 0.0
        assert system.tools.breaker_states() == {"flaky": "closed"}
        assert await system.tools.call("flaky", n=3) == 3
