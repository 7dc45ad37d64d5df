"""The console's pages: signing in, every page's content, the gates inbox's decision forms,
the live system, CSRF and the escaping of everything a run carries."""

from __future__ import annotations

import asyncio
import html
import re
from typing import Annotated, Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

import roost
from roost.console import create_app
from roost.console.app import AUTH
from roost.console.auth import COOKIE
from tests.console.conftest import TOKEN, XSS, Console, Writer

pytestmark = pytest.mark.anyio

PAGES = ["/runs", "/runs/done", "/runs/broken", "/runs/angry", "/gates?assignee=",
         "/gates?status=decided&assignee=", "/system"]
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def sign_in(client: Any, name: str = "support") -> str:
    """Sign in as `name`; the session's CSRF token."""
    response = await client.post("/login", data={"token": TOKEN, "name": name},
                                 allow_redirects=False)
    assert response.status == 303
    page = await (await client.get("/runs")).text()
    match = _CSRF.search(page)
    assert match is not None
    return match.group(1)


async def finished(system: Any, run_id: str) -> str:
    """Poll run `run_id`'s record until it has ended; its status."""
    for _ in range(500):
        record = await system.pipelines.runs.get(run_id)
        if record.status in ("completed", "failed", "rejected", "cancelled"):
            return str(record.status)
        await asyncio.sleep(0.01)
    raise AssertionError(f"run {run_id} did not end; it is {record.status}")


# --- signing in -----------------------------------------------------------------------


async def test_a_wrong_token_shows_the_form_again_with_an_error_and_sets_no_cookie(
        console: Console) -> None:
    response = await console.client.post("/login", data={"token": "guess", "name": "mallory"},
                                         allow_redirects=False)

    assert response.status == 401
    assert "not the console&#39;s token" in await response.text()
    assert COOKIE not in response.cookies
    assert (await console.client.get("/runs", allow_redirects=False)).status == 303


async def test_the_right_token_sets_a_strict_httponly_session_cookie_and_goes_on_to_next(
        console: Console) -> None:
    response = await console.client.post(
        "/login", data={"token": TOKEN, "name": "Ada", "next": "/runs/done"},
        allow_redirects=False)

    assert response.status == 303
    assert response.headers["Location"] == "/runs/done"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie
    page = await (await console.client.get("/runs/done")).text()
    assert "Signed in as <strong>Ada</strong>" in page


async def test_a_wrong_token_is_answered_only_after_the_brakes_delay(
        console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    addresses: list[str] = []

    def failed(address: str) -> float:
        addresses.append(address)
        return 0.1

    monkeypatch.setattr(console.client.app[AUTH], "failed", failed)
    loop = asyncio.get_running_loop()
    started = loop.time()

    response = await console.client.post("/login", data={"token": "guess", "name": "mallory"})

    assert response.status == 401
    assert loop.time() - started >= 0.1
    assert addresses == ["127.0.0.1"]


async def test_a_console_served_over_tls_marks_its_session_cookie_secure(
        console: Console) -> None:
    app = create_app(console.system, token=TOKEN, secure=True)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        response = await client.post("/login", data={"token": TOKEN, "name": "Ada"},
                                     allow_redirects=False)

    assert "Secure" in response.headers["Set-Cookie"]


@pytest.mark.parametrize("target", ["//evil.example", "https://evil.example/x",
                                    "/\\evil.example", "evil.example"])
async def test_a_next_that_leaves_the_console_goes_to_the_runs_instead(
        console: Console, target: str) -> None:
    response = await console.client.post("/login", data={"token": TOKEN, "name": "Ada",
                                                         "next": target},
                                         allow_redirects=False)

    assert response.headers["Location"] == "/runs"


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded",
                                          "application/x-www-form-urlencoded; charset=no-such"])
async def test_a_sign_in_form_that_cannot_be_read_is_a_400_page(console: Console,
                                                                content_type: str) -> None:
    response = await console.client.post("/login", data=b"\xff\xff=\xff&name=ada",
                                         headers={"Content-Type": content_type},
                                         allow_redirects=False)

    assert response.status == 400 and response.content_type == "text/html"
    assert "the form cannot be read" in await response.text()
    assert COOKIE not in response.cookies


async def test_the_sign_in_form_keeps_next(console: Console) -> None:
    page = await (await console.client.get("/login?next=/gates")).text()

    assert 'name="next" value="/gates"' in page


@pytest.mark.parametrize("name", ["", "   ", "x" * 81])
async def test_a_sign_in_needs_a_name(console: Console, name: str) -> None:
    response = await console.client.post("/login", data={"token": TOKEN, "name": name},
                                         allow_redirects=False)

    assert response.status == 422
    assert "Give your name" in await response.text()
    assert COOKIE not in response.cookies


