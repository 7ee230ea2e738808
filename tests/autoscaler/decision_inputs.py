"""The pool the scaling decision's tests start from, shared by test_policy.py (examples)
and test_policy_properties.py (hypothesis), which both import it as ``_pool``."""

from __future__ import annotations

from typing import Any

from autoscaler.config import Pool


def pool_with(**overrides: Any) -> Pool:
    """amd64, 1–20 replicas, 2 builds per replica, +1 spare, no scale-down window; then
    ``overrides`` (Python field names)."""
    fields: dict[str, Any] = {
        "name": "amd64",
        "namespace": "buildkit",
        "deployment": "buildkitd-amd64",
        "min_replicas": 1,
        "max_replicas": 20,
        "target_builds_per_replica": 2,
        "spare_replicas": 1,
        "scale_down": {"stabilization_window_seconds": 0},
    }
    fields.update(overrides)
    return Pool.model_validate(fields, by_name=True)
