"""The console's server-rendered pages: sign-in, runs, one run with its trace waterfall, the
gates inbox with its decision forms (built and read back in `roost.console.forms`), and
the live system.

Every page is a Jinja2 template with autoescaping on, fed by `roost.console.views` (the
records the JSON API encodes too), with no JavaScript. Forms post back with the
session's CSRF token, which the auth middleware checks; a decision records the
signed-in name. Times are shown in UTC, ISO 8601; ages and durations for people.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import msgspec
from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined
from yarl import URL

from roost.console import forms, views
from roost.console.app import AUTH, LIVE, SECURE, SYSTEM, query_params, read_form, session_of
from roost.console.auth import COOKIE
from roost.console.problems import Problem
from roost.console.waterfall import layout
from roost.errors import (
    ConfigurationError,
    GateAlreadyDecided,
    GateClosed,
    GateDecisionInvalid,
    RecordCorrupt,
    StoreError,
    SystemNotRunning,
    TraceNotFound,
)
from roost.storage import RunStatus
from roost.tracing import Span

# The templates are package files: they do not change while the console serves them, so
# they are not checked for changes on every render (auto_reload).
_env = Environment(loader=PackageLoader("roost.console", "templates"), autoescape=True,
                   undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                   auto_reload=False)

#: The longest name a person may sign in with.
MAX_NAME = 80
GATE_STATUSES = ("pending", "decided", "closed")
RUN_STATUSES = tuple(str(status) for status in RunStatus)
#: Span attributes that hold payloads (shown apart from the other attributes).
PAYLOADS = ("run.input", "step.input", "step.item", "step.output", "tool.arguments", "tool.result")


def add_routes(app: web.Application) -> None:
    """Add the pages' routes to `app`."""
    app.router.add_routes([
        web.get("/", index),
        web.get("/login", login_form),
        web.post("/login", login),
        web.post("/logout", logout),
        web.get("/runs", runs),
        web.get("/runs/{run_id}", run),
        web.get("/gates", gates),
        web.post("/gates/{run_id}/{gate:.+}/decide", decide),
        web.get("/system", system_page),
        web.post("/system/breakers/{tool}/reset", reset_breaker),
    ])


# --- rendering --------------------------------------------------------------------------


def _utc(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _duration(seconds: float | None) -> str:
    """`seconds` for people: 850 µs, 12.5 ms, 3.20 s, 4 min 5 s, 2 h 10 min, 3 d 4 h."""
    if seconds is None or math.isnan(seconds):
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    whole = int(seconds)
    if whole >= 86400:
        return f"{whole // 86400} d {whole % 86400 // 3600} h"
    if whole >= 3600:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 60} min {whole % 60} s"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return _duration(datetime.now(UTC).timestamp() - seconds)


_env.filters.update(utc=_utc, utc_ns=lambda ns: _utc(ns / 1e9), duration=_duration,
                    duration_ns=lambda ns: _duration(ns / 1e9), age=_age, pretty=forms.pretty)


def _page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    session = session_of(request)
    text = _env.get_template(template).render(
        session=session, csrf="" if session is None else session.csrf, path=request.path,
        **context)
    return web.Response(status=status, text=text, content_type="text/html", charset="utf-8")


def error_page(request: web.Request, problem: Problem) -> web.Response:
    """`problem` as a page (its title, detail and field errors, escaped) with its status."""
    return _page(request, "error.html", problem.status, problem=problem)


