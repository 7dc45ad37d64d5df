"""Pipelines on PostgreSQL: one node against the embedded store, and two nodes against one.

`cluster_runs_1_node` (runs/s): 1,000 runs of a 5-step chain of actor steps each
returning a ~1 KB reply (`PAYLOAD`), started together and awaited, in a system on a
PostgreSQL store (a node of a cluster: leases, fencing, heartbeat) with sync
durability. Baseline, same run: the same on the embedded LMDB store. Best of 3 each,
alternating, each in a fresh store. Target: ratio >= 0.3.

`cluster_scaling_2_nodes` (runs/s): 1,000 such runs driven by two node processes on one
database (each starts 500), from the start signal until both have seen all of theirs
end. Baseline, same run: one node process driving all 1,000. Best of 3 each. Target:
ratio >= 1.2.

`cluster_takeover_seconds` (takeovers/s: one over the seconds a takeover takes, so that
higher is better): two node processes on one database, lease 2 s (heartbeat a third of
it). Node a starts 50 runs of a 5-step chain whose steps sleep 0.4 s and is SIGKILLed once
every run is in its second step; the seconds from the kill until node b's workers have
received a step of every one of a's runs (b's first step of each run it took over: b
drives it now). Baseline, same run: one over the lease. Best of 3, each in a fresh schema;
every run must then complete on node b, taken over by it, or the bench fails. Target:
ratio >= 0.667, a takeover within 1.5x the lease. It cannot beat the lease minus a
heartbeat (node a renewed at most a heartbeat before the kill) and node b claims at its
next beat after the expiry.

The bench starts a private PostgreSQL server (`initdb` and `pg_ctl` in a temporary folder,
on a free port, as the `postgres` user when run as root), as the tests' fixture does.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import roost
from benches._figure import Figure, Target, report
from benches._pipelines import STEPS, Reply, chain, reply
from roost.pipelines.definition import Pipeline, RunStep, Step

NAMES = ("cluster_runs_1_node", "cluster_scaling_2_nodes", "cluster_takeover_seconds")
TARGETS = {"cluster_runs_1_node": Target(ratio=0.3),
           "cluster_scaling_2_nodes": Target(ratio=1.2),
           "cluster_takeover_seconds": Target(ratio=1 / 1.5)}
RUNS = 1_000
ROUNDS = 3
PAYLOAD = 1024  # bytes of each step's result
TAKEOVER_RUNS = 50
LEASE = 2.0
STEP_SECONDS = 0.4
NODE_DEADLINE = 30.0  # seconds a takeover node waits for what it expects before failing
_USER = "roost"
_PASSWORD = "bench-secret"


@contextlib.contextmanager
def postgres_server() -> Iterator[tuple[str, str]]:
    """A private PostgreSQL server for the bench; yields a URL of its `roost` database and
    the path of its psql."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    bindir = next((Path(c) for c in candidates if (Path(c) / "initdb").exists()), None)
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin); "
                           "`python3 scripts/dev.py test` installs it")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="roost-bench-postgres-"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    password = folder / "password"
    password.write_text(_PASSWORD + "\n")
    if as_user:
        os.chown(password, owner.pw_uid, owner.pw_gid)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "--no-sync", "-D", str(data), "-U",
                        _USER, f"--pwfile={password}", "--auth-host=scram-sha-256",
                        "--auth-local=trust", "--locale=C"], check=True, capture_output=True)
        # Durable commits, as a production server's (fsync stays on).
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "start", "-w", "-D", str(data), "-l",
                        str(folder / "log"), "-o", f"-c listen_addresses=127.0.0.1 -c port={port} "
                        f"-c unix_socket_directories={folder} -c max_connections=60"],
                       check=True, capture_output=True)
        subprocess.run([str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", _USER,
                        "-d", "postgres", "-c", "CREATE DATABASE roost"], check=True,
                       capture_output=True, env={**os.environ, "PGPASSWORD": _PASSWORD})
        yield f"postgresql://{_USER}:{_PASSWORD}@127.0.0.1:{port}/roost", str(bindir / "psql")
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "stop", "-m", "immediate", "-D",
                        str(data)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def fresh_schema(server: tuple[str, str], name: str) -> str:
    """A URL of a new, empty schema `name` of the server."""
    url, psql = server
    port = url.rsplit("/", 1)[0].rsplit(":", 1)[1]
    subprocess.run([psql, "-h", "127.0.0.1", "-p", port, "-U", _USER, "-d", "roost", "-c",
                    f"CREATE SCHEMA {name}"], check=True, capture_output=True,
                   env={**os.environ, "PGPASSWORD": _PASSWORD})
    return f"{url}?search_path={name}"


