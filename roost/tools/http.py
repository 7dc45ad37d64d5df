"""HttpTool: an HTTP endpoint declared as a tool, sending the idempotency key as a header.

    create_ticket = HttpTool("create_ticket", "POST", "https://desk.example.org/api/tickets",
                             session=system_session, timeout=10.0, retry=Retry(attempts=3))
    registry.register(create_ticket)
    # the proxy calls: await create_ticket(idempotency_key=key, json={...})

Failures map onto the tool errors the proxy acts on: a connection that could
not be made, 429 and 5xx raise `TransientToolError` (retried, counted by the
breaker); timeouts raise `ToolTimeout` and a connection that broke once the
request may have been sent raises `ToolConnectionLost`, both transient but
with an unknown outcome (retried only for idempotent tools, else settled by
`verify`); 409 to a request sent with an `Idempotency-Key` raises
`IdempotencyKeyInUse` (an earlier request with the key is still being processed:
retried, and if the retries run out the outcome is unknown); other 4xx raise
`PermanentToolError` with the status as its `code`. A side-effecting request
answered with a body that does not decode (malformed or too deeply nested JSON, a
charset Python has no codec for) took effect: it raises `ToolResultUnrecordable`,
and the proxy finalizes its key as such.

The header must carry the key exactly, or the service would deduplicate by another
key than the ledger: a key with a control character (which HTTP cannot carry) or
with leading or trailing whitespace (which HTTP strips) is refused before anything
is sent, with a `PermanentToolError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import aiohttp
import msgspec
from yarl import URL

from roost.errors import (
    ConfigurationError,
    IdempotencyKeyInUse,
    PermanentToolError,
    ToolConnectionLost,
    ToolResultUnrecordable,
    ToolTimeout,
    TransientToolError,
)
from roost.tools.breaker import Breaker
from roost.tools.bulkhead import DEFAULT_MAX_WAITING
from roost.tools.retry import Retry
from roost.tools.spec import SPEC_ATTRIBUTE, ToolSpec, Verify

__all__ = ["HttpTool"]

SessionSource = aiohttp.ClientSession | Callable[[], aiohttp.ClientSession]
"""A pooled session, or a callable returning the one to use at call time."""

_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})
_IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_EXCERPT_CHARS: Final = 200
# What an HTTP field value cannot carry as it is: control characters other than a tab
# (forbidden), and whitespace at either end (stripped by the receiver).
_UNSENDABLE_KEY: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|^[ \t]|[ \t]$")
# What an RFC 8941 string (the IETF draft's form of the header) can hold.
_STRUCTURED_KEY: Final = re.compile(r"[\x20-\x7e]+")
_KEY_FORMATS: Final = ("plain", "structured")


class HttpTool:
    """A tool that makes one HTTP request per call through a shared aiohttp session.

    Calling it (`await tool(idempotency_key=..., json=..., params=...)`) sends
    the request with the key in an `Idempotency-Key` header and returns
    `{"status": int, "body": ...}`, the body decoded from JSON when the
    response says it is JSON, else text (None when empty); plain data, so the
    ledger can store it. Its `spec` is what the registry holds; the key is
    passed by the proxy through `key_param="idempotency_key"`.

    Args:
        name: The tool's name.
        method: HTTP method (GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS).
        url: Absolute http(s) URL of the endpoint.
        session: The system's pooled `aiohttp.ClientSession`, or a callable
            returning it; the tool never closes it.
        headers: Headers sent with every request (e.g. authorization).
        timeout: Time limit of one request in seconds, connecting included; also
            the limit of each attempt, unless `retry.attempt_timeout` sets one.
        idempotent: Default: True for GET, HEAD, OPTIONS, PUT and DELETE.
        read_only: Default: True for GET, HEAD and OPTIONS (skips the ledger).
        breaker: See `ToolSpec`.
        retry: See `ToolSpec`; its `attempt_timeout` may be shorter than `timeout`.
        concurrency: See `ToolSpec`.
        max_waiting: See `ToolSpec`.
        fallback: See `ToolSpec`.
        verify: See `ToolSpec`.
        key_format: How the header carries the key: `plain`, the key as it is (Stripe's
            form, the default), or `structured`, a quoted RFC 8941 string (the IETF
            draft's form: `Idempotency-Key: "8e03978e"`, printable ASCII keys only).

    Raises:
        ConfigurationError: A bad method, URL, timeout, key format or spec option.
    """

    def __init__(
        self,
        name: str,
        method: str,
        url: str,
        *,
        session: SessionSource,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        idempotent: bool | None = None,
        read_only: bool | None = None,
        breaker: Breaker | None = None,
        retry: Retry | None = None,
        concurrency: int | None = None,
        max_waiting: int = DEFAULT_MAX_WAITING,
        fallback: Callable[..., Awaitable[Any]] | None = None,
        verify: Verify | None = None,
        key_format: str = "plain",
    ) -> None:
        if key_format not in _KEY_FORMATS:
            raise ConfigurationError(
                f"tool {name!r}: key_format={key_format!r} is invalid; use 'plain' (the key "
                "as it is, as Stripe reads it) or 'structured' (a quoted RFC 8941 string, as "
                "the IETF Idempotency-Key draft specifies)")
        method = method.upper() if isinstance(method, str) else method
        if method not in _METHODS:
            raise ConfigurationError(
                f"tool {name!r}: method={method!r} is invalid; use one of "
                f"{', '.join(sorted(_METHODS))}"
            )
        parsed = URL(url) if isinstance(url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigurationError(
                f"tool {name!r}: url={url!r} is invalid; use an absolute http:// or https:// URL"
            )
        if not (
            isinstance(timeout, int | float)
            and not isinstance(timeout, bool)
            and math.isfinite(timeout)
            and timeout > 0
        ):
            raise ConfigurationError(
                f"tool {name!r}: timeout={timeout!r} is invalid; use a positive number of seconds"
            )
        self.method = method
        self.key_format = key_format
        self.url = parsed
        self._session = session
        self._headers = dict(headers or {})
        self.timeout = timeout
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        # Errors and logs show the URL without credentials or query (they may hold secrets).
        self._shown_url = f"{method} {parsed.with_user(None).with_query(None).with_fragment(None)}"
        self.spec = ToolSpec(
            name=name,
            fn=self.__call__,
            idempotent=method in _IDEMPOTENT_METHODS if idempotent is None else idempotent,
            read_only=method in _SAFE_METHODS if read_only is None else read_only,
            breaker=breaker,
            retry=retry,
            # The request's own limit is the attempt's, unless the retry policy sets one.
            timeout=timeout if retry is None or retry.attempt_timeout is None else None,
            concurrency=concurrency,
            max_waiting=max_waiting,
            fallback=fallback,
            verify=verify,
            key_param="idempotency_key",
        )
        setattr(self, SPEC_ATTRIBUTE, self.spec)

    def __repr__(self) -> str:
        return f"HttpTool({self.spec.name!r}, {self._shown_url!r})"

    async def __call__(
        self,
        *,
        idempotency_key: str | None = None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send the request and wait for the whole response.

        Args:
            idempotency_key: Sent as the `Idempotency-Key` header (omitted when None).
            json: Request body, encoded as JSON (no body when None).
            params: Query parameters.

        Returns:
            `{"status": status, "body": decoded body}` for a status below 400.

        Raises:
            ToolTimeout: No complete response within the timeout.
            ToolConnectionLost: The connection broke after it was made (the
                request may have been sent and processed).
            TransientToolError: The connection could not be made (nothing was
                sent), or the status was 429 or 5xx.
            IdempotencyKeyInUse: 409 to a request sent with an idempotency key: an
                earlier request with that key is still being processed.
            PermanentToolError: Any other 4xx status (`code` is the status), a
                read-only request answered with a body that does not decode, or
                an `idempotency_key` that a header cannot carry exactly (nothing is sent).
            ToolResultUnrecordable: A side-effecting request was answered with a
                body that does not decode: it took effect, its answer is lost.

        If cancelled, the request may still be processed by the server.
        """
        tool = self.spec.name
        headers = self._headers
        if idempotency_key is not None:
            headers = {**headers, "Idempotency-Key": self._key_header(idempotency_key)}
        session = self._session if isinstance(self._session, aiohttp.ClientSession) else (
            self._session()
        )
        try:
            async with session.request(
                self.method, self.url, json=json, params=params, headers=headers,
                timeout=self._timeout,
            ) as response:
                body = await response.read()
        except TimeoutError as error:
            raise ToolTimeout(tool, self.timeout, self._shown_url) from error
        except aiohttp.ClientConnectorError as error:
            raise TransientToolError(
                f"tool {tool!r}: {self._shown_url} failed: {type(error).__name__}: {error}; "
                "the service may be down or unreachable (nothing was sent, safe to retry)"
            ) from error
        except aiohttp.ClientError as error:
            raise ToolConnectionLost(
                f"tool {tool!r}: {self._shown_url} broke off: {type(error).__name__}: {error}; "
                "the request may have been processed (retried only if the tool is idempotent, "
                "else settled by its verify hook)"
            ) from error
        status = response.status
        if status >= 400:
            raise self._status_error(response, body, keyed=idempotency_key is not None)
        return {"status": status, "body": self._decode(response, body, idempotency_key)}

    def _key_header(self, key: str) -> str:
        """The Idempotency-Key header's value for `key`, in the tool's `key_format`.

        Raises:
            PermanentToolError: the header cannot carry `key` exactly (nothing is sent).
        """
        if self.key_format == "structured":
            if not _STRUCTURED_KEY.fullmatch(key):
                raise PermanentToolError(
                    f"tool {self.spec.name!r}: idempotency key {key[:40]!r} cannot be sent as a "
                    "structured Idempotency-Key header (an RFC 8941 string holds printable "
                    "ASCII only); nothing was sent: use such a key, e.g. a UUID")
            return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if _UNSENDABLE_KEY.search(key):
            raise PermanentToolError(
                f"tool {self.spec.name!r}: idempotency key {key[:40]!r} cannot be sent as the "
                "Idempotency-Key header as it is (HTTP forbids control characters and strips "
                "whitespace at either end, so the service would see another key); nothing was "
                "sent: use printable text without leading or trailing spaces, e.g. a UUID")
        return key

    def _status_error(self, response: aiohttp.ClientResponse, body: bytes, *,
                      keyed: bool) -> Exception:
        tool = self.spec.name
        status = response.status
        answered = f"tool {tool!r}: {self._shown_url} answered {status} {response.reason}"
        excerpt = body[:_EXCERPT_CHARS].decode("utf-8", "replace")
        if status == 429 or status >= 500:
            retry_after = response.headers.get("Retry-After")
            hint = f" (Retry-After: {retry_after})" if retry_after else ""
            return TransientToolError(
                f"{answered}{hint}: {excerpt!r}; the service is overloaded or failing "
                "(transient, safe to retry later)"
            )
        if status == 409 and keyed:
            return IdempotencyKeyInUse(
                f"{answered}: {excerpt!r}; an earlier request with this Idempotency-Key is "
                "still being processed (retried with the same key)"
            )
        return PermanentToolError(
            f"{answered}: {excerpt!r}; the request was refused, retrying will not help: "
            "check the arguments, URL and credentials",
            code=status,
        )

    def _decode(self, response: aiohttp.ClientResponse, body: bytes, key: str | None) -> Any:
        """The body of a successful response: JSON decoded, else text in its charset.

        Raises:
            PermanentToolError: A read-only request's body does not decode.
            ToolResultUnrecordable: A side-effecting request's body does not decode: it
                took effect, its answer is lost.
        """
        if not body:
            return None
        is_json = response.content_type == "application/json" or (
            response.content_type.endswith("+json"))
        charset = response.charset or "utf-8"
        try:
            return msgspec.json.decode(body) if is_json else body.decode(charset, "replace")
        # DecodeError for malformed JSON, RecursionError for JSON nested too deep, LookupError
        # for an unknown or non-text charset, UnicodeError for a codec that cannot replace
        # what it cannot decode (idna).
        except (msgspec.DecodeError, RecursionError, LookupError, UnicodeError) as error:
            what = "a JSON body" if is_json else f"a body in charset {charset!r}"
            answered = (f"{self._shown_url} answered {response.status} with {what} that does "
                        f"not decode ({type(error).__name__}: {error})")
        if self.spec.read_only:  # it changed nothing: just a failed request
            raise PermanentToolError(
                f"tool {self.spec.name!r}: {answered}; check the service and the URL")
        raise ToolResultUnrecordable(self.spec.name, key or "", answered)