async def index(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/runs")


# --- signing in -----------------------------------------------------------------------


def safe_next(target: str | None) -> str:
    """Where to go after signing in: `target` if it is a path on this console, else /runs
    (never another site, as `//evil.example` or `/\\evil.example` would be)."""
    if (not target or not target.startswith("/") or target.startswith(("//", "/\\"))
            or "\\" in target or not target.isprintable() or target.startswith("/login")):
        return "/runs"
    return target


async def login_form(request: web.Request) -> web.Response:
    return _page(request, "login.html", next=safe_next(request.query.get("next")), name="",
                 errors={})


async def login(request: web.Request) -> web.Response:
    """Sign in with the token and a name: a session cookie (ending the browser's previous
    session, if any) and on to `next`; a wrong token is answered late (the brake on
    guessing) with the form again, and until then its address's attempts are not checked
    but answered 429."""
    form = await read_form(request)
    token, name = str(form.get("token", "")), str(form.get("name", "")).strip()
    target = safe_next(str(form.get("next", "")))
    auth = request.app[AUTH]
    remote = request.remote or "unknown"
    held = auth.held_for(remote)
    if held > 0:
        wait = math.ceil(held)
        response = _page(request, "login.html", 429, next=target, name=name[:MAX_NAME],
                         errors={"token": f"Too many wrong tokens were tried from your address; "
                                          f"try again in {wait} s."})
        response.headers["Retry-After"] = str(wait)
        return response
    errors: dict[str, str] = {}
    if not auth.token_matches(token):
        await asyncio.sleep(auth.failed(remote))
        errors["token"] = "That is not the console's token. Ask whoever runs the console for it."
    if not 1 <= len(name) <= MAX_NAME or not name.isprintable():
        errors["name"] = (f"Give your name (1 to {MAX_NAME} printable characters); "
                          "your decisions are recorded under it.")
    if errors:
        status = 401 if "token" in errors else 422
        return _page(request, "login.html", status, next=target, name=name[:MAX_NAME],
                     errors=errors)
    auth.succeeded(remote)
    auth.sign_out(request.cookies.get(COOKIE))  # a session id known before stays unusable
    session_id, _ = auth.sign_in(name)
    redirect = web.HTTPSeeOther(target)
    redirect.set_cookie(COOKIE, session_id, path="/", httponly=True, samesite="Strict",
                        secure=request.app[SECURE] or None)
    raise redirect


async def logout(request: web.Request) -> web.Response:
    request.app[AUTH].sign_out(request.cookies.get(COOKIE))
    redirect = web.HTTPSeeOther("/login")
    redirect.del_cookie(COOKIE, path="/", httponly=True, samesite="Strict",
                        secure=request.app[SECURE] or None)
    raise redirect


# --- runs -----------------------------------------------------------------------------


def parse_moment(name: str, text: str, *, end: bool = False) -> float | None:
    """A filter's date (`2026-12-01`) or ISO datetime (`2026-12-01T10:00Z`, UTC unless it
    says otherwise) as seconds since the epoch; with `end`, a date means the end of it.

    Raises:
        Problem: 400, naming the filter and the forms it takes.
    """
    text = text.strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Problem(400, "Bad filter", f"{name}={text[:40]!r} is not a date (2026-12-01) or "
                                         "an ISO datetime (2026-12-01T10:00:00Z)",
                      errors={name: "a date (2026-12-01) or an ISO datetime"}) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if end and len(text) == 10:  # a date alone: up to the end of that day
        moment += timedelta(days=1)
    return moment.timestamp()


def _whole(name: str, text: str | None, default: int) -> int:
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise Problem(400, "Bad filter", f"{name}={text[:20]!r} must be a whole number",
                      errors={name: "a whole number"}) from None


class RunLine(msgspec.Struct, frozen=True):
    """One run's row on the runs page, its cells formatted here rather than by a filter or
    macro call per cell in the template (those cost more than reading the page's runs).

    The template still escapes every cell."""

    run_id: str
    href: str
    pipeline: str
    status: str
    failed_step: str | None
    started: str
    duration: str
    steps: int
    tokens: str
    cost: str


def run_line(row: views.RunRow) -> RunLine:
    """`row` as the runs page shows it: a link, UTC start, duration, tokens and cost."""
    return RunLine(
        run_id=row.run_id, href="/runs/" + quote(row.run_id, safe="/"), pipeline=row.pipeline,
        status=row.status, failed_step=row.failed_step, started=_utc(row.created_at),
        duration=_duration(row.seconds), steps=row.steps,
        tokens=f"{row.input_tokens} / {row.output_tokens}",
        cost="—" if row.cost is None else f"{row.cost:.4f}")


async def runs(request: web.Request) -> web.Response:
    """The runs, newest first, filtered by status, pipeline, time range and text."""
    query = request.query
    filters = ("status", "pipeline", "since", "until", "text", "limit")
    chosen = {name: query.get(name, "") for name in filters}
    rows: list[views.RunRow] = []
    cursor = None
    problem = None
    damaged: list[str] = []
    try:
        query_params(request, *filters, "cursor")
        rows, cursor, damaged = await views.runs_page(
            request.app[SYSTEM], status=chosen["status"] or None,
            pipeline=chosen["pipeline"].strip() or None,
            since=parse_moment("since", chosen["since"]),
            until=parse_moment("until", chosen["until"], end=True),
            text=chosen["text"].strip() or None, cursor=query.get("cursor"),
            limit=_whole("limit", chosen["limit"], 50))
    except Problem as error:
        problem = error
    kept = {name: value for name, value in chosen.items() if value}
    older = None if cursor is None else "/runs?" + urlencode({**kept, "cursor": cursor})
    return _page(request, "runs.html", 200 if problem is None else problem.status,
                 lines=[run_line(row) for row in rows], chosen=chosen, statuses=RUN_STATUSES,
                 older=older, problem=problem, damaged=damaged,
                 first_page=query.get("cursor") is None, first="/runs?" + urlencode(kept))


async def run(request: web.Request) -> web.Response:
    """One run: its header, input, steps, trace waterfall, checkpoints and gates."""
    system = request.app[SYSTEM]
    run_id = request.match_info["run_id"]
    view = await views.run_view(system, run_id)
    trace, trace_note, trace_damaged = await _trace(system, run_id)
    waterfall = None if trace is None else layout(trace)
    spans = [] if waterfall is None else [(row, span_parts(row.span)) for row in waterfall.rows]
    return _page(request, "run.html", run_id=run_id, view=view, trace=trace,
                 trace_note=trace_note, trace_damaged=trace_damaged, waterfall=waterfall,
                 spans=spans)


async def _trace(system: Any, run_id: str
                 ) -> tuple[views.TraceView | None, str | None, bool]:
    """The run's trace, or None, why there is none, and whether that is damage."""
    try:
        return views.trace_view(await system.traces.get(run_id)), None, False
    except (ConfigurationError, SystemNotRunning):
        return None, "This system records no traces (it runs with tracing off).", False
    except TraceNotFound:
        return (None, "The store keeps no trace of this run: its system ran with tracing "
                      "off, or the trace is past the system's trace_retention.", False)
    except (StoreError, UnicodeDecodeError) as error:  # a failed read, or a damaged trace key
        return (None, f"The trace of run {run_id!r} cannot be read ({type(error).__name__}: "
                      f"{error}); {views.check_advice(system.store.path)}.", True)


def span_parts(span: Span) -> dict[str, dict[str, Any]]:
    """A span's attributes sorted for its details: payloads, token usage and cost, the rest."""
    parts: dict[str, dict[str, Any]] = {"payloads": {}, "usage": {}, "attributes": {}}
    for key, value in span.attributes.items():
        if key in PAYLOADS:
            parts["payloads"][key] = value
        elif key.startswith("gen_ai.") or key == "roost.cost":
            parts["usage"][key] = value
        else:
            parts["attributes"][key] = value
    return parts


# --- gates ----------------------------------------------------------------------------


def _assignee(request: web.Request, source: Mapping[str, Any]) -> str | None:
    """Whose gates to show: `assignee` as given (empty: everyone's), else the signed-in
    person's."""
    if "assignee" in source:
        return str(source["assignee"]).strip() or None
    session = session_of(request)
    return None if session is None else session.name


async def gates(request: web.Request) -> web.Response:
    return await _inbox(request, request.query)


async def _inbox(request: web.Request, source: Mapping[str, Any], status: int = 200,
                 failure: forms.Failure | None = None) -> web.Response:
    """The gates page: pending gates with their forms, or the decided/closed ones."""
    query = request.query
    assignee = _assignee(request, source)
    which = query.get("status", "pending") if failure is None else "pending"
    items: list[views.GateView] = []
    cursor = None
    problem = None
    damaged: list[str] = []
    try:
        if failure is None:
            query_params(request, "status", "assignee", "cursor", "decided")
        if which not in GATE_STATUSES:
            raise Problem(400, "Bad filter", f"status={which[:20]!r} is not one of "
                                             f"{', '.join(GATE_STATUSES)}")
        items, cursor, damaged = await views.gates_page(
            request.app[SYSTEM], status=which, assignee=assignee,
            cursor=None if failure is not None else query.get("cursor"))
    except Problem as error:
        problem, status = error, error.status
    failed = None if failure is None else (failure.run_id, failure.gate)
    with_forms = [(gate, None if which != "pending"
                   else forms.gate_form(gate, failure if (gate.run_id, gate.gate) == failed
                                        else None))
                  for gate in items]
    shown = failed is None or any((g.run_id, g.gate) == failed for g in items)
    base = {"status": which, "assignee": assignee or ""}
    more = None if cursor is None else "/gates?" + urlencode({**base, "cursor": cursor})
    return _page(request, "gates.html", status, which=which, assignee=assignee or "",
                 forms=with_forms, more=more, problem=problem, damaged=damaged,
                 decided=query.get("decided"),
                 failure=failure, failure_shown=shown, statuses=GATE_STATUSES)


async def decide(request: web.Request) -> web.Response:
    """Decide a gate from its form, as the signed-in person; back to the inbox, or the
    inbox again with what was wrong beside the form (nothing decided then)."""
    session = session_of(request)
    if session is None:
        raise Problem(403, "Forbidden", "deciding from a form needs a signed-in session, so "
                                        "that the decision records a name; sign in at /login "
                                        "(API clients decide at /api/v1/gates/...)")
    system = request.app[SYSTEM]
    run_id, name = request.match_info["run_id"], request.match_info["gate"]
    form = await read_form(request)
    gate = await views.one_gate(system, run_id, name)

    async def again(status: int, message: str, field_errors: dict[str, str] | None = None
                    ) -> web.Response:
        failure = forms.Failure(run_id, name, message, field_errors or {}, form)
        return await _inbox(request, form, status, failure)

    button = str(form.get("decision", ""))
    if button not in forms.BUTTONS:
        return await again(422, f"Choose one of the form's buttons (got {button[:20]!r}).")
    decision, takes_input = forms.BUTTONS[button]
    value = None
    if takes_input:
        value, field_errors = forms.edited_input(gate, form)
        if field_errors:
            return await again(422, "Nothing was decided: some inputs need fixing.",
                               field_errors)
    comment = str(form.get("comment", "")).strip() or None
    try:
        await system.gates.decide(run_id, name, decision, input=value, by=session.name,
                                  comment=comment)
    except GateDecisionInvalid as error:
        named = forms.field_error(gate, error.problem) if takes_input else None
        return await again(422, f"Nothing was decided: {error.problem}",
                           dict([named]) if named is not None else None)
    except (GateAlreadyDecided, GateClosed) as error:
        return await again(409, f"Nothing was decided: {error}")
    except RecordCorrupt as error:  # the run's record: nothing was decided
        raise views.unreadable(error, system.store.path) from None
    assignee = _assignee(request, form)
    back = "/gates?" + urlencode({"assignee": assignee or "", "decided": f"{run_id}/{name}"})
    raise web.HTTPSeeOther(URL(back, encoded=True))  # as encoded: yarl would unquote the %2F


# --- the live system ------------------------------------------------------------------


async def system_page(request: web.Request) -> web.Response:
    """The supervision tree, breakers and dead letters of a live system."""
    if not request.app[LIVE]:
        return _page(request, "system.html", live_view=False)
    system = request.app[SYSTEM]
    return _page(request, "system.html", live_view=True, actors=views.actor_tree(system),
                 breakers=views.breaker_rows(system), letters=views.dead_letters(system, limit=50),
                 letter_counts=system.dead_letters.counts(), statistics=system.statistics(),
                 reset=request.query.get("reset"))


async def reset_breaker(request: web.Request) -> web.Response:
    if not request.app[LIVE]:
        raise Problem(404, "Not found", "this console serves a store: there are no live "
                                        "breakers to reset; use the running system's console")
    system = request.app[SYSTEM]
    tool = request.match_info["tool"]
    views.breaker_row(system, tool)  # a 404 naming the tools with breakers
    system.tools.breaker(tool).reset()
    raise web.HTTPSeeOther("/system?" + urlencode({"reset": tool}))