async def drive(store: str | Path, runs: int, prefix: str = "r") -> float:
    """Seconds to start `runs` runs of the chain and see them all end, in a fresh system."""
    roost.configure_logging("json", "critical")
    pipeline = chain(f"reply5-{PAYLOAD}", PAYLOAD)
    async with roost.ActorSystem(store=store, durability="sync", log_format=None) as system:
        await (await system.pipelines.start(pipeline)).result()  # warm: pools, codecs
        return await drive_runs(system, pipeline, runs, prefix)


async def drive_runs(system: roost.ActorSystem, pipeline: Any, runs: int, prefix: str) -> float:
    """Seconds to start `runs` runs together and see them all end."""
    started = time.perf_counter()
    handles = await asyncio.gather(*(system.pipelines.start(pipeline, run_id=f"{prefix}-{i:05d}")
                                     for i in range(runs)))
    await asyncio.gather(*(handle.result() for handle in handles))
    return time.perf_counter() - started


def one_node_rates(server: tuple[str, str]) -> tuple[float, float]:
    """Best runs/s on PostgreSQL (one node) and on LMDB, rounds alternating."""
    postgres = lmdb = 0.0
    for round_number in range(ROUNDS):
        schema = fresh_schema(server, f"one{round_number}")
        postgres = max(postgres, RUNS / asyncio.run(drive(schema, RUNS)))
        with tempfile.TemporaryDirectory(prefix="roost-bench-") as folder:
            lmdb = max(lmdb, RUNS / asyncio.run(drive(Path(folder) / "store", RUNS)))
    return postgres, lmdb


