"""The offline commands (`roost runs`, `roost trace`, `roost gates`, `roost decide`) take a
postgresql:// URL for --store as well as a folder, and say clearly when no store is there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

import roost
from roost import Gate, Pipeline, RunStep, Step

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
ROOST = [sys.executable, "-m", "roost.runtime.cli"]


class Echo(roost.Actor):
    async def receive(self, message: RunStep) -> Any:
        return {"echo": message.input}


def held() -> Pipeline:
    return Pipeline("held", [Step("first", Echo),
                             Step("second", Echo, after="first",
                                  gate=Gate(reason="a person looks first", assignees=["ops"]))],
                    input_type=str)


async def roost_command(*args: str) -> subprocess.CompletedProcess[str]:
    return await anyio.run_process([*ROOST, *args], cwd=REPO, check=False)


async def test_runs_gates_and_decide_work_on_a_postgres_store(postgres_url: str) -> None:
    async with roost.ActorSystem(store=postgres_url, log_format="json",
                                 log_level="warning") as system:
        handle = await system.pipelines.start(held(), "hello", run_id="run-pg-1")
        with anyio.fail_after(10):
            assert (await handle.result()).status == "waiting"

    runs = await roost_command("runs", "--store", postgres_url)
    assert runs.returncode == 0, runs.stderr
    assert b"run-pg-1" in runs.stdout and b"waiting" in runs.stdout

    gates = await roost_command("gates", "--store", postgres_url, "--json")
    assert gates.returncode == 0, gates.stderr
    [pending] = [json.loads(line) for line in gates.stdout.splitlines()]
    assert (pending["run_id"], pending["gate"]) == ("run-pg-1", "second")

    decided = await roost_command("decide", "run-pg-1", "second", "approve", "--by", "ana",
                                  "--store", postgres_url)
    assert decided.returncode == 0, decided.stderr
    async with roost.ActorSystem(store=postgres_url, log_format="json",
                                 log_level="warning") as system:
        [resumed] = await system.pipelines.register(held(), resume=True)
        with anyio.fail_after(10):
            assert (await resumed.result()).status == "completed"


async def test_a_database_without_a_store_is_refused_and_the_password_never_shown(
        postgres_url: str) -> None:
    for command in (["gates"], ["runs"], ["trace", "run-1"]):
        done = await roost_command(*command, "--store", postgres_url)
        assert done.returncode == 1, (command, done.stdout)
        assert b"StoreUnavailable" in done.stderr, (command, done.stderr)
        assert b"test-secret" not in done.stderr + done.stdout, command


async def test_store_check_reads_a_postgres_store_and_backup_points_to_pg_dump(
        postgres_url: str) -> None:
    async with roost.ActorSystem(store=postgres_url, log_format="json",
                                 log_level="warning") as system:
        with anyio.fail_after(10):
            await (await system.pipelines.start(held(), "hello", run_id="run-pg-2")).result()

    checked = await roost_command("store", "check", postgres_url)
    assert checked.returncode == 0, checked.stderr
    assert b"every record decodes" in checked.stdout
    assert b"gates=1" in checked.stdout and b"test-secret" not in checked.stdout

    backup = await roost_command("store", "backup", postgres_url, "/nonexistent/copy")
    assert backup.returncode == 1
    assert b"pg_dump" in backup.stderr and b"test-secret" not in backup.stderr


async def test_run_with_pool_makes_the_node_serve_it_and_is_refused_on_lmdb(
        postgres_url: str, tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text("async def main(system):\n"
                   "    print('serving', system.cluster.settings.pools, flush=True)\n")

    served = await roost_command("run", str(app), "--store", postgres_url, "--pool", "gpu",
                                 "--pool", "big-memory", "--log-level", "error")
    on_lmdb = await roost_command("run", str(app), "--store", str(tmp_path / "store"),
                                  "--pool", "gpu")

    assert served.returncode == 0, served.stderr
    assert b"serving ('gpu', 'big-memory')" in served.stdout
    assert on_lmdb.returncode == 2
    assert b"pools set(s) up a node of a cluster, which needs a PostgreSQL store" in on_lmdb.stderr
