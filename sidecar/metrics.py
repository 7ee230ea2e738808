"""Prometheus metrics. Names are a contract (docs, alerts, dashboard).

Counters and histograms are client objects updated as things happen; gauges
are read from :class:`~sidecar.state.BuilderState` at scrape time by a
collector, so they can never disagree with ``/status``. Every series carries
``arch``; none carries a build ref (unbounded cardinality).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.tracking import Change

if TYPE_CHECKING:
    from sidecar.state import BuilderState

UNKNOWN_ARCH = "unknown"

# Builds last from seconds (fully cached) to hours (cold monorepo builds):
# 5 s to 4 h, roughly doubling.
BUILD_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200, 10800, 14400, math.inf)
# Drains: instant (idle builder) up to the 55-min default deadline and past it.
DRAIN_BUCKETS = (0.1, 1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 2700, 3300, 3600, math.inf)


class _StateCollector(Collector):
    def __init__(self, state: BuilderState) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        state = self._state
        arch = state.arch or UNKNOWN_ARCH

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=["arch"])
            family.add_metric([arch], value)
            return family

        count = state.active_count()
        yield gauge(
            "buildkit_sidecar_active_builds",
            "Builds running in buildkitd now; NaN while buildkitd is unreachable (unknown, not zero).",
            math.nan if count is None else float(count),
        )
        yield gauge(
            "buildkit_sidecar_buildkit_up", "1 while the history stream is open and reconciled.", float(state.up)
        )
        yield gauge(
            "buildkit_sidecar_draining", "1 from the start of a drain until it is cancelled.", float(state.draining)
        )
        ready, _why = state.ready()
        yield gauge("buildkit_sidecar_ready", "1 while the builder takes new builds (what /readyz says).", float(ready))
        yield gauge(
            "buildkit_sidecar_last_sync_timestamp_seconds",
            "Unix time of the last snapshot that reconciled the active set (0 = never).",
            state.last_sync_unix or 0.0,
        )
        yield gauge(
            "buildkit_sidecar_drain_started_timestamp_seconds",
            "Unix time the current drain began (0 = not draining): alert when now minus this nears the deadline.",
            state.drain_started_unix or 0.0,
        )
        yield gauge(
            "buildkit_sidecar_tombstones",
            "Completed refs remembered to ignore late or duplicate events.",
            float(state.tracker.tombstone_count()),
        )
        info = GaugeMetricFamily(
            "buildkit_sidecar_info",
            "Constant 1, labelled with what the sidecar knows.",
            labels=["arch", "buildkit_version"],
        )
        info.add_metric([arch, state.buildkit_version or ""], 1.0)
        yield info


class Metrics:
    """The sidecar's metrics, registered on an explicit registry (tests use a fresh one)."""

    def __init__(self, *, registry: CollectorRegistry, state: BuilderState) -> None:
        self.registry = registry
        self._state = state
        self.builds_started = Counter(
            "buildkit_sidecar_builds_started",
            "Builds seen starting.",
            ["arch"],
            registry=registry,
        )
        self.builds_completed = Counter(
            "buildkit_sidecar_builds_completed",
            "Builds seen completing, by result.",
            ["arch", "result"],
            registry=registry,
        )
        self.build_duration = Histogram(
            "buildkit_sidecar_build_duration_seconds",
            "Build duration from buildkitd's own CreatedAt/CompletedAt.",
            ["arch", "result"],
            buckets=BUILD_BUCKETS,
            registry=registry,
        )
        self.builds_vanished = Counter(
            "buildkit_sidecar_builds_vanished",
            "Builds a resync found gone without their COMPLETE event (missed events repaired).",
            ["arch"],
            registry=registry,
        )
        self.stream_reconnects = Counter(
            "buildkit_sidecar_stream_reconnects",
            "History streams opened after the first one (each follows a loss).",
            ["arch"],
            registry=registry,
        )
        self.connect_failures = Counter(
            "buildkit_sidecar_connect_failures",
            "Failed calls to buildkitd, by what the failure proves (refused, slow, error).",
            ["arch", "loss"],
            registry=registry,
        )
        self.drain_duration = Histogram(
            "buildkit_sidecar_drain_duration_seconds",
            "How long finished drains took, by outcome (idle, buildkitd_gone, timeout).",
            ["arch", "reason"],
            buckets=DRAIN_BUCKETS,
            registry=registry,
        )
        self.loop_errors = Counter(
            "buildkit_sidecar_loop_errors",
            "Unexpected errors caught at a loop boundary (see the log).",
            ["arch", "loop"],
            registry=registry,
        )
        self.agent_replies = Counter(
            "buildkit_sidecar_agent_replies",
            "Agent-check replies, by the tier asked (any if the request named none) and the reply (up, drain, down).",
            ["arch", "tier", "reply"],
            registry=registry,
        )
        self.agent_requests_defaulted = Counter(
            "buildkit_sidecar_agent_requests_defaulted",
            "Agent-check requests answered as tier any, by why (timeout, empty, invalid).",
            ["arch", "reason"],
            registry=registry,
        )
        self.agent_connections_refused = Counter(
            "buildkit_sidecar_agent_connections_refused",
            "Agent-check connections closed unanswered because the connection limit was reached.",
            ["arch"],
            registry=registry,
        )
        registry.register(_StateCollector(state))

    @property
    def arch(self) -> str:
        return self._state.arch or UNKNOWN_ARCH

    def record(self, change: Change) -> None:
        """Count what an event or a snapshot changed."""
        arch = self.arch
        if change.started:
            self.builds_started.labels(arch=arch).inc(len(change.started))
        for done in change.completed:
            self.builds_completed.labels(arch=arch, result=done.result.value).inc()
            if done.duration_seconds is not None:
                self.build_duration.labels(arch=arch, result=done.result.value).observe(done.duration_seconds)
        if change.vanished:
            self.builds_vanished.labels(arch=arch).inc(len(change.vanished))
