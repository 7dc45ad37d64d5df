"""Webhook notifications of gates: each gate that opens or escalates is POSTed, signed, to a URL.

    system.gates.add_webhook("https://hooks.example.org/roost", secret=os.environ["HOOK_SECRET"])

The body is a `GateNotification` as JSON. `Roost-Signature: t=<unix seconds>,v1=<hex>`
carries an HMAC-SHA256 of `f"{t}." + body` under the shared secret (Stripe's scheme);
receivers check it with `verify_signature`. Each notification goes through the tool
proxy as a call of the tool `roost.webhook.<name>`, keyed by the gate's run, name,
opening and the audit-trail length up to the event it announces (also sent as
`Idempotency-Key`).

Delivery is at least once, like Stripe's: a notification is retried on 429, 5xx, a
connection that could not be made, and a request cut off after it was sent (a timeout, a
broken connection), which may have arrived; receivers drop repeats by `Idempotency-Key`.
Each delivery is noted in the gate's audit trail (a `notified` event naming the webhook's
tool and the key), and the tool ledger replays a completed call with the same key, so a
notification that arrived is not sent again, in this process or a later one. One not
delivered yet (the retries ran out, the breaker refused it while open, or the process
stopped first) is sent when a later process adds the webhook, if its gate still waits
and the event is still the gate's latest. Failures are logged and never affect the run.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import msgspec
from yarl import URL

from roost.errors import (
    ConfigurationError,
    PermanentToolError,
    RoostError,
    ToolConnectionLost,
    ToolTimeout,
    TransientToolError,
)
from roost.storage import GateRecord, StoreInterface
from roost.storage.gates import NOTIFIED, PENDING, notified, notified_op
from roost.tools.breaker import Breaker
from roost.tools.retry import Retry
from roost.tools.spec import ToolSpec

if TYPE_CHECKING:
    from roost.tools.client import Tools

__all__ = [
    "SIGNATURE_HEADER",
    "GateNotification",
    "SignatureInvalid",
    "Webhook",
    "sign",
    "verify_signature",
]

#: The header that carries a notification's signature.
SIGNATURE_HEADER: Final = "Roost-Signature"
#: The retry policy of a webhook unless `add_webhook(retry=...)` sets one.
DEFAULT_RETRY: Final = Retry(attempts=5, base_delay=0.5, max_delay=30.0)
#: The circuit breaker of a webhook unless `add_webhook(breaker=...)` sets one.
DEFAULT_BREAKER: Final = Breaker(failures=5, cooldown=30.0)

_ENCODER = msgspec.json.Encoder()
_EXCERPT_CHARS: Final = 200


class SignatureInvalid(RoostError, ValueError):
    """A webhook request whose `Roost-Signature` is malformed, does not match, or is too old."""


class GateNotification(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON body of a webhook request: a gate that opened or escalated.

    Attributes:
        event: "gate.opened" or "gate.escalated".
        run_id, gate, pipeline, step: where the run waits.
        kind: "step", "review" or "outcome" (see `GateRecord.gate_kind`).
        reason: why the gate is there.
        assignees: who should decide (after an escalation, the new ones).
        opened_at: when the gate opened, in seconds since the epoch.
        deadline: when its timeout applies (None: never).
        input_type: the name of the type an edit must fit, if any.
        shown: the data the person decides on.
    """

    event: str
    run_id: str
    gate: str
    pipeline: str
    step: str
    kind: str
    reason: str
    assignees: list[str]
    opened_at: float
    deadline: float | None
    input_type: str | None
    shown: Any


def _announced(record: GateRecord) -> tuple[str, int]:
    """The event a webhook announces for `record` ("gate.escalated" after an escalation, else
    "gate.opened") and the length of the audit trail up to it: the `notified` notes after it
    do not count, so the key stays the one its first delivery used."""
    for index in range(len(record.history) - 1, -1, -1):
        what = record.history[index].what
        if what != NOTIFIED:
            return ("gate.escalated" if what == "escalated" else "gate.opened"), index + 1
    return "gate.opened", 0


def notification_of(record: GateRecord) -> GateNotification:
    """What a webhook sends for `record`, as it opened or, after an escalation, escalated."""
    event, _ = _announced(record)
    return GateNotification(
        event=event, run_id=record.run_id,
        gate=record.gate, pipeline=record.pipeline, step=record.step, kind=record.gate_kind,
        reason=record.reason, assignees=list(record.assignees), opened_at=record.opened_at,
        deadline=record.deadline, input_type=record.input_type,
        shown=msgspec.json.decode(record.shown))


