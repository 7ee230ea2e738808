"""What ``buildkit-autoscaler run`` logs to answer "why is it not scaling": a ``decision`` line when
what it decides changes (with the unknown pods named and why), and a bounded ``pool_summary`` otherwise."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from autoscaler.controller.reporting import SUMMARY_INTERVAL_SECONDS
from tests.autoscaler.fleet import Fleet, Sidecars, step


async def test_a_pool_held_at_its_size_logs_one_decision_then_a_summary_at_a_bounded_rate(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    await fleet.reconcile()
    controller = await controller_factory()
    sidecars.loads["127.0.0.2"] = 1  # ceil(1 / 2) + 1 spare = 2: held where it is
    with capture_logs() as logs:
        for _ in range(120):  # 10 min of 5 s cycles, nothing changing
            await step(controller, fleet)
    decisions = [e for e in logs if e["event"] == "decision"]
    summaries = [e for e in logs if e["event"] == "pool_summary"]
    assert 1 == len(decisions)
    assert {"pool": "amd64", "current": 2, "desired": 2, "unknown_pods": {}} == {
        k: decisions[0][k] for k in ("pool", "current", "desired", "unknown_pods")
    }
    assert "hold at 2" in decisions[0]["reason"]
    assert (1, 1) == (decisions[0]["min_replicas"], decisions[0]["active_builds"])
    # the cycles span 595 s: one summary SUMMARY_INTERVAL_SECONDS after the decision, not one a cycle
    assert 300 == SUMMARY_INTERVAL_SECONDS
    assert 1 == len(summaries)
    assert decisions[0]["reason"] == summaries[0]["reason"]


async def test_a_change_of_decision_is_logged_with_the_limits_and_the_unknown_pods_named(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    await fleet.reconcile()
    controller = await controller_factory()
    await step(controller, fleet)
    with capture_logs() as logs:
        await sidecars.stop("127.0.0.2")  # its sidecar no longer answers: unknown load
        await step(controller, fleet)
        await step(controller, fleet)
    decisions = [e for e in logs if e["event"] == "decision"]
    assert 1 == len(decisions)  # logged once, on the change, not every cycle
    unknown = decisions[0]["unknown_pods"]
    [(pod, reason)] = unknown.items()
    assert pod == fleet.pod_by_ip("127.0.0.2")["metadata"]["name"]
    assert reason  # why it could not be read, as the status client said it
    assert isinstance(decisions[0]["limits"], list)
