"""Faults injected into the end-to-end fleet, each with its expected outcome.

Every test runs the small fleet of :mod:`tests.e2e.harness` (real sidecars, real
autoscalers, the fake API at the wire) and ends with the whole-run checks: no build
lost, every write from the Lease's holder, replicas within bounds.
"""

from __future__ import annotations

import asyncio
import datetime
import random
import signal
from pathlib import Path
from typing import Any

import pytest
from kmock import Response  # type: ignore[attr-defined]

from tests.e2e.fleet import IDENTITIES, LEASE_DURATION_SECONDS, NS, RETRY_PERIOD_SECONDS, SMALL_POOLS, PoolSpec
from tests.e2e.harness import REPORT, Harness, events, set_replicas, status_of, write_report

pytestmark = [pytest.mark.looptime(False), pytest.mark.subprocess, pytest.mark.e2e]


def micro(stamp: str) -> datetime.datetime:
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")


def ready(fleet: Harness, pool: PoolSpec) -> int:
    return sum(1 for p in fleet.pods[pool.arch] if p.ready and not p.deleting)


async def settled(fleet: Harness, pool: PoolSpec, replicas: int, *, within: float = 30.0) -> None:
    await fleet.until(
        lambda: (
            fleet.replicas(pool) == replicas
            and ready(fleet, pool) == replicas
            and len(fleet.pods[pool.arch]) == replicas
        ),
        within=within,
        what=f"{pool.arch} settled at {replicas} ready pods",
    )


def scale_patches_for(fleet: Harness, pool: PoolSpec, *, since: float) -> list[Any]:
    return [w for w in fleet.scale_patches() if w.name == pool.deployment and w.at >= since and w.status < 300]


async def finish(fleet: Harness, name: str, began: float) -> None:
    figures = await fleet.finish()
    write_report(REPORT, name, figures, seconds=fleet.now() - began)
    assert [] == figures.failures
    assert 0 == figures.builds_lost


# -- the sidecar --------------------------------------------------------------------------------


async def test_an_unreachable_sidecar_holds_scale_down_of_its_pool_only(tmp_path: Path) -> None:
    async with Harness(workdir=tmp_path, pools=SMALL_POOLS) as fleet:
        began = fleet.now()
        amd, arm = fleet.pools
        await settled(fleet, amd, 1)
        await settled(fleet, arm, 1)
        for how in ("hangs", "refuses"):
            slot = fleet.pods["amd64"][0].slot
            if how == "hangs":
                fleet.stop_sidecar(slot)  # SIGSTOP: connections are accepted by the kernel, never answered
            else:
                assert slot.process is not None
                slot.process.kill()  # nothing listens: connection refused
                await slot.process.wait()
            fleet.figures.faults[f"sidecar_{how}"] += 1
            since = fleet.now()
            set_replicas(fleet, amd, 3)
            set_replicas(fleet, arm, 3)
            # The healthy pool scales back down to its minimum meanwhile: the controller is acting.
            await fleet.until(
                lambda since=since: any(
                    w.body["spec"]["replicas"] == 1 for w in scale_patches_for(fleet, arm, since=since)
                ),
                within=30,
                what="arm64 scaled back down",
            )
            await asyncio.sleep(2 * fleet.timing.scale_down_window_seconds)
            assert 3 == fleet.replicas(amd), f"scaled down with the sidecar that {how}"
            assert [] == scale_patches_for(fleet, amd, since=since)
            assert slot.pod is not None
            annotations = fleet.cluster.get("pods", NS, slot.pod.name)["metadata"].get("annotations") or {}
            assert "true" == annotations.get("karpenter.sh/do-not-disrupt"), "a pod of unknown load not marked busy"
            if how == "hangs":
                fleet.resume_sidecar(slot)
            else:
                await fleet.spawn_sidecar(slot)
            await settled(fleet, amd, 1, within=40)
            await settled(fleet, arm, 1, within=40)
        await finish(fleet, "fault_sidecar_unreachable", began)


async def test_sigterm_to_a_sidecar_waits_for_its_builds_and_a_second_one_exits_at_once(tmp_path: Path) -> None:
    async with Harness(workdir=tmp_path, pools=SMALL_POOLS) as fleet:
        began = fleet.now()
        amd = fleet.pools[0]
        await settled(fleet, amd, 1)
        pod = fleet.pods["amd64"][0]
        slot = pod.slot
        assert slot.process is not None

        build = fleet.start_build_on(pod, 3.0)
        await fleet.until(lambda: bool(slot.daemon.active), within=5, what="the build running")
        await asyncio.sleep(0.5)
        slot.process.send_signal(signal.SIGTERM)
        fleet.figures.faults["sidecar_sigterm"] += 1
        await fleet.until(lambda: not pod.ready, within=5, what="not ready once SIGTERM began the drain")
        await asyncio.sleep(1.0)
        assert slot.process.returncode is None, "the sidecar exited while a build ran"
        await build
        assert 0 == await asyncio.wait_for(slot.process.wait(), 10)

        await fleet.spawn_sidecar(slot)
        # While it drained, the autoscaler added a builder to stand in for it (the draining pod's
        # build counted), then removed one: the ReplicaSet may take either pod. Take the one left.
        await settled(fleet, amd, 1, within=40)
        pod = fleet.pods["amd64"][0]
        slot = pod.slot
        assert slot.process is not None
        build = fleet.start_build_on(pod, 3.0)
        await fleet.until(lambda: bool(slot.daemon.active), within=5, what="the second build running")
        await asyncio.sleep(0.5)
        slot.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        slot.process.send_signal(signal.SIGTERM)
        fleet.figures.faults["sidecar_second_sigterm"] += 1
        assert 1 == await asyncio.wait_for(slot.process.wait(), 5)
        await build  # buildkitd runs on: the build completes without its sidecar
        await fleet.spawn_sidecar(slot)
        await settled(fleet, amd, 1, within=40)
        await finish(fleet, "fault_sidecar_sigterm", began)


