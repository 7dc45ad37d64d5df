"""Specifications of pools across nodes (`roost.cluster.tasks`, `roost.pipelines.remote`): a
step with `pool=` runs on a node that declares the pool, whichever node drives its run;
its request and result cross the database as a step task; a node that declares the pool
runs it itself; failures come back named, under the step's retry policy; and a task whose
node died is run by another node of the pool.

Systems in this process play the nodes, on one schema of the session's server; the last
test kills a real serving process with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import msgspec
import pytest

import roost
from roost import Pipeline, RunStep, Step
from roost.errors import PipelineDefinitionError, StepFailed, TransientToolError

pytestmark = pytest.mark.anyio


class Prompt(msgspec.Struct):
    text: str


class Answer(msgspec.Struct):
    text: str
    node: str


FAILS: dict[str, int] = {}


def pipeline(node: str, *, fail: str | None = None, timeout: float = 10.0,
             retry: roost.Retry | None = None) -> Pipeline:
    """prep (local) -> infer (pool "gpu") -> post (local); each worker knows its node."""

    class Prep(roost.Actor):
        async def receive(self, message: RunStep) -> Prompt:
            return Prompt(f"{message.input} on {node}")

    class Infer(roost.Actor):
        async def receive(self, message: RunStep) -> Answer:
            prompt = message.results["prep"]
            assert isinstance(prompt, Prompt)  # decoded as the step's output type there
            if fail == "always":
                raise ValueError(f"the model on {node} refused {prompt.text!r}")
            if fail == "once" and FAILS.setdefault(message.run_id, 0) == 0:
                FAILS[message.run_id] += 1
                raise TransientToolError("the GPU was busy")
            return Answer(prompt.text.upper(), node)

    class Post(roost.Actor):
        async def receive(self, message: RunStep) -> str:
            answer = message.results["infer"]
            assert isinstance(answer, Answer)
            return f"{answer.text} (inferred on {answer.node}, posted on {node})"

    return Pipeline("chat", [
        Step("prep", Prep, output=Prompt),
        Step("infer", Infer, after="prep", pool="gpu", output=Answer, timeout=timeout,
             retry=retry),
        Step("post", Post, after="infer", output=str),
    ], input_type=str)


def node(url: str, node_id: str, **settings: Any) -> roost.ActorSystem:
    return roost.ActorSystem(store=url, node_id=node_id, lease=2.0, log_format="json",
                             log_level="critical", **settings)


async def tasks_left(url: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        count: int = await connection.fetchval("SELECT count(*) FROM roost_step_tasks")
        return count
    finally:
        await connection.close()


async def outcome(run: roost.RunHandle, seconds: float = 20) -> roost.RunOutcome:
    with anyio.fail_after(seconds):
        return await run.result()


async def test_a_pool_step_runs_on_a_node_that_declares_the_pool_and_its_result_comes_back(
        postgres_url: str) -> None:
    async with node(postgres_url, "cpu") as cpu, node(postgres_url, "gpu-1",
                                                      pools=["gpu"]) as gpu:
        await gpu.pipelines.register(pipeline("gpu-1"))
        chat = pipeline("cpu")
        runs = [await cpu.pipelines.start(chat, f"hello {i}", run_id=f"run-{i}")
                for i in range(5)]
        done = [await outcome(run) for run in runs]
        assert cpu.cluster is not None and gpu.cluster is not None
        sent, served = cpu.cluster.statistics(), gpu.cluster.statistics()

    for i, result in enumerate(done):
        assert result.status == "completed"
        assert result.results["infer"] == Answer(f"HELLO {i} ON CPU", "gpu-1")
        assert result.results["post"] == (f"HELLO {i} ON CPU (inferred on gpu-1, "
                                          "posted on cpu)")
    assert (sent["tasks_sent"], served["tasks_served"]) == (5, 5)
    assert await tasks_left(postgres_url) == 0  # the owner took every answer


async def test_a_node_that_declares_the_pool_runs_the_step_itself(postgres_url: str) -> None:
    async with node(postgres_url, "both", pools=["gpu"]) as both:
        run = await both.pipelines.start(pipeline("both"), "hi", run_id="run-1")
        result = await outcome(run)
        assert both.cluster is not None
        assert both.cluster.statistics()["tasks_sent"] == 0

    assert result.results["infer"] == Answer("HI ON BOTH", "both")


async def test_on_lmdb_a_pool_step_runs_in_the_one_process(tmp_path: Path) -> None:
    async with roost.ActorSystem(store=tmp_path / "store", log_level="critical") as system:
        result = await outcome(await system.pipelines.start(pipeline("here"), "hi"))

    assert result.results["infer"] == Answer("HI ON HERE", "here")


async def test_an_error_on_the_serving_node_fails_the_step_naming_the_node_and_the_error(
        postgres_url: str) -> None:
    async with node(postgres_url, "cpu") as cpu, node(postgres_url, "gpu-1",
                                                      pools=["gpu"]) as gpu:
        await gpu.pipelines.register(pipeline("gpu-1", fail="always"))
        run = await cpu.pipelines.start(pipeline("cpu"), "hi", run_id="run-1")
        with pytest.raises(StepFailed) as failed:
            await outcome(run)

    assert failed.value.step == "infer"
    assert ("step 'infer' failed on node 'gpu-1' (pool 'gpu'): ValueError: the model on gpu-1 "
            "refused 'hi on cpu'") in str(failed.value)


async def test_an_error_the_steps_policy_retries_is_retried_from_the_owner(
        postgres_url: str) -> None:
    FAILS.clear()
    retry = roost.Retry(attempts=3, base_delay=0.01)
    async with node(postgres_url, "cpu") as cpu, node(postgres_url, "gpu-1",
                                                      pools=["gpu"]) as gpu:
        await gpu.pipelines.register(pipeline("gpu-1", fail="once", retry=retry))
        run = await cpu.pipelines.start(pipeline("cpu", retry=retry), "hi", run_id="run-1")
        result = await outcome(run)

    assert result.status == "completed"
    assert FAILS == {"run-1": 1}  # failed once on gpu-1, then succeeded there


async def test_a_request_for_a_pool_no_node_serves_waits_until_one_starts(
        postgres_url: str) -> None:
    async with node(postgres_url, "cpu") as cpu:
        run = await cpu.pipelines.start(pipeline("cpu"), "hi", run_id="run-1")
        await anyio.sleep(1.0)
        assert (await cpu.pipelines.runs.get("run-1")).status == "running"
        async with node(postgres_url, "gpu-late", pools=["gpu"]) as gpu:
            await gpu.pipelines.register(pipeline("gpu-late"))
            result = await outcome(run)

    assert result.results["infer"] == Answer("HI ON CPU", "gpu-late")


async def test_an_attempt_that_times_out_withdraws_its_task(postgres_url: str) -> None:
    async with node(postgres_url, "cpu") as cpu:
        run = await cpu.pipelines.start(pipeline("cpu", timeout=0.5), "hi", run_id="run-1")
        with pytest.raises(StepFailed, match=r"step 'infer' failed: .*timed out after 0\.5s"):
            await outcome(run)
        await anyio.sleep(0.2)  # the withdrawal is on its way as the attempt ends
        left = await tasks_left(postgres_url)

    assert left == 0  # no node will run a request nobody waits for


def test_a_pool_on_a_tool_step_or_an_empty_pool_name_is_refused() -> None:
    with pytest.raises(PipelineDefinitionError, match="step 'send': pool= places an actor "
                                                      "step's workers"):
        Pipeline("p", [Step("send", tool="send", args=lambda r, i: {}, pool="gpu")])
    with pytest.raises(PipelineDefinitionError, match="step 'infer': pool= places an actor "
                                                      "step's workers; a tool step \\(or a tool "
                                                      "fallback\\)"):
        Pipeline("p", [Step("infer", roost.Actor, pool="gpu", fallback="send",
                            args=lambda r, i: {})])
    with pytest.raises(PipelineDefinitionError, match="pool must be a non-empty string"):
        Pipeline("p", [Step("infer", roost.Actor, pool="")])


# A node serving "gpu" whose worker for `infer` prints "serving" and never answers.
_DOOMED = textwrap.dedent("""
    import asyncio, sys
    import roost
    from roost import Pipeline, RunStep, Step

    class Stuck(roost.Actor):
        async def receive(self, message: RunStep) -> str:
            print("serving", flush=True)
            await asyncio.sleep(3600)
            return "never"

    async def main(url: str) -> None:
        async with roost.ActorSystem(store=url, node_id="gpu-doomed", lease=2.0, pools=["gpu"],
                                     log_level="critical") as system:
            await system.pipelines.register(Pipeline("chat", [
                Step("prep", Stuck), Step("infer", Stuck, after="prep", pool="gpu"),
                Step("post", Stuck, after="infer")], input_type=str))
            await asyncio.Event().wait()

    asyncio.run(main(sys.argv[1]))
