"""What a simulation measured: per pool and in total, the ``M`` of ``report.json``, and the chart's series."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """One pool's (or the total's) outcome: the ``M`` of ``report.json``."""

    builder_seconds: float
    """Cost: every pod from creation to deletion, starting and draining included."""
    lower_bound_builder_seconds: float
    """Σ unloaded build seconds ÷ capacity (failed builds left out): no fleet can cost less."""
    efficiency: float | None
    """Lower bound ÷ cost (1 is perfect); None without cost."""
    slowdown_p50: float | None
    slowdown_p95: float | None
    slowdown_max: float | None
    """(end − submission) ÷ unloaded duration over completed builds; None without any."""
    waited_builds: int
    """Builds that found no ready builder (behind the router: no usable one) and waited for one,
    then ran (a failed build's wait is not counted)."""
    wait_p95_seconds: float
    wait_max_seconds: float
    """Over the builds that waited (0 when none did)."""
    overloaded_builder_seconds: float
    """Builder-seconds spent with more builds than capacity (everything on them slower)."""
    starting_builder_seconds: float
    """Where the cost went, part 1 of 4: pods from creation until ready (or deleted first)."""
    idle_builder_seconds: float
    """Part 2: ready builders taking builds but running none (spares, windows, the night)."""
    busy_builder_seconds: float
    """Part 3: ready builders running at least one build."""
    draining_builder_seconds: float
    """Part 4: removed pods finishing their builds. The four parts add up to ``builder_seconds``."""
    scale_events: int
    """Replica changes the controller made."""
    peak_replicas: int
    interrupted_builds: int
    """Builds cut by a drain that reached its deadline."""
    failed_builds: int
    """Builds the router had no usable builder for within the client's deadline (or its queue's
    time): rejected, never run, no cost. Always 0 under ``random`` and ``least-connections``,
    where a build waits for a ready builder."""

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "builder_seconds": self.builder_seconds,
            "lower_bound_builder_seconds": self.lower_bound_builder_seconds,
            "efficiency": self.efficiency,
            "slowdown_p50": self.slowdown_p50,
            "slowdown_p95": self.slowdown_p95,
            "slowdown_max": self.slowdown_max,
            "waited_builds": self.waited_builds,
            "wait_p95_seconds": self.wait_p95_seconds,
            "wait_max_seconds": self.wait_max_seconds,
            "overloaded_builder_seconds": self.overloaded_builder_seconds,
            "starting_builder_seconds": self.starting_builder_seconds,
            "idle_builder_seconds": self.idle_builder_seconds,
            "busy_builder_seconds": self.busy_builder_seconds,
            "draining_builder_seconds": self.draining_builder_seconds,
            "scale_events": self.scale_events,
            "peak_replicas": self.peak_replicas,
            "interrupted_builds": self.interrupted_builds,
            "failed_builds": self.failed_builds,
        }


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence (None if empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True, kw_only=True)
class Series:
    """One pool over time, for the chart: a sample at each poll where something changed."""

    times: list[float]
    active_builds: list[int]
    """Submitted and not ended: running (draining pods included) plus waiting."""
    replicas: list[int]
    """``spec.replicas``."""
    capacity: list[int]
    """Ready builders × capacity: builds that can run at full speed."""
    scale_times: list[float]
    scale_to: list[int]


@dataclass(frozen=True, kw_only=True)
class PoolRun:
    """One pool's simulation."""

    name: str
    arch: str
    metrics: Outcome
    slowdowns: list[float]
    """Per completed build, ascending."""
    waits: list[float]
    """Per build that waited, ascending."""
    build_seconds: float
    """Σ unloaded build seconds of the builds that were not failed (the work asked of the builders)."""
    capacity: int
    scales: list[tuple[float, int]]
    """(time, new replicas) of each scale, with the initial replicas at time 0 first."""
    series: Series | None
    cut_work_seconds: float
    """Build-seconds interrupted builds never ran (so cost × capacity ≥ build seconds − this)."""
    ended: int
    """Builds that ended exactly once (completed, interrupted or failed): should be every build."""
    builds: int


