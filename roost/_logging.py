"""roost's loggers: structlog loggers whose calls never raise into the runtime.

The application configures structlog's output; a log write can fail (a full disk, a
closed stream, a broken processor). A failure there must not kill an actor's drain, a
supervisor's stop sequence or a run's pause, so roost logs through `SafeLogger`, which
drops the event and counts it instead.
"""

from __future__ import annotations

from typing import Any

import structlog


class SafeLogger:
    """A structlog logger for roost's own events; a failing log call is dropped, not raised."""

    __slots__ = ("_logger",)

    #: Log calls dropped because writing them failed, in this process.
    failures = 0

    def __init__(self, name: str) -> None:
        self._logger = structlog.get_logger(name)

    def debug(self, event: str, **fields: Any) -> None:
        self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log("exception", event, fields)

    def _log(self, level: str, event: str, fields: dict[str, Any]) -> None:
        try:
            getattr(self._logger, level)(event, **fields)
        except Exception:  # the log is what failed: there is nowhere left to report it
            SafeLogger.failures += 1


def get_logger(name: str = "roost") -> SafeLogger:
    """roost's logger named `name` (`roost`, `roost.storage`)."""
    return SafeLogger(name)
