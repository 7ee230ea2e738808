"""The fleet's ReplicaSet: keeps each pool's pods at its Deployment's replicas, deleting victims as Kubernetes does.

The victim order is not written here: it is :mod:`autoscaler.policy.replicaset`, the one
model of it that the simulator uses too; this module only says what the ReplicaSet knows
of each pod (:meth:`ReplicaSet.candidate`).
"""

from __future__ import annotations

import asyncio
import itertools

from autoscaler.policy.replicaset import Candidate, victims
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
            chosen = victims(live, len(live) - want, candidate=self.candidate)
            busy = [v for v in chosen if v.slot.alive and v.slot.daemon.active]
            self.figures.scale_down_victims += len(chosen)
            self.figures.busy_victims += len(busy)
            if busy:
                self.figures.scale_downs_with_busy_victims += 1
            for victim in chosen:
                self._delete_pod(victim)

    def candidate(self, pod: Pod) -> Candidate:
        """What the ReplicaSet knows of ``pod``: its phase, readiness and deletion-cost annotation."""
        obj = self.cluster.objects.get(("pods", NS, pod.name), {})
        try:
            cost = int((obj.get("metadata", {}).get("annotations") or {}).get(DELETION_COST, "0"))
        except ValueError:
            cost = 0  # as Kubernetes reads it (its API server refuses such an annotation anyway)
        return Candidate(
            running=pod.running,
            ready=pod.ready,
            deletion_cost=cost,
            ready_since=pod.ready_at if pod.ready else None,
            created_at=pod.created_at,
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
