"""Idempotency keys: a call's fingerprint and the key derived for a call given none.

Keys are stored in the ledger, so their derivation is versioned: a change to it
bumps `_KEY_SCHEME`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from roost.errors import ToolArgumentsInvalid

__all__ = ["derive_key", "fingerprint"]

# Bumped if the key derivation changes: keys are stored in the ledger.
_KEY_SCHEME: Final = "roost.tool-key.v1"
_ENCODER: Final = msgspec.json.Encoder(order="sorted")


def fingerprint(arguments: Mapping[str, Any], *, tool: str) -> str:
    """A stable hash of a call's arguments: equal arguments give equal fingerprints.

    Arguments are encoded as JSON with sorted keys (dict order does not
    matter; tuples and lists encode alike), then hashed with SHA-256.

    Args:
        arguments: Bound arguments (see `ToolSpec.bind`).
        tool: The tool's name, for the error message only.

    Raises:
        ToolArgumentsInvalid: An argument cannot be encoded as JSON.
    """
    try:
        encoded = _ENCODER.encode(arguments)
    except (TypeError, msgspec.EncodeError) as error:
        raise ToolArgumentsInvalid(
            tool,
            f"arguments must be JSON-encodable (str, int, float, bool, None, lists, dicts "
            f"with string keys, msgspec Structs) to derive an idempotency key: {error}",
        ) from None
    return hashlib.sha256(encoded).hexdigest()


def derive_key(run_id: str, step_id: str, tool: str, arguments: Mapping[str, Any]) -> str:
    """The idempotency key of a call that was given none: a hash of where and what it is.

    The same run, step, tool and arguments always give the same key, across
    processes and restarts.

    Raises:
        ToolArgumentsInvalid: An argument cannot be encoded as JSON.
    """
    parts = [_KEY_SCHEME, run_id, step_id, tool, fingerprint(arguments, tool=tool)]
    return hashlib.sha256(_ENCODER.encode(parts)).hexdigest()
