"""The fleet's ReplicaSet: keeps each pool's pods at its Deployment's replicas, deleting victims as Kubernetes does."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from tests.e2e.balancer import Balancer
from tests.e2e.cluster import Cluster
from tests.e2e.fleet import NS, Figures, Pod, PoolSpec, Slot, Timing, now
from tests.e2e.kubelet import Kubelet

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
"""Read off the pod as Kubernetes reads it (not imported from the controller that writes it)."""

RECONCILE_SECONDS = 0.05


class ReplicaSet:
    """One reconcile loop over every pool: create pods on free slots, delete the ReplicaSet's victims."""

    def __init__(
        self,
        *,
        cluster: Cluster,
        kubelet: Kubelet,
        balancer: Balancer,
        pools: tuple[PoolSpec, ...],
        slots: dict[str, list[Slot]],
        pods: dict[str, list[Pod]],
        timing: Timing,
        figures: Figures,
    ) -> None:
        self.cluster = cluster
        self.kubelet = kubelet
        self.balancer = balancer
        self.pools = pools
        self.slots = slots
        self.pods = pods
        self.timing = timing
        self.figures = figures
        self._names = itertools.count(1)
        self._last_replicas = {pool.arch: pool.min_replicas for pool in pools}
        """The replicas each pool was last reconciled to: a change is a scale-up or a scale-down."""

    async def run(self) -> None:
        """Reconcile every pool, forever."""
        while True:
            for pool in self.pools:
                self.reconcile(pool)
            await asyncio.sleep(RECONCILE_SECONDS)

    def live_pods(self, pool: PoolSpec) -> list[Pod]:
        """The pods that count towards the replicas: not terminating."""
        return [p for p in self.pods[pool.arch] if not p.deleting]

    def reconcile(self, pool: PoolSpec) -> None:
        want = self.cluster.replicas(pool)
        if want != self._last_replicas[pool.arch]:
            if not pool.min_replicas <= want <= pool.max_replicas:
                self.figures.fail(
                    f"{pool.deployment} replicas {want} outside [{pool.min_replicas}, {pool.max_replicas}]"
                )
            if want < self._last_replicas[pool.arch]:
                self.figures.scale_downs += 1
            else:
                self.figures.scale_ups += 1
            self._last_replicas[pool.arch] = want
        live = self.live_pods(pool)
        if len(live) < want:
            free = [s for s in self.slots[pool.arch] if s.pod is None]
            for slot in free[: want - len(live)]:
                self._create_pod(pool, slot)
        elif len(live) > want:
            chosen = sorted(live, key=self._deletion_rank)[: len(live) - want]
            busy = [v for v in chosen if v.slot.alive and v.slot.daemon.active]
            self.figures.scale_down_victims += len(chosen)
            self.figures.busy_victims += len(busy)
            if busy:
                self.figures.scale_downs_with_busy_victims += 1
            for victim in chosen:
                self._delete_pod(victim)

    def _deletion_rank(self, pod: Pod) -> tuple[Any, ...]:
        """The ReplicaSet's order (``ActivePodsWithRanks``): first in the list goes first."""
        obj = self.cluster.objects.get(("pods", NS, pod.name), {})
        try:
            cost = int((obj.get("metadata", {}).get("annotations") or {}).get(DELETION_COST, "0"))
        except ValueError:
            cost = 0
        return (
            pod.running,  # unscheduled / Pending before Running
            pod.ready,  # not ready before ready
            cost,  # lower pod-deletion-cost first
            -(pod.ready_at or 0.0),  # ready for the shorter time first
            -pod.created_at,  # newer first
        )

    def _create_pod(self, pool: PoolSpec, slot: Slot) -> None:
        pod = Pod(name=f"{pool.deployment}-{next(self._names):05d}", pool=pool, slot=slot, created_at=now())
        slot.pod = pod
        self.pods[pool.arch].append(pod)
        self.cluster.put(
            "pods",
            NS,
            {
                "metadata": {"name": pod.name, "labels": dict(pool.labels)},
                "spec": {
                    "containers": [{"name": "buildkitd", "image": "moby/buildkit"}],
                    "terminationGracePeriodSeconds": self.timing.grace_seconds,
                },
                "status": {"phase": "Pending"},
            },
        )
        self.kubelet.start(pod)

    def _delete_pod(self, pod: Pod) -> None:
        pod.deleting = True
        obj = self.cluster.pod(pod.name)
        obj["metadata"]["deletionTimestamp"] = self.cluster.now()
        obj["metadata"]["deletionGracePeriodSeconds"] = self.timing.grace_seconds
        self.cluster.put("pods", NS, obj)
        self.balancer.deregister(pod)  # the endpoints controller removes a terminating pod at once
        self.kubelet.terminate(pod)