# -- buildkitd --------------------------------------------------------------------------------------


async def test_buildkitd_stream_dropped_restarted_and_gone_for_good(tmp_path: Path) -> None:
    async with Harness(workdir=tmp_path, pools=SMALL_POOLS) as fleet:
        began = fleet.now()
        amd = fleet.pools[0]
        await settled(fleet, amd, 1)
        pod = fleet.pods["amd64"][0]
        slot = pod.slot

        # Stream dropped mid-build: the sidecar reconnects, resyncs and still sees the build.
        build = fleet.start_build_on(pod, 4.0)
        await fleet.until(lambda: bool(slot.daemon.active), within=5, what="the build running")
        slot.daemon.end_streams()
        fleet.figures.faults["buildkitd_stream_dropped"] += 1
        await asyncio.sleep(1.0)
        status = await status_of(fleet, slot)
        assert status is not None
        assert 1 == status["active_count"]
        await build

        # Restarted: unknown (never 0) while it is down, and scale-down of the pool is held.
        await slot.daemon.kill()
        fleet.figures.faults["buildkitd_restarted"] += 1
        await asyncio.sleep(1.0)
        status = await status_of(fleet, slot)
        assert status is not None
        assert (None, False) == (status["active_count"], status["buildkit_up"])
        since = fleet.now()
        set_replicas(fleet, amd, 3)
        await asyncio.sleep(3 * fleet.timing.scale_down_window_seconds)
        assert [] == [w for w in scale_patches_for(fleet, amd, since=since) if w.body["spec"]["replicas"] < 3]
        await slot.daemon.restart()
        await settled(fleet, amd, 1, within=40)

        # Gone for good: its load stays unknown (scale-down held) until somebody deletes the pod;
        # then the drain releases with buildkitd_gone, without waiting for the grace period.
        victim = fleet.pods["amd64"][0]
        await victim.slot.daemon.kill()
        fleet.figures.faults["buildkitd_gone"] += 1
        set_replicas(fleet, amd, 2)
        await fleet.until(lambda: ready(fleet, amd) == 1 and len(fleet.pods["amd64"]) == 2, within=20, what="a 2nd pod")
        await asyncio.sleep(3 * fleet.timing.scale_down_window_seconds)
        assert 2 == fleet.replicas(amd), "scaled down while a pod's load was unknown"
        set_replicas(fleet, amd, 1)  # the operator's kubectl scale: the ReplicaSet takes the not-ready pod
        await settled(fleet, amd, 1, within=40)
        assert victim.gone
        assert fleet.figures.drains["buildkitd_gone"] >= 1
        await finish(fleet, "fault_buildkitd", began)


# -- the API server ---------------------------------------------------------------------------------


async def test_api_errors_slowness_and_watch_disconnects_are_retried_without_double_scaling(tmp_path: Path) -> None:
    async with Harness(workdir=tmp_path, pools=SMALL_POOLS) as fleet:
        began = fleet.now()
        rng = random.Random(409)
        faults = fleet.figures.faults

        async def fault(req: Any, who: str, verb: str) -> Response | None:
            if who not in IDENTITIES:
                return None
            if req.subresource == "scale" and verb == "patch" and rng.random() < 0.3:
                faults["api_409_on_scale"] += 1
                return Response(status=409, payload={"kind": "Status", "code": 409, "reason": "Conflict"})
            roll = rng.random()
            if roll < 0.05:
                faults["api_500"] += 1
                return Response(status=500, payload={"kind": "Status", "code": 500, "reason": "InternalError"})
            if roll < 0.10:
                faults["api_slow"] += 1
                await asyncio.sleep(rng.uniform(0.2, 1.5))
            return None

        fleet.cluster.fault = fault
        fleet.load_on.set()
        end = fleet.now() + 45
        while fleet.now() < end:
            await asyncio.sleep(3)
            fleet.cluster.disconnect_watches()
            faults["watch_disconnect"] += 1
        fleet.cluster.fault = None
        patches = fleet.scale_patches()
        applied = [w for w in patches if w.status < 300]
        assert all(w.body.get("metadata", {}).get("resourceVersion") for w in patches), "a scale without its view"
        based_on = [w.body["metadata"]["resourceVersion"] for w in applied]
        assert len(based_on) == len(set(based_on)), "two scales from the same view"
        assert faults["api_409_on_scale"] > 0
        assert fleet.figures.scale_downs > 0
        await finish(fleet, "fault_api", began)


