"""The console's credential (roost/console/auth.py) and how the app enforces it: the token
(from the environment or a private file), bearer clients, browser sessions that expire when
idle, their CSRF tokens, and the brake on repeated failed sign-ins.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from roost.console import create_app, load_token
from roost.console.app import AUTH
from roost.console.auth import COOKIE, FREE_FAILURES, MAX_DELAY, SESSION_IDLE, TOKEN_ENV, Auth
from roost.errors import ConfigurationError
from tests.console.conftest import TOKEN, XSS, Console, bearer, send_raw
from tests.support import FakeClock

DECISION = "/api/v1/gates/angry/send/decision"
PROBLEM = "application/problem+json"

pytestmark = pytest.mark.anyio


# --- the token ------------------------------------------------------------------------


def test_the_environment_variable_wins_over_a_token_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    from_file, _ = load_token(tmp_path)
    monkeypatch.setenv(TOKEN_ENV, "  from-the-environment \n")

    assert load_token(tmp_path) == ("from-the-environment", False)
    assert load_token(None) == ("from-the-environment", False)
    assert from_file != "from-the-environment"


def test_a_generated_token_is_kept_private_and_reused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    token, generated = load_token(tmp_path)

    assert generated and len(token) >= 32
    assert (tmp_path / "console.token").stat().st_mode & 0o777 == 0o600
    assert load_token(tmp_path) == (token, False)


def test_without_the_variable_or_a_folder_there_is_no_token(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)

    with pytest.raises(ConfigurationError, match=TOKEN_ENV):
        load_token(None)


@pytest.mark.parametrize(("content", "mode", "says"), [
    ("\n", 0o600, "is empty; delete it"),
    ("a-token\n", 0o644, "can be read by other users; run `chmod 600"),
    ("a-token\n", 0o640, "can be read by other users"),
])
def test_an_empty_or_readable_token_file_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, mode: int,
        says: str) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    path = tmp_path / "console.token"
    path.write_text(content)
    os.chmod(path, mode)

    with pytest.raises(ConfigurationError, match=says) as caught:
        load_token(tmp_path)
    assert str(path) in str(caught.value)


# --- credentials, sessions, CSRF and the sign-in brake --------------------------------


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="must not be empty"):
        Auth("")


def test_a_token_short_enough_to_guess_is_refused_naming_how_to_make_one() -> None:
    with pytest.raises(ConfigurationError, match=r"too short to resist guessing \(6 characters\)"
                                                 r".*secrets\.token_urlsafe"):
        Auth("secret")
    Auth("s" * 16)


@pytest.mark.parametrize(("header", "ok"), [
    (f"Bearer {TOKEN}", True),
    (f"Bearer {TOKEN}  ", True),
    (f"bearer {TOKEN}", False),
    (f"Basic {TOKEN}", False),
    (TOKEN, False),
    ("Bearer wrong", False),
    ("Bearer ", False),
    ("", False),
    (None, False),
])
def test_only_the_token_as_a_bearer_credential_is_accepted(header: str | None, ok: bool) -> None:
    assert Auth(TOKEN).bearer_ok(header) is ok


@pytest.mark.parametrize("candidate", ["t\u00e9st", "\udce9\udce9", "\ud800", TOKEN + "\udce9"])
def test_a_credential_of_any_characters_is_compared_and_is_not_the_token(candidate: str) -> None:
    # A header's bytes that are not UTF-8 reach the console as lone surrogates (\udce9).
    auth = Auth(TOKEN)
    _, session = auth.sign_in("ada")

    assert not auth.token_matches(candidate)
    assert not auth.bearer_ok(f"Bearer {candidate}")
    assert not auth.csrf_ok(session, candidate)
    assert Auth(candidate * 16).token_matches(candidate * 16)


def test_a_session_lasts_while_it_is_used_and_expires_when_idle(clock: FakeClock) -> None:
    auth = Auth(TOKEN, clock=clock)
    session_id, session = auth.sign_in("ada")

    clock.advance(SESSION_IDLE - 1)
    assert auth.session(session_id) is session
    clock.advance(SESSION_IDLE - 1)  # used a moment ago: its idle time started again
    assert auth.session(session_id) is session
    clock.advance(SESSION_IDLE + 1)
    assert auth.session(session_id) is None
    assert auth.session(session_id) is None
    assert auth.session(None) is None and auth.session("made-up") is None


def test_signing_out_ends_the_session_and_sessions_are_distinct(clock: FakeClock) -> None:
    auth = Auth(TOKEN, clock=clock)
    first_id, first = auth.sign_in("ada")
    second_id, second = auth.sign_in("bob")

    auth.sign_out(first_id)

    assert auth.session(first_id) is None and auth.session(second_id) is second
    assert first_id != second_id and first.csrf != second.csrf


def test_the_csrf_token_must_be_the_sessions_own() -> None:
    auth = Auth(TOKEN)
    _, session = auth.sign_in("ada")
    _, other = auth.sign_in("bob")

    assert auth.csrf_ok(session, session.csrf)
    assert not auth.csrf_ok(session, other.csrf)
    assert not auth.csrf_ok(session, "")
    assert not auth.csrf_ok(session, None)


def test_failed_sign_ins_are_slowed_more_and_more_after_three() -> None:
    auth = Auth(TOKEN)

    delays = [auth.failed("10.0.0.1") for _ in range(FREE_FAILURES + 6)]

    assert delays[:FREE_FAILURES] == [0.0] * FREE_FAILURES
    slowed = delays[FREE_FAILURES:]
    assert slowed[0] > 0 and all(a < b for a, b in itertools.pairwise(slowed))
    assert slowed[-1] == MAX_DELAY
    assert auth.failed("10.0.0.2") == 0.0  # counted per address
    auth.succeeded("10.0.0.1")
    assert auth.failed("10.0.0.1") == 0.0


# --- the app enforces them ------------------------------------------------------------

def signed_in(console: Console, name: str = "ada") -> tuple[dict[str, str], str]:
    """A browser session's cookie header, and its CSRF token."""
    session_id, session = console.client.server.app[AUTH].sign_in(name)
    return {"Cookie": f"{COOKIE}={session_id}"}, session.csrf


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token"},
                                     {"Authorization": f"Basic {TOKEN}"},
                                     {"Cookie": f"{COOKIE}=made-up-session"}])
