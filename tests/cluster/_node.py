"""A node of the fault tests' cluster: runs a 5-step pipeline on a PostgreSQL store.

Usage: `python _node.py URL NODE_ID EFFECTS RUNS PREFIX`.

It joins the cluster (lease 2 s), registers the `orders` pipeline, starts RUNS runs (ids
`PREFIX-0000` ...) and prints `started`; then it drives runs (its own, queued ones it
claims, and those it takes over) until SIGTERM, when it stops cleanly and prints
`stats {json}` (its cluster statistics). The pipeline: `receive` and `price` (workers)
-> `charge` (a side-effecting tool: an effect keyed by its idempotency key in the fsynced
log EFFECTS, see `_effects`; its verify hook reads that log) -> `pack` and `ship` (workers).
At most 10 runs are in flight per node; the rest wait queued for any node to claim.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
from pathlib import Path
from typing import Any

from _effects import applied_keys, apply  # a sibling: the script runs from this folder

import roost
from roost.pipelines.definition import Pipeline, RunStep, Step

EFFECTS = Path()
NODE = ""
LEASE = 2.0


async def already_applied(key: str, args: Any) -> roost.Done | roost.NotDone:
    done = key in applied_keys(EFFECTS)
    return roost.Done(f"charged {args['run']}") if done else roost.NotDone()


@roost.tool(verify=already_applied, key_param="idempotency_key")
async def charge(run: str, idempotency_key: str = "") -> str:
    await asyncio.sleep(random.uniform(0.0, 0.1))  # the call's latency, before ...
    apply(EFFECTS, idempotency_key, run, NODE)
    await asyncio.sleep(random.uniform(0.0, 0.1))  # ... and after it took effect
    return f"charged {run}"


class Worker(roost.Actor):
    async def receive(self, message: RunStep) -> str:
        await asyncio.sleep(random.uniform(0.005, 0.02))
        return f"{message.step} {message.run_id}"


def worker_step(name: str, after: str | tuple[str, ...] = ()) -> Step:
    return Step(name, Worker, after=after, workers=4, timeout=2.0)


PIPELINE = Pipeline("orders", [
    worker_step("receive"),
    worker_step("price", after="receive"),
    Step("charge", tool="charge", after="price", timeout=2.0, retry=roost.Retry(attempts=3),
         args=lambda results, input: {"run": input["run"]}),
    worker_step("pack", after="charge"),
    worker_step("ship", after="pack"),
])


async def main(url: str, runs: int, prefix: str) -> None:
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    async with roost.ActorSystem(store=url, node_id=NODE, lease=LEASE, max_active_runs=10,
                                 log_format="json", log_level="error") as system:
        assert system.cluster is not None
        system.tools.register(charge)
        await system.pipelines.register(PIPELINE)
        for i in range(runs):
            run_id = f"{prefix}-{i:04d}"
            await system.pipelines.start(PIPELINE, {"run": run_id}, run_id=run_id)
        print("started", flush=True)
        await stopping.wait()
        stats = system.cluster.statistics()
    print(f"stats {json.dumps(stats)}", flush=True)


if __name__ == "__main__":
    EFFECTS, NODE = Path(sys.argv[3]), sys.argv[2]
    asyncio.run(main(sys.argv[1], int(sys.argv[4]), sys.argv[5]))