def notification_key(record: GateRecord, event: str) -> str:
    """The idempotency key of `record`'s notification of `event`.

    The length of the audit trail up to the announced event tells an escalation from the
    opening; the opening time tells a gate opened again after a decision (a tool step's
    outcome gate, after "not_done") from its first opening. Hashed: run ids and gate names
    may be long and hold any character, and the key travels as a header.
    """
    _, length = _announced(record)
    identity = msgspec.msgpack.encode(
        [record.run_id, record.gate, event, record.opened_at, length])
    return f"roost-gate-{hashlib.sha256(identity).hexdigest()}"


def sign(secret: str | bytes, body: bytes, timestamp: int) -> str:
    """The `Roost-Signature` header value of `body` sent at `timestamp` (unix seconds)."""
    return f"t={timestamp},v1={_digest(_secret_bytes(secret), timestamp, body)}"


def verify_signature(secret: str | bytes, header: str, body: bytes | str, *,
                     tolerance: float = 300.0, now: float | None = None) -> None:
    """Check a webhook request's `Roost-Signature` header against its raw body.

    Args:
        secret: the secret the webhook was added with.
        header: the header's value: `t=<unix seconds>,v1=<hex>` (several `v1` are
            allowed; one must match).
        body: the request body exactly as received.
        tolerance: how many seconds the timestamp may be away from `now`, against replays.
        now: the current time in seconds since the epoch (default: the clock's).

    Raises:
        SignatureInvalid: the header is malformed, no signature matches, or the
            timestamp is outside the tolerance.
        ConfigurationError: the secret is not a non-empty str or bytes.
    """
    key = _secret_bytes(secret)
    if not (isinstance(tolerance, int | float) and not isinstance(tolerance, bool)
            and tolerance >= 0):
        raise ConfigurationError(f"tolerance={tolerance!r} must be a number of seconds >= 0")
    timestamp, signatures = _parse(header)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureInvalid(
            f"{SIGNATURE_HEADER} timestamp {timestamp} is {current - timestamp:.0f} s away from "
            f"now, more than the tolerance of {tolerance:g} s; a replayed or delayed request")
    data = body.encode() if isinstance(body, str) else body
    expected = _digest(key, timestamp, data)
    if not any(hmac.compare_digest(expected, given) for given in signatures):
        raise SignatureInvalid(
            f"{SIGNATURE_HEADER} does not match the body; check that the secret is the "
            "webhook's and that the body is verified exactly as received")


def _parse(header: object) -> tuple[int, list[str]]:
    if not isinstance(header, str):
        raise SignatureInvalid(f"{SIGNATURE_HEADER} header must be text, got "
                               f"{type(header).__name__}")
    timestamps: list[str] = []
    signatures: list[str] = []
    for part in header.split(","):
        name, separator, value = part.strip().partition("=")
        if not separator:
            raise SignatureInvalid(f"{SIGNATURE_HEADER} header {header!r:.100} is malformed; "
                                   "expected t=<unix seconds>,v1=<hex signature>")
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            signatures.append(value)
    if len(timestamps) != 1 or not timestamps[0].isascii() or not timestamps[0].isdigit() \
            or not signatures:
        raise SignatureInvalid(f"{SIGNATURE_HEADER} header {header!r:.100} is malformed; "
                               "expected one t=<unix seconds> and at least one v1=<hex signature>")
    return int(timestamps[0]), signatures


