"""Percentiles and summaries of latency samples."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100), interpolating linearly between ranks
    (numpy's default "linear" method): with 200 samples p99 lies between the
    198th and the 199th smallest."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Summary:
    """Latency samples in seconds, summarised."""

    count: int
    p50_seconds: float
    p99_seconds: float
    max_seconds: float
    mean_seconds: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(
            count=len(values),
            p50_seconds=percentile(values, 50),
            p99_seconds=percentile(values, 99),
            max_seconds=max(values, default=math.nan),
            mean_seconds=statistics.fmean(values) if values else math.nan,
        )


def ms(seconds: float) -> str:
    """Seconds as milliseconds for a table: three significant figures, at least 0.01 ms."""
    value = seconds * 1000.0
    if math.isnan(value):
        return "n/a"
    if value >= 100:
        return f"{value:.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"
