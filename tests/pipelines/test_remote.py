"""Specifications of roost/pipelines/remote.py: how a node answers a step request another node
sent to its pool, including requests it cannot run (each answer names what was wrong)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

import roost
from roost import Pipeline, RunStep, Step
from roost.errors import RemoteStepFailed
from roost.pipelines import remote
from roost.trace import TraceContext

pytestmark = pytest.mark.anyio


class Reply(msgspec.Struct):
    text: str


class Shout(roost.Actor):
    async def receive(self, message: RunStep) -> Reply:
        draft = message.results["draft"]
        assert isinstance(draft, Reply)  # decoded as the step's output type
        return Reply(f"{draft.text.upper()}! ({message.input})")


class Draft(roost.Actor):
    async def receive(self, message: RunStep) -> Reply:
        return Reply("hello")


PIPELINE = Pipeline("p", [Step("draft", Draft, output=Reply),
                          Step("shout", Shout, after="draft", pool="gpu", output=Reply)],
                    input_type=str)


def request(step: str = "shout") -> bytes:
    return remote.encode_request(
        step=step, fallback=False, input="the input", edited=False,
        results={"draft": msgspec.Raw(msgspec.msgpack.encode(Reply("hello")))}, item=None,
        index=None, attempt=1, decisions={}, trace=TraceContext("0" * 32, "1" * 16, "run-1"))


def answer(data: bytes) -> Reply:
    result: Reply = remote.decode_answer(data, run_id="run-1", step=PIPELINE.steps["shout"],
                                         pool="gpu", node="n1", output=Reply)
    return result


async def test_a_request_runs_in_the_local_pool_with_values_of_the_pipelines_types(
        tmp_path: Path) -> None:
    async with roost.ActorSystem(store=tmp_path / "s", log_level="critical") as system:
        await system.pipelines.register(PIPELINE)
        data = await system.pipelines.run_task("run-1", "p", request())

    assert answer(data) == Reply("HELLO! (the input)")


@pytest.mark.parametrize(("pipeline", "data", "named"), [
    ("p", b"\x93not a request", "StepRequestCorrupt: the request cannot be read"),
    ("other", None, "PipelineNotRegistered: pipeline 'other' is not registered"),
    ("p", "nope", "UnknownStep: pipeline 'p' has no step 'nope'"),
])
async def test_a_request_the_node_cannot_run_is_answered_with_what_was_wrong(
        tmp_path: Path, pipeline: str, data: bytes | str | None, named: str) -> None:
    sent = request(data) if isinstance(data, str) else (data or request())
    async with roost.ActorSystem(store=tmp_path / "s", log_level="critical") as system:
        await system.pipelines.register(PIPELINE)
        data_ = await system.pipelines.run_task("run-1", pipeline, sent)

    with pytest.raises(RemoteStepFailed, match=named) as failed:
        answer(data_)
    assert "step 'shout' failed on node" in str(failed.value)


def test_an_answer_that_cannot_be_read_fails_the_step_naming_the_node() -> None:
    with pytest.raises(RemoteStepFailed, match="failed on node 'n1' \\(pool 'gpu'\\): "
                                               "DecodeError: its answer cannot be read"):
        answer(b"\xc1")
