"""The control loop: observe each pool, decide (pure), act; config hot-reloaded.

Each cycle, per pool:

1. **Observe**: the pool's pods from a watch-backed cache (no LIST), the
   Deployment's ``scale`` (one GET, for replicas and the resourceVersion the
   write will carry), and the active builds of every running pod: each sidecar's
   ``/status``, concurrently, or with ``source: prometheus`` one query
   (:mod:`autoscaler.prometheus`). A Pending pod is not asked: it has no builds yet.
2. **Decide**: :func:`autoscaler.policy.decide`, no I/O.
3. **Act** (leader only, not in ``--dry-run``): keep the disruption annotations
   on busy pods; before a scale-down, rank pods with
   ``controller.kubernetes.io/pod-deletion-cost`` (idle lowest) so the
   ReplicaSet removes idle builders first; patch ``deployments/scale`` with the
   resourceVersion it observed (a 409 means the view was stale: nothing is
   written, the next cycle looks again); post an Event with the reason.

A failed call skips the rest of that pool's cycle; the next cycle, one poll
interval later, observes afresh and tries again: that is the retry, with the
poll interval as its backoff, and it never acts on a stale view.

The ConfigMap is watched through the API. A valid edit is applied at the next
cycle; an invalid one is refused (Warning Event on the ConfigMap, log line,
``buildkit_autoscaler_config_errors_total``) and the last good config stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from autoscaler.config import Config, ConfigError, Pool, PrometheusSource, load_configmap_data
from autoscaler.kube import Kube, KubeError, ObjectRef, Scale
from autoscaler.leadership import Elector
from autoscaler.metrics import Metrics
from autoscaler.policy import Decision, Direction, History, Observation, PodView, decide
from autoscaler.prometheus import fetch_pool
from autoscaler.status import SidecarStatus, Unreadable, fetch_all
from autoscaler.watching import WatchCache

log = structlog.get_logger("autoscaler.controller")

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"

POD_PATCH_CONCURRENCY = 16
"""Pod annotation PATCHes in flight at once: a surge at 1,000 pods needs hundreds,
one at a time took 0.6 s (measured); 16 stays polite to the API server."""

UNKNOWN_LOAD_COST = 1_000_000
"""Deletion cost of a pod whose load is unknown: removed last, it may be busy."""


class StartupError(Exception):
    """The controller cannot start (no valid config, RBAC); the message says why."""


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    config_namespace: str
    config_name: str
    dry_run: bool = False


@dataclass
class PoolState:
    """What the controller keeps per pool between cycles."""

    pool: Pool
    history: History | None
    """None until the first cycle seeds it with the replicas it finds (as HPA does after a restart)."""
    pods: WatchCache
    refused: str | None = None
    """Why the pool cannot be managed under this config (its selector could not be read)."""
    reported: str | None = None
    """The refusal last announced with an Event: announce each once, and again if it recurs."""
    last_direction: Direction | None = None
    annotated: dict[str, dict[str, str | None]] = field(default_factory=dict)


def selector_string(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def pod_view(pod: Any, status: SidecarStatus | Unreadable | None, *, pool: Pool) -> PodView:
    """What the decision needs to know of one pod."""
    name = pod.metadata.name
    terminating = pod.metadata.deletion_timestamp is not None
    conditions = pod.status.conditions or [] if pod.status else []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    if status is None:
        # Not running yet (no IP): it cannot have builds.
        return PodView(name=name, active_builds=0, ready=False, terminating=terminating)
    if isinstance(status, Unreadable):
        return PodView(name=name, active_builds=None, ready=ready, terminating=terminating)
    if status.arch is not None and status.arch != pool.arch:
        log.error("pod_arch_mismatch", pool=pool.name, pod=name, reported=status.arch, expected=pool.arch)
        return PodView(name=name, active_builds=None, ready=ready, terminating=terminating)
    return PodView(
        name=name, active_builds=status.active_count, ready=ready, terminating=terminating, draining=status.draining
    )


def deletion_cost(view: PodView) -> int:
    """Lower goes first: a draining builder, then idle ones, then by running builds; unknown last."""
    if view.active_builds is None:
        return UNKNOWN_LOAD_COST
    if view.draining:
        return -1
    return view.active_builds


class Controller:
    def __init__(
        self,
        *,
        kube: Kube,
        settings: RunSettings,
        metrics: Metrics,
        elector: Elector | None,
        http: aiohttp.ClientSession,
        clock: Callable[[], float],
        wall: Callable[[], datetime.datetime],
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.metrics = metrics
        self.elector = elector
        self.http = http
        self.clock = clock
        self.wall = wall
        self.config: Config | None = None
        self.pools: dict[str, PoolState] = {}
        self._config_version: str | None = None
        self._configmap = WatchCache(
            list_call=kube.core.list_namespaced_config_map,
            namespace=settings.config_namespace,
            field_selector=f"metadata.name={settings.config_name}",
            what="configmaps",
        )
        self._hpas: dict[str, WatchCache] = {}
        self._tasks: dict[WatchCache, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self.last_cycle_at: float | None = None
        self.cycles = 0

    # -- lifecycle ---------------------------------------------------------

    def _start_cache(self, cache: WatchCache) -> None:
        self._tasks[cache] = asyncio.create_task(cache.run(stop=self._stop), name=f"watch-{cache.what}")

    async def _stop_cache(self, cache: WatchCache) -> None:
        task = self._tasks.pop(cache, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def start(self, *, sync_timeout_seconds: float = 30.0) -> None:
        """Load the config (a start-up failure if there is no valid one) and start the caches."""
        self._start_cache(self._configmap)
        try:
            await asyncio.wait_for(self._configmap.synced.wait(), sync_timeout_seconds)
        except TimeoutError as e:
            raise StartupError(
                f"cannot read ConfigMap {self.settings.config_namespace}/{self.settings.config_name}: "
                "no answer from the API server (check RBAC: get, list, watch on configmaps)"
            ) from e
        obj = self._configmap.objects.get(self.settings.config_name)
        if obj is None:
            raise StartupError(f"ConfigMap {self.settings.config_namespace}/{self.settings.config_name} not found")
        try:
            config = load_configmap_data(obj.data)
        except ConfigError as e:
            raise StartupError(
                f"ConfigMap {self.settings.config_namespace}/{self.settings.config_name} is invalid and there is "
                "no last good config: " + "; ".join(e.errors)
            ) from e
        await self._apply_config(config, version=obj.metadata.resource_version)

    async def wait_synced(self, *, timeout_seconds: float) -> bool:
        """Wait until every started pod and HPA cache has listed; False if one has not in time.

        A cycle skips a pool whose caches are not synced yet: ``--once`` has a single cycle.
        """
        caches = [
            cache for cache in (*(s.pods for s in self.pools.values()), *self._hpas.values()) if cache in self._tasks
        ]
        try:
            async with asyncio.timeout(timeout_seconds):
                for cache in caches:
                    await cache.synced.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._stop.set()
        for cache in list(self._tasks):
            await self._stop_cache(cache)

    async def run(self, *, stop: asyncio.Event) -> None:
        """Cycle every ``pollIntervalSeconds`` until ``stop``."""
        while not stop.is_set():
            started = self.clock()
            try:
                await self.cycle()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # loop boundary: one bad cycle must not stop the controller
                self.metrics.api_errors.labels(operation="cycle_unexpected").inc()
                log.exception("cycle_error", error=repr(e))
            interval = self.config.poll_interval_seconds if self.config else 5.0
            delay = max(0.0, started + interval - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    # -- config ------------------------------------------------------------

    async def _apply_config(self, config: Config, *, version: str) -> None:
        old = self.pools
        pools: dict[str, PoolState] = {}
        now = self.clock()
        for pool in config.pools:
            previous = old.get(pool.name)
            labels = dict(pool.selector) if pool.selector else None
            if labels is None:
                try:
                    labels = await self.kube.deployment_selector(pool.namespace, pool.deployment)
                except KubeError as e:
                    log.error("pool_selector_unreadable", pool=pool.name, error=str(e))
                    labels = {}
            selector = selector_string(labels)
            if (
                previous is not None
                and previous.pods.namespace == pool.namespace
                and previous.pods.label_selector == selector
                and selector
            ):
                pods = previous.pods
            else:
                pods = WatchCache(
                    list_call=self.kube.core.list_namespaced_pod,
                    namespace=pool.namespace,
                    label_selector=selector or None,
                    what="pods",
                )
                if selector:
                    self._start_cache(pods)
            history = previous.history.reconfigured(pool) if previous and previous.history else None
            state = PoolState(pool=pool, history=history, pods=pods)
            if not selector:
                state.refused = "its pod selector could not be read"
            pools[pool.name] = state
            if pool.namespace not in self._hpas:
                hpas = WatchCache(
                    list_call=self.kube.autoscaling.list_namespaced_horizontal_pod_autoscaler,
                    namespace=pool.namespace,
                    what="horizontalpodautoscalers",
                )
                self._hpas[pool.namespace] = hpas
                self._start_cache(hpas)
        for name, state in old.items():
            if all(state.pods is not p.pods for p in pools.values()):
                await self._stop_cache(state.pods)
                log.info("pool_removed", pool=name)
        self.pools = pools
        self.config = config
        self._config_version = version
        self.metrics.config_generation.set(time.time())
        for state in pools.values():
            self.metrics.max_replicas.labels(pool=state.pool.name).set(state.pool.max_replicas)
        log.info("config_applied", version=version, pools=[p.name for p in config.pools], at=now)

    async def _check_deployments_exist(self, config: Config) -> None:
        """Refuse an edit naming a Deployment that does not exist (a typo'd pool).

        Only a definite 404 refuses; any other failure lets the edit through (the
        cycle then reports the pool), so a flaky API server cannot block a fix.
        Not applied at start-up: the Deployments may simply not be created yet.
        """
        errors = []
        for index, pool in enumerate(config.pools):
            try:
                await self.kube.read_scale(pool.namespace, pool.deployment)
            except KubeError as e:
                if e.not_found:
                    where = f"deployments/{pool.deployment} not found in namespace {pool.namespace}"
                    errors.append(f"pools[{index}].deployment: {where}")
        if errors:
            raise ConfigError(errors)

    async def _reload_config(self) -> None:
        """Apply a changed ConfigMap, or refuse it and keep the last good one."""
        obj = self._configmap.objects.get(self.settings.config_name)
        if obj is None or obj.metadata.resource_version == self._config_version:
            return
        version = obj.metadata.resource_version
        try:
            config = load_configmap_data(obj.data)
            await self._check_deployments_exist(config)
        except ConfigError as e:
            self._config_version = version  # refuse each bad version once
            self.metrics.config_errors.inc()
            log.error("config_refused", version=version, errors=list(e.errors), kept="last good config")
            await self._event(
                ObjectRef(
                    kind="ConfigMap",
                    api_version="v1",
                    namespace=self.settings.config_namespace,
                    name=self.settings.config_name,
                    uid=obj.metadata.uid,
                ),
                type_="Warning",
                reason="InvalidConfig",
                message="refused, the last good config stays in force: " + "; ".join(e.errors),
            )
            return
        await self._apply_config(config, version=version)

    # -- the cycle -----------------------------------------------------------

    def leading(self) -> bool:
        return self.elector is None or self.elector.is_leader()

    async def cycle(self) -> dict[str, Decision]:
        """One observe-decide-act pass over every pool."""
        started = time.perf_counter()
        if self._configmap.changed.is_set():
            self._configmap.changed.clear()
            await self._reload_config()
        decisions: dict[str, Decision] = {}
        for state in list(self.pools.values()):
            try:
                decision = await self._cycle_pool(state)
            except KubeError as e:
                self.metrics.api_errors.labels(operation="cycle").inc()
                log.warning("pool_cycle_failed", pool=state.pool.name, error=str(e), retry="next cycle")
                continue
            if decision is not None:
                decisions[state.pool.name] = decision
        self.metrics.cycle_duration.observe(time.perf_counter() - started)
        self.metrics.is_leader.set(1 if self.leading() and not self.settings.dry_run else 0)
        self.last_cycle_at = self.clock()
        self.cycles += 1
        return decisions

    def _hpa_conflict(self, pool: Pool) -> str | None:
        hpas = self._hpas.get(pool.namespace)
        if hpas is None or not hpas.synced.is_set():
            return "HorizontalPodAutoscalers not listed yet"
        for hpa in hpas.objects.values():
            ref = hpa.spec.scale_target_ref
            if ref.kind == "Deployment" and ref.name == pool.deployment:
                return f"HorizontalPodAutoscaler {hpa.metadata.name} also targets deployments/{pool.deployment}"
        return None

    async def _retry_selector(self, state: PoolState) -> None:
        """A selector that could not be read when the config was applied is tried again each cycle."""
        pool = state.pool
        try:
            labels = await self.kube.deployment_selector(pool.namespace, pool.deployment)
        except KubeError as e:
            log.warning("pool_selector_unreadable", pool=pool.name, error=str(e), retry="next cycle")
            return
        selector = selector_string(labels)
        if not selector:
            return
        state.pods = WatchCache(
            list_call=self.kube.core.list_namespaced_pod,
            namespace=pool.namespace,
            label_selector=selector,
            what="pods",
        )
        self._start_cache(state.pods)
        state.refused = None
        log.info("pool_selector_read", pool=pool.name, selector=selector)

    async def _cycle_pool(self, state: PoolState) -> Decision | None:
        pool = state.pool
        name = pool.name
        if state.refused is not None and not state.pods.label_selector:
            await self._retry_selector(state)
        refused = state.refused or self._hpa_conflict(pool)
        if refused is not None:
            self.metrics.pool_refused.labels(pool=name).set(1)
            if refused != state.reported and not refused.endswith("not listed yet"):
                log.error("pool_refused", pool=name, reason=refused)
                await self._event(
                    _deployment(pool), type_="Warning", reason="PoolRefused", message=f"not scaling: {refused}"
                )
                state.reported = refused
            return None
        self.metrics.pool_refused.labels(pool=name).set(0)
        state.reported = None
        if not state.pods.synced.is_set():
            log.info("pool_waiting_for_pod_cache", pool=name)
            return None

        scale = await self.kube.read_scale(pool.namespace, pool.deployment)
        pods = [p for p in state.pods.objects.values() if (p.status.phase if p.status else None) not in _GONE_PHASES]
        config = self.config
        if config is None:
            return None
        statuses = await self._observe(pool, config, [p for p in pods if _running(p)])
        views = tuple(pod_view(p, statuses.get(p.metadata.name), pool=pool) for p in pods)
        observation = Observation(current_replicas=scale.replicas, pods=views)
        now = self.clock()
        if state.history is None:
            state.history = History.start(pool, now=now, current_replicas=scale.replicas)
        decision = decide(observation, pool, state.history, now)
        state.history = state.history.record(now, decision.recommendation)
        self._export(pool, decision)

        changing = decision.desired_replicas != scale.replicas
        if self.settings.dry_run:
            if changing:
                log.info("scale_dry_run", pool=name, current=scale.replicas, desired=decision.desired_replicas,
                         reason=decision.reason)  # fmt: skip
            return decision
        if not self.leading():
            return decision
        pods_by_name = {p.metadata.name: p for p in pods}
        if changing:
            await self._scale(state, decision, scale=scale, views=views, pods=pods_by_name, now=now)
        # After the scale: a surge is answered first (measured: at 1,000 pods the
        # annotation PATCHes of a surge took up to 0.6 s when they went first).
        await self._keep_disruption_annotations(state, views, pods_by_name)
        return decision

    async def _scale(
        self,
        state: PoolState,
        decision: Decision,
        *,
        scale: Scale,
        views: tuple[PodView, ...],
        pods: dict[str, Any],
        now: float,
    ) -> None:
        """Patch the scale (ranking pods for deletion first on a scale-down), record it, post the Event."""
        pool = state.pool
        name = pool.name
        if decision.desired_replicas < scale.replicas:
            await self._rank_for_deletion(state, views, pods)
        if not self.leading():  # leadership may have lapsed while we were patching pods
            return
        try:
            await self.kube.patch_scale(
                pool.namespace,
                pool.deployment,
                replicas=decision.desired_replicas,
                resource_version=scale.resource_version,
            )
        except KubeError as e:
            self.metrics.api_errors.labels(operation="scale").inc()
            log.warning("scale_failed", pool=name, error=str(e), stale_view=e.conflict, retry="next cycle")
            return
        assert state.history is not None  # noqa: S101 - set by the caller before deciding
        state.history = state.history.scaled(now, scale.replicas, decision.desired_replicas)
        direction = "up" if decision.desired_replicas > scale.replicas else "down"
        self.metrics.scale_events.labels(pool=name, direction=direction).inc()
        log.info("scaled", pool=name, direction=direction, current=scale.replicas,
                 desired=decision.desired_replicas, reason=decision.reason)  # fmt: skip
        await self._event(
            _deployment(pool),
            type_="Normal",
            reason="ScaledUp" if direction == "up" else "ScaledDown",
            message=decision.reason,
        )

    async def _observe(self, pool: Pool, config: Config, running: list[Any]) -> dict[str, SidecarStatus | Unreadable]:
        """Each running pod's load, from the configured source (pods not asked about have none yet)."""
        if isinstance(config.source, PrometheusSource):
            return await fetch_pool(
                self.http,
                source=config.source,
                pool=pool,
                pods=[p.metadata.name for p in running],
                timeout_seconds=config.status_timeout_seconds,
            )
        urls = {p.metadata.name: f"http://{_host(p.status.pod_ip)}:{pool.sidecar_port}/status" for p in running}
        return await fetch_all(
            self.http, urls, timeout_seconds=config.status_timeout_seconds, concurrency=config.status_concurrency
        )

    def _export(self, pool: Pool, decision: Decision) -> None:
        m = self.metrics
        m.active_builds.labels(pool=pool.name).set(decision.active_builds)
        m.current_replicas.labels(pool=pool.name).set(decision.current_replicas)
        m.desired_replicas.labels(pool=pool.name).set(decision.desired_replicas)
        m.recommended_replicas.labels(pool=pool.name).set(decision.recommended_replicas)
        m.unreadable_pods.labels(pool=pool.name).set(decision.unknown_pods)

    # -- acting on pods ---------------------------------------------------

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

    async def _event(self, about: ObjectRef, *, type_: str, reason: str, message: str) -> None:
        if self.settings.dry_run or not self.leading():
            return
        try:
            await self.kube.post_event(about, type_=type_, reason=reason, message=message, now=self.wall())
        except KubeError as e:
            self.metrics.api_errors.labels(operation="event").inc()
            log.warning("event_failed", reason=reason, error=str(e))


_GONE_PHASES = frozenset({"Succeeded", "Failed"})


def _running(pod: Any) -> bool:
    """Started, with an address: a Pending pod has an IP while its images are pulled, but no
    builds and no sidecar to answer (asking would count it busy and scale up for nothing)."""
    return bool(pod.status and pod.status.phase == "Running" and pod.status.pod_ip)


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def _deployment(pool: Pool) -> ObjectRef:
    return ObjectRef(kind="Deployment", api_version="apps/v1", namespace=pool.namespace, name=pool.deployment)