@dataclass(frozen=True, kw_only=True)
class Run:
    """Every pool of one config (or baseline) on one trace."""

    pools: dict[str, PoolRun]
    total: Outcome
    span_seconds: float
    """Simulated time: from the trace's start to the end of its last build."""

    def as_dict(self) -> dict[str, object]:
        return {
            "pools": {name: run.metrics.as_dict() for name, run in self.pools.items()},
            "total": self.total.as_dict(),
        }


BASELINES = ("static_peak", "hpa_default", "hpa_default_random")
"""``report.json``'s baselines, in table order (:mod:`autoscaler.simulator.runs` says what each is)."""


@dataclass(frozen=True, kw_only=True)
class Report:
    """A config's run next to the three baselines, under the routing it names."""

    routing: str
    """The routing of the config's run and of the first two baselines (the third is random's)."""
    run: Run
    static_peak: Run
    hpa_default: Run
    hpa_default_random: Run

    def baseline(self, name: str) -> Run:
        """One of :data:`BASELINES` by name."""
        runs = {"static_peak": self.static_peak, "hpa_default": self.hpa_default,
                "hpa_default_random": self.hpa_default_random}  # fmt: skip
        return runs[name]

    def as_dict(self) -> dict[str, object]:
        """The ``report.json`` layout: ``{"routing": name, "pools": {name: M}, "total": M,
        "baselines": {"static_peak": M, "hpa_default": M, "hpa_default_random": M}}``."""
        return {
            "routing": self.routing,
            **self.run.as_dict(),
            "baselines": {name: self.baseline(name).total.as_dict() for name in BASELINES},
        }


def cost_and_delays(*, cost: float, lower: float, slowdowns: list[float], waits: list[float]) -> dict[str, Any]:
    """The Metrics fields derived the same way for a pool and for the total (both lists sorted)."""
    return {
        "builder_seconds": cost,
        "lower_bound_builder_seconds": lower,
        "efficiency": lower / cost if cost > 0 else None,
        "slowdown_p50": percentile(slowdowns, 50),
        "slowdown_p95": percentile(slowdowns, 95),
        "slowdown_max": slowdowns[-1] if slowdowns else None,
        "waited_builds": len(waits),
        "wait_p95_seconds": percentile(waits, 95) or 0.0,
        "wait_max_seconds": waits[-1] if waits else 0.0,
    }


def total(runs: Sequence[PoolRun]) -> Outcome:
    slowdowns = sorted(s for r in runs for s in r.slowdowns)
    waits = sorted(w for r in runs for w in r.waits)
    cost = sum(r.metrics.builder_seconds for r in runs)
    lower = sum(r.metrics.lower_bound_builder_seconds for r in runs)
    return Outcome(
        **cost_and_delays(cost=cost, lower=lower, slowdowns=slowdowns, waits=waits),
        overloaded_builder_seconds=sum(r.metrics.overloaded_builder_seconds for r in runs),
        starting_builder_seconds=sum(r.metrics.starting_builder_seconds for r in runs),
        idle_builder_seconds=sum(r.metrics.idle_builder_seconds for r in runs),
        busy_builder_seconds=sum(r.metrics.busy_builder_seconds for r in runs),
        draining_builder_seconds=sum(r.metrics.draining_builder_seconds for r in runs),
        scale_events=sum(r.metrics.scale_events for r in runs),
        peak_replicas=peak_of_sum(runs),
        interrupted_builds=sum(r.metrics.interrupted_builds for r in runs),
        failed_builds=sum(r.metrics.failed_builds for r in runs),
    )


def peak_of_sum(runs: Sequence[PoolRun]) -> int:
    """The highest total ``spec.replicas``: pools are polled at the same instants, so every
    change of one instant is applied before the sum is read."""
    changes = sorted((at, i, replicas) for i, r in enumerate(runs) for at, replicas in r.scales)
    current = [0] * len(runs)
    peak = 0
    k = 0
    while k < len(changes):
        at = changes[k][0]
        while k < len(changes) and changes[k][0] == at:
            _, i, replicas = changes[k]
            current[i] = replicas
            k += 1
        peak = max(peak, sum(current))
    return peak
