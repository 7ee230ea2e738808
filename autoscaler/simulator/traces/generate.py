"""Write the bundled sample traces (fixed seeds: the same files on every run).

    python -m autoscaler.simulator.traces.generate [--out DIR]

Each trace is one day (86,400 s, ``start`` in seconds from midnight):

* ``steady-weekday.csv``: Poisson arrivals with a working-hours profile
  (quiet night, ramp from 07:00, a lunch dip, tail-off until 19:00); 70 % amd64.
* ``bursty-ci-day.csv``: the same, plus bursts of 30–60 builds within one
  minute, four times over the working day (a monorepo pipeline fanning out).
* ``two-arch-migration.csv``: the steady profile while the amd64 share falls
  linearly from 90 % to 40 % over the day and arm64 rises.

Build durations are log-normal: median 4 min, σ = 1.0, so about one build in
300 runs past an hour; capped at 4 h (a CI job's usual timeout).
:func:`day` and :func:`week` are also used by the benchmark.
"""

# ruff: noqa: S311 - sample data wants a reproducible generator, not a secret one

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from common.trace_format import write

DAY_SECONDS = 86_400.0
MEDIAN_SECONDS = 240.0
"""Median build: 4 min, a typical image build with a warm cache."""
SIGMA = 1.0
"""Log-normal spread: p95 ≈ 20 min, about 0.3 % past an hour."""
CAP_SECONDS = 4 * 3600.0
"""Longest build: CI jobs time out, 4 h is a generous usual limit."""

# (hour, relative rate): piecewise linear over the day; the peak is 1.
_WORKDAY = (
    (0, 0.05), (6, 0.05), (7, 0.15), (9, 1.0), (12, 1.0), (12.5, 0.6), (13.5, 0.6),
    (14, 1.0), (17, 0.9), (19, 0.15), (21, 0.08), (24, 0.05),
)  # fmt: skip

Row = tuple[str, float, float]


def workday_rate(seconds: float) -> float:
    """The relative arrival rate at this time of day (1 at the peak)."""
    hour = (seconds % DAY_SECONDS) / 3600
    for (h0, r0), (h1, r1) in itertools.pairwise(_WORKDAY):
        if h0 <= hour <= h1:
            return r0 + (r1 - r0) * (hour - h0) / (h1 - h0)
    return _WORKDAY[-1][1]


def duration(rng: random.Random) -> float:
    return round(min(CAP_SECONDS, max(1.0, rng.lognormvariate(math.log(MEDIAN_SECONDS), SIGMA))), 1)


def _mean_rate() -> float:
    steps = 24 * 60
    return sum(workday_rate(i * 60.0) for i in range(steps)) / steps


def day(
    rng: random.Random,
    *,
    builds: int,
    amd64_share: Callable[[float], float],
    offset: float = 0.0,
    days: float = 1.0,
) -> list[Row]:
    """Poisson arrivals following the working-day profile, about ``builds`` of them (thinning)."""
    span = DAY_SECONDS * days
    peak_rate = builds / (span * _mean_rate())
    rows: list[Row] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak_rate)
        if t >= span:
            return rows
        if rng.random() < workday_rate(t):
            arch = "amd64" if rng.random() < amd64_share(t / span) else "arm64"
            rows.append((arch, round(offset + t, 3), duration(rng)))


def bursts(rng: random.Random, *, count: int, amd64_share: float) -> list[Row]:
    """``count`` bursts of 30–60 builds within one minute, during working hours."""
    rows: list[Row] = []
    for _ in range(count):
        at = rng.uniform(9.5 * 3600, 17 * 3600)
        for _ in range(rng.randint(30, 60)):
            arch = "amd64" if rng.random() < amd64_share else "arm64"
            rows.append((arch, round(at + rng.uniform(0, 60), 3), duration(rng)))
    return rows


def steady_weekday() -> list[Row]:
    return day(random.Random(20240301), builds=1500, amd64_share=lambda _f: 0.7)


def bursty_ci_day() -> list[Row]:
    rng = random.Random(20240302)
    return day(rng, builds=1500, amd64_share=lambda _f: 0.7) + bursts(rng, count=4, amd64_share=0.7)


def two_arch_migration() -> list[Row]:
    return day(random.Random(20240303), builds=1500, amd64_share=lambda f: 0.9 - 0.5 * f)


def week(*, builds: int = 100_000, seed: int = 20240304) -> list[Row]:
    """Seven working-day-profiled days with ``builds`` builds in all (the benchmark's trace)."""
    return day(random.Random(seed), builds=builds, amd64_share=lambda _f: 0.7, days=7)


TRACES: dict[str, Callable[[], list[Row]]] = {
    "steady-weekday.csv": steady_weekday,
    "bursty-ci-day.csv": bursty_ci_day,
    "two-arch-migration.csv": two_arch_migration,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the bundled sample traces.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="directory (default: beside this file)")
    args = parser.parse_args(argv)
    for name, make in TRACES.items():
        rows = sorted(make(), key=lambda r: r[1])
        with (args.out / name).open("w", encoding="utf-8", newline="") as out:
            out.write(f"# {name}: written by autoscaler/traces/generate.py (fixed seed); do not edit by hand\n")
            count = write(rows, out)
        sys.stdout.write(f"{args.out / name}: {count} builds\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
