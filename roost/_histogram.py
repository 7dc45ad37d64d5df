"""`Histogram`: observations counted into fixed buckets, Prometheus-style, and the bucket
bounds roost uses. A foundation module: the store's writer thread and the metrics both
keep histograms."""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Any

#: Upper bounds (seconds) of the latency histograms: from a no-op step to a slow model call.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0, math.inf)
#: Upper bounds (bytes) of the size histograms.
SIZE_BUCKETS = (256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, math.inf)
#: Upper bounds of the group-commit batch size histogram (writes per commit).
BATCH_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, math.inf)


class Histogram:
    """Observations counted into fixed buckets, with their count and sum (Prometheus-style)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it) for every bucket, ending with +Inf."""
        total, pairs = 0, []
        for bound, count in zip(self.bounds, self.counts, strict=True):
            total += count
            pairs.append((bound, total))
        return pairs

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "sum": self.sum,
                "buckets": {bound_label(bound): count for bound, count in self.cumulative()}}

    def copy(self) -> Histogram:
        """A snapshot, safe to read while another thread goes on observing."""
        snapshot = Histogram(self.bounds)
        snapshot.counts = list(self.counts)
        snapshot.count = sum(snapshot.counts)
        snapshot.sum = self.sum
        return snapshot


def bound_label(bound: float) -> str:
    """A bucket bound as Prometheus writes it (`+Inf` for the last)."""
    return "+Inf" if bound == math.inf else repr(bound)
