"""The console API's OpenAPI 3.1 document (served at `/api/v1/openapi.json`), as data.

The request and response bodies the API sends are the `msgspec` structs here and in
`views`; their JSON Schemas are generated from those same structs, so the document
says what the API really sends. A test checks every route the app registers is here.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from roost.console.auth import COOKIE
from roost.console.forms import MAX_DEPTH
from roost.console.views import (
    ActorView,
    BreakerRow,
    DeadLetterView,
    GateView,
    RunRow,
    RunView,
    TraceView,
)
from roost.storage import RunStatus

PROBLEM_TYPE = "application/problem+json"
#: The largest page a list gives.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 50
GATE_STATUSES = ("pending", "decided", "closed")
RUN_STATUSES = tuple(str(status) for status in RunStatus)


class RunPage(msgspec.Struct, frozen=True):
    """A page of runs, newest first; pass `next_cursor` as `cursor` for the next one."""

    items: list[RunRow]
    next_cursor: str | None
    problems: Annotated[list[str], Meta(
        description="a run record in this page's range that does not decode is left out of "
                    "`items` (and not counted in `limit`) and named here with what to do; "
                    "empty when all is well")]


class GatePage(msgspec.Struct, frozen=True):
    """A page of gates (pending: oldest first; decided or closed: latest first)."""

    items: list[GateView]
    next_cursor: str | None
    problems: Annotated[list[str], Meta(
        description="gate records left out of `items` (and not counted in `limit`) and what "
                    "to do: every page names each gate record in the store that does not "
                    "decode (its status and place are unknown), and this page's gates whose "
                    "JSON does not decode; empty when all is well")]


class ActorList(msgspec.Struct, frozen=True):
    """The live supervision tree: the top-level actors, each with its children."""

    items: list[ActorView]


class BreakerList(msgspec.Struct, frozen=True):
    """The circuit breaker of every registered tool that has one, by tool name."""

    items: list[BreakerRow]


class DeadLetterList(msgspec.Struct, frozen=True):
    """The most recent dead letters kept (newest first), and the counts by reason since start."""

    items: list[DeadLetterView]
    counts: dict[str, int]


class DecisionRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A decision on a gate. A browser session decides as its signed-in name; a bearer-token
    client names who decides in `by`."""

    decision: Annotated[Literal["approve", "reject", "edit", "done", "not_done", "abandon"], Meta(
        description="approve, reject or edit; at an outcome gate done, not_done or abandon")]
    input: Annotated[Any, Meta(
        description="an edit's data (it must fit the gate's input_schema), or with done, the "
                    "tool's result")] = None
    comment: Annotated[str | None, Meta(description="why, for the audit trail")] = None
    by: Annotated[str | None, Meta(
        description="who decides: required with a bearer token, ignored for a browser session "
                    "(its signed-in name is recorded)")] = None