def nodes_rate(url: str, nodes: int) -> float:
    """Runs/s of `nodes` node processes sharing RUNS runs, from the go signal to the last end."""
    processes = [subprocess.Popen([sys.executable, "-m", "benches.cluster", "--node", url,
                                   str(RUNS // nodes), f"n{i}"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True,
                                  cwd=Path(__file__).parent.parent)
                 for i in range(nodes)]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        started = time.perf_counter()
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "done"
        return RUNS / (time.perf_counter() - started)
    finally:
        for process in processes:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=60)


async def node_process(url: str, runs: int, prefix: str) -> None:
    """One bench node: start its system, say `ready`, wait for `go`, drive, say `done`."""
    roost.configure_logging("json", "critical")
    pipeline = chain(f"reply5-{PAYLOAD}", PAYLOAD)
    async with roost.ActorSystem(store=url, durability="sync", log_format=None) as system:
        await (await system.pipelines.start(pipeline, run_id=f"{prefix}-warm")).result()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await drive_runs(system, pipeline, runs, prefix)
        print("done", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # stay a node until the bench is done


#: In a takeover node process: run id -> step -> when this process's worker received it.
_steps_seen: dict[str, dict[str, float]] = {}


class Sleeper(roost.Actor):
    """A step's worker that notes when it received the step, sleeps STEP_SECONDS (so that a
    killed node's runs are mid-step), and returns a ~1 KB reply."""

    async def receive(self, message: RunStep) -> Reply:
        # CLOCK_MONOTONIC is system-wide on Linux: the bench compares it with its own.
        _steps_seen.setdefault(message.run_id, {})[message.step] = time.monotonic()
        await asyncio.sleep(STEP_SECONDS)
        return reply(message.step, PAYLOAD)


def sleepy_chain() -> Pipeline:
    """`s0 -> ... -> s4` of `Sleeper` steps, a worker per run so no step waits for one."""
    return Pipeline("sleepy5", [Step(f"s{i}", Sleeper, after=() if i == 0 else f"s{i - 1}",
                                     workers=TAKEOVER_RUNS, output=Reply)
                                for i in range(STEPS)])


async def _until(what: str, condition: Callable[[], bool]) -> None:
    """Poll `condition` until it holds; fail naming `what` after NODE_DEADLINE seconds."""
    deadline = time.monotonic() + NODE_DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"takeover bench node: no {what} within {NODE_DEADLINE:g}s")
        await asyncio.sleep(0.005)


async def takeover_node(url: str, node_id: str) -> None:
    """Node `a`: start the runs, say `mid-flight` once each is in its second step, wait to
    be killed. Node `b`: say `ready`, wait until it has received a step of every one of a's
    runs and say `resumed MONOTONIC` (when the last of them got its first step here), then
    say `completed` once every run completed after being taken over here (or what it found
    instead), and stay a node until the bench closes its stdin."""
    roost.configure_logging("json", "critical")
    pipeline = sleepy_chain()
    async with roost.ActorSystem(store=url, durability="sync", log_format=None,
                                 node_id=node_id, lease=LEASE) as system:
        assert system.cluster is not None
        await system.pipelines.register(pipeline)
        if node_id == "a":
            await asyncio.gather(*(system.pipelines.start(pipeline, run_id=f"a-{i:03d}")
                                   for i in range(TAKEOVER_RUNS)))
            await _until("second step of every run",
                         lambda: sum("s1" in steps for steps in _steps_seen.values())
                         == TAKEOVER_RUNS)
            print("mid-flight", flush=True)
        else:
            print("ready", flush=True)
            await _until("step of every run of node a", lambda: len(_steps_seen) == TAKEOVER_RUNS)
            resumed = max(min(steps.values()) for steps in _steps_seen.values())
            print(f"resumed {resumed!r}", flush=True)
            await asyncio.wait_for(asyncio.gather(*(system.pipelines.outcome(run_id)
                                                    for run_id in _steps_seen)), NODE_DEADLINE)
            statuses = Counter(str(record.status) for record in await system.pipelines.list())
            took_over = system.cluster.statistics()["took_over"]
            if statuses == {"completed": TAKEOVER_RUNS} and took_over == TAKEOVER_RUNS:
                print("completed", flush=True)
            else:
                print(f"run statuses {dict(statuses)}, runs taken over {took_over}", flush=True)
        await asyncio.to_thread(sys.stdin.readline)


def takeover_seconds(url: str) -> float:
    """Seconds from node a's SIGKILL until node b has received a step of every run a drove.

    Raises:
        RuntimeError: a node said something else than expected, or not every run completed
            on node b after the takeover.
    """
    processes = {node_id: subprocess.Popen(
        [sys.executable, "-m", "benches.cluster", "--takeover-node", url, node_id],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).parent.parent) for node_id in ("a", "b")}
    try:
        _expect(processes["b"], "ready")
        _expect(processes["a"], "mid-flight")
        killed = time.monotonic()
        os.kill(processes["a"].pid, signal.SIGKILL)
        resumed = float(_expect(processes["b"], "resumed"))
        _expect(processes["b"], "completed")
        return resumed - killed
    finally:
        for process in processes.values():
            assert process.stdin is not None
            process.stdin.close()
            process.wait(timeout=60)


def _expect(process: subprocess.Popen[str], word: str) -> str:
    """What follows `word` on the next line `process` says, which must begin with it."""
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    said, _, rest = line.partition(" ")
    if said != word:
        raise RuntimeError(f"cluster_takeover_seconds: a takeover node said {line!r} instead "
                           f"of {word!r} (its error, if any, is above on stderr)")
    return rest


def measure() -> list[Figure]:
    with postgres_server() as server:
        postgres, lmdb = one_node_rates(server)
        two = one = 0.0
        for round_number in range(ROUNDS):
            two = max(two, nodes_rate(fresh_schema(server, f"two{round_number}"), 2))
            one = max(one, nodes_rate(fresh_schema(server, f"single{round_number}"), 1))
        takeover = min(takeover_seconds(fresh_schema(server, f"takeover{round_number}"))
                       for round_number in range(ROUNDS))
    return [
        report(Figure("cluster_runs_1_node", postgres, "runs/s", "embedded LMDB store", lmdb), TARGETS),
        report(Figure("cluster_scaling_2_nodes", two, "runs/s", "one node process", one), TARGETS),
        report(Figure("cluster_takeover_seconds", 1 / takeover, "takeovers/s",
                      f"1 / the lease ({LEASE:g} s)", 1 / LEASE), TARGETS),
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--node"]:
        asyncio.run(node_process(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    elif sys.argv[1:2] == ["--takeover-node"]:
        asyncio.run(takeover_node(sys.argv[2], sys.argv[3]))
    else:
        for figure in measure():
            print(figure.as_json())
