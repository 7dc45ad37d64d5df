"""The figure every bench reports: a value, its baseline from the same run, and their ratio."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from roost.runtime.loops import loop_factory


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

    def on_loop(self, loop: str) -> Figure:
        """This figure named for the event loop it was measured on: `NAME[uvloop]`; asyncio's keep NAME."""
        return self if loop == "asyncio" else replace(self, name=f"{self.name}[{loop}]")

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_value": self.baseline_value,
            "ratio": self.ratio,
        }


@dataclass(frozen=True)
class Target:
    """What a figure must reach: a ratio to its baseline, or an absolute value."""

    ratio: float | None = None
    value: float | None = None

    def met(self, entry: Mapping[str, Any]) -> bool:
        if self.ratio is not None:
            return bool(entry["ratio"] >= self.ratio)
        return self.value is not None and bool(entry["value"] >= self.value)

    def __str__(self) -> str:
        if self.ratio is not None:
            return f"ratio >= {self.ratio:.3g}"
        return f">= {self.value:,g}" if self.value is not None else ""


def report(figure: Figure, targets: Mapping[str, Target]) -> Figure:
    """Say on stderr whether `figure` meets its target in `targets`; return it."""
    target = targets[figure.name]
    verdict = "meets" if target.met(figure.as_json()) else "MISSES"
    print(f"{figure.name}: ratio {figure.ratio:.2f} {verdict} the target of {target}",
          file=sys.stderr, flush=True)
    return figure


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


@contextmanager
def event_loop(name: str) -> Iterator[None]:
    """Run every `asyncio.run` inside the block on the event loop `name` ("asyncio" or "uvloop").

    The benches call `asyncio.run` from many helpers, and the event loop policy is the one
    hook they all go through; the previous policy is restored after the block.
    """
    if name == "asyncio":  # the default policy's loop already
        yield
        return
    new_loop = loop_factory(name)

    class Policy(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            return new_loop()

    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(Policy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(previous)