class ProblemDetails(msgspec.Struct, frozen=True):
    """An error (RFC 9457): what was wrong and what to do; `errors` names fields at fault."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    errors: dict[str, str] = {}


_SCHEMAS = (RunPage, RunView, TraceView, GatePage, GateView, DecisionRequest, ActorList,
            BreakerList, BreakerRow, DeadLetterList, ProblemDetails)

#: Problem responses: HTTP status -> (component name, description).
_PROBLEMS = {
    400: ("BadRequest", "A query parameter is unknown, given twice or wrong (`errors` names "
                        "it), the cursor or the JSON syntax is wrong, or an id is longer than "
                        "the store's keys can be."),
    401: ("Unauthorized", "No credential, or a wrong one: send 'Authorization: Bearer <token>'."),
    403: ("Forbidden", "A browser session's unsafe request without its CSRF token "
                       "(X-CSRF-Token header)."),
    404: ("NotFound", "No such run, gate, trace or tool, or a live-only route on a console "
                      "that serves a store."),
    409: ("Conflict", "The gate was decided differently first, or closed."),
    413: ("PayloadTooLarge", "The body is larger than the console accepts."),
    415: ("UnsupportedMediaType", "The body is not sent as application/json."),
    422: ("UnprocessableContent", "The body is JSON but not a valid decision (`errors` names "
                                   "the fields, or `body` when it nests more than "
                                   f"{MAX_DEPTH} deep); or the record the request is about "
                                   "does not decode (title `Unreadable record`: the detail "
                                   "names it and says what to do; asking again will not "
                                   "help)."),
    500: ("InternalError", "The console failed (its log has the error's type), or a record "
                           "it needs cannot be read from the store (the detail names it)."),
    501: ("NotImplemented", "Prometheus metrics need the optional extra roost[metrics]."),
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}


_CURSOR = _query("cursor", "the `next_cursor` of the previous page", {"type": "string"})
_LIMIT = _query("limit", f"the most items on the page (1 to {MAX_LIMIT})",
                {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                 "default": DEFAULT_LIMIT})
_RUN_ID = _path("run_id", "the run's id")
_GATE = _path("gate", "the gate's name; it may contain '/' (e.g. `draft/review`)")


def _operation(operation_id: str, summary: str, ok: dict[str, Any], problems: tuple[int, ...],
               parameters: tuple[dict[str, Any], ...] = (),
               body: str | None = None) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok}
    for status in sorted({*problems, 401, 500}):
        responses[str(status)] = {"$ref": f"#/components/responses/{_PROBLEMS[status][0]}"}
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary,
                                 "responses": responses}
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _ref(body)}}}
    return operation


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _paths() -> dict[str, Any]:
    live = (404,)
    return {
        "/api/v1/openapi.json": {"get": _operation(
            "openapi", "This document.",
            {"description": "The OpenAPI 3.1 document.",
             "content": {"application/json": {"schema": {"type": "object"}}}}, ())},
        "/api/v1/runs": {"get": _operation(
            "listRuns", "Runs, newest first, filtered; a page at a time. A run record that "
                        "does not decode does not fail the answer: it is left out and "
                        "`problems` names it and says what to do.",
            _json("RunPage", "A page of runs."), (400,),
            (_query("status", "only runs with this status",
                    {"type": "string", "enum": list(RUN_STATUSES)}),
             _query("pipeline", "only runs of this pipeline", {"type": "string"}),
             _query("since", "only runs created at or after (seconds since the epoch)",
                    {"type": "number"}),
             _query("until", "only runs created before (seconds since the epoch)",
                    {"type": "number"}),
             _query("text", "only runs whose id, pipeline, error or failed step contains it",
                    {"type": "string"}),
             _CURSOR, _LIMIT))},
        "/api/v1/runs/{run_id}": {"get": _operation(
            "getRun", "One run: its row, input, steps and results, checkpoints and gates. "
                      "Missing or damaged records of the run (step results, checkpoints, gate "
                      "records) do not fail the answer: `missing_results` names the steps "
                      "whose results are not in the store and `problems` says what could not "
                      "be read and what to do. Nor does a run record that does not decode: "
                      "`run` and `input` are then null and `problems` names the record.",
            _json("RunView", "The run, with what could not be read of it."), (400, 404),
            (_RUN_ID,))},
        "/api/v1/runs/{run_id}/trace": {"get": _operation(
            "getRunTrace", "The run's trace: every span, the tree they make, and totals. A "
                           "run record that does not decode does not stop its trace being "
                           "answered (getRun names the damage), nor does a span record "
                           "that does not decode: it is left out and `problems` names it.",
            _json("TraceView", "The run's spans, with what could not be read of them."),
            (400, 404), (_RUN_ID,))},
        "/api/v1/gates": {"get": _operation(
            "listGates", "Gates: pending ones oldest first (the inbox), or the decided or "
                         "closed ones latest first (the audit trail). A gate record that does "
                         "not decode does not fail the answer: it is left out and `problems` "
                         "names it and says what to do.",
            _json("GatePage", "A page of gates."), (400,),
            (_query("status", "which gates", {"type": "string", "enum": list(GATE_STATUSES),
                                              "default": "pending"}),
             _query("assignee", "only gates assigned to this person or group",
                    {"type": "string"}),
             _query("pipeline", "only gates of runs of this pipeline", {"type": "string"}),
             _query("older_than", "only pending gates open for more than this many seconds",
                    {"type": "number", "minimum": 0}),
             _CURSOR, _LIMIT))},
        "/api/v1/gates/{run_id}/{gate}": {"get": _operation(
            "getGate", "One gate: why, for whom, what it shows, its decision and audit "
                       "trail. A gate record that does not decode is a 422 `Unreadable "
                       "record` naming it.",
            _json("GateView", "The gate."), (400, 404, 422), (_RUN_ID, _GATE))},
        "/api/v1/gates/{run_id}/{gate}/decision": {"post": _operation(
            "decideGate", "Decide a gate; the run resumes. Deciding again the same way "
                          "changes nothing. A gate or run record that does not decode is a "
                          "422 `Unreadable record` naming it (nothing is decided).",
            _json("GateView", "The decided gate."), (400, 403, 404, 409, 413, 415, 422),
            (_RUN_ID, _GATE), body="DecisionRequest")},
        "/api/v1/system/actors": {"get": _operation(
            "listActors", "Live only: the supervision tree with each actor's state, restarts "
                          "and mailbox depth.",
            _json("ActorList", "The top-level actors and their children."), live)},
        "/api/v1/system/breakers": {"get": _operation(
            "listBreakers", "Live only: each tool's circuit breaker.",
            _json("BreakerList", "The breakers."), live)},
        "/api/v1/system/breakers/{tool}/reset": {"post": _operation(
            "resetBreaker", "Live only: close a tool's breaker now and forget its failures.",
            _json("BreakerRow", "The breaker after the reset."), (403, 404),
            (_path("tool", "the tool's name"),))},
        "/api/v1/system/dead-letters": {"get": _operation(
            "listDeadLetters", "Live only: the most recent dead letters (never the messages' "
                               "content).",
            _json("DeadLetterList", "The dead letters."), (400, 404), (_LIMIT,))},
        "/metrics": {"get": _operation(
            "metrics", "Live only: the system's metrics in the Prometheus text format.",
            {"description": "Prometheus text exposition.",
             "content": {"text/plain": {"schema": {"type": "string"}}}}, (404, 501))},
    }


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the console API."""
    _, schemas = msgspec.json.schema_components(
        _SCHEMAS, ref_template="#/components/schemas/{name}")
    return {
        "openapi": "3.1.0",
        "info": {"title": "roost console API", "version": "1",
                 "description": "Runs, traces, gates and the live system of a roost "
                                "application. Errors are application/problem+json "
                                "(RFC 9457); lists paginate with opaque cursors."},
        "security": [{"bearerAuth": []}, {"sessionCookie": []}],
        "paths": _paths(),
        "components": {
            "schemas": schemas,
            "responses": {name: {"description": description, "content": {
                PROBLEM_TYPE: {"schema": _ref("ProblemDetails")}}}
                for name, description in _PROBLEMS.values()},
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "The console token (ROOST_CONSOLE_TOKEN, or "
                                              "the store's console.token file)."},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": COOKIE,
                                  "description": "A browser session from signing in at "
                                                 "/login; its POSTs need the session's "
                                                 "X-CSRF-Token header."},
            },
        },
    }


@functools.cache
def document_json() -> bytes:
    """`document()` encoded once."""
    return msgspec.json.encode(document())
