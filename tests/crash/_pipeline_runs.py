"""The pipeline crash test's process: runs (or resumes) pipeline runs with side effects.

Usage: `python _pipeline_runs.py MODE STORE EFFECTS EXECUTIONS RUNS`.

MODE `start` starts RUNS runs (ids `run-00` ...) of the `orders` pipeline and
waits for them; the test kills it with SIGKILL part way. MODE `resume`
registers the pipeline with `resume=True`, starts nothing, waits for the runs
it resumed and prints `done RUN STATUS` for each, then `finished`.

The pipeline: `reserve` (a worker) -> `charge` and `audit` (a tool, in
parallel) -> `notify` (the tool, mapped over two items) -> `close` (a worker).
The tool's side effect is a line `RUN STEP` appended (O_APPEND, fsync) to
EFFECTS, announced on stdout as `effect RUN STEP`; its verify hook reads
EFFECTS, so a call found in flight after the crash settles as done or not
done (and says which on stdout: `verified RUN STEP done|not-done`). Workers
append `RUN STEP` to EXECUTIONS before they return. The tool waits a little
before and after its effect so that kills land on both sides.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path
from typing import Any

from _effects import append  # a sibling: the script runs from this folder

import roost
from roost.pipelines.definition import Pipeline, RunStep, Step

EFFECTS = Path()
EXECUTIONS = Path()
ALL_STARTED = asyncio.Event()


def result_of(run: str, step: str) -> str:
    return f"{run}:{step}:ok"


async def already_done(key: str, args: Any) -> roost.Done | roost.NotDone:
    line = f"{args['run']} {args['step']}"
    done = EFFECTS.exists() and line in EFFECTS.read_text().splitlines()
    print(f"verified {line} {'done' if done else 'not-done'}", flush=True)
    return roost.Done(result_of(args["run"], args["step"])) if done else roost.NotDone()


@roost.tool(verify=already_done)
async def effect(run: str, step: str) -> str:
    await asyncio.sleep(random.uniform(0.0, 0.02))  # the call's latency, before ...
    append(EFFECTS, f"{run} {step}")
    print(f"effect {run} {step}", flush=True)
    await asyncio.sleep(random.uniform(0.0, 0.02))  # ... and after it took effect
    return result_of(run, step)


class Recorder(roost.Actor):
    async def receive(self, message: RunStep) -> Any:
        await ALL_STARTED.wait()  # every run is stored before any has an effect
        append(EXECUTIONS, f"{message.run_id} {message.step}")
        return {"run": message.run_id, "step": message.step}


def tool_step(name: str, after: str | list[str]) -> Step:
    return Step(name, tool="effect", after=after,
                args=lambda results, input: {"run": input["run"], "step": name})


PIPELINE = Pipeline("orders", [
    Step("reserve", Recorder),
    tool_step("charge", after="reserve"),
    tool_step("audit", after="reserve"),
    Step("notify", tool="effect", after=["charge", "audit"],
         map=lambda results: [{"run": results["reserve"]["run"], "i": i} for i in range(2)],
         args=lambda results, item: {"run": item["run"], "step": f"notify[{item['i']}]"}),
    Step("close", Recorder, after="notify"),
])


async def main(mode: str, store: str, runs: int) -> None:
    async with roost.ActorSystem(store=store, log_format="json", log_level="error") as system:
        system.tools.register(effect)
        if mode == "start":
            handles = [await system.pipelines.start(PIPELINE, {"run": f"run-{i:02d}"},
                                                    run_id=f"run-{i:02d}") for i in range(runs)]
            ALL_STARTED.set()
            print("started", flush=True)
            for handle in handles:
                await handle.result()
            print("finished", flush=True)  # the test kills this process long before
        else:
            ALL_STARTED.set()
            handles = await system.pipelines.register(PIPELINE, resume=True)
            for handle in handles:
                outcome = await handle.result()
                print(f"done {outcome.run_id} {outcome.status}", flush=True)
            print("finished", flush=True)


if __name__ == "__main__":
    EFFECTS, EXECUTIONS = Path(sys.argv[3]), Path(sys.argv[4])
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[5])))
