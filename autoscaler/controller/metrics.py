"""The autoscaler's Prometheus metrics (names are a contract: docs, alerts)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Registered on an explicit registry (tests use a fresh one)."""

    def __init__(self, *, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.active_builds = Gauge(
            "buildkit_autoscaler_active_builds",
            "Active builds the pool's sidecars reported in the last cycle (readable pods only).",
            ["pool"],
            registry=registry,
        )
        self.current_replicas = Gauge(
            "buildkit_autoscaler_current_replicas",
            "The Deployment's replicas seen this cycle.",
            ["pool"],
            registry=registry,
        )
        self.desired_replicas = Gauge(
            "buildkit_autoscaler_desired_replicas",
            "Replicas the decision asked for (after windows, policies and bounds).",
            ["pool"],
            registry=registry,
        )
        self.recommended_replicas = Gauge(
            "buildkit_autoscaler_recommended_replicas",
            "Replicas the load calls for before the [min, max] clamp: above max means unmet demand.",
            ["pool"],
            registry=registry,
        )
        self.max_replicas = Gauge(
            "buildkit_autoscaler_max_replicas", "The pool's configured maxReplicas.", ["pool"], registry=registry
        )
        self.scale_events = Counter(
            "buildkit_autoscaler_scale_events",
            "Scale PATCHes applied, by direction.",
            ["pool", "direction"],
            registry=registry,
        )
        self.unreadable_pods = Gauge(
            "buildkit_autoscaler_unreadable_pods",
            "Pods whose load is unknown this cycle (counted busy; they block scale-down).",
            ["pool"],
            registry=registry,
        )
        self.pool_refused = Gauge(
            "buildkit_autoscaler_pool_refused",
            "1 while the pool is not managed (an HPA targets its Deployment, or it cannot be read).",
            ["pool"],
            registry=registry,
        )
        self.cycle_duration = Histogram(
            "buildkit_autoscaler_cycle_duration_seconds",
            "Wall time of one observe-decide-act cycle over all pools.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.config_errors = Counter(
            "buildkit_autoscaler_config_errors", "ConfigMap edits refused as invalid.", registry=registry
        )
        self.api_errors = Counter(
            "buildkit_autoscaler_api_errors",
            "Failed Kubernetes API calls, by operation.",
            ["operation"],
            registry=registry,
        )
        self.cycle_errors = Counter(
            "buildkit_autoscaler_cycle_errors",
            "Cycles ended by an unexpected error (a bug, not the API: see the cycle_error log line).",
            registry=registry,
        )
        self.is_leader = Gauge(
            "buildkit_autoscaler_is_leader", "1 while this replica holds the Lease and acts.", registry=registry
        )
        self.config_generation = Gauge(
            "buildkit_autoscaler_config_loaded_timestamp_seconds",
            "Unix time the configuration in force was loaded.",
            registry=registry,
        )