@pytest.mark.parametrize(("method", "path"), [("GET", "/api/v1/runs"),
                                              ("GET", "/api/v1/openapi.json"),
                                              ("POST", DECISION), ("GET", "/metrics")])
async def test_a_missing_or_wrong_credential_is_a_401_problem(
        console: Console, headers: dict[str, str], method: str, path: str) -> None:
    response = await console.client.request(method, path, headers=headers,
                                            json={"decision": "approve", "by": "eve"})

    assert response.status == 401 and response.content_type == PROBLEM
    assert "Authorization: Bearer" in (await response.json())["detail"]
    assert (await console.client.get("/api/v1/gates/angry/send", headers=bearer())).status == 200
    assert (await (await console.client.get("/api/v1/gates/angry/send",
                                            headers=bearer())).json())["status"] == "pending"


async def raw_request(console: Console, head: bytes) -> tuple[int, str]:
    """Send a request made of `head` (its request and header lines, in bytes that need not
    be UTF-8, as no HTTP client library sends them); the answer's status and content type."""
    answer = await send_raw(console.client.host, console.client.port,
                            head + b"Host: console\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    status = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    content_type = re.search(rb"\r\nContent-Type: ([^;\r]+)", answer, re.IGNORECASE)
    assert status is not None and content_type is not None, answer
    return int(status.group(1)), content_type.group(1).decode()


async def test_a_bearer_token_in_bytes_that_are_not_utf8_is_a_401_problem(
        console: Console) -> None:
    answer = await raw_request(console, b"GET /api/v1/runs HTTP/1.1\r\n"
                                        b"Authorization: Bearer \xe9\xe9\r\n")

    assert answer == (401, PROBLEM)


async def test_a_csrf_token_in_bytes_that_are_not_utf8_is_a_403_problem(
        console: Console) -> None:
    cookie, _ = signed_in(console)

    answer = await raw_request(console, f"POST {DECISION} HTTP/1.1\r\n"
                                        f"Cookie: {cookie['Cookie']}\r\n".encode()
                               + b"X-CSRF-Token: \xe9\r\n")

    assert answer == (403, PROBLEM)
    assert (await console.system.gates.get("angry", "send")).status == "pending"


async def test_a_session_form_post_that_is_not_utf8_is_a_400_page(console: Console) -> None:
    cookie, csrf = signed_in(console)

    response = await console.client.post(
        "/gates/angry/send/decide", data=f"csrf={csrf}&decision=approve&comment=".encode()
        + b"\xff", headers=cookie | {"Content-Type": "application/x-www-form-urlencoded"})

    assert response.status == 400 and response.content_type == "text/html"
    assert "the form cannot be read (UnicodeDecodeError)" in await response.text()
    assert (await console.system.gates.get("angry", "send")).status == "pending"


async def test_a_browser_session_reads_the_api_without_a_csrf_token(console: Console) -> None:
    cookie, _ = signed_in(console)

    response = await console.client.get("/api/v1/runs/done", headers=cookie)

    assert response.status == 200


@pytest.mark.parametrize("csrf", [None, "", "wrong-token"])
async def test_a_session_post_without_its_csrf_token_is_a_403_problem(
        console: Console, csrf: str | None) -> None:
    cookie, _ = signed_in(console)
    headers = cookie if csrf is None else cookie | {"X-CSRF-Token": csrf}

    response = await console.client.post(DECISION, json={"decision": "approve"},
                                         headers=headers)

    assert response.status == 403 and response.content_type == PROBLEM
    assert "CSRF" in (await response.json())["detail"]
    assert (await (await console.client.get("/api/v1/gates/angry/send",
                                            headers=bearer())).json())["status"] == "pending"


async def test_a_session_decides_as_its_signed_in_name_whatever_the_body_says(
        console: Console) -> None:
    cookie, csrf = signed_in(console, "ada lovelace")

    response = await console.client.post(DECISION, json={"decision": "approve", "by": "mallory"},
                                         headers=cookie | {"X-CSRF-Token": csrf})

    assert response.status == 200, await response.text()
    assert (await response.json())["by"] == "ada lovelace"
    outcome = await console.system.pipelines.outcome("angry", through_gates=True)
    assert outcome.status == "completed"
    gate = await console.system.gates.get("angry", "send")
    assert gate.by == "ada lovelace"


async def test_an_expired_session_is_a_401(console: Console, clock: FakeClock) -> None:
    app = create_app(console.system, token=TOKEN)
    auth = app[AUTH] = Auth(TOKEN, clock=clock)
    session_id, _ = auth.sign_in("ada")
    cookie = {"Cookie": f"{COOKIE}={session_id}"}
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        assert (await client.get("/api/v1/runs", headers=cookie)).status == 200
        clock.advance(SESSION_IDLE + 1)
        response = await client.get("/api/v1/runs", headers=cookie)

    assert response.status == 401 and response.content_type == PROBLEM


async def test_neither_the_token_nor_a_payload_is_logged(console: Console) -> None:
    cookie, csrf = signed_in(console)
    with capture_logs() as logs:
        await console.client.get("/api/v1/runs", headers={"Authorization": "Bearer guess-1"})
        await console.client.get("/api/v1/runs/done", headers=bearer())
        await console.client.post(DECISION, json={"decision": "edit", "input": {
            "to": "x@example.org", "body": XSS}}, headers=cookie | {"X-CSRF-Token": csrf})
        await console.system.pipelines.outcome("angry", through_gates=True)

    logged = repr(logs)
    assert logs, "the decision is logged"
    for secret in (TOKEN, "guess-1", csrf, cookie["Cookie"].split("=", 1)[1], XSS):
        assert secret not in logged
