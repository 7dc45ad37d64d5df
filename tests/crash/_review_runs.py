"""The review crash test's process: pipeline runs, some parked for review, killed after a review.

Usage: `python _review_runs.py MODE STORE EFFECTS RUNS`.

MODE `start` starts RUNS runs (ids `run-00` ...) of the `replies` pipeline;
MODE `resume` registers it with `resume=True` and waits for the runs it resumed,
printing `done RUN STATUS` for each, then `finished`. In both modes the process
SIGKILLs itself the moment a store write that saved a checkpoint holding a review
has committed, printing `review-saved RUN` first: exactly where a roost that
stored the review and the run's status in two writes had stored only the first.

The pipeline: `draft` (a worker) -> `check` (a worker: returns `NeedsReview` for
the runs whose input says so) -> `send` (a tool whose side effect is a line
`RUN send` appended, with fsync, to EFFECTS; its verify hook reads EFFECTS, so a
call cut off by a kill settles as done or not done).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from _effects import append  # a sibling: the script runs from this folder

import roost
from roost.pipelines.run import RunProgress
from roost.storage import Append, CheckpointStore, Op, Store

EFFECTS = Path()
ALL_STARTED = asyncio.Event()


def needs_review(run: str) -> bool:
    """Odd-numbered runs ask for a person at `check`."""
    return int(run.rsplit("-", 1)[1]) % 2 == 1


async def already_sent(key: str, args: Any) -> roost.Done | roost.NotDone:
    line = f"{args['run']} send"
    done = EFFECTS.exists() and line in EFFECTS.read_text().splitlines()
    return roost.Done(f"sent {args['run']}") if done else roost.NotDone()


@roost.tool(verify=already_sent)
async def send(run: str) -> str:
    append(EFFECTS, f"{run} send")
    print(f"effect {run} send", flush=True)
    return f"sent {run}"


class Writer(roost.Actor):
    async def receive(self, message: roost.RunStep) -> Any:
        await ALL_STARTED.wait()  # every run is stored before any step runs
        await asyncio.sleep(random.uniform(0.0, 0.01))  # vary the interleaving of the runs
        if message.step == "check" and needs_review(message.run_id):
            return roost.NeedsReview(f"{message.run_id} promises a refund")
        return f"{message.run_id}:{message.step}"


PIPELINE = roost.Pipeline("replies", [
    roost.Step("draft", Writer),
    roost.Step("check", Writer, after="draft"),
    roost.Step("send", tool="send", after="check",
               args=lambda results, input: {"run": input["run"]}),
])

_commit = Store.commit


async def commit_then_die_after_a_review(self: Store, ops: Sequence[Op], *,
                                         durable: bool | None = None) -> list[Any]:
    """`Store.commit`, then SIGKILL if the write saved a checkpoint that holds a review."""
    results = await _commit(self, ops, durable=durable)
    for op in ops:
        if isinstance(op, Append) and op.db == "checkpoints":
            run = op.prefix[:-1].decode()
            latest = await CheckpointStore(self).latest(run)
            assert latest is not None
            if msgspec.msgpack.decode(latest.state, type=RunProgress).reviews:
                print(f"review-saved {run}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
    return results


async def main(mode: str, store: str, runs: int) -> None:
    Store.commit = commit_then_die_after_a_review  # type: ignore[method-assign]
    async with roost.ActorSystem(store=store, log_format="json", log_level="error") as system:
        system.tools.register(send)
        if mode == "start":
            for i in range(runs):
                await system.pipelines.start(PIPELINE, {"run": f"run-{i:02d}"},
                                             run_id=f"run-{i:02d}")
            ALL_STARTED.set()
            await asyncio.Event().wait()  # until a review kills the process
        else:
            ALL_STARTED.set()
            handles = await system.pipelines.register(PIPELINE, resume=True)
            for handle in handles:
                outcome = await handle.result()
                print(f"done {outcome.run_id} {outcome.status}", flush=True)
            print("finished", flush=True)


if __name__ == "__main__":
    EFFECTS = Path(sys.argv[3])
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[4])))