def _digest(key: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def _secret_bytes(secret: object) -> bytes:
    if isinstance(secret, str) and secret:
        return secret.encode()
    if isinstance(secret, bytes) and secret:
        return secret
    shown = "an empty one" if isinstance(secret, str | bytes) else type(secret).__name__
    raise ConfigurationError(f"webhook secret= must be a non-empty str or bytes, got {shown}")


class Webhook:
    """Posts gate notifications to `url` through the tool proxy (see the module).

    It is the `on_open` callback `Gates.add_webhook` installs; `spec` is its tool, which
    takes a `GateNotification` and returns the response's status. The tool is idempotent:
    the request carries its key, by which receivers drop repeats.

    Args:
        url: absolute http:// or https:// URL of the receiver.
        secret: the shared secret requests are signed with (never logged).
        name: the webhook's name; its tool is `roost.webhook.<name>`.
        tools: the system's tools, to call the tool through.
        session: returns the pooled aiohttp session to send with (never closed here).
        store: returns the system's store, where deliveries are noted (None: not noted).
        clock: wall-clock seconds since the epoch, for the notes.
        timeout: seconds one request may take, connecting included; also each attempt's
            limit, unless `retry.attempt_timeout` sets one.
        retry: the retry policy of each notification (None: a single attempt).
        breaker: the circuit breaker of the receiver (None: none).

    Raises:
        ConfigurationError: a bad url, secret, name, timeout or tool option.
    """

    def __init__(self, url: str, *, secret: str | bytes, name: str, tools: Tools,
                 session: Callable[[], aiohttp.ClientSession],
                 store: Callable[[], StoreInterface | None] = lambda: None,
                 clock: Callable[[], float] = time.time, timeout: float = 10.0,
                 retry: Retry | None = DEFAULT_RETRY,
                 breaker: Breaker | None = DEFAULT_BREAKER) -> None:
        parsed = URL(url) if isinstance(url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigurationError(f"webhook url={url!r:.100} is invalid; use an absolute "
                                     "http:// or https:// URL")
        self._secret = _secret_bytes(secret)
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ConfigurationError(f"webhook name={name!r:.80} is invalid; use a non-empty "
                                     "name without spaces (its tool is roost.webhook.<name>)")
        if not (isinstance(timeout, int | float) and not isinstance(timeout, bool)
                and math.isfinite(timeout) and timeout > 0):
            raise ConfigurationError(f"webhook {name!r}: timeout={timeout!r} is invalid; use "
                                     "a positive number of seconds")
        self.url = parsed
        self.timeout = timeout
        self._tools = tools
        self._session = session
        self._store = store
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        # Errors show the URL without credentials or query (they may hold secrets).
        self._shown_url = str(parsed.with_user(None).with_query(None).with_fragment(None))
        self.spec = ToolSpec(
            name=f"roost.webhook.{name}", fn=self._post, idempotent=True, breaker=breaker,
            retry=retry, key_param="idempotency_key",
            # The request's own limit is each attempt's, unless the retry policy sets one.
            timeout=timeout if getattr(retry, "attempt_timeout", None) is None else None)

    def __repr__(self) -> str:
        return f"Webhook({self.spec.name!r}, {self._shown_url!r})"

    def delivered(self, record: GateRecord) -> bool:
        """Whether `record`'s audit trail notes that this webhook delivered its latest event."""
        event, _ = _announced(record)
        return notified(record, self.spec.name, notification_key(record, event))

    async def __call__(self, record: GateRecord) -> None:
        """Notify the receiver of `record`'s latest event (its opening or escalation), then
        note the delivery in the gate's audit trail. A gate no longer pending (decided or
        closed meanwhile), or whose record notes the delivery, is not announced.

        Raises:
            ToolError: the notification failed (after its retries) or the breaker is
                open; see `Tools.call`.
            StoreError: the delivery could not be noted (the ledger still keeps it from
                being sent again while it retains the key).
        """
        if record.status != PENDING or self.delivered(record):
            return
        notification = notification_of(record)
        key = notification_key(record, notification.event)
        await self._tools.call(self.spec.name, key=key, notification=notification)
        store = self._store()
        if store is not None:
            await store.commit([notified_op(record, self.spec.name, key, self._clock())])

    async def _post(self, *, notification: GateNotification, idempotency_key: str) -> int:
        """Send one signed request; its status (2xx), or the tool error the proxy acts on."""
        tool = self.spec.name
        body = _ENCODER.encode(notification)
        headers = {"Content-Type": "application/json",
                   SIGNATURE_HEADER: sign(self._secret, body, int(time.time())),
                   "Idempotency-Key": idempotency_key}
        try:
            async with self._session().post(self.url, data=body, headers=headers,
                                            timeout=self._timeout,
                                            allow_redirects=False) as response:
                answer = await response.read()
        except TimeoutError as error:
            raise ToolTimeout(tool, self.timeout, f"POST {self._shown_url}") from error
        except aiohttp.ClientConnectorError as error:
            raise TransientToolError(
                f"tool {tool!r}: POST {self._shown_url} failed: {type(error).__name__}: {error}; "
                "the receiver may be down (nothing was sent, retried)") from error
        except aiohttp.ClientError as error:
            raise ToolConnectionLost(
                f"tool {tool!r}: POST {self._shown_url} broke off: {type(error).__name__}: "
                f"{error}; the notification may have arrived (retried with the same "
                "Idempotency-Key)") from error
        status = response.status
        if 200 <= status < 300:
            return status
        answered = (f"tool {tool!r}: POST {self._shown_url} answered {status} {response.reason}: "
                    f"{answer[:_EXCERPT_CHARS].decode('utf-8', 'replace')!r}")
        if status == 429 or status >= 500:
            raise TransientToolError(f"{answered}; the receiver is overloaded or failing "
                                     "(transient, retried)")
        raise PermanentToolError(f"{answered}; the receiver refused the notification, retrying "
                                 "will not help: check its URL and that it verifies with the "
                                 "same secret")
