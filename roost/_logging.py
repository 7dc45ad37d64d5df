"""roost's loggers: structlog loggers whose calls never raise into the runtime.

The application configures structlog's output; a log write can fail (a full disk, a
closed stream, a broken processor). A failure there must not kill an actor's drain, a
supervisor's stop sequence or a run's pause, so roost logs through `SafeLogger`, which
drops the event and counts it instead.

structlog's own lazy logger assembles a new bound logger on every call unless it is
cached for good, which would ignore a later `structlog.configure`. `SafeLogger` keeps
its assembled logger until the configuration it was assembled from changes.
"""

from __future__ import annotations

from typing import Any

import structlog


class SafeLogger:
    """A structlog logger for roost's own events; a failing log call is dropped, not raised."""

    __slots__ = ("_bound", "_config", "_name")

    #: Log calls dropped because writing them failed, in this process.
    failures = 0

    def __init__(self, name: str) -> None:
        self._name = name
        self._config: tuple[Any, ...] = ()
        self._bound: Any = None

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
            getattr(self._logger(), level)(event, **fields)
        except Exception:  # the log is what failed: there is nowhere left to report it
            SafeLogger.failures += 1

    def _logger(self) -> Any:
        """The bound logger for structlog's current configuration."""
        config = structlog.get_config()
        current = (config["processors"], config["wrapper_class"], config["logger_factory"],
                   config["context_class"])
        if current != self._config:  # first use, or structlog was configured again
            self._bound = structlog.get_logger(self._name).bind()
            self._config = current
        return self._bound


def get_logger(name: str = "roost") -> SafeLogger:
    """roost's logger named `name` (`roost`, `roost.storage`)."""
    return SafeLogger(name)
