"""structlog setup: console output on a terminal, JSON lines otherwise.

The application may configure structlog itself; roost then only binds fields
(actor path, trace id, run id) and emits snake_case past-tense events.
"""

from __future__ import annotations

import logging
import sys

import structlog

from roost.errors import ConfigurationError

LOG_FORMATS = ("auto", "console", "json")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def configure_logging(log_format: str = "auto", level: str = "info") -> None:
    """Configure structlog for roost's events, writing to stderr.

    Args:
        log_format: `console` (human-readable), `json` (one object per line), or
            `auto` (console when stderr is a terminal, else JSON).
        level: the lowest level written (`debug`, `info`, `warning`, `error`).

    Raises:
        ConfigurationError: an unknown format or level.
    """
    if log_format not in LOG_FORMATS:
        raise ConfigurationError(
            f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}"
        )
    if level not in LOG_LEVELS:
        raise ConfigurationError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if log_format == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
