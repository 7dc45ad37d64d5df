"""The console's JSON API under `/api/v1/` (described at `/api/v1/openapi.json`), and
`/metrics` in the Prometheus text format.

Runs, their traces and gates come from `views`, as the pages' do; a decision goes to
`system.gates.decide` and records who decided: a browser session's signed-in name, or
the `by` a bearer-token client sends. The live system (actor tree, breakers, dead
letters, metrics) answers only on a live console. Errors are problem+json
(`problems`); lists come a page at a time with an opaque `next_cursor`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import msgspec
from aiohttp import web

from roost.console import openapi, views
from roost.console.app import LIVE, SYSTEM, query_params, session_of
from roost.console.forms import MAX_DEPTH, too_deep
from roost.console.openapi import (
    DEFAULT_LIMIT,
    GATE_STATUSES,
    MAX_LIMIT,
    RUN_STATUSES,
    ActorList,
    BreakerList,
    DeadLetterList,
    GatePage,
    RunPage,
)
from roost.console.problems import Problem, inert_json
from roost.errors import (
    ConfigurationError,
    ExtraNotInstalled,
    RecordCorrupt,
    StoreError,
    SystemNotRunning,
    TraceNotFound,
)
from roost.tracing.metrics import prometheus_text

_ENCODER = msgspec.json.Encoder(enc_hook=lambda value: f"<{type(value).__name__}>")
_DIGITS = re.compile(r"[0-9]{1,7}")
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
_DECISION_FIELDS = ("decision", "input", "comment", "by")


def add_routes(app: web.Application) -> None:
    """Add the API's routes (and `/metrics`) to `app`."""
    app.router.add_routes([
        web.get("/api/v1/openapi.json", openapi_document),
        web.get("/api/v1/runs", list_runs),
        web.get("/api/v1/runs/{run_id}", get_run),
        web.get("/api/v1/runs/{run_id}/trace", get_trace),
        web.get("/api/v1/gates", list_gates),
        web.post("/api/v1/gates/{run_id}/{gate:.+}/decision", decide),
        web.get("/api/v1/gates/{run_id}/{gate:.+}", get_gate),
        web.get("/api/v1/system/actors", list_actors),
        web.get("/api/v1/system/breakers", list_breakers),
        web.post("/api/v1/system/breakers/{tool}/reset", reset_breaker),
        web.get("/api/v1/system/dead-letters", list_dead_letters),
        web.get("/metrics", metrics),
    ])


# --- answers and query parameters -----------------------------------------------------


def _json(data: Any) -> web.Response:
    return web.Response(body=inert_json(_ENCODER.encode(data)), content_type="application/json")


def _bad(name: str, detail: str) -> Problem:
    return Problem(400, "Bad request", detail, errors={name: detail})


def _limit(query: Mapping[str, str]) -> int:
    raw = query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise _bad("limit", f"limit={raw[:40]!r} must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def _number(query: Mapping[str, str], name: str, *, minimum: float | None = None
            ) -> float | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        floor = "" if minimum is None else f" of at least {minimum:g}"
        raise _bad(name, f"{name}={raw[:40]!r} must be a number{floor} (seconds)")
    return value


def _choice(query: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    raw = query.get(name)
    if raw is not None and raw not in allowed:
        raise _bad(name, f"{name}={raw[:40]!r} is not one of {', '.join(allowed)}")
    return raw


def _live(request: web.Request) -> Any:
    """The system, if this console serves a live one."""
    if not request.app[LIVE]:
        raise Problem(404, "Not found", "this console serves a store, not a live system; the "
                                        "actor tree, breakers, dead letters and metrics are "
                                        "shown by a running system's console")
    return request.app[SYSTEM]


# --- runs -----------------------------------------------------------------------------


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=openapi.document_json(), content_type="application/json")


async def list_runs(request: web.Request) -> web.Response:
    query = query_params(request, "status", "pipeline", "since", "until", "text", "cursor",
                         "limit")
    rows, cursor, problems = await views.runs_page(
        request.app[SYSTEM], status=_choice(query, "status", RUN_STATUSES),
        pipeline=query.get("pipeline") or None, since=_number(query, "since"),
        until=_number(query, "until"), text=query.get("text") or None,
        cursor=query.get("cursor"), limit=_limit(query))
    return _json(RunPage(rows, cursor, problems))


async def get_run(request: web.Request) -> web.Response:
    return _json(await views.run_view(request.app[SYSTEM], request.match_info["run_id"]))


async def get_trace(request: web.Request) -> web.Response:
    system = request.app[SYSTEM]
    run_id = request.match_info["run_id"]
    try:
        await system.pipelines.runs.get(run_id)  # an unknown run is a RunNotFound
    except RecordCorrupt:
        pass  # the run exists; its trace is kept apart from its damaged record
    try:
        traces = system.traces
    except (ConfigurationError, SystemNotRunning):
        raise Problem(404, "Not found", f"run {run_id!r} has no trace here: this system "
                                        "records none (it runs with tracing off)") from None
    try:
        trace = await traces.get(run_id)
    except TraceNotFound:
        raise Problem(404, "Not found", f"run {run_id!r} exists but its trace is not kept in "
                                        "the store: its system ran with tracing off, or the "
                                        "trace is past the system's trace_retention") from None
    except (StoreError, UnicodeDecodeError) as error:  # a failed read, or a damaged trace key
        raise Problem(500, "Unreadable trace", f"the trace of run {run_id!r} cannot be read "
                                               f"({type(error).__name__}: {error}); "
                                               f"{views.check_advice(system.store.path)}"
                      ) from None
    return _json(views.trace_view(trace))


