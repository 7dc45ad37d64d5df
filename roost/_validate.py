"""Checks shared by every configuration validator: numbers, counts, and durations."""

from __future__ import annotations

import math
from typing import Any

from roost.errors import ConfigurationError


def is_number(value: object) -> bool:
    """A finite int or float (bools are not numbers here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: object, minimum: int) -> bool:
    """A whole number (not a bool) of at least `minimum`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_seconds(owner: str, field: str, value: Any, *, allow_zero: bool = True) -> None:
    """Raise `ConfigurationError` naming `owner`, `field` and `value` unless it is a duration."""
    if not (is_number(value) and (value >= 0 if allow_zero else value > 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{owner}: {field} must be a number of seconds {bound}, got {value!r}")


def check_count(owner: str, field: str, value: Any, minimum: int) -> None:
    """Raise `ConfigurationError` naming `owner`, `field` and `value` unless it is a count."""
    if not is_count(value, minimum):
        raise ConfigurationError(f"{owner}: {field} must be a whole number >= {minimum}, got {value!r}")
