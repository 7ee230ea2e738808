"""Act on a decision: the one place that decides whether the controller may write, and every write.

A write happens only when :meth:`Actuator.writes_allowed`: not ``--dry-run``, and this
replica leads (or runs without an elector, as ``--once`` does). Before a scale-down every
pod gets a ``controller.kubernetes.io/pod-deletion-cost`` (idle builders lowest) so the
ReplicaSet removes idle builders first; the scale PATCH carries the resourceVersion the
cycle observed (a 409 writes nothing); an Event with the reason follows every scale; busy
pods carry the disruption annotations.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from typing import Any

import structlog

from autoscaler.config import Pool
from autoscaler.controller.kube import Kube, KubeError, ObjectRef, Scale
from autoscaler.controller.leadership import Elector
from autoscaler.controller.metrics import Metrics
from autoscaler.controller.pools import PoolState
from autoscaler.policy import Decision, PodView, deletion_cost

log = structlog.get_logger("autoscaler.controller")

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"

POD_PATCH_CONCURRENCY = 16
"""Pod annotation PATCHes in flight at once: a surge at 1,000 pods needs hundreds,
one at a time took 0.6 s (measured); 16 stays polite to the API server."""


class Actuator:
    """Carries decisions out through the API, if and only if this replica may write."""

    def __init__(
        self,
        *,
        kube: Kube,
        metrics: Metrics,
        elector: Elector | None,
        dry_run: bool,
        wall: Callable[[], datetime.datetime],
    ) -> None:
        self.kube = kube
        self.metrics = metrics
        self.elector = elector
        self.dry_run = dry_run
        self.wall = wall

    def leading(self) -> bool:
        return self.elector is None or self.elector.is_leader()

    def writes_allowed(self) -> bool:
        """Not a dry run, and the leader (leadership may lapse between two writes: asked before each)."""
        return not self.dry_run and self.leading()

    async def act(
        self, state: PoolState, decision: Decision, *, scale: Scale, views: tuple[PodView, ...], pods: list[Any],
        now: float,
    ) -> None:  # fmt: skip
        """Scale if the decision changes the replicas, then keep the disruption annotations."""
        changing = decision.desired_replicas != scale.replicas
        if self.dry_run:
            if changing:
                log.info("scale_dry_run", pool=state.pool.name, current=scale.replicas,
                         desired=decision.desired_replicas, reason=decision.reason)  # fmt: skip
            return
        if not self.leading():
            return
        by_name = {p.metadata.name: p for p in pods}
        if changing:
            await self._scale(state, decision, scale=scale, views=views, pods=by_name, now=now)
        # After the scale: a surge is answered first (measured: at 1,000 pods the
        # annotation PATCHes of a surge took up to 0.6 s when they went first).
        await self._keep_disruption_annotations(state, views, by_name)

    async def _scale(
        self, state: PoolState, decision: Decision, *, scale: Scale, views: tuple[PodView, ...],
        pods: dict[str, Any], now: float,
    ) -> None:  # fmt: skip
        """Patch the scale (ranking pods for deletion first on a scale-down), record it, post the Event."""
        pool = state.pool
        if decision.desired_replicas < scale.replicas:
            await self._rank_for_deletion(state, views, pods)
        if not self.writes_allowed():  # leadership may have lapsed while we were patching pods
            return
        try:
            await self.kube.patch_scale(
                pool.namespace, pool.deployment, replicas=decision.desired_replicas,
                resource_version=scale.resource_version,
            )  # fmt: skip
        except KubeError as e:
            self.metrics.api_errors.labels(operation="scale").inc()
            log.warning("scale_failed", pool=pool.name, error=str(e), stale_view=e.conflict, retry="next cycle")
            return
        state.stepper.scaled(now=now, from_replicas=scale.replicas, to_replicas=decision.desired_replicas)
        direction = "up" if decision.desired_replicas > scale.replicas else "down"
        self.metrics.scale_events.labels(pool=pool.name, direction=direction).inc()
        log.info("scaled", pool=pool.name, direction=direction, current=scale.replicas,
                 desired=decision.desired_replicas, reason=decision.reason)  # fmt: skip
        await self.event(
            deployment_ref(pool),
            type_="Normal",
            reason="ScaledUp" if direction == "up" else "ScaledDown",
            message=decision.reason,
        )

    async def _patch_if_changed(self, pod: Any, wanted: dict[str, str | None], *, namespace: str) -> bool:
        current = pod.metadata.annotations or {}
        delta = {k: v for k, v in wanted.items() if current.get(k) != v}
        if not delta:
            return False
        try:
            await self.kube.patch_pod_annotations(namespace, pod.metadata.name, delta)
        except KubeError as e:
            if e.not_found:
                return False  # the pod went away meanwhile
            raise
        return True

    async def _patch_pods(self, changes: list[tuple[Any, dict[str, str | None]]], *, namespace: str) -> int:
        """Patch the pods whose annotations differ, ``POD_PATCH_CONCURRENCY`` at a time.

        Every PATCH is awaited (none left running); the first failure is raised
        after all have ended. Returns how many pods were patched.
        """
        limit = asyncio.Semaphore(POD_PATCH_CONCURRENCY)

        async def one(pod: Any, wanted: dict[str, str | None]) -> bool:
            async with limit:
                return await self._patch_if_changed(pod, wanted, namespace=namespace)

        results = await asyncio.gather(*(one(pod, wanted) for pod, wanted in changes), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return sum(1 for result in results if result is True)

    async def _keep_disruption_annotations(
        self, state: PoolState, views: tuple[PodView, ...], pods: dict[str, Any]
    ) -> None:
        """Busy pods carry do-not-disrupt / safe-to-evict=false; idle ones do not."""
        switches = state.pool.pod_annotations
        if not (switches.karpenter_do_not_disrupt or switches.cluster_autoscaler_safe_to_evict):
            return
        changes: list[tuple[Any, dict[str, str | None]]] = []
        for view in views:
            pod = pods.get(view.name)
            if pod is None or view.terminating or not (pod.status and pod.status.pod_ip):
                continue
            busy = view.active_builds is None or view.active_builds > 0
            wanted: dict[str, str | None] = {}
            if switches.karpenter_do_not_disrupt:
                wanted[DO_NOT_DISRUPT] = "true" if busy else None
            if switches.cluster_autoscaler_safe_to_evict:
                wanted[SAFE_TO_EVICT] = "false" if busy else None
            changes.append((pod, wanted))
        await self._patch_pods(changes, namespace=state.pool.namespace)

    async def _rank_for_deletion(self, state: PoolState, views: tuple[PodView, ...], pods: dict[str, Any]) -> None:
        """Before a scale-down: idle builders get the lowest pod-deletion-cost."""
        changes: list[tuple[Any, dict[str, str | None]]] = [
            (pods[view.name], {DELETION_COST: str(deletion_cost(view))})
            for view in views
            if view.name in pods and not view.terminating
        ]
        patched = await self._patch_pods(changes, namespace=state.pool.namespace)
        if patched:
            log.info("deletion_costs_set", pool=state.pool.name, patched=patched)

    async def event(self, about: ObjectRef, *, type_: str, reason: str, message: str) -> None:
        """Post an Event (not in a dry run, not as a follower); a failure is logged and counted."""
        if not self.writes_allowed():
            return
        try:
            await self.kube.post_event(about, type_=type_, reason=reason, message=message, now=self.wall())
        except KubeError as e:
            self.metrics.api_errors.labels(operation="event").inc()
            log.warning("event_failed", reason=reason, error=str(e))


def deployment_ref(pool: Pool) -> ObjectRef:
    return ObjectRef(kind="Deployment", api_version="apps/v1", namespace=pool.namespace, name=pool.deployment)
