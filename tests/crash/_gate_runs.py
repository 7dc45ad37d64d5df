"""The gate crash test's process: runs park at a gate, are decided, resume; it kills itself.

Usage: `python _gate_runs.py MODE STORE EFFECTS RUNS KILL`.

Runs `run-00` ... have three steps: `prepare` (a worker) -> `log` (a tool) ->
`send` (a tool behind a gate). Both tools' side effect is a line `RUN STEP`
appended, with fsync, to EFFECTS and announced on stdout as `effect RUN STEP`;
their verify hook reads EFFECTS, so a call cut off by a kill settles as done or
not done (`verified RUN STEP done|not-done` on stdout). The pipelines differ in
`send`'s gate: `held` waits for a person; `reject-late` and `approve-late`
reject or approve on their own after TIMEOUT seconds.

MODE `park-held` (every run in `held`) and `park-timed` (even runs in
`reject-late`, odd ones in `approve-late`) start RUNS runs; they print
`all-parked` and end once every run waits at its gate. MODE `decide` approves
every pending gate (printing `decided RUN before-register`), registers `held`
with `resume=True`, approves the gates that runs resumed here park at (`decided
RUN after-register`), waits for every run and prints `done RUN STATUS`, then
`finished`. MODE `decide-live` registers `held` first, so each run resumes here
as its decision is written (`decided RUN live`), then goes on as `decide` does
once it has registered. MODE `expire` registers the timed pipelines, resumes their
interrupted runs and decides nothing: it waits until the gates' deadlines have
ended every run, printing `done RUN STATUS`, then `finished`.

KILL is where the process SIGKILLs itself, printing `kill KILL RUN` first (`kill
KILL` for a claim)
(`none`: nowhere), with N counted from the start of this process:
  park:N      right after the write that parks the N-th run at its gate;
  deciding:N  right before the write that stores the N-th decision is made;
  decision:N  right after the write that stores the N-th decision;
  claim:N     right after the N-th new ledger claim of a `send` call;
  mid:N       in the N-th `send` call, before its side effect;
  effect:N    in the N-th `send` call, after its side effect and before the call's
              result or the step's checkpoint are stored.
In `park-timed` mode it also dies (printing `kill timer RUN`) right before a gate
timeout would be stored, so a slow start never decides a gate in that process.
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

from _effects import append  # a sibling: the script runs from this folder

import roost
from roost.storage import Append, Insert, Op, RunStatus, Store, Update

EFFECTS = Path()
ALL_STARTED = asyncio.Event()
TIMEOUT = 0.5  # seconds the timed gates wait
KILL_KIND, KILL_AT = "none", 0
COUNTS: dict[str, int] = {"park": 0, "deciding": 0, "decision": 0, "claim": 0, "mid": 0,
                          "effect": 0}
TIMED = False  # a `park-timed` process: it must not live to store a gate timeout


def die(point: str, run: str) -> None:
    print(f"kill {point} {run}".rstrip(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def reached(kind: str, run: str) -> None:
    """Count one `kind` event; SIGKILL this process if it is the chosen one."""
    COUNTS[kind] += 1
    if KILL_KIND == kind and COUNTS[kind] == KILL_AT:
        die(f"{kind}:{KILL_AT}", run)


def result_of(run: str, step: str) -> str:
    return f"{run}:{step}:ok"


async def already_done(key: str, args: Any) -> roost.Done | roost.NotDone:
    line = f"{args['run']} {args['step']}"
    done = EFFECTS.exists() and line in EFFECTS.read_text().splitlines()
    print(f"verified {line} {'done' if done else 'not-done'}", flush=True)
    return roost.Done(result_of(args["run"], args["step"])) if done else roost.NotDone()


async def effect(run: str, step: str) -> str:
    if step == "send":
        reached("mid", run)
    append(EFFECTS, f"{run} {step}")
    print(f"effect {run} {step}", flush=True)
    if step == "send":
        reached("effect", run)
    return result_of(run, step)


@roost.tool(verify=already_done)
async def log(run: str, step: str) -> str:
    return await effect(run, step)


@roost.tool(verify=already_done)
async def send(run: str, step: str) -> str:
    await asyncio.sleep(random.uniform(0.0, 0.01))  # vary where the other runs are at a kill
    return await effect(run, step)


class Clerk(roost.Actor):
    async def receive(self, message: roost.RunStep) -> str:
        await ALL_STARTED.wait()  # every run is stored before any parks
        await asyncio.sleep(random.uniform(0.0, 0.01))  # vary the order the runs park in
        return message.run_id


def pipeline(name: str, gate: roost.Gate) -> roost.Pipeline:
    return roost.Pipeline(name, [
        roost.Step("prepare", Clerk),
        roost.Step("log", tool="log", after="prepare",
                   args=lambda results, input: {"run": input["run"], "step": "log"}),
        roost.Step("send", tool="send", after="log", gate=gate,
                   args=lambda results, input: {"run": input["run"], "step": "send"}),
    ])


HELD = pipeline("held", roost.Gate(reason="a person approves each send", assignees=["ops"]))
REJECT_LATE = pipeline("reject-late", roost.Gate(timeout=TIMEOUT, on_timeout="reject"))
APPROVE_LATE = pipeline("approve-late", roost.Gate(timeout=TIMEOUT, on_timeout="approve"))

_commit = Store.commit


async def commit_and_maybe_die(self: Store, ops: Sequence[Op], *,
                               durable: bool | None = None) -> list[Any]:
    """`Store.commit`, counting the writes that park a run, decide a gate or claim a send."""
    checkpointed = [op for op in ops if isinstance(op, Append) and op.db == "checkpoints"]
    gates = [op for op in ops if isinstance(op, Update) and op.db == "gates"]
    if TIMED and gates and not checkpointed:  # the gate timer is about to store a timeout
        die("timer", gates[0].key.partition(b"\x00")[0].decode())
    if gates and not checkpointed:
        reached("deciding", gates[0].key.partition(b"\x00")[0].decode())
    results = await _commit(self, ops, durable=durable)
    if gates and checkpointed:
        reached("park", checkpointed[0].prefix[:-1].decode())
    elif gates:
        reached("decision", gates[0].key.partition(b"\x00")[0].decode())
    for op, result in zip(ops, results, strict=True):
        if isinstance(op, Insert) and op.db == "ledger" and op.key.startswith(b"send\x00") \
                and result:
            reached("claim", "")  # the key is a hash: which run is not known here
    return results


async def park(system: roost.ActorSystem, runs: int, timed: bool) -> None:
    handles = []
    for i in range(runs):
        chosen = (REJECT_LATE if i % 2 == 0 else APPROVE_LATE) if timed else HELD
        handles.append(await system.pipelines.start(chosen, {"run": f"run-{i:02d}"},
                                                    run_id=f"run-{i:02d}"))
    ALL_STARTED.set()
    for handle in handles:
        outcome = await handle.result()
        assert outcome.status == "waiting", outcome
    print("all-parked", flush=True)


async def decide(system: roost.ActorSystem, runs: int) -> None:
    for gate in await system.gates.pending():
        await system.gates.decide(gate.run_id, gate.gate, "approve", by="ana")
        print(f"decided {gate.run_id} before-register", flush=True)
    await system.pipelines.register(HELD, resume=True)
    await finish(system, runs)


async def decide_live(system: roost.ActorSystem, runs: int) -> None:
    await system.pipelines.register(HELD)
    for gate in await system.gates.pending():
        await system.gates.decide(gate.run_id, gate.gate, "approve", by="ana")
        print(f"decided {gate.run_id} live", flush=True)
    await finish(system, runs)


async def finish(system: roost.ActorSystem, runs: int) -> None:
    """Resume every run and wait for it, approving the gate it parks at here, if it does."""
    for i in range(runs):
        run_id = f"run-{i:02d}"
        handle = await system.pipelines.resume(run_id)
        outcome = await handle.result()
        if outcome.status == "waiting":  # it parked in this process
            await system.gates.decide(run_id, "send", "approve", by="ana")
            print(f"decided {run_id} after-register", flush=True)
            outcome = await handle.result(through_gates=True)
        print(f"done {run_id} {outcome.status}", flush=True)
    print("finished", flush=True)


async def expire(system: roost.ActorSystem, runs: int) -> None:
    # Both are registered before anything yields to the gate timer, so every timeout it
    # applies resumes its run here; then the runs left running or decided resume.
    await system.pipelines.register(REJECT_LATE)
    await system.pipelines.register(APPROVE_LATE)
    await system.pipelines.resume_interrupted()
    ended = {RunStatus.COMPLETED, RunStatus.REJECTED, RunStatus.FAILED, RunStatus.CANCELLED}
    while True:
        records = await system.pipelines.list()
        if len(records) == runs and all(r.status in ended for r in records):
            break
        await asyncio.sleep(0.02)
    for record in sorted(records, key=lambda r: r.run_id):
        print(f"done {record.run_id} {record.status}", flush=True)
    print("finished", flush=True)


async def main(mode: str, store: str, runs: int) -> None:
    Store.commit = commit_and_maybe_die  # type: ignore[method-assign]
    async with roost.ActorSystem(store=store, log_format="json", log_level="critical") as system:
        system.tools.register(log)
        system.tools.register(send)
        if mode in ("park-held", "park-timed"):
            await park(system, runs, timed=mode == "park-timed")
            return
        ALL_STARTED.set()
        if mode == "decide":
            await decide(system, runs)
        elif mode == "decide-live":
            await decide_live(system, runs)
        else:
            await expire(system, runs)


if __name__ == "__main__":
    EFFECTS = Path(sys.argv[3])
    KILL_KIND, _, at = sys.argv[5].partition(":")
    KILL_AT = int(at or 0)
    TIMED = sys.argv[1] == "park-timed"
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[4])))
