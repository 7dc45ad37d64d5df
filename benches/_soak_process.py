"""The soak harness's process: runs a mix of pipelines with side effects until it is killed.

Usage: `python -m benches._soak_process STORE EFFECTS RUNS [MAX_ACTIVE]`.

It registers two pipelines with `resume=True` (so every run a killed predecessor left
goes on), then starts whichever of the RUNS runs (ids `order-NNNN` and `note-NNNN`,
alternating) are not stored yet, and waits for all of them. It prints (flushed, one
line each): `ready` once resumed, `ack N` after each checkpoint of its `Ticker` actor
is acknowledged, `effect RUN STEP` after each side effect, and `finished` at the end.

`orders`: reserve (worker) -> charge (tool with a side effect) -> confirm (worker).
`notes`: draft (worker, a ~1 KB result) -> send (tool with a side effect).
A side effect appends `RUN STEP` to EFFECTS (O_APPEND + fsync); the tool's verify hook
reads EFFECTS, so a call cut off by a kill is settled as done or not done.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import msgspec

import roost
from roost.errors import RunNotFound

EFFECTS = Path()


def append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def effects(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def already_done(key: str, args: Any) -> roost.Done | roost.NotDone:
    line = f"{args['run']} {args['step']}"
    return roost.Done(f"{line} ok") if line in effects(EFFECTS) else roost.NotDone()


@roost.tool(verify=already_done)
async def effect(run: str, step: str) -> str:
    await asyncio.sleep(0.002)  # the call's latency: kills land before and after the effect
    append(EFFECTS, f"{run} {step}")
    print(f"effect {run} {step}", flush=True)
    await asyncio.sleep(0.002)
    return f"{run} {step} ok"


class Work(roost.Actor):
    async def receive(self, message: roost.RunStep) -> Any:
        await asyncio.sleep(0.001)
        return {"run": message.run_id, "step": message.step, "text": "x" * 1024}


def tool_step(name: str, after: str) -> roost.Step:
    return roost.Step(name, tool="effect", after=after,
                      args=lambda results, input: {"run": input["run"], "step": name})


ORDERS = roost.Pipeline("orders", [
    roost.Step("reserve", Work),
    tool_step("charge", after="reserve"),
    roost.Step("confirm", Work, after="charge"),
])
NOTES = roost.Pipeline("notes", [
    roost.Step("draft", Work),
    tool_step("send", after="draft"),
])


class Count(msgspec.Struct):
    n: int = 0


class Tick(roost.Message):
    pass


class Ticker(roost.Actor):
    """A checkpointed counter: every acknowledged checkpoint must survive a kill."""

    state_type = Count

    def __init__(self) -> None:
        self.state = Count()

    async def receive(self, message: Any) -> Any:
        self.state.n += 1
        await self.checkpoint(step="tick")
        print(f"ack {self.state.n}", flush=True)
        self.ctx.self_ref.tell(Tick())


def run_ids(runs: int) -> list[tuple[roost.Pipeline, str]]:
    return [(ORDERS, f"order-{i:04d}") if i % 2 == 0 else (NOTES, f"note-{i:04d}")
            for i in range(runs)]


async def main(store: str, runs: int, max_active: int) -> None:
    async with roost.ActorSystem(store=store, log_format="json", log_level="critical",
                                 max_active_runs=max_active) as system:
        system.tools.register(effect)
        handles = [*await system.pipelines.register(ORDERS, resume=True),
                   *await system.pipelines.register(NOTES, resume=True)]
        ticker = system.spawn(Ticker, name="ticker")
        print("ready", flush=True)
        ticker.tell(Tick())
        for pipeline, run_id in run_ids(runs):
            try:
                await system.pipelines.runs.get(run_id)
            except RunNotFound:
                handles.append(await system.pipelines.start(pipeline, {"run": run_id},
                                                            run_id=run_id))
        for handle in handles:
            await handle.result()
        print("finished", flush=True)


if __name__ == "__main__":
    EFFECTS = Path(sys.argv[2])
    asyncio.run(main(sys.argv[1], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 8))