# --- gates ----------------------------------------------------------------------------


async def list_gates(request: web.Request) -> web.Response:
    query = query_params(request, "status", "assignee", "pipeline", "older_than", "cursor",
                         "limit")
    gates, cursor, problems = await views.gates_page(
        request.app[SYSTEM], status=_choice(query, "status", GATE_STATUSES) or "pending",
        assignee=query.get("assignee") or None, pipeline=query.get("pipeline") or None,
        older_than=_number(query, "older_than", minimum=0), cursor=query.get("cursor"),
        limit=_limit(query))
    return _json(GatePage(gates, cursor, problems))


async def get_gate(request: web.Request) -> web.Response:
    return _json(await views.one_gate(request.app[SYSTEM], request.match_info["run_id"],
                                      request.match_info["gate"]))


async def decide(request: web.Request) -> web.Response:
    """Decide a gate as the signed-in session's name, or as the token client's `by`."""
    body = _decision_body(await _json_object(request))
    session = session_of(request)
    by = session.name if session is not None else body.get("by")
    if not isinstance(by, str) or not by.strip():
        detail = "by: name who decides (a non-empty string), for the audit trail"
        raise Problem(422, "Invalid decision", detail, errors={"by": detail})
    system = request.app[SYSTEM]
    try:
        record = await system.gates.decide(
            request.match_info["run_id"], request.match_info["gate"], body["decision"],
            input=body.get("input"), by=by, comment=body.get("comment"))
    except RecordCorrupt as error:  # the gate's or its run's record: nothing was decided
        raise views.unreadable(error, system.store.path) from None
    return _json(views.gate_view(record))


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The request body, a JSON object nested at most `MAX_DEPTH` deep (a body over the
    size limit is a 413 on reading)."""
    if request.content_type != "application/json":
        raise Problem(415, "Unsupported media type", f"send the body as JSON with "
                                                     f"'Content-Type: application/json', not "
                                                     f"{request.content_type!r}")
    raw = await request.read()
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as error:
        raise Problem(400, "Malformed JSON", f"the body is not valid JSON: {error}") from None
    except RecursionError:  # nested deeper than the decoder goes
        raise _too_deep() from None
    if too_deep(body):
        raise _too_deep()
    if not isinstance(body, dict):
        detail = f"the body must be a JSON object, not {_json_type(body)}"
        raise Problem(422, "Invalid body", detail, errors={"body": detail})
    return body


def _too_deep() -> Problem:
    detail = f"the body nests arrays and objects more than {MAX_DEPTH} deep; send flatter data"
    return Problem(422, "Invalid body", detail, errors={"body": detail})


def _decision_body(body: dict[str, Any]) -> dict[str, Any]:
    """`body` checked as a `DecisionRequest`: every wrong field named in `errors`."""
    errors = {name: f"unknown field; a decision takes {', '.join(_DECISION_FIELDS)}"
              for name in body if name not in _DECISION_FIELDS}
    if not isinstance(body.get("decision"), str) or not body["decision"]:
        errors["decision"] = ("required: approve, reject or edit (done, not_done or abandon at "
                              "an outcome gate)")
    for name in ("comment", "by"):
        if body.get(name) is not None and not isinstance(body[name], str):
            errors[name] = f"must be a string or null, not {_json_type(body[name])}"
    if errors:
        raise Problem(422, "Invalid decision", "; ".join(f"{name}: {message}"
                                                         for name, message in errors.items()),
                      errors=errors)
    return body


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# --- the live system ------------------------------------------------------------------


async def list_actors(request: web.Request) -> web.Response:
    return _json(ActorList(views.actor_tree(_live(request))))


async def list_breakers(request: web.Request) -> web.Response:
    return _json(BreakerList(views.breaker_rows(_live(request))))


async def reset_breaker(request: web.Request) -> web.Response:
    system = _live(request)
    tool = request.match_info["tool"]
    views.breaker_row(system, tool)  # a 404 for a tool without a breaker
    system.tools.breaker(tool).reset()
    return _json(views.breaker_row(system, tool))


async def list_dead_letters(request: web.Request) -> web.Response:
    system = _live(request)
    limit = _limit(query_params(request, "limit"))
    return _json(DeadLetterList(views.dead_letters(system, limit=limit),
                                system.dead_letters.counts()))


async def metrics(request: web.Request) -> web.Response:
    system = _live(request)
    try:
        text = prometheus_text(system)
    except ExtraNotInstalled:
        raise Problem(501, "Not implemented", "Prometheus metrics need the optional extra: "
                                              "pip install 'roost[metrics]'") from None
    return web.Response(body=text.encode(), headers={"Content-Type": _PROMETHEUS})