async def test_signing_out_ends_the_session(console: Console) -> None:
    csrf = await sign_in(console.client)

    response = await console.client.post("/logout", data={"csrf": csrf}, allow_redirects=False)

    assert response.status == 303 and response.headers["Location"] == "/login"
    assert (await console.client.get("/runs", allow_redirects=False)).status == 303


@pytest.mark.parametrize("path", [*PAGES, "/"])
async def test_every_page_without_a_session_redirects_to_the_sign_in(
        console: Console, path: str) -> None:
    response = await console.client.get(path, allow_redirects=False)

    assert response.status == 303
    assert response.headers["Location"].startswith("/login")


# --- what the pages show --------------------------------------------------------------


async def test_the_root_leads_to_the_runs(console: Console) -> None:
    await sign_in(console.client)

    response = await console.client.get("/", allow_redirects=False)

    assert (response.status, response.headers["Location"]) == (303, "/runs")


@pytest.mark.parametrize(("path", "expected"), [
    ("/runs", ['href="/runs/done"', 'href="/runs/broken"', 'href="/runs/angry"', "completed",
               "failed", "waiting"]),
    ("/runs/done", ["<code>done</code>", "completed", "reply to a happy customer", "run support",
                    "Checkpoints"]),
    ("/runs/broken", ["failed", "ValueError: the model answered nonsense",
                      'class="bar error"']),
    ("/runs/angry", ["waiting", "gate_opened", "an angry customer &lt;script&gt;", "pending"]),
    ("/gates?assignee=", ["an angry customer &lt;script&gt;", 'href="/runs/angry"',
                          'value="approve"', 'name="input.to" type="text" '
                          'value="customer@example.org"']),
    ("/system", ["/pipelines/workers", "running", 'href="/metrics"', "Dead letters"]),
])
async def test_every_page_shows_what_it_is_about(console: Console, path: str,
                                                 expected: list[str]) -> None:
    await sign_in(console.client)

    response = await console.client.get(path)

    page = await response.text()
    assert response.status == 200
    assert response.content_type == "text/html"
    for text in expected:
        assert text in page
    for link in ('href="/runs"', 'href="/gates"', 'href="/system"', 'action="/logout"'):
        assert link in page


async def test_a_script_in_a_runs_data_is_only_ever_shown_as_text(console: Console) -> None:
    await sign_in(console.client)
    shown = html.escape(XSS, quote=False)

    for path in [*PAGES, "/login", "/runs/nope", f"/runs?text={XSS}"]:
        page = await (await console.client.get(path)).text()

        assert "<script" not in page, path
    for path in ["/runs/done", "/runs/angry", "/gates?assignee="]:
        assert shown.replace("'", "&#39;") in await (await console.client.get(path)).text()


async def test_the_runs_are_filtered_by_status(console: Console) -> None:
    await sign_in(console.client)

    page = await (await console.client.get("/runs?status=failed")).text()

    assert 'href="/runs/broken"' in page
    assert 'href="/runs/done"' not in page
    assert '<option value="failed" selected>' in page


@pytest.mark.parametrize(("query", "error"), [
    ("since=yesterday", "since=&#39;yesterday&#39; is not a date"),
    ("status=sleeping", "sleeping"),
    ("cursor=!!!", "is not one this console gave out"),
    ("limit=many", "limit=&#39;many&#39; must be a whole number"),
])
async def test_a_bad_runs_filter_is_an_error_on_the_page(console: Console, query: str,
                                                         error: str) -> None:
    await sign_in(console.client)

    response = await console.client.get(f"/runs?{query}")

    assert response.status == 400
    page = await response.text()
    assert error in page
    assert '<form class="filters"' in page


@pytest.mark.parametrize(("path", "error"), [
    ("/runs?colour=red", "unknown query parameter 'colour'; this route takes status, pipeline"),
    ("/runs?limit=1&limit=2", "query parameter 'limit' is given more than once; give it once"),
    ("/gates?older_than=abc", "unknown query parameter 'older_than'; this route takes status, "
                              "assignee, cursor, decided"),
    ("/gates?status=pending&status=decided", "query parameter 'status' is given more than once"),
])
async def test_an_unknown_or_repeated_query_parameter_of_a_list_is_an_error_on_the_page(
        console: Console, path: str, error: str) -> None:
    await sign_in(console.client)

    response = await console.client.get(path)

    assert response.status == 400
    page = html.unescape(await response.text())
    assert f'<p class="error" role="alert">{error}' in page
    assert '<form class="filters"' in page and 'href="/runs/done"' not in page


