"""The figure every bench reports: a value, its baseline from the same run, and their ratio."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One measured figure, oriented so that higher is better (rates, not times).

    `ratio = value / baseline_value`, so a ratio of 0.8 means "80% of the baseline".
    """

    name: str
    value: float
    unit: str
    baseline: str
    baseline_value: float

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value if self.baseline_value else float("nan")

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_value": self.baseline_value,
            "ratio": self.ratio,
        }


def best_rate(count: int, run: Callable[[], float], repeats: int = 3) -> float:
    """Run `run` (which returns elapsed seconds for `count` operations) and keep the best rate.

    The best of a few repeats is the figure least disturbed by the other core's noise.
    """
    return max(count / run() for _ in range(repeats))


def elapsed(fn: Callable[[], object]) -> float:
    """Seconds `fn()` takes on the monotonic clock."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