# -- leadership -------------------------------------------------------------------------------------


async def test_a_killed_leader_is_replaced_after_the_lease_duration_and_never_two_act(tmp_path: Path) -> None:
    async with Harness(workdir=tmp_path, pools=SMALL_POOLS) as fleet:
        began = fleet.now()
        fleet.load_on.set()
        await asyncio.sleep(3)
        leader = fleet.lease_holder()
        assert leader in IDENTITIES
        # Mid-cycle: right after one of its writes arrived.
        count = sum(1 for w in fleet.cluster.writes if w.who == leader)
        await fleet.until(
            lambda: sum(1 for w in fleet.cluster.writes if w.who == leader) > count, within=30, what="a leader write"
        )
        fleet.autoscalers[leader].kill()
        await fleet.autoscalers[leader].wait()
        fleet.figures.faults["leader_sigkill"] += 1
        successor = next(i for i in IDENTITIES if i != leader)
        await fleet.until(
            lambda: fleet.lease_holder() == successor, within=LEASE_DURATION_SECONDS + 15, what="a takeover"
        )
        records = fleet.cluster.leases
        renewals = [r for r in records if r.holder == leader]
        taken = next(r for r in records if r.holder == successor)
        last_renewal = renewals[-1]
        waited = taken.at - last_renewal.at
        # The follower sees the last renewal up to one retry period late (it reads every retry
        # period), then waits the lease duration from that sighting, trying every retry period.
        latest = LEASE_DURATION_SECONDS + 2 * RETRY_PERIOD_SECONDS + 1.0
        assert LEASE_DURATION_SECONDS <= waited <= latest, waited
        assert taken.transitions == last_renewal.transitions + 1
        # The Lease's own recorded times (the processes' clocks) say the same.
        assert taken.acquire_time is not None
        assert last_renewal.renew_time is not None
        gap = micro(taken.acquire_time) - micro(last_renewal.renew_time)
        assert LEASE_DURATION_SECONDS <= gap.total_seconds() <= latest
        await fleet.start_autoscaler(leader)  # back as a follower
        await asyncio.sleep(8)
        await finish(fleet, "fault_leader_killed", began)


# -- the ConfigMap ------------------------------------------------------------------------------------


async def test_bad_configmap_edits_are_refused_with_an_event_and_a_fixed_edit_applies(tmp_path: Path) -> None:
    async with Harness(workdir=tmp_path, pools=SMALL_POOLS) as fleet:
        began = fleet.now()
        arm = fleet.pools[1]
        await settled(fleet, arm, 1)
        good = fleet.config()
        # Both replicas must hold the good config before the first bad edit: one that starts
        # after it finds no last good config and exits (startup_failed), as it should.
        for identity in IDENTITIES:
            await fleet.until(
                lambda identity=identity: '"event": "config_applied"' in fleet.autoscaler_log(identity),
                within=60,
                what=f"autoscaler-{identity} running on the good config",
            )

        def edited(change: Any) -> str:
            config = fleet.config()
            change(config)
            return fleet.render_config(config)

        def unknown_key(c: dict[str, Any]) -> None:
            c["pools"][1]["scaleDwon"] = c["pools"][1].pop("scaleDown")

        def out_of_range(c: dict[str, Any]) -> None:
            c["pools"][1]["maxReplicas"] = 5000

        def typo_pool(c: dict[str, Any]) -> None:
            c["pools"][1]["name"] = "amd64"  # copy-pasted, name not changed: two pools called amd64

        bad = [
            ("garbage", "pools: [:::\n\t}", "line"),
            ("out_of_range", edited(out_of_range), "pools[1].maxReplicas"),
            ("unknown_key", edited(unknown_key), "scaleDwon"),
            ("typo_pool", edited(typo_pool), "pools[1].name"),
        ]
        for name, text, mentions in bad:
            before = len(events(fleet, "InvalidConfig"))
            fleet.edit_config(text)
            fleet.figures.faults[f"config_{name}"] += 1
            await fleet.until(
                lambda before=before: len(events(fleet, "InvalidConfig")) > before, within=10, what=f"{name} refused"
            )
            assert mentions in events(fleet, "InvalidConfig")[-1]["message"]
            # The last good config stays in force: an operator's scale-up is undone to its minimum.
            set_replicas(fleet, arm, 3)
            await settled(fleet, arm, 1, within=30)
        for identity in IDENTITIES:
            assert fleet.autoscaler_log(identity).count('"event": "config_refused"') >= len(bad)

        good["pools"][1]["minReplicas"] = 2
        fleet.edit_config(fleet.render_config(good))
        await settled(fleet, arm, 2, within=30)
        await finish(fleet, "fault_configmap", began)
