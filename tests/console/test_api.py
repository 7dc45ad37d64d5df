"""The console's JSON API (roost/console/api.py) and its OpenAPI document (openapi.py), through
aiohttp's test client against a real system: runs `done` (its result holds a <script>),
`broken` (failed) and `angry` (waiting at gate `send`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

import roost
from roost.console import api, create_app, serve
from roost.console.forms import MAX_DEPTH
from roost.errors import ConfigurationError, ExtraNotInstalled
from tests.console.conftest import TOKEN, XSS, Console, bearer, send_email, send_raw, support

pytestmark = pytest.mark.anyio

PROBLEM = "application/problem+json"
LIVE_ONLY = [("GET", "/api/v1/system/actors"), ("GET", "/api/v1/system/breakers"),
             ("POST", "/api/v1/system/breakers/flaky/reset"),
             ("GET", "/api/v1/system/dead-letters"), ("GET", "/metrics")]


async def get(console: Console, path: str, **params: Any) -> Any:
    """GET `path` with the token; the JSON answer (asserting it was a 200)."""
    response = await console.client.get(path, params=params, headers=bearer())
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def problem(response: Any, status: int) -> dict[str, Any]:
    """The problem+json body of `response`, asserting its status."""
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body: dict[str, Any] = await response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


async def post_decision(console: Console, gate: str = "send", run_id: str = "angry",
                        **body: Any) -> Any:
    return await console.client.post(f"/api/v1/gates/{run_id}/{gate}/decision", json=body,
                                     headers=bearer())


# --- runs -----------------------------------------------------------------------------


async def test_runs_are_listed_with_their_status_steps_and_filters(console: Console) -> None:
    page = await get(console, "/api/v1/runs")
    statuses = {row["run_id"]: row["status"] for row in page["items"]}

    assert statuses == {"done": "completed", "broken": "failed", "angry": "waiting"}
    assert page["next_cursor"] is None
    done = next(row for row in page["items"] if row["run_id"] == "done")
    assert done["pipeline"] == "support" and done["seconds"] >= 0
    # The step a run failed at ran; the step waiting at a gate did not.
    assert {row["run_id"]: row["steps"] for row in page["items"]} == {
        "done": 2, "broken": 1, "angry": 1}
    assert [r["run_id"] for r in (await get(console, "/api/v1/runs", status="failed"))["items"]] \
        == ["broken"]
    assert [r["run_id"] for r in (await get(console, "/api/v1/runs", text="ANGR"))["items"]] \
        == ["angry"]
    assert (await get(console, "/api/v1/runs", pipeline="other"))["items"] == []
    assert (await get(console, "/api/v1/runs", since="4102444800"))["items"] == []
    assert len((await get(console, "/api/v1/runs", until="4102444800"))["items"]) == 3


async def test_runs_come_a_page_at_a_time_following_the_cursor(console: Console) -> None:
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": "1"} | ({"cursor": cursor} if cursor else {})
        page = await get(console, "/api/v1/runs", **params)
        seen += [row["run_id"] for row in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert sorted(seen) == ["angry", "broken", "done"] and pages == 3


async def test_a_run_shows_its_steps_checkpoints_and_gates(console: Console) -> None:
    view = await get(console, "/api/v1/runs/angry")

    assert view["run"]["status"] == "waiting" and view["input"] == "an angry customer"
    steps = {step["name"]: step for step in view["steps"]}
    assert steps["draft"]["outcome"] == "completed"
    assert steps["draft"]["result"]["text"] == "reply to an angry customer"
    assert view["checkpoints"] and view["checkpoints"][-1]["bytes"] > 0
    assert [(g["gate"], g["status"]) for g in view["gates"]] == [("send", "pending")]


async def test_a_failed_run_names_its_failed_step_and_error(console: Console) -> None:
    view = await get(console, "/api/v1/runs/broken")

    assert view["run"]["failed_step"] == "draft"
    assert "the model answered nonsense" in view["run"]["error"]


async def test_an_unknown_run_is_a_404_problem_naming_it(console: Console) -> None:
    for path in ("/api/v1/runs/no-such-run", "/api/v1/runs/no-such-run/trace"):
        body = await problem(await console.client.get(path, headers=bearer()), 404)

        assert "no-such-run" in body["detail"] and body["instance"] == path


async def test_a_runs_trace_has_its_spans_as_a_tree(console: Console) -> None:
    trace = await get(console, "/api/v1/runs/done/trace")

    names = {span["span_id"]: span["name"] for span in trace["spans"]}
    assert trace["run_id"] == "done"
    assert [names[root] for root in trace["roots"]] == ["run support"]
    assert {"step draft", "step send"} <= set(names.values())
    assert all(child in names for children in trace["children"].values() for child in children)


async def test_the_trace_of_a_system_without_tracing_is_a_404_problem(tmp_path: Path) -> None:
    async with roost.ActorSystem(store=tmp_path / "store", tracing=False) as system:
        system.tools.register(send_email)
        await (await system.pipelines.start(support(), "a calm customer", run_id="quiet")).result()
        app = create_app(system, token=TOKEN)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            response = await client.get("/api/v1/runs/quiet/trace", headers=bearer())
            body = await problem(response, 404)

    assert "tracing off" in body["detail"] and "quiet" in body["detail"]


# --- query parameters -----------------------------------------------------------------


@pytest.mark.parametrize(("path", "params", "named"), [
    ("/api/v1/runs", {"limit": "0"}, "limit"),
    ("/api/v1/runs", {"limit": "1001"}, "limit"),
    ("/api/v1/runs", {"limit": "ten"}, "limit"),
    ("/api/v1/runs", {"since": "yesterday"}, "since"),
    ("/api/v1/runs", {"until": "nan"}, "until"),
    ("/api/v1/runs", {"status": "sleeping"}, "status"),
    ("/api/v1/runs", {"colour": "red"}, "colour"),
    ("/api/v1/gates", {"status": "open"}, "status"),
    ("/api/v1/gates", {"older_than": "-5"}, "older_than"),
    ("/api/v1/gates", {"limit": "-1"}, "limit"),
    ("/api/v1/system/dead-letters", {"limit": "5000"}, "limit"),
])
async def test_a_bad_query_parameter_is_a_400_problem_naming_it(
        console: Console, path: str, params: dict[str, str], named: str) -> None:
    response = await console.client.get(path, params=params, headers=bearer())
    body = await problem(response, 400)

    assert named in body["detail"] and named in body["errors"]


@pytest.mark.parametrize(("path", "name", "values"), [
    ("/api/v1/runs", "limit", ("1", "2")),
    ("/api/v1/runs", "status", ("completed", "failed")),
    ("/api/v1/gates", "older_than", ("1", "2")),
    ("/api/v1/system/dead-letters", "limit", ("5", "5")),
])
async def test_a_query_parameter_given_twice_is_a_400_problem_naming_it(
        console: Console, path: str, name: str, values: tuple[str, str]) -> None:
    response = await console.client.get(path, params=[(name, value) for value in values],
                                        headers=bearer())
    body = await problem(response, 400)

    assert body["errors"] == {
        name: f"query parameter {name!r} is given more than once; give it once"}


@pytest.mark.parametrize("path", ["/api/v1/runs", "/api/v1/gates"])
@pytest.mark.parametrize("cursor", ["!!!!", "AA", "not a cursor at all"])
async def test_a_cursor_the_console_did_not_give_out_is_a_400_problem(
        console: Console, path: str, cursor: str) -> None:
    response = await console.client.get(path, params={"cursor": cursor}, headers=bearer())
    body = await problem(response, 400)

    assert body["title"] == "Bad cursor" and "start again without a cursor" in body["detail"]


async def test_an_unknown_api_route_is_a_404_problem(console: Console) -> None:
    body = await problem(await console.client.get("/api/v1/nothing", headers=bearer()), 404)

    assert "/api/v1/openapi.json" in body["detail"]


# --- gates ----------------------------------------------------------------------------


async def test_the_inbox_lists_pending_gates_with_what_the_decision_needs(
        console: Console) -> None:
    page = await get(console, "/api/v1/gates")

    [gate] = page["items"]
    assert (gate["run_id"], gate["gate"], gate["status"]) == ("angry", "send", "pending")
    assert gate["assignees"] == ["support"] and gate["input_type"] == "ReplyEdit"
    assert set(gate["input_schema"]["$defs"]["ReplyEdit"]["required"]) == {"to", "body"}
    assert page["next_cursor"] is None
    assert len((await get(console, "/api/v1/gates", assignee="support"))["items"]) == 1
    assert (await get(console, "/api/v1/gates", assignee="billing"))["items"] == []
    assert (await get(console, "/api/v1/gates", pipeline="other"))["items"] == []
    assert (await get(console, "/api/v1/gates", older_than="3600"))["items"] == []
    assert (await get(console, "/api/v1/gates", status="decided"))["items"] == []


async def test_one_gate_is_read_by_run_and_name(console: Console) -> None:
    gate = await get(console, "/api/v1/gates/angry/send")

    assert gate["reason"] == f"an angry customer {XSS}"
    assert [event["what"] for event in gate["history"]] == ["opened"]


async def test_a_gate_name_may_hold_a_slash_and_an_unknown_one_is_a_404_naming_it(
        console: Console) -> None:
    for response in (await console.client.get("/api/v1/gates/angry/check/review",
                                              headers=bearer()),
                     await post_decision(console, "check/review", decision="approve", by="ada")):
        body = await problem(response, 404)

        assert "check/review" in body["detail"]


async def test_an_approval_resumes_the_run_and_it_completes(console: Console) -> None:
    response = await post_decision(console, decision="approve", by="ada", comment="fine")

    assert response.status == 200, await response.text()
    gate = await response.json()
    assert (gate["status"], gate["decision"], gate["by"], gate["comment"]) == \
        ("decided", "approve", "ada", "fine")
    outcome = await console.system.pipelines.outcome("angry", through_gates=True)
    assert outcome.status == "completed"
    assert outcome.results["send"] == "sent to customer@example.org"
    decided = await get(console, "/api/v1/gates", status="decided")
    assert [g["gate"] for g in decided["items"]] == ["send"]
    assert (await get(console, "/api/v1/gates"))["items"] == []
    assert (await get(console, "/api/v1/runs/angry"))["run"]["status"] == "completed"


async def test_an_edit_that_fits_the_gates_input_type_is_recorded(console: Console) -> None:
    edit = {"to": "boss@example.org", "body": "calm words"}
    response = await post_decision(console, decision="edit", input=edit, by="ada")

    assert response.status == 200, await response.text()
    assert (await response.json())["input"] == edit
    outcome = await console.system.pipelines.outcome("angry", through_gates=True)
    assert outcome.status == "completed"


async def test_an_edit_that_does_not_fit_the_input_type_is_a_422_naming_the_field(
        console: Console) -> None:
    response = await post_decision(console, decision="edit", input={"to": "x@example.org"},
                                   by="ada")
    body = await problem(response, 422)

    assert "ReplyEdit" in body["detail"] and "body" in body["detail"]
    assert (await get(console, "/api/v1/gates/angry/send"))["status"] == "pending"


async def test_deciding_again_the_same_way_changes_nothing_but_differently_is_a_409(
        console: Console) -> None:
    first = await post_decision(console, decision="reject", by="ada")
    again = await post_decision(console, decision="reject", by="ada")
    other = await post_decision(console, decision="approve", by="bob")

    assert first.status == again.status == 200
    body = await problem(other, 409)
    assert "reject" in body["detail"]
    assert (await get(console, "/api/v1/gates/angry/send"))["by"] == "ada"


async def test_a_token_client_must_say_who_decides(console: Console) -> None:
    body = await problem(await post_decision(console, decision="approve"), 422)

    assert "by" in body["errors"] and "audit trail" in body["detail"]


async def test_an_unknown_decision_is_a_422_listing_the_allowed_ones(console: Console) -> None:
    body = await problem(await post_decision(console, decision="maybe", by="ada"), 422)

    assert "maybe" in body["detail"] and "approve" in body["detail"]


async def test_a_decision_must_be_sent_as_json(console: Console) -> None:
    response = await console.client.post("/api/v1/gates/angry/send/decision",
                                         data="decision=approve", headers=bearer() | {
                                             "Content-Type": "text/plain"})
    body = await problem(response, 415)

    assert "application/json" in body["detail"]


async def test_malformed_json_is_a_400_naming_the_position(console: Console) -> None:
    response = await console.client.post("/api/v1/gates/angry/send/decision",
                                         data='{"decision": "approve",}', headers=bearer() | {
                                             "Content-Type": "application/json"})
    body = await problem(response, 400)

    assert "byte 23" in body["detail"]


@pytest.mark.parametrize(("sent", "fields"), [
    ([1, 2], {"body"}),
    ({"by": "ada"}, {"decision"}),
    ({"decision": 1, "comment": 2, "by": ["ada"], "mood": "x"},
     {"decision", "comment", "by", "mood"}),
])
async def test_a_body_that_is_not_a_decision_is_a_422_naming_each_field(
        console: Console, sent: Any, fields: set[str]) -> None:
    response = await console.client.post("/api/v1/gates/angry/send/decision", json=sent,
                                         headers=bearer())
    body = await problem(response, 422)

    assert set(body["errors"]) == fields


@pytest.mark.parametrize("depth", [MAX_DEPTH, 100_000])
async def test_a_decision_nested_deeper_than_the_console_reads_is_a_422_naming_the_body(
        console: Console, depth: int) -> None:
    body = b'{"decision": "edit", "by": "ada", "input": ' + b"[" * depth + b"]" * depth + b"}"

    response = await console.client.post(
        "/api/v1/gates/angry/send/decision", data=body,
        headers=bearer() | {"Content-Type": "application/json"})

    answer = await problem(response, 422)
    assert answer["title"] == "Invalid body"
    assert answer["errors"] == {"body": f"the body nests arrays and objects more than "
                                        f"{MAX_DEPTH} deep; send flatter data"}
    assert (await console.system.gates.get("angry", "send")).status == "pending"


async def test_a_decision_nested_as_deep_as_the_console_reads_is_judged_by_the_gate(
        console: Console) -> None:
    depth = MAX_DEPTH - 1  # the body's object is one level more
    body = b'{"decision": "edit", "by": "ada", "input": ' + b"[" * depth + b"]" * depth + b"}"

    response = await console.client.post(
        "/api/v1/gates/angry/send/decision", data=body,
        headers=bearer() | {"Content-Type": "application/json"})

    answer = await problem(response, 422)
    assert answer["title"] == "Invalid decision" and "ReplyEdit" in answer["detail"]


async def test_an_oversize_body_is_a_413_problem(console: Console) -> None:
    huge = {"decision": "edit", "by": "ada", "input": {"to": "x", "body": "y" * 300_000}}
    response = await console.client.post("/api/v1/gates/angry/send/decision",
                                         data=msgspec.json.encode(huge), headers=bearer() | {
                                             "Content-Type": "application/json"})

    await problem(response, 413)
    assert (await get(console, "/api/v1/gates/angry/send"))["status"] == "pending"


# --- what a run carries is data, never markup -----------------------------------------


async def test_a_script_in_a_runs_data_comes_back_as_an_inert_json_string(
        console: Console) -> None:
    for path in ("/api/v1/runs/done", "/api/v1/gates/angry/send", "/api/v1/runs/done/trace"):
        response = await console.client.get(path, headers=bearer())
        raw = await response.text()

        assert response.content_type == "application/json"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "<script>" not in raw and "\\u003cscript\\u003e" in raw
    view = await get(console, "/api/v1/runs/done")
    assert {s["name"]: s for s in view["steps"]}["draft"]["result"]["note"] == XSS


# --- the live system ------------------------------------------------------------------


@roost.tool(read_only=True, breaker=roost.Breaker(failures=1))
async def flaky() -> str:
    raise roost.TransientToolError("the mail server is down")


class Sink(roost.Actor):
    async def receive(self, message: Any) -> None:
        return None


async def test_the_actor_tree_shows_state_restarts_and_mailbox_depth(console: Console) -> None:
    await console.system.start(Sink, name="sink")
    tree = (await get(console, "/api/v1/system/actors"))["items"]

    actors = {actor["path"]: actor for actor in tree}
    assert actors["/sink"] == {"path": "/sink", "name": "sink", "actor": "Sink",
                               "state": "running", "restarts": 0, "mailbox": 0, "busy": False,
                               "children": []}
    assert "/tool-proxy" in actors


async def test_breakers_show_their_state_and_last_error_and_reset(console: Console) -> None:
    console.system.tools.register(flaky)
    with pytest.raises(roost.ToolError):
        await console.system.tools.call("flaky")

    [breaker] = (await get(console, "/api/v1/system/breakers"))["items"]
    assert (breaker["tool"], breaker["state"], breaker["failures"]) == ("flaky", "open", 1)
    assert "the mail server is down" in breaker["last_error"]
    assert breaker["opened_at"] is not None and breaker["retry_at"] > breaker["opened_at"]

    response = await console.client.post("/api/v1/system/breakers/flaky/reset", headers=bearer())
    assert response.status == 200
    assert (await response.json())["state"] == "closed"
    assert console.system.tools.breaker("flaky").state == "closed"


async def test_resetting_a_tool_without_a_breaker_is_a_404_problem(console: Console) -> None:
    response = await console.client.post("/api/v1/system/breakers/send_email/reset",
                                         headers=bearer())
    body = await problem(response, 404)

    assert "send_email" in body["detail"]


async def test_dead_letters_show_who_and_why_but_never_the_message(console: Console) -> None:
    sink = await console.system.start(Sink, name="sink")
    await console.system.stop(sink)
    sink.tell({"secret": "the customer's card number"})

    page = await get(console, "/api/v1/system/dead-letters")

    [letter] = page["items"]
    assert (letter["reason"], letter["recipient"], letter["message_type"]) == \
        ("actor_stopped", "/sink", "dict")
    assert page["counts"] == {"actor_stopped": 1}
    assert "card number" not in str(page)


async def test_metrics_are_prometheus_text(console: Console) -> None:
    response = await console.client.get("/metrics", headers=bearer())

    assert response.status == 200 and response.content_type == "text/plain"
    text = await response.text()
    assert 'roost_runs_total{pipeline="support",status="completed"} 1.0' in text


async def test_metrics_without_the_extra_are_a_501_saying_what_to_install(
        console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(system: Any) -> str:
        raise ExtraNotInstalled("Prometheus metrics", "metrics", "prometheus_client")

    monkeypatch.setattr(api, "prometheus_text", missing)
    body = await problem(await console.client.get("/metrics", headers=bearer()), 501)

    assert "roost[metrics]" in body["detail"]


async def test_a_console_over_a_store_answers_live_routes_with_a_404_problem(
        console: Console) -> None:
    app = create_app(console.system, token=TOKEN, live=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for method, path in LIVE_ONLY:
            body = await problem(await client.request(method, path, headers=bearer()), 404)

            assert "this console serves a store, not a live system" in body["detail"]
        assert (await client.get("/api/v1/runs/done", headers=bearer())).status == 200


async def test_a_console_mounted_under_a_prefix_refuses_to_start_naming_the_prefix(
        console: Console) -> None:
    # Its pages link to absolute paths (/runs, /gates): under /console every link would miss.
    service = web.Application()
    service.add_subapp("/console", create_app(console.system, token=TOKEN))
    runner = web.AppRunner(service)

    with pytest.raises(ConfigurationError, match=r"under the prefix '/console'.*a port of its own"):
        await runner.setup()
    await runner.cleanup()


async def test_a_console_added_by_domain_is_served(console: Console) -> None:
    service = web.Application()
    service.add_domain("console.localhost", create_app(console.system, token=TOKEN))
    async with TestClient(TestServer(service, host="127.0.0.1")) as client:
        answer = await client.get("/api/v1/runs/done",
                                  headers={**bearer(), "Host": "console.localhost"})

        assert answer.status == 200


# --- the OpenAPI document -------------------------------------------------------------


async def test_a_request_line_over_aiohttps_limit_is_logged_in_one_line_without_a_traceback(
        console: Console, caplog: pytest.LogCaptureFixture) -> None:
    # aiohttp answers it with its own plain-text 400 before the console's code runs.
    runner = await serve(create_app(console.system, token=TOKEN), "127.0.0.1", 0)
    try:
        host, port = runner.addresses[0][:2]
        with capture_logs() as logs:
            answer = await send_raw(host, port, b"GET /api/v1/runs?text=" + b"secret" * 2000
                                    + b" HTTP/1.1\r\nHost: console\r\n\r\n")
    finally:
        await runner.cleanup()

    assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request")
    assert [event for event in logs if event["event"] == "console_request_refused"] == [
        {"event": "console_request_refused", "status": 400, "error_type": "LineTooLong",
         "log_level": "warning"}]
    assert [record.exc_info for record in caplog.records if record.exc_info] == []
    assert "secret" not in repr(logs) + caplog.text


async def test_the_openapi_document_lists_exactly_the_routes_the_app_serves(
        console: Console) -> None:
    document = await get(console, "/api/v1/openapi.json")

    served = {(route.method.lower(), route.resource.canonical)
              for route in console.client.server.app.router.routes()
              if route.method != "HEAD" and route.resource is not None
              and (route.resource.canonical.startswith("/api/v1/")
                   or route.resource.canonical == "/metrics")}
    listed = {(method, path) for path, item in document["paths"].items() for method in item}
    assert document["openapi"] == "3.1.0"
    assert listed == served


async def test_every_reference_in_the_openapi_document_resolves(console: Console) -> None:
    document = await get(console, "/api/v1/openapi.json")

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if "$ref" in node else []
            return own + [r for v in node.values() for r in refs(v)]
        return [r for v in node for r in refs(v)] if isinstance(node, list) else []

    for ref in refs(document):
        target: Any = document
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        assert target, ref
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    decision = document["paths"]["/api/v1/gates/{run_id}/{gate}/decision"]["post"]
    assert set(decision["responses"]) >= {"200", "401", "403", "404", "409", "413", "415",
                                          "422"}
    assert "application/problem+json" in document["components"]["responses"]["NotFound"][
        "content"]
    for path, item in document["paths"].items():
        declared = {p["name"] for op in item.values() for p in op.get("parameters", [])
                    if p["in"] == "path"}
        assert declared == {part[1:-1] for part in path.split("/") if part.startswith("{")}


async def test_the_openapi_document_describes_the_problems_each_list_and_run_answers_with(
        console: Console) -> None:
    schemas = (await get(console, "/api/v1/openapi.json"))["components"]["schemas"]

    for name in ("RunPage", "GatePage", "RunView", "TraceView"):
        assert "problems" in schemas[name]["required"], name
        problems = schemas[name]["properties"]["problems"]
        assert problems["type"] == "array" and problems["items"] == {"type": "string"}
        assert "what to do" in problems["description"], name
