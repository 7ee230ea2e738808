"""The pools under a config: each one's pod cache, decision state, and why it may not be managed.

:class:`Pools` applies a config (reading each Deployment's selector when the pool has
none, starting one watch-backed pod cache per pool and one HPA cache per namespace,
carrying a pool's decision history over a reload) and answers the two questions a
cycle asks before deciding: is this pool refused (its selector is unreadable, an HPA
also targets its Deployment), and have its caches listed yet.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog

from autoscaler.config import Config, Pool
from autoscaler.controller.kube import Kube, KubeError
from autoscaler.controller.watching import WatchCache
from autoscaler.policy import PoolStepper

log = structlog.get_logger("autoscaler.controller")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a pool is not scaled this cycle."""

    reason: str
    announce: bool = True
    """False for a passing condition (a cache not listed yet): no Event, no error log."""


@dataclass
class PoolState:
    """What the controller keeps per pool between cycles."""

    pool: Pool
    stepper: PoolStepper
    pods: WatchCache
    refused: Refusal | None = None
    """Set when the pool cannot be managed under this config (its selector could not be read)."""
    reported: Refusal | None = None
    """The refusal last announced with an Event: announce each once, and again if it recurs."""
    logged: tuple[object, ...] | None = None
    """What the last ``decision`` log line said (replicas, limits, unknown pods): log again on a change."""
    summarized_at: float | None = None
    """When the last ``pool_summary`` line was written (loop time)."""


def selector_string(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


SELECTOR_UNREADABLE = Refusal("its pod selector could not be read")


class Pools:
    """Every pool of the config in force, and the watch caches behind them."""

    def __init__(self, *, kube: Kube) -> None:
        self.kube = kube
        self.states: dict[str, PoolState] = {}
        self._hpas: dict[str, WatchCache] = {}
        self._tasks: dict[WatchCache, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()

    def start_cache(self, cache: WatchCache) -> None:
        self._tasks[cache] = asyncio.create_task(cache.run(stop=self._stop), name=f"watch-{cache.what}")

    async def stop_cache(self, cache: WatchCache) -> None:
        task = self._tasks.pop(cache, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        self._stop.set()
        for cache in list(self._tasks):
            await self.stop_cache(cache)

    async def wait_synced(self, *, timeout_seconds: float) -> bool:
        """Wait until every started pod and HPA cache has listed; False if one has not in time."""
        caches = [
            cache for cache in (*(s.pods for s in self.states.values()), *self._hpas.values()) if cache in self._tasks
        ]
        try:
            async with asyncio.timeout(timeout_seconds):
                for cache in caches:
                    await cache.synced.wait()
        except TimeoutError:
            return False
        return True

    def _pod_cache(self, pool: Pool, selector: str | None) -> WatchCache:
        return WatchCache(
            list_call=self.kube.core.list_namespaced_pod,
            namespace=pool.namespace,
            label_selector=selector,
            what="pods",
        )

    async def apply(self, config: Config) -> None:
        """Adopt ``config``'s pools: keep a pool's cache and history when its pods are the same."""
        old = self.states
        states: dict[str, PoolState] = {}
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
                pods = self._pod_cache(pool, selector or None)
                if selector:
                    self.start_cache(pods)
            stepper = previous.stepper.reconfigured(pool) if previous is not None else PoolStepper(pool)
            state = PoolState(pool=pool, stepper=stepper, pods=pods)
            if not selector:
                state.refused = SELECTOR_UNREADABLE
            states[pool.name] = state
            if pool.namespace not in self._hpas:
                hpas = WatchCache(
                    list_call=self.kube.autoscaling.list_namespaced_horizontal_pod_autoscaler,
                    namespace=pool.namespace,
                    what="horizontalpodautoscalers",
                )
                self._hpas[pool.namespace] = hpas
                self.start_cache(hpas)
        for name, state in old.items():
            if all(state.pods is not p.pods for p in states.values()):
                await self.stop_cache(state.pods)
                log.info("pool_removed", pool=name)
        self.states = states

    async def retry_selector(self, state: PoolState) -> None:
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
        state.pods = self._pod_cache(pool, selector)
        self.start_cache(state.pods)
        state.refused = None
        log.info("pool_selector_read", pool=pool.name, selector=selector)

    def hpa_conflict(self, pool: Pool) -> Refusal | None:
        """An HPA that also targets the pool's Deployment (two controllers would fight over it)."""
        hpas = self._hpas.get(pool.namespace)
        if hpas is None or not hpas.synced.is_set():
            return Refusal("HorizontalPodAutoscalers not listed yet", announce=False)
        for hpa in hpas.objects.values():
            ref = hpa.spec.scale_target_ref
            if ref.kind == "Deployment" and ref.name == pool.deployment:
                name = hpa.metadata.name
                return Refusal(f"HorizontalPodAutoscaler {name} also targets deployments/{pool.deployment}")
        return None
