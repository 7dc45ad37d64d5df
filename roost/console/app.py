"""`create_app(system)`: the console as an aiohttp `Application`, and `serve` to run it.

The same application serves a live system (`roost run app.py --console PORT`, or
mounted in a user's own aiohttp service) and a store on its own (`roost console
--store DIR`, a system that runs no pipelines: runs, traces and gates can be read
and decided; decided runs resume in the next process that registers their pipeline).
A store has one owner process, so beside a running system use that system's console.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from roost._logging import get_logger
from roost.console.auth import COOKIE, Auth, Session
from roost.console.problems import Handler, Problem, problems_middleware
from roost.errors import ConfigurationError

_log = get_logger("roost.console")

SYSTEM: web.AppKey[Any] = web.AppKey("system", object)
AUTH: web.AppKey[Auth] = web.AppKey("auth", Auth)
LIVE: web.AppKey[bool] = web.AppKey("live", bool)
SECURE: web.AppKey[bool] = web.AppKey("secure", bool)
SESSION: web.RequestKey[Session] = web.RequestKey("session", Session)
#: The largest request body accepted (a decision's edited input), in bytes.
MAX_BODY = 256 * 1024
#: Paths anyone may open: the sign-in page.
_OPEN = frozenset({"/login"})
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def session_of(request: web.Request) -> Session | None:
    """The signed-in browser session of `request` (None for a bearer-token client)."""
    return request.get(SESSION)


def query_params(request: web.Request, *allowed: str) -> Mapping[str, str]:
    """The query parameters of a list, refusing any this route does not take (a typo would
    filter nothing) and any given more than once (which one counts would be a guess).

    Raises:
        Problem: 400, naming the parameter.
    """
    for name in request.query:
        if name not in allowed:
            detail = (f"unknown query parameter {name!r}; this route takes "
                      f"{', '.join(allowed) or 'none'}")
            raise Problem(400, "Bad request", detail, errors={name: detail})
        if len(request.query.getall(name)) > 1:
            detail = f"query parameter {name!r} is given more than once; give it once"
            raise Problem(400, "Bad request", detail, errors={name: detail})
    return request.query


async def read_form(request: web.Request) -> Mapping[str, Any]:
    """The form posted in `request` (empty when the body is not a form).

    Raises:
        Problem: 400, a body that does not read as a form (not in its charset, an unknown
            charset, a malformed multipart body).
    """
    try:
        return await request.post()
    except (ValueError, LookupError) as error:  # UnicodeDecodeError is a ValueError
        raise Problem(400, "Bad form", f"the form cannot be read ({type(error).__name__}); "
                                       "send it as a browser does: URL-encoded UTF-8") from None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route but the sign-in page needs the bearer token or a session; a session's
    unsafe requests also need its CSRF token (form field `csrf` or `X-CSRF-Token`)."""
    if request.path in _OPEN:
        return await handler(request)
    auth = request.app[AUTH]
    if auth.bearer_ok(request.headers.get("Authorization")):
        return await handler(request)
    session = auth.session(request.cookies.get(COOKIE))
    if session is None:
        if request.path.startswith("/api/") or request.path == "/metrics":
            raise Problem(401, "Unauthorized", "send the console token as "
                                               "'Authorization: Bearer <token>'")
        raise web.HTTPSeeOther("/login?" + urlencode({"next": request.path_qs})
                               if request.method == "GET" else "/login")
    request[SESSION] = session
    if request.method in _UNSAFE:
        candidate = request.headers.get("X-CSRF-Token")
        if candidate is None and request.content_type == "application/x-www-form-urlencoded":
            candidate = str((await read_form(request)).get("csrf", ""))
        if not auth.csrf_ok(session, candidate):
            raise Problem(403, "Forbidden", "the form's CSRF token is missing or wrong; "
                                            "reload the page and try again")
    return await handler(request)


@web.middleware
async def headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Security headers on every answer (redirects too): no framing (also for browsers that
    predate `frame-ancestors`), no sniffing, no scripts, plugins or `<base>`, no caching."""
    try:
        response = await handler(request)
    except web.HTTPException as raised:  # a redirect, raised rather than returned
        _secure(raised)
        raise
    _secure(response)
    return response


def _secure(response: web.StreamResponse) -> None:
    response.headers.setdefault("Content-Security-Policy",
                                "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                "script-src 'none'; object-src 'none'; base-uri 'none'; "
                                "frame-ancestors 'none'; form-action 'self'")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Cache-Control", "no-store")


def create_app(system: Any, *, token: str, live: bool = True,
               secure: bool = False) -> web.Application:
    """The console of `system` as an aiohttp application.

    Args:
        system: a running `ActorSystem` with a store.
        token: the bearer token every request needs (see `roost.console.auth.load_token`).
        live: show the live system (actor tree, breakers, dead letters, metrics); False
            for a console over a store alone.
        secure: served over TLS: session cookies are marked Secure.
    """
    from roost.console import api, pages  # they import this module's keys

    app = web.Application(
        middlewares=[headers_middleware, problems_middleware, auth_middleware],
        client_max_size=MAX_BODY)
    app[SYSTEM] = system
    app[AUTH] = Auth(token)
    app[LIVE] = live
    app[SECURE] = secure
    api.add_routes(app)
    pages.add_routes(app)
    app.on_startup.append(partial(_served_at_root, next(iter(app.router.resources())).canonical))
    return app


async def _served_at_root(path: str, app: web.Application) -> None:
    """Refuse to start under a prefix (`add_subapp`): the pages link to absolute paths."""
    served = next(iter(app.router.resources())).canonical
    if served != path:
        prefix = served.removesuffix(path)
        raise ConfigurationError(
            f"the roost console cannot be mounted under the prefix {prefix!r}: its pages and "
            "links expect to be served at '/'; serve it on a port of its own with "
            "roost.console.serve(app, host, port), or add it with add_domain")


class _RefusedRequests(logging.Filter):
    """Logs a request aiohttp's parser refuses (a URL or header over its limits, malformed
    HTTP) as one line, without the traceback aiohttp logs or the request's bytes (a URL may
    carry secrets): the client is at fault, and aiohttp has answered it with a plain 400.

    aiohttp writes that answer itself, before any middleware runs, and takes no hook to
    shape it; only its logger can be chosen."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        log = _log.warning if record.levelno >= logging.WARNING else _log.debug
        log("console_request_refused", status=error.code, error_type=type(error).__name__)
        return False


#: The logger of the console's HTTP server (aiohttp's errors outside any request handler).
_server_log = logging.getLogger("roost.console.server")
_server_log.addFilter(_RefusedRequests())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(app: web.Application, host: str = "127.0.0.1", port: int = 8470, *,
                tls: tuple[Path, Path] | None = None) -> web.AppRunner:
    """Start serving `app` on `host:port` (TLS with a (certificate, key) pair); returns the
    runner, to `await runner.cleanup()` at the end. Warns when bound beyond loopback
    without TLS: the token and sessions would cross the network in clear text."""
    context = None
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
    elif not is_loopback(host):
        _log.warning("console_without_tls", host=host, port=port,
                     advice="bind to 127.0.0.1 or give a TLS certificate")
    # No access log: it would hold query strings.
    runner = web.AppRunner(app, access_log=None, logger=_server_log)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=context).start()
    except BaseException:
        await runner.cleanup()  # e.g. the port is taken
        raise
    return runner
