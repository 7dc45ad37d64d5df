"""structlog setup: console output on a terminal, JSON lines otherwise.

The application may configure structlog itself; roost then emits snake_case
past-tense events, and `add_actor_context` is the processor to add to its chain
so that every event logged inside an actor carries the actor path, trace id
and run id.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from roost.errors import ConfigurationError
from roost.trace import call_trace, handling

LOG_FORMATS = ("auto", "console", "json")


def add_actor_context(logger: Any, method: str, event: MutableMapping[str, Any]
                      ) -> MutableMapping[str, Any]:
    """structlog processor: add the running actor's path and the current trace and run ids.

    Events logged inside an actor (by roost or by the application) get `actor`,
    `trace_id` and `run_id` without anyone binding them; fields already set win.
    Add it to your own structlog chain if you configure structlog yourself.
    """
    cell = handling.get()
    # Set inside a tool call (the caller's trace) and in a run's step tasks (the run's):
    # it wins over the message its actor happens to handle meanwhile.
    trace = call_trace.get()
    if cell is not None:
        event.setdefault("actor", cell.path)
        envelope = cell.current
        if trace is None and envelope is not None:
            trace = envelope.trace_context()
    if trace is not None:
        event.setdefault("trace_id", trace.trace_id)
        if trace.run_id is not None:
            event.setdefault("run_id", trace.run_id)
    return event
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
            add_actor_context,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