async def test_the_runs_are_filtered_by_time_range(console: Console) -> None:
    await sign_in(console.client)

    later = await (await console.client.get("/runs?since=2999-01-01")).text()
    until_today = await (await console.client.get("/runs?until=2999-01-01T00:00:00Z")).text()

    assert "No runs match" in later
    assert 'href="/runs/done"' in until_today


async def test_the_runs_come_a_page_at_a_time_with_a_link_to_older_ones(
        console: Console) -> None:
    await sign_in(console.client)

    first = await (await console.client.get("/runs?limit=2")).text()
    older = re.search(r'href="(/runs\?[^"]*cursor=[^"]+)">Older', first)
    assert older is not None
    second = await (await console.client.get(html.unescape(older.group(1)))).text()

    assert first.count('href="/runs/') == 2
    assert second.count('href="/runs/') == 1
    assert "Older" not in second


async def test_a_run_shows_its_trace_as_a_waterfall_with_details_per_span(
        console: Console) -> None:
    await sign_in(console.client)

    page = await (await console.client.get("/runs/done")).text()

    assert page.count('<details class="span">') >= 5
    assert re.search(r'class="bar" style="left: 0\.0%; width: 100\.0%"', page)
    assert "tool.arguments" in page and "step.output" in page
    assert "tool send_email" in page


async def test_an_unknown_run_is_a_404_page_naming_it(console: Console) -> None:
    await sign_in(console.client)

    response = await console.client.get("/runs/no-such-run")

    assert response.status == 404
    assert "no run with id &#39;no-such-run&#39;" in await response.text()


