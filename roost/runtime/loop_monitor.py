"""The loop-lag monitor: notices a blocked event loop and names the actor that blocked it.

A blocking call inside `receive` (a `time.sleep`, a synchronous HTTP request, a long
computation) stalls every actor of the system. Two cheap probes catch it:

- a timer callback on the loop fires every `interval` seconds and measures how late
  it fired: that is the loop's lag, kept for `statistics()` (a callback, not a task,
  so it never looks busy to anything that waits for all tasks to block);
- a watchdog thread checks the task's heartbeat. When the heartbeat is older than
  `threshold` the loop is blocked right now, so the thread reads the loop thread's
  Python stack (`sys._current_frames`, no asyncio internals) for the actor cell whose
  message is being handled, and logs `event_loop_blocked` naming its path and the
  message type, once per block; when the loop runs again, `event_loop_unblocked` says
  how long the block lasted.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from types import FrameType
from typing import Any

from roost._logging import get_logger

_log = get_logger("roost")

#: The engine function whose frame holds the cell (`self`) and the message (`envelope`).
_DRAIN = "_drain_once"


class LoopMonitor:
    """Measures the event loop's lag and reports blocks (see the module docstring).

    Args:
        threshold: seconds of lag that count as a block and are logged.
        interval: seconds between probes (the smallest lag it can see).
    """

    def __init__(self, *, threshold: float = 0.1, interval: float = 0.05) -> None:
        self.threshold = threshold
        self.interval = interval
        self.last_lag = 0.0
        self.max_lag = 0.0
        self.blocks = 0
        self._beat = time.monotonic()
        self._reported_beat: float | None = None
        self._loop_thread = threading.get_ident()
        self._stopped = threading.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the probe on the running loop and the watchdog thread."""
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._schedule(asyncio.get_running_loop())
        self._thread = threading.Thread(target=self._watch, name="roost-loop-watchdog",
                                        daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop both probes and wait for the thread."""
        self._stopped.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 1.0)

    def statistics(self) -> dict[str, Any]:
        """The last and largest lag seen (seconds) and how many blocks were reported."""
        return {"last": self.last_lag, "max": self.max_lag, "blocks": self.blocks}

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = loop.call_later(self.interval, self._probe, loop, time.monotonic())

    def _probe(self, loop: asyncio.AbstractEventLoop, scheduled_at: float) -> None:
        now = time.monotonic()
        lag = max(0.0, now - scheduled_at - self.interval)
        self.last_lag = lag
        self.max_lag = max(self.max_lag, lag)
        if lag > self.threshold:
            if self._reported_beat != self._beat:
                # The watchdog missed it (a block shorter than its wake-up interval).
                self.blocks += 1
                _log.warning("event_loop_blocked", blocked_for=round(lag, 3), actor=None,
                             message_type=None, threshold=self.threshold)
            else:  # the watchdog logged it while it lasted: now say how long it was
                _log.info("event_loop_unblocked", blocked_for=round(lag, 3))
        self._beat = now
        if not self._stopped.is_set():
            self._schedule(loop)

    def _watch(self) -> None:
        while not self._stopped.wait(self.interval):
            beat = self._beat
            blocked_for = time.monotonic() - beat
            if blocked_for <= self.threshold or self._reported_beat == beat:
                continue
            self._reported_beat = beat
            self.blocks += 1
            actor, message_type = self._culprit()
            try:
                _log.warning("event_loop_blocked", blocked_for=round(blocked_for, 3), actor=actor,
                             message_type=message_type, threshold=self.threshold)
            except Exception:  # a log that cannot be written must not end the watchdog
                continue

    def _culprit(self) -> tuple[str | None, str | None]:
        """The path of the actor handling a message on the loop thread now, and its type."""
        frame: FrameType | None = sys._current_frames().get(self._loop_thread)
        while frame is not None:
            if frame.f_code.co_name == _DRAIN:
                cell = frame.f_locals.get("self")
                envelope = getattr(cell, "current", None)
                message = None if envelope is None else type(envelope.message).__name__
                return getattr(cell, "path", None), message
            frame = frame.f_back
        return None, None