""")


def start_doomed(folder: Path, url: str) -> tuple[subprocess.Popen[bytes], Path]:
    """The doomed node's process; its output goes to a file (a pipe nobody reads could fill)."""
    script, out = folder / "doomed.py", folder / "doomed.out"
    script.write_text(_DOOMED)
    with out.open("wb") as output:
        process = subprocess.Popen([sys.executable, str(script), url], stdout=output,
                                   env={**os.environ, "PYTHONPATH": os.getcwd()})
    return process, out


async def test_a_task_whose_serving_node_was_killed_is_run_by_another_node_of_the_pool(
        postgres_url: str, tmp_path: Path) -> None:
    doomed, out = start_doomed(tmp_path, postgres_url)
    try:
        async with node(postgres_url, "cpu") as cpu:
            run = await cpu.pipelines.start(pipeline("cpu", timeout=30.0), "hi", run_id="run-1")
            with anyio.fail_after(20):  # until the doomed node runs the request
                while True:
                    if b"serving" in out.read_bytes():
                        break
                    await anyio.sleep(0.05)
            doomed.send_signal(signal.SIGKILL)
            async with node(postgres_url, "gpu-2", pools=["gpu"]) as gpu:
                await gpu.pipelines.register(pipeline("gpu-2"))
                result = await outcome(run)
    finally:
        doomed.kill()
        doomed.wait()

    assert result.results["infer"] == Answer("HI ON CPU", "gpu-2")
