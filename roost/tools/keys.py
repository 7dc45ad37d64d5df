"""Idempotency keys: checking a given key, a call's fingerprint, and deriving a key.

A call made without `key=` gets a key derived from the unit of work that may be
executed again and the call's number within it (see `derive_key`), so running
the unit again reproduces its keys, and two different calls never share one:

- a pipeline step: the run and the step (`step_unit`; a map item and a step's
  fallback are steps of their own);
- a message handled by an actor: the message's id (`message_unit`), which a
  redelivery after a crash keeps.

A call made outside any unit gets a fresh random key (`fresh_key`): it is never
deduplicated against another call, yet its own retries reuse the key.

Keys are stored in the ledger, so their derivation is versioned: a change to it
bumps `_KEY_SCHEME`.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import secrets
import uuid
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from roost.errors import ToolArgumentsInvalid, ToolCallOptionInvalid

__all__ = [
    "MAX_KEY_LENGTH",
    "Unit",
    "check_key",
    "derive_key",
    "fingerprint",
    "fresh_key",
    "message_unit",
    "step_unit",
]

# Bumped if the key derivation changes: keys are stored in the ledger.
_KEY_SCHEME: Final = "roost.tool-key.v2"
#: The longest idempotency key a caller may give, in bytes of UTF-8 (so in characters for
#: ASCII keys): the ledger stores it in an LMDB key, with the tool's name.
MAX_KEY_LENGTH: Final = 255
_ENCODER: Final = msgspec.msgpack.Encoder(order="sorted")
_ENCODE_ERRORS: Final = (TypeError, ValueError, msgspec.EncodeError)

# MessagePack holds 64-bit integers; a larger one is fingerprinted as this extension
# type holding its decimal digits.
_BIG_INT_EXT: Final = 1
_INT_RANGE: Final = range(-(2**63), 2**64)
# Passed through `to_builtins` as they are, so MessagePack encodes them as it does
# on the common path.
_NATIVE_TYPES: Final = (bytes, bytearray, memoryview, datetime.datetime, datetime.date,
                        datetime.time, datetime.timedelta, uuid.UUID, decimal.Decimal)

Unit = tuple[str, ...]
"""A unit of work that tool calls derive their keys from (`step_unit`, `message_unit`)."""


def step_unit(run_id: str, step: str) -> Unit:
    """The unit of one step of a run; `step` is as in `TraceContext.step` (`name`, `name/3`)."""
    return ("step", run_id, step)


def message_unit(message_id: str) -> Unit:
    """The unit of the handling of one message, by its id (`Envelope.message_id`)."""
    return ("message", message_id)


def derive_key(tool: str, unit: Unit, number: int) -> str:
    """The idempotency key of the call numbered `number` (from 0) that `unit` makes without one.

    The same tool, unit and number give the same key, across processes and
    restarts. The arguments are not part of it: when a unit runs again and its
    call at the same place has other arguments, the ledger answers with
    `IdempotencyConflict` rather than act a second time.
    """
    return hashlib.sha256(_ENCODER.encode([_KEY_SCHEME, tool, unit, number])).hexdigest()


def fresh_key() -> str:
    """A random key, for a call made outside any unit of work: it matches no other call."""
    return secrets.token_hex(32)


def check_key(tool: str, key: object) -> str:
    """The key as a plain str, if it is a non-empty str of at most `MAX_KEY_LENGTH` bytes
    of UTF-8 (a str subclass is taken as its plain value).

    Raises:
        ToolCallOptionInvalid: `key` is not such a str (naming the tool and the value).
    """
    if isinstance(key, str):
        plain = str.__str__(key)
        try:
            size = len(plain.encode("utf-8"))
        except UnicodeEncodeError:
            size = -1  # a lone surrogate: not storable text
        if 0 < size <= MAX_KEY_LENGTH:
            return plain
        if not plain:
            shown = "''"
        elif size < 0:
            shown = f"{plain[:20]!r} (not valid Unicode text)"
        else:
            shown = f"{plain[:20]!r}... ({size} bytes of UTF-8)"
    else:
        shown = f"{key!r:.60} ({type(key).__name__})"
    raise ToolCallOptionInvalid(
        tool,
        f"key={shown} is not a valid idempotency key; pass a non-empty str of at most "
        f"{MAX_KEY_LENGTH} bytes of UTF-8 (255 ASCII characters), or no key to have one derived",
        argument="key", expected="str", given=type(key).__name__,
    )


def fingerprint(arguments: Mapping[str, Any], *, tool: str) -> str:
    """A stable hash of a call's arguments: equal arguments give equal fingerprints.

    Arguments are encoded as MessagePack with sorted keys, then hashed with
    SHA-256. Dict order does not matter, and tuples and lists (or a Struct and
    the dict of its fields) encode alike; None, NaN, inf and -inf, 1 and 1.0,
    str and bytes all differ.

    Args:
        arguments: Bound arguments (see `ToolSpec.bind`).
        tool: The tool's name, for the error message only.

    Raises:
        ToolArgumentsInvalid: An argument cannot be encoded; the error names it.
    """
    try:
        encoded = _encode(arguments)
    except _ENCODE_ERRORS:
        raise _unencodable(tool, arguments) from None
    return hashlib.sha256(encoded).hexdigest()


def _encode(value: Any) -> bytes:
    try:
        return _ENCODER.encode(value)
    except OverflowError:  # an int beyond 64 bits: rare, so only then walk the value
        builtins = msgspec.to_builtins(value, order="sorted", builtin_types=_NATIVE_TYPES)
        return _ENCODER.encode(_tag_big_ints(builtins))


def _tag_big_ints(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT_RANGE:
        return msgspec.msgpack.Ext(_BIG_INT_EXT, str(value).encode())
    if isinstance(value, dict):
        return {name: _tag_big_ints(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_tag_big_ints(item) for item in value]
    return value


def _unencodable(tool: str, arguments: Mapping[str, Any]) -> ToolArgumentsInvalid:
    """The error naming the first argument that cannot be encoded."""
    for name, value in arguments.items():
        try:
            _encode(value)
        except _ENCODE_ERRORS as error:
            return ToolArgumentsInvalid(
                tool,
                f"argument {name!r} ({type(value).__name__}) cannot be hashed into the call's "
                f"fingerprint ({error}); arguments must be JSON-encodable (str, int, float, "
                "bool, None, bytes, lists, dicts with string keys, msgspec Structs), so pass "
                "plain data, or declare the tool read_only if it has no side effects",
                argument=name, given=type(value).__name__,
            )
    return ToolArgumentsInvalid(tool, "the arguments cannot be hashed into the call's fingerprint")
