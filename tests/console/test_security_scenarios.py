"""The console as an outside tester attacks it (OWASP ASVS): every route refuses a request
without a credential, whatever its method or spelling; sessions cannot be fixed, outlive
sign-out or a new sign-in, or post without their CSRF token; the sign-in goes nowhere
off the console and its brake holds against guesses sent in parallel; every answer
carries the security headers; and run data stays inert in error answers too.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from roost.console import create_app
from roost.console.app import AUTH
from roost.console.auth import COOKIE, FREE_FAILURES, Auth
from tests.console.conftest import TOKEN, Console, bearer
from tests.support import FakeClock

pytestmark = pytest.mark.anyio

PROBLEM = "application/problem+json"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
#: A value for each route parameter: ids that exist, so a route that answered would act.
PARAMETERS = {"run_id": "angry", "gate": "send", "tool": "send_email"}


def routes(app: web.Application) -> list[str]:
    """Every path `app` routes, its parameters filled with ids that exist."""
    paths = []
    for resource in app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info["formatter"]
        paths.append(re.sub(r"\{(\w+)(:[^}]*)?\}", lambda m: PARAMETERS[m.group(1)], path))
    return paths


async def request(client: Any, method: str, path: str, **kwargs: Any) -> Any:
    """`method path` sent as written (not normalized or re-quoted by the client)."""
    url = URL(str(client.make_url("")).rstrip("/") + path, encoded=True)
    return await client.session.request(method, url, allow_redirects=False, **kwargs)


def signed_in(console: Console, name: str = "ada") -> tuple[dict[str, str], str]:
    """A browser session's cookie header, and its CSRF token."""
    session_id, session = console.client.server.app[AUTH].sign_in(name)
    return {"Cookie": f"{COOKIE}={session_id}"}, session.csrf


async def still_pending(console: Console) -> bool:
    return (await console.system.gates.get("angry", "send")).status == "pending"


# --- every route needs a credential ------------------------------------------------------


async def test_no_route_answers_without_a_credential_whatever_its_method_or_spelling(
        console: Console) -> None:
    paths = [path for path in routes(console.client.server.app) if path != "/login"]
    spellings = {spelled for path in paths for spelled in (
        path, path + "/", path.upper(), "/" + path, path + "/.",
        "/" + path[1:].replace("/", "%2F"))}

    answers = {}
    for path in sorted(spellings):
        for method in METHODS:
            response = await request(console.client, method, path,
                                     headers={"Authorization": "Bearer not-the-token"})
            answers[method, path] = (response.status, response.headers.get("Location", ""))

    refused = {key: answer for key, answer in answers.items()
               if answer[0] == 401 or (answer[0] == 303 and answer[1].startswith("/login"))}
    assert refused == answers
    assert await still_pending(console)


@pytest.mark.parametrize("run_id", ["..%2F..%2Fetc%2Fpasswd", "%2e%2e", "..%5C..%5C",
                                    "%00", "angry%2F..%2F"])
async def test_an_id_that_walks_out_of_its_route_is_an_unknown_run(
        console: Console, run_id: str) -> None:
    response = await request(console.client, "GET", f"/api/v1/runs/{run_id}",
                             headers=bearer())

    assert response.status in (400, 404) and response.content_type == PROBLEM
    assert "root:" not in await response.text()


# --- sessions ---------------------------------------------------------------------------


async def test_a_session_id_planted_before_sign_in_never_becomes_a_session(
        console: Console) -> None:
    planted = {"Cookie": f"{COOKIE}=chosen-by-the-attacker"}

    response = await console.client.post("/login", data={"token": TOKEN, "name": "ada"},
                                          headers=planted, allow_redirects=False)

    assert response.status == 303
    assert response.cookies[COOKIE].value != "chosen-by-the-attacker"
    console.client.session.cookie_jar.clear()  # send only the planted cookie
    assert (await request(console.client, "GET", "/api/v1/runs", headers=planted)).status == 401


async def test_signing_in_again_ends_the_browsers_previous_session(console: Console) -> None:
    first = await console.client.post("/login", data={"token": TOKEN, "name": "ada"},
                                      allow_redirects=False)
    old = {"Cookie": f"{COOKIE}={first.cookies[COOKIE].value}"}
    console.client.session.cookie_jar.clear()  # each request below names its cookie itself

    again = await console.client.post("/login", data={"token": TOKEN, "name": "ada"},
                                      headers=old, allow_redirects=False)

    assert again.status == 303
    console.client.session.cookie_jar.clear()
    assert (await request(console.client, "GET", "/api/v1/runs", headers=old)).status == 401
    new = {"Cookie": f"{COOKIE}={again.cookies[COOKIE].value}"}
    assert (await request(console.client, "GET", "/api/v1/runs", headers=new)).status == 200


async def test_a_signed_out_session_is_dead_on_the_server_not_only_in_the_browser(
        console: Console) -> None:
    cookie, csrf = signed_in(console)

    response = await request(console.client, "POST", "/logout", headers=cookie,
                             data={"csrf": csrf})

    assert response.status == 303
    assert "Max-Age=0" in response.headers["Set-Cookie"]
    assert (await request(console.client, "GET", "/api/v1/runs", headers=cookie)).status == 401


