"""Errors as RFC 9457 problem details (`application/problem+json`) for the API, and as an
escaped error page for the browser.

A handler raises `Problem` (or lets a roost error through: unknown runs and gates are
404, malformed decisions 422, decisions that conflict 409); aiohttp's own errors (an
unknown route, a wrong method, a body over the size limit) become problems too. An
unexpected error is a 500 whose detail says nothing of the data involved, and is
logged without payloads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from roost._logging import get_logger
from roost.errors import (
    ConfigurationError,
    GateAlreadyDecided,
    GateClosed,
    GateDecisionInvalid,
    GateNotFound,
    RunNotFound,
    ToolError,
    TraceNotFound,
)

_log = get_logger("roost.console")
PROBLEM_TYPE = "application/problem+json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Characters that could end a string in an HTML context, escaped in every JSON answer,
#: so data holding `<script>` is inert even to a client that sniffs.
_HTML_ESCAPES = ((b"<", b"\\u003c"), (b">", b"\\u003e"), (b"&", b"\\u0026"))


def inert_json(body: bytes) -> bytes:
    """Encoded JSON `body` with `<`, `>` and `&` escaped (the same JSON to a parser)."""
    for raw, escaped in _HTML_ESCAPES:
        body = body.replace(raw, escaped)
    return body


class Problem(Exception):
    """An error answer: HTTP `status`, a short `title`, and a `detail` that says what was
    wrong and what to do; `errors` names fields (`{"field": "message"}`) when a form or
    body was at fault."""

    def __init__(self, status: int, title: str, detail: str,
                 errors: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors or {}

    def body(self, instance: str) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "about:blank", "title": self.title,
                                "status": self.status, "detail": self.detail,
                                "instance": instance}
        if self.errors:
            body["errors"] = self.errors
        return body


def problem_of(error: BaseException) -> Problem | None:
    """The problem a roost error stands for (None: not one the console expects)."""
    if isinstance(error, Problem):
        return error
    if isinstance(error, RunNotFound | GateNotFound | TraceNotFound):
        return Problem(404, "Not found", str(error))
    if isinstance(error, GateDecisionInvalid):
        return Problem(422, "Invalid decision", str(error))
    if isinstance(error, GateAlreadyDecided | GateClosed):
        return Problem(409, "Conflict", str(error))
    if isinstance(error, ConfigurationError | ToolError):
        return Problem(400, "Bad request", str(error))
    return None


def _from_http(error: web.HTTPException) -> Problem:
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return Problem(413, "Body too large", "the request body is larger than the console "
                                              "accepts; send less data")
    if isinstance(error, web.HTTPNotFound):
        return Problem(404, "Not found", "no such page or API route; the API is described "
                                         "at /api/v1/openapi.json")
    if isinstance(error, web.HTTPMethodNotAllowed):
        return Problem(405, "Method not allowed", f"{error.method} is not allowed here; use "
                                                  f"{', '.join(sorted(error.allowed_methods))}")
    return Problem(error.status, error.reason, error.text or error.reason)


def respond(request: web.Request, problem: Problem) -> web.Response:
    """The response for `problem`: problem+json for the API, an escaped page otherwise."""
    if request.path.startswith("/api/") or request.path == "/metrics":
        return web.Response(status=problem.status, content_type=PROBLEM_TYPE,
                            body=inert_json(msgspec.json.encode(problem.body(request.path))))
    from roost.console.pages import error_page  # pages import this module

    return error_page(request, problem)


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error a handler raises into its problem response."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise  # redirects
        return respond(request, _from_http(error))
    except Exception as error:
        problem = problem_of(error)
        if problem is None:
            _log.error("console_request_failed", path=request.path, method=request.method,
                       error_type=type(error).__name__)
            problem = Problem(500, "Internal error", "the console failed to answer this "
                                                     "request; its log has the error's type")
        return respond(request, problem)
