"""The console API fuzzed from its own OpenAPI document (schemathesis): every operation the
served `/api/v1/openapi.json` describes gets valid and invalid requests, and every answer
must keep the document's promises.

A real system (runs completed, failed, and waiting at gate `send`; a tool with an open
circuit breaker; a dead letter) is served on 127.0.0.1 from a background thread's event
loop, since schemathesis sends real HTTP from these synchronous tests. Path parameters
are generated or drawn from ids that exist, so 404s and real records (and real decisions
on the waiting gates) are both exercised; ids too long to be a store key are sent once
each. Every answer must: not be a 5xx; have a status the document lists and, for 2xx, a
body its schema accepts; for an error, be `application/problem+json` with a non-empty
`detail`; for a valid request, not be refused for a field the document allows; and
without the token, be refused. Derandomized: the same requests every run.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core import NOT_SET
from schemathesis.core.failures import FailureGroup

import roost
from roost.console import create_app, openapi
from tests.console.conftest import TOKEN, bearer, send_email, support

EXAMPLES = 15
PROBLEM = "application/problem+json"
WAITING = ("angry-1", "angry-2", "angry-3")
RUN_IDS = ("done", "broken", *WAITING)
TOOLS = ("send_email", "flaky")
#: An id longer than a store key may be (LMDB's 511 bytes): no run, gate or tool has it.
OVERSIZED = "r" * 600
DECISION = {"decision": "approve", "by": "fuzzer"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, ignored_auth]
#: Every operation of the document, as (method, path), for the tests' parameters.
OPERATIONS = [(method.upper(), path) for path, item in openapi.document()["paths"].items()
              for method in item]
WITH_PATH_PARAMETERS = [(method, path) for method, path in OPERATIONS if "{" in path]


@roost.tool(breaker=roost.Breaker(failures=1, cooldown=60.0))
async def flaky(order: str) -> str:
    raise ConnectionError(f"the orders service is down (order {order})")


class Sink(roost.Actor):
    async def receive(self, message: Any) -> None:
        pass


class Server:
    """A real system and its console, served on 127.0.0.1 from a background thread's loop
    (schemathesis sends real HTTP from the synchronous tests)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.base = ""
        self.failure: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="console-under-fuzz")

    def __enter__(self) -> Server:
        self._thread.start()
        assert self._ready.wait(30), "the console did not start within 30 s"
        assert self.failure is None, f"the console failed to start: {self.failure!r}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert self.failure is None, f"the console's loop failed: {self.failure!r}"

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:
            self.failure = error
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with roost.ActorSystem(store=self.folder, tracing=True, log_format="json",
                                     log_level="warning") as system:
            await _populate(system)
            runner = web.AppRunner(create_app(system, token=TOKEN), access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, "127.0.0.1", 0).start()
                host, port = runner.addresses[0][:2]
                self.base = f"http://{host}:{port}"
                self._ready.set()
                await self._stop.wait()
            finally:
                await runner.cleanup()


async def _populate(system: Any) -> None:
    """Runs `done`, `broken` and three waiting at gate `send`; the open breaker of tool
    `flaky`; one dead letter."""
    system.tools.register(send_email)
    system.tools.register(flaky)
    pipeline = support()
    await (await system.pipelines.start(pipeline, "a happy customer", run_id="done")).result()
    try:
        await (await system.pipelines.start(pipeline, "boom", run_id="broken")).result()
    except roost.StepFailed:
        pass
    for run_id in WAITING:
        await (await system.pipelines.start(pipeline, "an angry customer",
                                            run_id=run_id)).result()
    try:
        await system.tools.call("flaky", order="A-1")
    except roost.RoostError:
        pass  # one failure opens its breaker
    sink = await system.start(Sink, name="sink")
    await system.stop(sink)
    sink.tell("a letter nobody reads")


