"""SIGINT and SIGTERM for the CLI's long-running commands (`roost run`, `roost console`).

The handlers are installed with `signal.signal`, not `loop.add_signal_handler`: closing
the loop puts the default (death by signal) back, and a repeated signal landing in that
moment would turn a clean exit into "killed by SIGTERM" for the process manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def on_stop_signals(loop: asyncio.AbstractEventLoop,
                    callback: Callable[[signal.Signals], None]) -> None:
    """Call `callback(signum)` on `loop` for each SIGINT or SIGTERM."""

    def on_os_signal(signum: int, frame: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: exiting anyway
            loop.call_soon_threadsafe(callback, signal.Signals(signum))

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_os_signal)


def ignore_stop_signals() -> None:
    """Ignore SIGINT and SIGTERM from now on: the work has ended and the store is closed."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