async def test_a_store_console_says_the_live_view_needs_a_running_system(
        console: Console) -> None:
    app = create_app(console.system, token=TOKEN, live=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        await sign_in(client)

        page = await (await client.get("/system")).text()

    assert "roost run app.py --console" in page
    assert "Supervision tree" not in page


# --- the gates inbox ------------------------------------------------------------------


async def test_the_inbox_shows_the_signed_in_persons_gates_or_everyones(
        console: Console) -> None:
    await sign_in(console.client, "alice")

    mine = await (await console.client.get("/gates")).text()
    everyones = await (await console.client.get("/gates?assignee=")).text()

    assert "No gates wait for alice" in mine
    assert 'href="/runs/angry"' in everyones


async def test_approving_the_waiting_gate_through_the_form_finishes_the_run(
        console: Console) -> None:
    csrf = await sign_in(console.client)

    response = await console.client.post(
        "/gates/angry/send/decide", allow_redirects=False,
        data={"csrf": csrf, "decision": "approve", "comment": "fine", "assignee": "support"})

    assert response.status == 303
    assert response.headers["Location"] == "/gates?assignee=support&decided=angry%2Fsend"
    assert await finished(console.system, "angry") == "completed"
    gate = await console.system.gates.get("angry", "send")
    assert (gate.decision, gate.by, gate.comment) == ("approve", "support", "fine")
    decided = await (await console.client.get("/gates?status=decided&assignee=")).text()
    assert "approve</strong> by support" in decided
    assert "No gates wait" in await (await console.client.get(response.headers["Location"])).text()


async def test_an_edit_through_the_form_sends_the_edited_input(console: Console) -> None:
    csrf = await sign_in(console.client)

    response = await console.client.post("/gates/angry/send/decide", allow_redirects=False, data={
        "csrf": csrf, "decision": "edit", "input.to": "boss@example.org",
        "input.body": "We are sorry."})

    assert response.status == 303
    assert await finished(console.system, "angry") == "completed"
    gate = await console.system.gates.get("angry", "send")
    assert msgspec.json.decode(gate.input) == {"to": "boss@example.org", "body": "We are sorry."}


async def test_deciding_a_gate_that_was_decided_otherwise_is_a_conflict_on_the_page(
        console: Console) -> None:
    csrf = await sign_in(console.client)
    await console.system.gates.decide("angry", "send", "reject", by="bob")

    response = await console.client.post("/gates/angry/send/decide",
                                         data={"csrf": csrf, "decision": "approve"})

    assert response.status == 409
    assert "already decided" in await response.text()


class Refund(msgspec.Struct):
    amount: Annotated[int, msgspec.Meta(ge=1)]
    note: str
    notify: bool = False


@roost.tool
async def refund(amount: int, note: str, notify: bool = False) -> str:
    return f"refunded {amount}"


async def refund_waiting(console: Console) -> None:
    """A run `refund` waiting at gate `pay`, whose edit has number and checkbox inputs."""
    system = console.system
    system.tools.register(refund)
    pipeline = roost.Pipeline("refunds", [roost.Step(
        "pay", tool="refund", args=lambda r, amount: {"amount": amount, "note": "sorry"},
        gate=roost.Gate(reason="a refund", assignees=["support"], input_type=Refund))],
        input_type=int)
    await (await system.pipelines.start(pipeline, 30, run_id="refund")).result()


async def test_the_edit_form_has_an_input_per_field_by_its_type_prefilled(
        console: Console) -> None:
    await refund_waiting(console)
    await sign_in(console.client)

    page = await (await console.client.get("/gates")).text()

    assert 'name="input.amount" type="number" step="1" value="30"' in page
    assert 'name="input.note" type="text" value="sorry"' in page
    assert 'type="checkbox" name="input.notify" value="true">' in page


@pytest.mark.parametrize(("amount", "error"), [
    ("lots", "amount: &#39;lots&#39; is not a whole number"),
    ("0", "amount: Expected `int` &gt;= 1</p>"),
])
async def test_an_edit_with_a_bad_field_shows_the_error_beside_it_and_decides_nothing(
        console: Console, amount: str, error: str) -> None:
    await refund_waiting(console)
    csrf = await sign_in(console.client)

    response = await console.client.post("/gates/refund/pay/decide", data={
        "csrf": csrf, "decision": "edit", "input.amount": amount, "input.note": "<b>sorry</b>",
        "comment": "half"})

    assert response.status == 422
    page = await response.text()
    beside = re.search(r'name="input\.amount"[^>]*aria-describedby="([^"]+)"', page)
    assert beside is not None
    assert re.search(rf'id="{beside.group(1)}">{re.escape(error)}', page)
    assert f'value="{amount}"' in page  # what was typed is kept
    assert "&lt;b&gt;sorry&lt;/b&gt;" in page and ">half</textarea>" in page
    assert (await console.system.gates.get("refund", "pay")).status == "pending"


async def test_an_edit_through_the_typed_form_converts_numbers_and_checkboxes(
        console: Console) -> None:
    await refund_waiting(console)
    csrf = await sign_in(console.client)

    response = await console.client.post("/gates/refund/pay/decide", allow_redirects=False, data={
        "csrf": csrf, "decision": "edit", "input.amount": "12", "input.note": "half",
        "input.notify": "true"})

    assert response.status == 303
    gate = await console.system.gates.get("refund", "pay")
    assert msgspec.json.decode(gate.input) == {"amount": 12, "note": "half", "notify": True}
    assert await finished(console.system, "refund") == "completed"


@pytest.mark.parametrize("depth", [101, 20_000])
async def test_an_edit_nested_too_deep_is_an_error_beside_its_input_and_decides_nothing(
        console: Console, depth: int) -> None:
    # A gate without an input type is edited as one JSON text.
    pipeline = roost.Pipeline("drafts", [roost.Step(
        "draft", Writer, gate=roost.Gate(reason="check the draft", assignees=["support"]))],
        input_type=str)
    await (await console.system.pipelines.start(pipeline, "x", run_id="deep")).result()
    csrf = await sign_in(console.client)

    response = await console.client.post("/gates/deep/draft/decide", data={
        "csrf": csrf, "decision": "edit", "input_json": "[" * depth + "]" * depth})

    assert response.status == 422
    assert re.search(r'class="field-error" id="gate-\d+-json-error">nested more than 100 deep; '
                     r"give flatter data</p>", await response.text())
    assert (await console.system.gates.get("deep", "draft")).status == "pending"


async def test_a_form_post_without_its_csrf_token_is_a_403_page(console: Console) -> None:
    await sign_in(console.client)

    response = await console.client.post("/gates/angry/send/decide", data={"decision": "approve"})

    assert response.status == 403
    assert response.content_type == "text/html"
    assert "CSRF token is missing or wrong" in await response.text()
    assert (await console.system.gates.get("angry", "send")).status == "pending"


# --- the live system ------------------------------------------------------------------


@roost.tool(breaker=roost.Breaker(failures=1))
async def flaky_lookup(name: str) -> str:
    return name


async def test_a_breaker_is_shown_and_reset_from_the_system_page(console: Console) -> None:
    console.system.tools.register(flaky_lookup)
    console.system.tools.breaker("flaky_lookup").force_open()
    csrf = await sign_in(console.client)

    page = await (await console.client.get("/system")).text()
    response = await console.client.post("/system/breakers/flaky_lookup/reset",
                                         data={"csrf": csrf}, allow_redirects=False)

    assert "<code>flaky_lookup</code>" in page and "status-open" in page
    assert 'action="/system/breakers/flaky_lookup/reset"' in page
    assert response.status == 303
    assert str(console.system.tools.breaker("flaky_lookup").state) == "closed"
    assert "is reset" in await (await console.client.get(response.headers["Location"])).text()
