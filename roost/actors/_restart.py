"""The pure parts of supervision: whether to restart, restart intensity, restarts in a row.

Kept free of the runtime (the clock is a parameter) so they can be tested
exhaustively without sleeping.
"""

from __future__ import annotations

from collections import deque


def should_restart(restart: str, abnormal: bool) -> bool:
    """Whether a child of this restart type is restarted after this kind of exit.

    Args:
        restart: `permanent`, `transient` or `temporary`.
        abnormal: True after a failure (an exception), False after a normal exit.
    """
    if restart == "permanent":
        return True
    if restart == "transient":
        return abnormal
    return False


def restarts_in_a_row(previous: int, ran_for: float, reset_after: float) -> int:
    """How many restarts in a row the next restart of a child is, counting itself.

    Args:
        previous: the restarts in a row so far (0 if it never failed).
        ran_for: seconds the child ran since its last (re)start before failing now;
            the wait for that restart is not included.
        reset_after: seconds of clean running after which the count starts again.
    """
    return 1 if ran_for >= reset_after else previous + 1


class RestartIntensity:
    """At most `max_restarts` restarts within any `within`-second window (OTP's MaxR/MaxT)."""

    __slots__ = ("_times", "max_restarts", "within")

    def __init__(self, max_restarts: int, within: float) -> None:
        self.max_restarts = max_restarts
        self.within = within
        self._times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Record a restart at `now`; False if it would exceed the intensity."""
        times = self._times
        while times and times[0] <= now - self.within:
            times.popleft()
        if len(times) >= self.max_restarts:
            return False
        times.append(now)
        return True

    def __len__(self) -> int:
        return len(self._times)