class Served(msgspec.Struct):
    """The console's address and the schema loaded from it."""

    base: str
    schema: Any


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The console of a real system on a free port, and the schema it serves."""
    with Server(tmp_path_factory.mktemp("fuzz") / "store") as server:
        schema = schemathesis.openapi.from_url(f"{server.base}/api/v1/openapi.json",
                                               headers=bearer(), timeout=10)
        yield Served(server.base, schema)


def _known(operation: Any) -> list[dict[str, str]]:
    """Path parameters that exist (the waiting gates most of all), and near misses."""
    names = {parameter.name for parameter in operation.path_parameters}
    if names == {"run_id"}:
        return [{"run_id": run_id} for run_id in RUN_IDS]
    if names == {"run_id", "gate"}:
        return [*({"run_id": run_id, "gate": "send"} for run_id in WAITING),
                {"run_id": "done", "gate": "send"}, {"run_id": WAITING[0], "gate": "send/extra"}]
    if names == {"tool"}:
        return [{"tool": tool} for tool in TOOLS]
    return []


def _oversized(operation: Any) -> list[dict[str, str]]:
    """`_known` path parameters with each in turn too long to be a store key."""
    return [{**values, name: OVERSIZED} for values in _known(operation)[:1] for name in values]


def _strategy(operation: Any, mode: GenerationMode) -> st.SearchStrategy[Any]:
    """Cases for `operation`, path parameters generated or `_known`. A valid decision from a
    token client names who decides (the document says `by` is required then), so positive
    decisions always carry one."""
    cases = operation.as_strategy(generation_mode=mode)
    known = _known(operation)
    if known:
        cases = st.one_of(cases, st.sampled_from(known).flatmap(
            lambda values: operation.as_strategy(generation_mode=mode, path_parameters=values)))
    if mode is GenerationMode.POSITIVE and operation.body:
        cases = cases.map(_with_by)
    return cases


def _with_by(case: Any) -> Any:
    """`case` with a non-empty `by` in its body (who decides, for the audit trail)."""
    if isinstance(case.body, dict) and not (isinstance(case.body.get("by"), str)
                                            and case.body["by"].strip()):
        case.body["by"] = "fuzzer"
    return case


def _problem_details(response: Any, case: Any) -> None:
    """An error answer is problem+json (RFC 9457) with a `detail` that says what was wrong."""
    if response.status_code < 400:
        return
    where = f"{case.method} {case.formatted_path} -> {response.status_code}"
    [content_type] = response.headers.get("content-type", [""])  # lowercase names, value lists
    content_type = content_type.split(";")[0].strip()
    assert content_type == PROBLEM, f"{where}: an error must be {PROBLEM}, not {content_type!r}"
    body = response.json()
    assert body["status"] == response.status_code, f"{where}: the body's status is {body}"
    assert isinstance(body.get("detail"), str) and body["detail"].strip(), (
        f"{where}: an error needs a non-empty detail: {body}")


def _documented_fields_accepted(response: Any, case: Any) -> None:
    """A body the document allows is not refused for its shape: a field the request schema
    permits (it sets no `additionalProperties: false`) is no `unknown field`."""
    if response.status_code != 422:
        return
    errors = response.json().get("errors", {})
    unknown = sorted(name for name, message in errors.items() if "unknown field" in message)
    assert not unknown, (
        f"{case.method} {case.formatted_path} -> 422: refuses fields {unknown} that the "
        f"document's request schema allows; the schema should say additionalProperties: "
        f"false (or the API accept them): {response.text[:300]}")


def _exchange(served: Served, session: requests.Session, case: Any, checks: list[Any],
              positive: bool) -> None:
    """Send `case` and hold its answer to the document."""
    response = case.call(base_url=served.base, session=session, headers=bearer(), timeout=10)
    case.validate_response(response, checks=checks)
    _problem_details(response, case)
    if positive:
        _documented_fields_accepted(response, case)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=lambda mode: mode.value)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_answer_keeps_the_documents_promises(served: Served, method: str, path: str,
                                                   mode: GenerationMode) -> None:
    operation = served.schema[path][method]
    positive = mode is GenerationMode.POSITIVE
    checks = [*CHECKS, *(() if positive else (negative_data_rejection,))]

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=_strategy(operation, mode))
    def fuzz(case: Any) -> None:
        _exchange(served, session, case, checks, positive)

    with requests.Session() as session:
        fuzz()


@pytest.mark.parametrize(("method", "path"), WITH_PATH_PARAMETERS,
                         ids=[f"{m} {p}" for m, p in WITH_PATH_PARAMETERS])
def test_ids_that_exist_or_cannot_exist_get_documented_answers(served: Served, method: str,
                                                               path: str) -> None:
    operation = served.schema[path][method]
    failures = []
    with requests.Session() as session:
        for values in [*_known(operation), *_oversized(operation)]:
            body = dict(DECISION) if operation.body else NOT_SET
            case = operation.Case(path_parameters=values, body=body)
            try:
                _exchange(served, session, case, CHECKS, positive=True)
            except (AssertionError, FailureGroup) as error:  # one failure, or several
                failures.append(f"{method} {path} with {_short(values)}: {error}")

    assert not failures, "\n\n".join(failures)


def _short(values: dict[str, str]) -> dict[str, str]:
    return {name: value if len(value) <= 20 else f"{value[:8]}...({len(value)} chars)"
            for name, value in values.items()}


def test_the_served_document_is_the_one_fuzzed(served: Served) -> None:
    answer = requests.get(f"{served.base}/api/v1/openapi.json", headers=bearer(), timeout=10)

    assert answer.json() == msgspec.json.decode(openapi.document_json())
