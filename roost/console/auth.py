"""The console's credential: one bearer token, browser sessions signed in with it, CSRF
tokens for their forms, and a brake on repeated failed sign-ins.

The token comes from `ROOST_CONSOLE_TOKEN`, or is generated on first start into the
store folder (`console.token`, mode 0600) and printed once. An API client sends it as
`Authorization: Bearer <token>`; a browser signs in with it (and the name its
decisions will carry) and gets an HttpOnly, SameSite=Strict session cookie. Every form
of a session carries that session's CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from roost.errors import ConfigurationError

TOKEN_ENV = "ROOST_CONSOLE_TOKEN"
TOKEN_FILE = "console.token"
COOKIE = "roost_session"
#: How long a browser session lasts without being used, in seconds.
SESSION_IDLE = 12 * 3600.0
#: Failed sign-ins from one address allowed before each further one is slowed.
FREE_FAILURES = 3
#: The longest a failed sign-in is held back, in seconds.
MAX_DELAY = 10.0


#: The shortest token the console takes (a generated one has 43 characters).
MIN_TOKEN_LENGTH = 16


def load_token(folder: str | os.PathLike[str] | None) -> tuple[str, bool]:
    """The console's token, and whether it was generated just now (print it once, then).

    Raises:
        ConfigurationError: no `ROOST_CONSOLE_TOKEN` and no store folder to keep one in,
            or a token file that is empty or readable by others.
    """
    from_env = os.environ.get(TOKEN_ENV, "").strip()
    if from_env:
        return from_env, False
    if folder is None:
        raise ConfigurationError(f"the console needs a token: set {TOKEN_ENV}, or give the "
                                 "system a store folder to keep a generated one in")
    path = Path(folder) / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token(path), False
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token, True


def _read_token(path: Path) -> str:
    if path.stat().st_mode & 0o077:
        raise ConfigurationError(f"{path} can be read by other users; run "
                                 f"`chmod 600 {path}` (or delete it for a new token)")
    token = path.read_text().strip()
    if not token:
        raise ConfigurationError(f"{path} is empty; delete it to generate a new token")
    return token


def _utf8(text: str) -> bytes:
    """`text` as bytes to compare, for any text: a header's bytes that are not UTF-8 come
    to the console as lone surrogates, which strict UTF-8 refuses to encode."""
    return text.encode("utf-8", "surrogatepass")


class Session(msgspec.Struct):
    """A signed-in browser: who (the name decisions record), its CSRF token, last use."""

    name: str
    csrf: str
    used_at: float


class Auth:
    """Checks credentials and keeps the sessions of one console.

    Args:
        token: the bearer token.
        clock: seconds (monotonic), injectable for tests.
    """

    def __init__(self, token: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not token:
            raise ConfigurationError("the console token must not be empty")
        if len(token) < MIN_TOKEN_LENGTH:
            # Every API call checks it, so a short one could be guessed by trying them all.
            raise ConfigurationError(
                f"the console token is too short to resist guessing ({len(token)} characters); "
                f"use at least {MIN_TOKEN_LENGTH} random ones, e.g. from python -c 'import "
                f"secrets; print(secrets.token_urlsafe(32))' (unset {TOKEN_ENV} to have one "
                "generated)")
        self._token = _utf8(token)
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._failures: dict[str, int] = {}
        self._held_until: dict[str, float] = {}

    def token_matches(self, candidate: str) -> bool:
        """Whether `candidate` is the token (compared in constant time)."""
        return hmac.compare_digest(hashlib.sha256(_utf8(candidate)).digest(),
                                   hashlib.sha256(self._token).digest())

    def bearer_ok(self, header: str | None) -> bool:
        """Whether an `Authorization` header carries the token."""
        if not header or not header.startswith("Bearer "):
            return False
        return self.token_matches(header.removeprefix("Bearer ").strip())

    def sign_in(self, name: str) -> tuple[str, Session]:
        """A new session for `name`: its id (the cookie's value) and the session."""
        self._expire()
        session_id = secrets.token_urlsafe(32)
        session = Session(name=name, csrf=secrets.token_urlsafe(32), used_at=self._clock())
        self._sessions[session_id] = session
        return session_id, session

    def session(self, session_id: str | None) -> Session | None:
        """The live session with this id (its idle time restarts), or None."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        now = self._clock()
        if session is None or now - session.used_at > SESSION_IDLE:
            self._sessions.pop(session_id, None)
            return None
        session.used_at = now
        return session

    def sign_out(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)

    def csrf_ok(self, session: Session, candidate: str | None) -> bool:
        return bool(candidate) and hmac.compare_digest(_utf8(session.csrf),
                                                       _utf8(candidate or ""))

    def failed(self, address: str) -> float:
        """Count a failed sign-in from `address`; the seconds to hold the answer back, during
        which `address` is held (see `held_for`)."""
        count = self._failures[address] = self._failures.get(address, 0) + 1
        if count <= FREE_FAILURES:
            return 0.0
        delay = min(MAX_DELAY, 0.5 * 2 ** (count - FREE_FAILURES - 1))
        self._held_until[address] = self._clock() + delay
        return delay

    def held_for(self, address: str) -> float:
        """The seconds before `address` may try the token again (0: now). No attempt is
        checked while its address is held, so guesses sent in parallel, rather than one
        after another, gain nothing from the brake's delay."""
        until = self._held_until.get(address)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._held_until[address]
            return 0.0
        return left

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
        self._held_until.pop(address, None)

    def _expire(self) -> None:
        now = self._clock()
        for session_id in [i for i, s in self._sessions.items() if now - s.used_at > SESSION_IDLE]:
            del self._sessions[session_id]
