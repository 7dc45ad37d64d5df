"""Tests of roost/tools/http.py against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from roost.errors import (
    ConfigurationError,
    IdempotencyKeyInUse,
    PermanentToolError,
    ToolResultUnrecordable,
    ToolTimeout,
    TransientToolError,
)
from roost.tools.http import HttpTool
from roost.tools.spec import ToolRegistry


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Server(msgspec.Struct):
    url: str
    requests: list[dict[str, Any]]


@pytest.fixture
async def server(anyio_backend: str) -> AsyncIterator[Server]:
    requests: list[dict[str, Any]] = []
    slow_may_answer = asyncio.Event()

    async def echo(request: web.Request) -> web.Response:
        seen = {
            "method": request.method,
            "idempotency_key": request.headers.get("Idempotency-Key"),
            "authorization": request.headers.get("Authorization"),
            "query": dict(request.query),
            "json": await request.json() if request.can_read_body else None,
        }
        requests.append(seen)
        return web.json_response(seen)

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        headers = {"Retry-After": "7"} if code == 429 else {}
        return web.Response(status=code, text=f"status {code} body", headers=headers)

    async def text(request: web.Request) -> web.Response:
        return web.Response(text="plain words")

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def broken_json(request: web.Request) -> web.Response:
        return web.Response(text="{not json", content_type="application/json")

    async def deep_json(request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 100_000 + b"]" * 100_000, content_type="application/json")

    async def odd_charset(request: web.Request) -> web.Response:
        return web.Response(body=b"hello",
                            headers={"Content-Type": "text/plain; charset=x-no-such-charset"})

    async def slow(request: web.Request) -> web.Response:
        await slow_may_answer.wait()
        return web.Response(text="too late")

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/text", text)
    app.router.add_delete("/empty", empty)
    app.router.add_route("*", "/broken-json", broken_json)
    app.router.add_route("*", "/deep-json", deep_json)
    app.router.add_route("*", "/odd-charset", odd_charset)
    app.router.add_post("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield Server(url=f"http://{host}:{port}", requests=requests)
    slow_may_answer.set()
    await runner.cleanup()


@pytest.fixture
async def session(anyio_backend: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- requests -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_idempotency_key_arrives_as_a_header(
    server: Server, session: aiohttp.ClientSession
) -> None:
    create = HttpTool("create_ticket", "POST", f"{server.url}/echo", session=session,
                      headers={"Authorization": "Bearer t0ken"})
    spec = ToolRegistry([create]).get("create_ticket")
    arguments = spec.bind({"json": {"subject": "help"}, "params": {"queue": "support"}})
    result = await spec.invoke(arguments, key="key-123")
    assert result == {
        "status": 200,
        "body": {
            "method": "POST",
            "idempotency_key": "key-123",
            "authorization": "Bearer t0ken",
            "query": {"queue": "support"},
            "json": {"subject": "help"},
        },
    }


@pytest.mark.anyio
async def test_without_a_key_no_idempotency_header_is_sent(
    server: Server, session: aiohttp.ClientSession
) -> None:
    lookup = HttpTool("lookup", "GET", f"{server.url}/echo", session=session)
    await lookup()
    assert server.requests[-1]["idempotency_key"] is None


@pytest.mark.anyio
async def test_text_and_empty_bodies_are_returned_as_text_and_none(
    server: Server, session: aiohttp.ClientSession
) -> None:
    text = HttpTool("text", "GET", f"{server.url}/text", session=session)
    empty = HttpTool("empty", "DELETE", f"{server.url}/empty", session=session)
    assert await text() == {"status": 200, "body": "plain words"}
    assert await empty(idempotency_key="k") == {"status": 204, "body": None}


@pytest.mark.anyio
async def test_a_session_provider_is_asked_for_the_session_at_call_time(
    server: Server, session: aiohttp.ClientSession
) -> None:
    current: list[aiohttp.ClientSession] = []
    lookup = HttpTool("lookup", "GET", f"{server.url}/text", session=lambda: current[0])
    current.append(session)
    assert (await lookup())["body"] == "plain words"


# --- error mapping --------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("code", "match"),
    [
        (503, r"POST http://127.0.0.1:\d+/status/503 answered 503 Service Unavailable: "
              r"'status 503 body'; the service is overloaded or failing"),
        (500, r"answered 500 Internal Server Error"),
        (429, r"answered 429 Too Many Requests \(Retry-After: 7\)"),
    ],
)
async def test_429_and_5xx_are_transient(
    server: Server, session: aiohttp.ClientSession, code: int, match: str
) -> None:
    call = HttpTool("desk", "POST", f"{server.url}/status/{code}", session=session)
    with pytest.raises(TransientToolError, match=rf"tool 'desk': .*{match}"):
        await call(idempotency_key="k", json={})


@pytest.mark.anyio
@pytest.mark.parametrize(("code", "reason"), [(404, "Not Found"), (400, "Bad Request")])
async def test_other_4xx_are_permanent(
    server: Server, session: aiohttp.ClientSession, code: int, reason: str
) -> None:
    call = HttpTool("desk", "PUT", f"{server.url}/status/{code}?token=secret", session=session)
    with pytest.raises(PermanentToolError) as info:
        await call(idempotency_key="k")
    message = str(info.value)
    assert f"tool 'desk': PUT {server.url}/status/{code} answered {code} {reason}" in message
    assert "retrying will not help" in message
    assert "secret" not in message
    assert info.value.code == code


@pytest.mark.anyio
async def test_409_to_a_keyed_request_means_the_key_is_still_in_use_and_is_transient(
    server: Server, session: aiohttp.ClientSession
) -> None:
    call = HttpTool("desk", "POST", f"{server.url}/status/409", session=session)
    with pytest.raises(IdempotencyKeyInUse, match=r"answered 409 Conflict: 'status 409 body'; an "
                       r"earlier request with this Idempotency-Key is still being processed"):
        await call(idempotency_key="k", json={})
    assert issubclass(IdempotencyKeyInUse, TransientToolError)
    # Without a key the service cannot mean a key in use: a plain refusal.
    with pytest.raises(PermanentToolError, match="answered 409 Conflict") as refused:
        await call(json={})
    assert refused.value.code == 409


@pytest.mark.anyio
async def test_a_json_body_that_does_not_decode_is_a_failure_of_a_read_only_request(
    server: Server, session: aiohttp.ClientSession
) -> None:
    call = HttpTool("desk", "GET", f"{server.url}/broken-json", session=session)
    with pytest.raises(PermanentToolError, match=r"answered 200 with a JSON body that does not"):
        await call()


@pytest.mark.anyio
async def test_a_json_body_that_does_not_decode_leaves_a_side_effect_without_a_result(
    server: Server, session: aiohttp.ClientSession
) -> None:
    call = HttpTool("desk", "POST", f"{server.url}/broken-json", session=session)
    with pytest.raises(ToolResultUnrecordable, match=r"tool 'desk': call with key 'k' took effect "
                       r"but its result could not be recorded \(POST .* answered 200 with a JSON "
                       r"body that does not decode") as info:
        await call(idempotency_key="k", json={})
    assert (info.value.tool, info.value.key) == ("desk", "k")


BODIES_THAT_DO_NOT_DECODE = pytest.mark.parametrize(
    ("path", "answered"),
    [
        ("deep-json", r"answered 200 with a JSON body that does not decode \(RecursionError"),
        ("odd-charset", r"answered 200 with a body in charset 'x-no-such-charset' that does not "
                        r"decode \(LookupError"),
    ],
)


@pytest.mark.anyio
@BODIES_THAT_DO_NOT_DECODE
async def test_a_body_that_no_decoder_takes_is_a_failure_of_a_read_only_request(
    server: Server, session: aiohttp.ClientSession, path: str, answered: str,
) -> None:
    call = HttpTool("desk", "GET", f"{server.url}/{path}", session=session)
    with pytest.raises(PermanentToolError, match=rf"tool 'desk': GET .* {answered}"):
        await call()


@pytest.mark.anyio
@BODIES_THAT_DO_NOT_DECODE
async def test_a_body_that_no_decoder_takes_leaves_a_side_effect_without_a_result(
    server: Server, session: aiohttp.ClientSession, path: str, answered: str,
) -> None:
    call = HttpTool("desk", "POST", f"{server.url}/{path}", session=session)
    with pytest.raises(ToolResultUnrecordable, match=rf"tool 'desk': call with key 'k' took "
                       rf"effect but its result could not be recorded \(POST .* {answered}"):
        await call(idempotency_key="k", json={})


@pytest.mark.anyio
async def test_a_slow_endpoint_times_out(server: Server, session: aiohttp.ClientSession) -> None:
    call = HttpTool("desk", "POST", f"{server.url}/slow", session=session, timeout=0.2)
    with pytest.raises(ToolTimeout, match=r"tool 'desk': POST .*/slow timed out after 0.2s") as info:
        await call(idempotency_key="k")
    assert isinstance(info.value, TransientToolError)
    assert info.value.timeout == 0.2


@pytest.mark.anyio
async def test_a_closed_port_is_a_transient_connection_error(
    session: aiohttp.ClientSession, closed_port: int
) -> None:
    call = HttpTool("desk", "POST", f"http://127.0.0.1:{closed_port}/x", session=session)
    with pytest.raises(
        TransientToolError,
        match=rf"tool 'desk': POST http://127.0.0.1:{closed_port}/x failed: ClientConnectorError"
              r".*the service may be down or unreachable",
    ):
        await call(idempotency_key="k")


# --- declaration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "idempotent", "read_only"),
    [("GET", True, True), ("post", False, False), ("PUT", True, False), ("DELETE", True, False)],
)
def test_idempotent_and_read_only_default_from_the_method(
    method: str, idempotent: bool, read_only: bool
) -> None:
    spec = HttpTool("t", method, "http://example.org/x", session=lambda: pytest.fail()).spec
    assert (spec.idempotent, spec.read_only, spec.key_param) == (
        idempotent, read_only, "idempotency_key"
    )


def test_spec_options_are_passed_through() -> None:
    call = HttpTool("t", "POST", "https://example.org/x", session=lambda: pytest.fail(),
                    idempotent=True, concurrency=2, max_waiting=3)
    assert (call.spec.idempotent, call.spec.concurrency, call.spec.max_waiting) == (True, 2, 3)


@pytest.mark.parametrize(
    ("method", "url", "timeout", "match"),
    [
        ("FETCH", "http://example.org", 1.0, r"tool 't': method='FETCH' is invalid; use one of"),
        ("GET", "/relative", 1.0, r"url='/relative' is invalid; use an absolute http"),
        ("GET", "ftp://example.org/f", 1.0, r"url='ftp://example.org/f' is invalid"),
        ("GET", "http://example.org", 0, r"timeout=0 is invalid; use a positive number"),
    ],
)
def test_bad_declarations_name_the_tool_and_the_value(
    method: str, url: str, timeout: float, match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        HttpTool("t", method, url, session=lambda: pytest.fail(), timeout=timeout)
