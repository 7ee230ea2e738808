"""The controller against a fake Kubernetes API (kmock + stateful layer) through the
real kubernetes-asyncio client, with real HTTP sidecar fakes on loopback, on fake time."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from autoscaler.controller.actuate import DELETION_COST, DO_NOT_DISRUPT, SAFE_TO_EVICT
from tests.autoscaler.fleet import (
    DEPLOY,
    LABELS,
    NS,
    FixedElector,
    Fleet,
    Sidecars,
    config_yaml,
    events,
    sample,
    settle,
    step,
)


async def test_a_surge_scales_up_in_one_cycle_with_an_event_saying_why(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    await fleet.reconcile()
    controller = await controller_factory()
    for ip in list(sidecars.runners):
        sidecars.loads[ip] = 3
    with structlog.testing.capture_logs() as logged:
        await step(controller, fleet)
    # 6 builds, 2 per replica, +1 spare -> 4
    assert 4 == fleet.replicas
    scaled = events(fleet.k8s, "ScaledUp")
    assert 1 == len(scaled)
    assert "6 active builds" in scaled[0]["message"]
    about = scaled[0]["involvedObject"]
    assert ("Normal", "Deployment", "apps/v1", DEPLOY) == (
        scaled[0]["type"],
        about["kind"],
        about["apiVersion"],
        about["name"],
    )
    reason = "6 active builds, 2 per replica, +1 spare → 4; scale 2 → 4"
    assert reason == scaled[0]["message"]
    assert [{"event": "scaled", "log_level": "info", "pool": "amd64", "direction": "up", "current": 2, "desired": 4,
             "reason": reason}] == [e for e in logged if e["event"] == "scaled"]  # fmt: skip
    assert 1.0 == sample(controller, "buildkit_autoscaler_scale_events_total", pool="amd64", direction="up")
    assert 4.0 == sample(controller, "buildkit_autoscaler_desired_replicas", pool="amd64")


async def test_scale_down_waits_for_the_window_goes_at_the_policy_rate_and_removes_idle_builders_first(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    fleet.k8s.put(
        "deployments.apps",
        NS,
        {**fleet.deployment(), "spec": {**fleet.deployment()["spec"], "replicas": 4}},
    )
    await fleet.reconcile()
    controller = await controller_factory()
    busy_ip = "127.0.0.3"
    sidecars.loads[busy_ip] = 1  # one build: need ceil(1/2)+1 = 2
    replicas = []
    with structlog.testing.capture_logs() as logged:
        for _ in range(30):  # 150 s
            await step(controller, fleet)
            replicas.append(fleet.replicas)
    # nothing before the 60 s window has passed, then one pod per 30 s, down to 2
    assert [4] * 11 == replicas[:11]
    assert 2 == replicas[-1]
    first_down = replicas.index(3)
    assert replicas.index(2) - first_down >= 6  # 30 s apart at least
    # the busy builder survived; every deletion went to an idle one
    assert busy_ip in {p["status"]["podIP"] for p in fleet.pods()}
    assert "1" == fleet.pod_by_ip(busy_ip)["metadata"]["annotations"][DELETION_COST]
    # each deletion cost was set before the scale PATCH that used it
    calls = [(verb, res, sub) for verb, res, _ns, _name, sub in fleet.k8s.calls if verb == "patch"]
    first_scale = calls.index(("patch", "deployments.apps", "scale"))
    assert ("patch", "pods", None) in calls[:first_scale]
    assert 2 == len(events(fleet.k8s, "ScaledDown"))
    assert 2.0 == sample(controller, "buildkit_autoscaler_scale_events_total", pool="amd64", direction="down")
    # the first scale-down ranks all 4 pods; at the second, the 3 left already carry their costs
    assert [4] == [e["patched"] for e in logged if e["event"] == "deletion_costs_set"]


async def test_unknown_load_blocks_scale_down(fleet: Fleet, sidecars: Sidecars, controller_factory: Any) -> None:
    fleet.k8s.put("deployments.apps", NS, {**fleet.deployment(), "spec": {**fleet.deployment()["spec"], "replicas": 3}})
    await fleet.reconcile()
    controller = await controller_factory()
    await sidecars.stop("127.0.0.2")  # its sidecar no longer answers
    for _ in range(30):
        await step(controller, fleet)
    assert 3 == fleet.replicas
    assert 1.0 == sample(controller, "buildkit_autoscaler_unreadable_pods", pool="amd64")
    # the unreadable pod is treated as busy: disruption annotations keep it
    annotations = fleet.pod_by_ip("127.0.0.2")["metadata"].get("annotations") or {}
    assert ("true", "false") == (annotations.get(DO_NOT_DISRUPT), annotations.get(SAFE_TO_EVICT))


async def test_a_scale_down_ranks_draining_builders_first_then_idle_then_busy_and_unknown_load_last(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    # One builder of each kind. maxReplicas below the replicas forces a scale-down that
    # unknown load cannot hold back (a lowered maxReplicas is an SRE's explicit order),
    # so every pod is ranked, the unknown ones included; a pod already being deleted is not.
    fleet.k8s.put("deployments.apps", NS, {**fleet.deployment(), "spec": {**fleet.deployment()["spec"], "replicas": 6}})
    fleet.k8s.put(
        "configmaps",
        NS,
        {"metadata": {"name": "buildkit-autoscaler"}, "data": {"config.yaml": config_yaml(maxReplicas=5)}},
    )
    await fleet.reconcile()
    idle, busy, draining, unreachable, failing, leaving = (f"127.0.0.{i}" for i in range(2, 8))
    sidecars.loads[busy] = 1
    sidecars.draining.add(draining)
    await sidecars.stop(unreachable)  # refuses connections
    sidecars.failing.add(failing)  # answers 500
    sidecars.loads[leaving] = 2
    terminating = fleet.pod_by_ip(leaving)
    fleet.k8s.put(
        "pods", NS, {**terminating, "metadata": {**terminating["metadata"], "deletionTimestamp": fleet.k8s.now()}}
    )
    controller = await controller_factory()
    await asyncio.sleep(5)
    await settle(controller, fleet)
    with structlog.testing.capture_logs() as logged:
        await controller.cycle()

    def cost(ip: str) -> int:
        return int(fleet.pod_by_ip(ip)["metadata"]["annotations"][DELETION_COST])

    assert 2.0 == sample(controller, "buildkit_autoscaler_unreadable_pods", pool="amd64")
    # lower goes first: a draining builder takes no new builds; a pod whose load is
    # unknown may be busy, so it goes after every pod known to be idle or busy
    assert cost(draining) < cost(idle) < cost(busy) < min(cost(unreachable), cost(failing))
    assert cost(unreachable) == cost(failing)
    assert {} == (fleet.pod_by_ip(leaving)["metadata"].get("annotations") or {})  # neither ranked nor protected
    assert [{"event": "deletion_costs_set", "log_level": "info", "pool": "amd64", "patched": 5}] == [
        e for e in logged if e["event"] == "deletion_costs_set"
    ]
    await fleet.reconcile()  # the ReplicaSet deletes the lowest cost
    assert 5 == fleet.replicas
    assert draining not in {p["status"]["podIP"] for p in fleet.pods()}


def _scale_down_to_one(fleet: Fleet) -> None:
    """Three idle builders, maxReplicas 1: the next cycle ranks them and scales down."""
    fleet.k8s.put("deployments.apps", NS, {**fleet.deployment(), "spec": {**fleet.deployment()["spec"], "replicas": 3}})
    fleet.k8s.put(
        "configmaps",
        NS,
        {"metadata": {"name": "buildkit-autoscaler"}, "data": {"config.yaml": config_yaml(maxReplicas=1)}},
    )


def _patches_pod(name: str) -> Any:
    def matches(request: Any) -> bool:
        return request.method.value == "PATCH" and request.name == name and request.resource.plural == "pods"

    return matches


async def test_a_failed_pod_patch_skips_the_scale_only_after_every_other_patch_has_ended(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    _scale_down_to_one(fleet)
    await fleet.reconcile()
    first, *others = sorted(p["metadata"]["name"] for p in fleet.pods())

    async def slowly(request: Any) -> Any:
        await asyncio.sleep(1)  # the other pods' PATCHes answer after the failure
        return await fleet.k8s.handle(request)

    for name in others:
        fleet.k8s.handler[_patches_pod(name)] << slowly
    fleet.k8s.handler[_patches_pod(first)][:1] << 500
    controller = await controller_factory()
    await asyncio.sleep(5)
    await settle(controller, fleet)
    await controller.cycle()  # returns only once every PATCH it sent has been answered

    assert ["0", "0"] == [fleet.k8s.get("pods", NS, n)["metadata"]["annotations"][DELETION_COST] for n in others]
    assert 3 == fleet.replicas  # not scaled on a partial ranking
    assert 1.0 == sample(controller, "buildkit_autoscaler_api_errors_total", operation="cycle")


async def test_a_pod_gone_before_its_deletion_cost_is_set_does_not_stop_the_scale_down(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    _scale_down_to_one(fleet)
    await fleet.reconcile()
    gone = sorted(p["metadata"]["name"] for p in fleet.pods())[0]
    fleet.k8s.handler[_patches_pod(gone)][:1] << 404
    controller = await controller_factory()
    with structlog.testing.capture_logs() as logged:
        await step(controller, fleet)
    assert 1 == fleet.replicas
    assert [2] == [e["patched"] for e in logged if e["event"] == "deletion_costs_set"]  # the two still there


async def test_each_disruption_annotation_can_be_switched_off(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    only_cluster_autoscaler = config_yaml(podAnnotations={"karpenterDoNotDisrupt": False})
    fleet.k8s.put(
        "configmaps",
        NS,
        {"metadata": {"name": "buildkit-autoscaler"}, "data": {"config.yaml": only_cluster_autoscaler}},
    )
    await fleet.reconcile()
    controller = await controller_factory()
    sidecars.loads["127.0.0.2"] = 1
    await step(controller, fleet)
    busy = fleet.pod_by_ip("127.0.0.2")["metadata"].get("annotations") or {}
    assert (None, "false") == (busy.get(DO_NOT_DISRUPT), busy.get(SAFE_TO_EVICT))

    only_karpenter = config_yaml(podAnnotations={"clusterAutoscalerSafeToEvict": False})
    fleet.k8s.put(
        "configmaps", NS, {"metadata": {"name": "buildkit-autoscaler"}, "data": {"config.yaml": only_karpenter}}
    )
    sidecars.loads["127.0.0.3"] = 1
    await step(controller, fleet)
    busy = fleet.pod_by_ip("127.0.0.3")["metadata"].get("annotations") or {}
    assert ("true", None) == (busy.get(DO_NOT_DISRUPT), busy.get(SAFE_TO_EVICT))


async def test_a_pod_not_started_keeps_the_annotations_its_template_gave_it(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    fleet.k8s.put("deployments.apps", NS, {**fleet.deployment(), "spec": {**fleet.deployment()["spec"], "replicas": 3}})
    unscheduled = {
        "metadata": {"name": f"{DEPLOY}-pending", "labels": dict(LABELS), "annotations": {DO_NOT_DISRUPT: "true"}},
        "spec": {"containers": [{"name": "buildkitd", "image": "moby/buildkit"}]},
        "status": {"phase": "Pending"},  # no node, no IP yet
    }
    fleet.k8s.put("pods", NS, unscheduled)  # first in the pod list
    await fleet.reconcile()
    controller = await controller_factory()
    sidecars.loads["127.0.0.2"] = 1
    await step(controller, fleet)
    assert {DO_NOT_DISRUPT: "true"} == fleet.k8s.get("pods", NS, f"{DEPLOY}-pending")["metadata"]["annotations"]
    busy = fleet.pod_by_ip("127.0.0.2")["metadata"].get("annotations") or {}
    assert ("true", "false") == (busy.get(DO_NOT_DISRUPT), busy.get(SAFE_TO_EVICT))  # the pods after it too


async def test_busy_builders_carry_disruption_annotations_and_idle_ones_lose_them(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    await fleet.reconcile()
    controller = await controller_factory()
    sidecars.loads["127.0.0.2"] = 1
    await step(controller, fleet)
    busy = fleet.pod_by_ip("127.0.0.2")["metadata"].get("annotations") or {}
    idle = fleet.pod_by_ip("127.0.0.3")["metadata"].get("annotations") or {}
    assert ("true", "false") == (busy.get(DO_NOT_DISRUPT), busy.get(SAFE_TO_EVICT))
    assert (None, None) == (idle.get(DO_NOT_DISRUPT), idle.get(SAFE_TO_EVICT))
    sidecars.loads["127.0.0.2"] = 0
    await step(controller, fleet)
    done = fleet.pod_by_ip("127.0.0.2")["metadata"].get("annotations") or {}
    assert (None, None) == (done.get(DO_NOT_DISRUPT), done.get(SAFE_TO_EVICT))


async def test_a_valid_config_edit_is_applied_and_an_invalid_one_refused_with_the_last_good_kept(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    await fleet.reconcile()
    controller = await controller_factory()
    for ip in list(sidecars.runners):
        sidecars.loads[ip] = 10
    fleet.k8s.put(
        "configmaps",
        NS,
        {"metadata": {"name": "buildkit-autoscaler"}, "data": {"config.yaml": config_yaml(maxReplicas=3)}},
    )
    await step(controller, fleet)
    assert 3 == fleet.replicas  # the new maxReplicas is in force
    assert 3 == controller.pools.states["amd64"].pool.max_replicas

    broken = config_yaml(maxReplicas=3).replace("minReplicas: 1", "minReplicas: -4").replace("tolerance", "tolerence")
    fleet.k8s.put("configmaps", NS, {"metadata": {"name": "buildkit-autoscaler"}, "data": {"config.yaml": broken}})
    await step(controller, fleet)
    refused = events(fleet.k8s, "InvalidConfig")
    assert 1 == len(refused)
    assert "Warning" == refused[0]["type"]
    assert "ConfigMap" == refused[0]["involvedObject"]["kind"]
    assert "pools[0].minReplicas" in refused[0]["message"]
    assert 1.0 == sample(controller, "buildkit_autoscaler_config_errors_total")
    assert 3 == controller.pools.states["amd64"].pool.max_replicas  # last good kept
    # Refused once, not every cycle, nor again when the watch re-lists the same version
    # (history compacted: 410, list again) and so reports the ConfigMap changed.
    lists = fleet.k8s.count("list", "configmaps")
    fleet.k8s.compact()
    fleet.k8s.disconnect_watches()
    await step(controller, fleet)
    await step(controller, fleet)
    assert lists + 1 == fleet.k8s.count("list", "configmaps")
    assert 1 == len(events(fleet.k8s, "InvalidConfig"))
    assert 1.0 == sample(controller, "buildkit_autoscaler_config_errors_total")
    assert 3 == controller.pools.states["amd64"].pool.max_replicas


async def test_a_conflict_on_the_scale_patch_writes_nothing_and_the_next_cycle_succeeds(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    await fleet.reconcile()
    controller = await controller_factory()
    for ip in list(sidecars.runners):
        sidecars.loads[ip] = 3

    def is_scale_patch(request: Any) -> bool:
        return request.method.value == "PATCH" and request.subresource == "scale"

    fleet.k8s.handler[is_scale_patch][:1] << 409
    with structlog.testing.capture_logs() as logged:
        await step(controller, fleet)
    assert 2 == fleet.replicas
    assert 1.0 == sample(controller, "buildkit_autoscaler_api_errors_total", operation="scale")
    failed = [e for e in logged if e["event"] == "scale_failed"]
    assert [("warning", "amd64", True, "next cycle")] == [
        (e["log_level"], e["pool"], e["stale_view"], e["retry"]) for e in failed
    ]
    assert "409" in failed[0]["error"]
    await step(controller, fleet)
    assert 4 == fleet.replicas


async def test_a_failed_event_post_is_counted_and_logged_and_the_scale_stands(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    await fleet.reconcile()
    controller = await controller_factory()
    for ip in list(sidecars.runners):
        sidecars.loads[ip] = 3

    def posts_an_event(request: Any) -> bool:
        return request.method.value == "POST" and request.resource is not None and request.resource.plural == "events"

    fleet.k8s.handler[posts_an_event][:1] << 500
    with structlog.testing.capture_logs() as logged:
        await step(controller, fleet)
    assert 4 == fleet.replicas
    assert [] == events(fleet.k8s, "ScaledUp")
    assert 1.0 == sample(controller, "buildkit_autoscaler_api_errors_total", operation="event")
    failed = [e for e in logged if e["event"] == "event_failed"]
    assert [("warning", "ScaledUp")] == [(e["log_level"], e["reason"]) for e in failed]
    assert "500" in failed[0]["error"]


async def test_an_hpa_on_the_same_deployment_refuses_the_pool(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    fleet.k8s.put(
        "horizontalpodautoscalers.autoscaling",
        NS,
        {
            "metadata": {"name": "cpu"},
            "spec": {
                "scaleTargetRef": {"kind": "Deployment", "name": DEPLOY, "apiVersion": "apps/v1"},
                "maxReplicas": 5,
            },
        },
    )
    await fleet.reconcile()
    controller = await controller_factory()
    for ip in list(sidecars.runners):
        sidecars.loads[ip] = 5
    await step(controller, fleet)
    await step(controller, fleet)
    assert 2 == fleet.replicas
    refused = events(fleet.k8s, "PoolRefused")
    assert 1 == len(refused)
    assert "HorizontalPodAutoscaler cpu" in refused[0]["message"]
    assert 1.0 == sample(controller, "buildkit_autoscaler_pool_refused", pool="amd64")


async def test_a_replica_that_is_not_leader_writes_nothing(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    await fleet.reconcile()
    controller = await controller_factory(leader=False)
    for ip in list(sidecars.runners):
        sidecars.loads[ip] = 5
    writes_before = sum(1 for c in fleet.k8s.calls if c[0] in ("patch", "create", "replace", "delete"))
    await step(controller, fleet)
    writes_after = sum(1 for c in fleet.k8s.calls if c[0] in ("patch", "create", "replace", "delete"))
    assert writes_before == writes_after
    assert 6.0 == sample(controller, "buildkit_autoscaler_desired_replicas", pool="amd64")  # it still decides


async def test_dry_run_logs_decisions_and_writes_nothing(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    await fleet.reconcile()
    controller = await controller_factory(dry_run=True)
    for ip in list(sidecars.runners):
        sidecars.loads[ip] = 5
    writes_before = sum(1 for c in fleet.k8s.calls if c[0] in ("patch", "create", "replace", "delete"))
    with structlog.testing.capture_logs() as logged:
        await step(controller, fleet)
    assert writes_before == sum(1 for c in fleet.k8s.calls if c[0] in ("patch", "create", "replace", "delete"))
    assert 2 == fleet.replicas
    # what it would have done: 10 builds, 2 per replica, +1 spare → 6
    dry = [e for e in logged if e["event"] == "scale_dry_run"]
    assert [("amd64", 2, 6)] == [(e["pool"], e["current"], e["desired"]) for e in dry]
    assert "10 active builds, 2 per replica, +1 spare → 6; scale 2 → 6" == dry[0]["reason"]


async def test_a_steady_cycle_makes_no_list_and_no_patch(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    await fleet.reconcile()
    controller = await controller_factory()
    sidecars.loads["127.0.0.2"] = 1  # need 2 = current: steady
    await step(controller, fleet)
    await step(controller, fleet)
    before = len(fleet.k8s.calls)
    await step(controller, fleet)
    during = fleet.k8s.calls[before:]
    assert [] == [c for c in during if c[0] in ("list", "patch")]
    assert 2 == fleet.replicas


_WRITES = ("patch", "create", "replace", "delete")


async def test_losing_leadership_stops_every_write_and_regaining_it_resumes(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    await fleet.reconcile()
    controller = await controller_factory()
    elector = controller.actuator.elector
    assert isinstance(elector, FixedElector)
    for ip in list(sidecars.runners):
        sidecars.loads[ip] = 3
    await step(controller, fleet)
    assert 4 == fleet.replicas

    elector.leader = False
    for ip in list(sidecars.runners):
        sidecars.loads[ip] = 4
    writes = sum(1 for c in fleet.k8s.calls if c[0] in _WRITES)
    for _ in range(3):
        await step(controller, fleet)
    assert writes == sum(1 for c in fleet.k8s.calls if c[0] in _WRITES)
    assert 4 == fleet.replicas
    assert 0.0 == controller.metrics.registry.get_sample_value("buildkit_autoscaler_is_leader")

    elector.leader = True
    await step(controller, fleet)
    assert 8 == fleet.replicas  # +100 % per 15 s from 4 (the need is 9)


async def test_a_pending_pod_with_an_ip_has_no_builds_rather_than_unknown_load(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    fleet.k8s.put("deployments.apps", NS, {**fleet.deployment(), "spec": {**fleet.deployment()["spec"], "replicas": 3}})
    await fleet.reconcile()
    pulling = fleet.pod_by_ip("127.0.0.4")  # its sandbox has an IP; its images are still being pulled
    fleet.k8s.put(
        "pods",
        NS,
        {
            **pulling,
            "status": {"phase": "Pending", "podIP": "127.0.0.4", "conditions": [{"type": "Ready", "status": "False"}]},
        },
    )
    await sidecars.stop("127.0.0.4")
    controller = await controller_factory()
    sidecars.loads["127.0.0.2"] = sidecars.loads["127.0.0.3"] = 3
    await step(controller, fleet)
    # 6 builds, 2 per replica, +1 spare → 4; counted as unknown load it would have been 5
    assert 4 == fleet.replicas
    assert 0.0 == sample(controller, "buildkit_autoscaler_unreadable_pods", pool="amd64")


async def test_a_pool_refused_for_an_hpa_resumes_when_the_hpa_goes_and_is_refused_again_if_it_returns(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    hpa = {
        "metadata": {"name": "cpu"},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": DEPLOY, "apiVersion": "apps/v1"}, "maxReplicas": 5},
    }
    fleet.k8s.put("horizontalpodautoscalers.autoscaling", NS, hpa)
    await fleet.reconcile()
    controller = await controller_factory()
    for ip in list(sidecars.runners):
        sidecars.loads[ip] = 3
    await step(controller, fleet)
    assert 2 == fleet.replicas
    assert 1 == len(events(fleet.k8s, "PoolRefused"))

    fleet.k8s.delete("horizontalpodautoscalers.autoscaling", NS, "cpu")
    await step(controller, fleet)
    assert 4 == fleet.replicas
    assert 0.0 == sample(controller, "buildkit_autoscaler_pool_refused", pool="amd64")

    fleet.k8s.put("horizontalpodautoscalers.autoscaling", NS, hpa)
    await step(controller, fleet)
    assert 2 == len(events(fleet.k8s, "PoolRefused"))
    assert 1.0 == sample(controller, "buildkit_autoscaler_pool_refused", pool="amd64")


async def test_a_deployment_selector_unreadable_at_config_time_is_read_again_next_cycle(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    # the pool takes the Deployment's own selector; the first read of the Deployment fails
    fleet.k8s.put(
        "configmaps",
        NS,
        {"metadata": {"name": "buildkit-autoscaler"}, "data": {"config.yaml": config_yaml(selector=None)}},
    )

    def reads_the_deployment(request: Any) -> bool:
        return request.method.value == "GET" and request.name == DEPLOY and request.subresource is None

    fleet.k8s.handler[reads_the_deployment][:1] << 503
    await fleet.reconcile()
    controller = await controller_factory()
    assert "its pod selector could not be read" == getattr(controller.pools.states["amd64"].refused, "reason", None)
    for ip in list(sidecars.runners):
        sidecars.loads[ip] = 3
    await step(controller, fleet)
    await step(controller, fleet)
    assert controller.pools.states["amd64"].refused is None
    assert 4 == fleet.replicas


async def test_an_edit_naming_a_deployment_that_does_not_exist_is_refused_and_the_last_good_kept(
    fleet: Fleet, sidecars: Sidecars, controller_factory: Any
) -> None:
    await fleet.reconcile()
    controller = await controller_factory()
    typo = config_yaml(deployment="buildkitd-amd46")
    fleet.k8s.put("configmaps", NS, {"metadata": {"name": "buildkit-autoscaler"}, "data": {"config.yaml": typo}})
    for ip in list(sidecars.runners):
        sidecars.loads[ip] = 3
    await step(controller, fleet)
    refused = events(fleet.k8s, "InvalidConfig")
    assert 1 == len(refused)
    assert "pools[0].deployment: deployments/buildkitd-amd46 not found" in refused[0]["message"]
    assert DEPLOY == controller.pools.states["amd64"].pool.deployment  # the last good config still scales
    assert 4 == fleet.replicas
