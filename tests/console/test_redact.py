"""A system's `redact` hook on the console: the run page and `GET /api/v1/runs/{id}` show a
run's input, step results and errors as its trace keeps them, passed through the same hook,
so the console never shows what the hook keeps out of the trace. A hook that fails shows the
tracer's placeholder, never the value and never an internal error.
"""

from __future__ import annotations

import html
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

import roost
from roost.console import create_app
from roost.storage import Delete
from tests.console.conftest import TOKEN, bearer

pytestmark = pytest.mark.anyio

SECRET = "sk-secret-0123"
MASKED = "***"


def mask(name: str, value: Any) -> Any:
    """A redact hook that masks SECRET wherever it appears in a payload."""
    if isinstance(value, dict):
        return {key: mask(name, item) for key, item in value.items()}
    if isinstance(value, list):
        return [mask(name, item) for item in value]
    return value.replace(SECRET, MASKED) if isinstance(value, str) else value


def broken(name: str, value: Any) -> Any:
    raise ValueError("the hook has a bug")


class Caller(roost.Actor):
    async def receive(self, message: roost.RunStep) -> Any:
        return {"api_key": SECRET, "answer": "forty-two"}


class Quoter(roost.Actor):
    """Fails quoting what it was given, as a client library's error often does."""

    async def receive(self, message: roost.RunStep) -> Any:
        raise RuntimeError(f"the service refused key {message.input['password']}")


class Served:
    """A system redacting with a hook, its console's client, and the run `leaky` it made."""

    def __init__(self, system: Any, client: Any) -> None:
        self.system = system
        self.client = client

    async def run_json(self) -> Any:
        response = await self.client.get("/api/v1/runs/leaky", headers=bearer())
        assert response.status == 200, await response.text()
        return await response.json()

    async def run_page(self) -> str:
        response = await self.client.get("/runs/leaky", headers=bearer())
        assert response.status == 200, await response.text()
        return html.unescape(await response.text())

    async def span_attributes(self, name: str) -> dict[str, Any]:
        response = await self.client.get("/api/v1/runs/leaky/trace", headers=bearer())
        assert response.status == 200, await response.text()
        [span] = [s for s in (await response.json())["spans"] if s["name"] == name]
        attributes: dict[str, Any] = span["attributes"]
        return attributes


def console_with(redact: Callable[[str, Any], Any]) -> Callable[[Path], Any]:
    """A fixture: a console over a system redacting with `redact`, after run `leaky`
    (input and result both hold SECRET)."""
    async def fixture(tmp_path: Path) -> AsyncIterator[Served]:
        async with roost.ActorSystem(store=tmp_path / "store", redact=redact) as system:
            pipeline = roost.Pipeline("leaky", [roost.Step("call", Caller)])
            run = await system.pipelines.start(
                pipeline, input={"password": SECRET, "user": "ann"}, run_id="leaky")
            await run.result()
            failing = roost.Pipeline("quoting", [roost.Step("call", Quoter)])
            quoted = await system.pipelines.start(failing, input={"password": SECRET},
                                                  run_id="quoted")
            with pytest.raises(roost.StepFailed):
                await quoted.result()
            async with TestClient(TestServer(create_app(system, token=TOKEN),
                                             host="127.0.0.1")) as client:
                yield Served(system, client)
    return pytest.fixture(fixture)


masked = console_with(mask)
failing = console_with(broken)


async def test_the_run_api_shows_input_and_results_redacted_as_the_trace_keeps_them(
        masked: Served) -> None:
    view = await masked.run_json()

    assert view["input"] == {"password": MASKED, "user": "ann"}
    assert [(s["name"], s["result"]) for s in view["steps"]] == [
        ("call", {"api_key": MASKED, "answer": "forty-two"})]
    assert view["input"] == (await masked.span_attributes("run leaky"))["run.input"]
    assert view["steps"][0]["result"] == (await masked.span_attributes("step call"))["step.output"]


async def test_the_run_page_shows_input_and_results_redacted(masked: Served) -> None:
    page = await masked.run_page()

    assert SECRET not in page
    assert '"password": "***"' in page and '"api_key": "***"' in page
    assert '"answer": "forty-two"' in page


async def test_results_read_from_the_run_record_are_redacted_too(masked: Served) -> None:
    store = masked.system.store
    keys = [key async for key, _ in store.scan("checkpoints", prefix=b"leaky\x00")]
    await store.commit([Delete("checkpoints", key) for key in keys])  # as pruning leaves it

    view = await masked.run_json()

    assert [(s["name"], s["result"]) for s in view["steps"]] == [
        ("call", {"api_key": MASKED, "answer": "forty-two"})]
    assert SECRET not in await masked.run_page()


async def test_a_failing_hook_shows_the_tracers_placeholder_and_never_the_value(
        failing: Served) -> None:
    view = await failing.run_json()
    page = await failing.run_page()

    placeholder = {"roost.redaction_failed": "ValueError"}
    assert view["input"] == placeholder == (await failing.span_attributes("run leaky"))["run.input"]
    assert [s["result"] for s in view["steps"]] == [placeholder]
    assert SECRET not in page and '"roost.redaction_failed": "ValueError"' in page


async def test_a_runs_error_is_shown_redacted_as_its_spans_keep_it(masked: Served) -> None:
    response = await masked.client.get("/api/v1/runs/quoted", headers=bearer())
    view = await response.json()
    page = await masked.client.get("/runs/quoted", headers=bearer())
    trace = await masked.client.get("/api/v1/runs/quoted/trace", headers=bearer())

    refused = f"the service refused key {MASKED}"
    assert view["run"]["error"].endswith(refused)
    assert [s["error"] for s in view["steps"] if s["name"] == "call"] == [view["run"]["error"]]
    assert SECRET not in html.unescape(await page.text())
    assert SECRET not in await trace.text()
    assert refused in {span["error_message"] for span in (await trace.json())["spans"]}