@pytest.mark.parametrize(("path", "body"), [
    ("/gates/angry/send/decide", {"decision": "approve"}),
    ("/api/v1/gates/angry/send/decision", None),
    ("/system/breakers/send_email/reset", {}),
    ("/api/v1/system/breakers/send_email/reset", None),
    ("/logout", {}),
])
async def test_every_unsafe_request_by_cookie_needs_the_sessions_csrf_token(
        console: Console, path: str, body: dict[str, str] | None) -> None:
    cookie, _ = signed_in(console)
    _, other = signed_in(console, "mallory")
    kwargs: dict[str, Any] = ({"json": {"decision": "approve"}} if body is None
                              else {"data": body})

    for headers in (cookie, cookie | {"X-CSRF-Token": other}, cookie | {"X-CSRF-Token": ""}):
        response = await request(console.client, "POST", path, headers=headers, **kwargs)
        assert response.status == 403, (path, headers)

    assert await still_pending(console)
    assert (await request(console.client, "GET", "/api/v1/runs", headers=cookie)).status == 200


async def test_a_bearer_client_needs_no_csrf_token(console: Console) -> None:
    response = await console.client.post("/api/v1/gates/angry/send/decision",
                                         json={"decision": "approve", "by": "a script"},
                                         headers=bearer())

    assert response.status == 200


@pytest.mark.parametrize("path", ["/gates/angry/send/decide?decision=approve",
                                  "/api/v1/gates/angry/send/decision",
                                  "/system/breakers/send_email/reset", "/logout"])
async def test_reading_a_route_that_changes_state_changes_nothing(console: Console,
                                                                  path: str) -> None:
    cookie, csrf = signed_in(console)

    for method in ("GET", "HEAD"):
        response = await request(console.client, method, path,
                                 headers=cookie | {"X-CSRF-Token": csrf})
        assert response.status in (404, 405), (method, path)

    assert await still_pending(console)
    assert (await request(console.client, "GET", "/api/v1/runs", headers=cookie)).status == 200


# --- signing in --------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["//evil.example", "https://evil.example", "/\\evil.example",
                                    "%2F%2Fevil.example", "\\\\evil.example", "/\t/evil.example",
                                    "javascript:alert(1)", "http:/evil.example",
                                    "/\u3000/evil.example"])
async def test_the_sign_in_never_sends_the_browser_off_the_console(console: Console,
                                                                   target: str) -> None:
    response = await console.client.post("/login", data={"token": TOKEN, "name": "ada",
                                                         "next": target},
                                         allow_redirects=False)

    assert response.status == 303
    assert response.headers["Location"] == "/runs"


async def test_guesses_sent_in_parallel_are_not_checked_while_the_sign_in_brake_holds(
        console: Console, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(console.system, token=TOKEN)
    auth = app[AUTH] = Auth(TOKEN, clock=clock)
    checked: list[str] = []
    matches = auth.token_matches

    def counted(token: str) -> bool:
        checked.append(token)
        return matches(token)

    monkeypatch.setattr(auth, "token_matches", counted)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        async def attempt(token: str, headers: dict[str, str] | None = None) -> Any:
            return await client.post("/login", data={"token": token, "name": "eve"},
                                     headers=headers, allow_redirects=False)

        for guess in range(FREE_FAILURES + 1):  # the last is slowed, and holds the address
            assert (await attempt(f"guess-{guess}")).status == 401
        burst = await asyncio.gather(*(attempt(f"burst-{n}") for n in range(5)), attempt(TOKEN),
                                     attempt(TOKEN, {"X-Forwarded-For": "10.9.8.7"}))
        clock.advance(auth.held_for("127.0.0.1"))
        after = await attempt(TOKEN)

    assert [answer.status for answer in burst] == [429] * 7
    assert all(int(answer.headers["Retry-After"]) >= 1 for answer in burst)
    assert all(COOKIE not in answer.cookies for answer in burst)
    assert checked == [*(f"guess-{guess}" for guess in range(FREE_FAILURES + 1)), TOKEN]
    assert after.status == 303 and COOKIE in after.cookies


# --- answers -----------------------------------------------------------------------------


async def test_every_answer_forbids_framing_sniffing_scripts_base_urls_and_caching(
        console: Console) -> None:
    cookie, _ = signed_in(console)
    answers = [await request(console.client, method, path, headers=headers)
               for method, path, headers in [
                   ("GET", "/runs/angry", cookie), ("GET", "/api/v1/runs", bearer()),
                   ("GET", "/login", {}), ("GET", "/runs", {}), ("GET", "/api/v1/runs", {}),
                   ("GET", "/no-such-page", cookie), ("DELETE", "/api/v1/runs", bearer()),
                   ("GET", "/api/v1/runs/nope", bearer())]]

    for answer in answers:
        policy = answer.headers["Content-Security-Policy"]
        for directive in ("script-src 'none'", "object-src 'none'", "base-uri 'none'",
                          "frame-ancestors 'none'", "form-action 'self'"):
            assert directive in policy, (answer.url, directive)
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Referrer-Policy"] == "same-origin"
        assert answer.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/api/v1/runs/%3Cscript%3Ealert(1)%3C%2Fscript%3E",
                                  "/api/v1/gates/%3Cscript%3E/send",
                                  "/api/v1/no-such-route/%3Cscript%3E&amp;"])
async def test_a_script_echoed_by_a_problem_is_inert_json(console: Console, path: str) -> None:
    response = await request(console.client, "GET", path, headers=bearer())

    body = await response.read()
    assert response.status == 404 and response.content_type == PROBLEM
    assert b"<" not in body and b">" not in body and b"&" not in body
    assert "<script>" in (await response.json())["instance"]


async def test_no_problem_names_the_token_or_a_stack(console: Console) -> None:
    answers = [await request(console.client, "POST", "/api/v1/gates/angry/send/decision",
                             headers=bearer() | {"Content-Type": "application/json"},
                             data=body)
               for body in (b"{", b"[" * 5000, b"\xff", b'{"decision": 1}')]

    for answer in answers:
        text = await answer.text()
        assert answer.content_type == PROBLEM
        assert TOKEN not in text and "Traceback" not in text and ".py" not in text
