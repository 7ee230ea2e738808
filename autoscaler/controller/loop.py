"""The control loop: observe each pool, decide (pure), act; the ConfigMap hot-reloaded.

Each cycle, per pool:

1. **Observe** (:mod:`.observe`): the pool's pods from a watch-backed cache (no LIST), the
   Deployment's ``scale`` (one GET, for replicas and the resourceVersion the write will
   carry), and the active builds of every running pod: each sidecar's ``/status``,
   concurrently, or with ``source: prometheus`` one query.
2. **Decide**: the pool's :class:`autoscaler.policy.PoolStepper`, no I/O.
3. **Act** (:mod:`.actuate`, leader only, not in ``--dry-run``): deletion costs before a
   scale-down, the scale PATCH, an Event, the disruption annotations.

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
from dataclasses import dataclass

import aiohttp
import structlog

from autoscaler.config import Config, ConfigError, load_configmap_data
from autoscaler.controller import observe, reporting
from autoscaler.controller.actuate import Actuator, deployment_ref
from autoscaler.controller.kube import Kube, KubeError, ObjectRef
from autoscaler.controller.leadership import Elector
from autoscaler.controller.metrics import Metrics
from autoscaler.controller.pools import Pools, PoolState
from autoscaler.controller.watching import WatchCache
from autoscaler.policy import Decision, Observation

log = structlog.get_logger("autoscaler.controller")


class StartupError(Exception):
    """``run`` cannot start (no Kubernetes configuration, the API server unreachable, RBAC, no
    valid config); the message names the value at fault and the fix."""


def _refusal(error: KubeError, *, where: str) -> str:
    """A refused read of the ConfigMap, as the fix: the permission, or the credentials."""
    said = f" ({error.detail})" if error.detail else ""
    if error.status == 403:
        return (
            f"forbidden: {error.what}{said}: the autoscaler's service account needs list and watch "
            "on configmaps (deploy/base/autoscaler/rbac.yaml)"
        )
    if error.status == 401:
        return f"unauthorized: {error.what}{said}: the API server refused the credentials"
    return f"cannot read {where}: {error}{said}"


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    config_namespace: str
    config_name: str
    dry_run: bool = False


class Controller:
    """Cycles over the pools of the config in force; :meth:`start`, then :meth:`run` or :meth:`cycle`."""

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
        self.http = http
        self.clock = clock
        self.actuator = Actuator(kube=kube, metrics=metrics, elector=elector, dry_run=settings.dry_run, wall=wall)
        self.pools = Pools(kube=kube)
        self.config: Config | None = None
        self._config_version: str | None = None
        self._configmap = WatchCache(
            list_call=kube.core.list_namespaced_config_map,
            namespace=settings.config_namespace,
            field_selector=f"metadata.name={settings.config_name}",
            what="configmaps",
        )
        self.last_cycle_at: float | None = None
        self.cycles = 0

    # -- lifecycle ---------------------------------------------------------

    async def start(self, *, sync_timeout_seconds: float = 30.0) -> None:
        """Load the config (a start-up failure if there is no valid one) and start the caches."""
        where = f"ConfigMap {self.settings.config_namespace}/{self.settings.config_name}"
        await self._first_list(where=where, timeout_seconds=sync_timeout_seconds)
        self.pools.start_cache(self._configmap)
        obj = self._configmap.objects.get(self.settings.config_name)
        if obj is None:
            raise StartupError(f"{where} not found")
        try:
            config = load_configmap_data(obj.data)
        except ConfigError as e:
            raise StartupError(f"{where} is invalid and there is no last good config: " + "; ".join(e.errors)) from e
        await self._apply_config(config, version=obj.metadata.resource_version)

    async def _first_list(self, *, where: str, timeout_seconds: float) -> None:
        """The ConfigMap's first LIST: a refusal (403, 401) fails at once and says which
        permission is missing; a transient error (5xx, a dropped connection) is retried
        until ``timeout_seconds``, then fails with the last error."""
        deadline = self.clock() + timeout_seconds
        delay = 0.5
        while True:
            try:
                await asyncio.wait_for(self._configmap.prime(), max(deadline - self.clock(), 0.0))
                return
            except TimeoutError as e:
                raise StartupError(f"cannot read {where}: no answer within {timeout_seconds:g} s") from e
            except KubeError as e:
                if not e.retryable:
                    raise StartupError(_refusal(e, where=where)) from e
                if self.clock() + delay >= deadline:
                    raise StartupError(f"cannot read {where} within {timeout_seconds:g} s: {e}") from e
                log.warning("config_map_read_failed", error=str(e), retry_in_seconds=delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 5.0)

    async def wait_synced(self, *, timeout_seconds: float) -> bool:
        """Wait until every pod and HPA cache has listed; False if one has not in time.

        A cycle skips a pool whose caches are not synced yet: ``--once`` has a single cycle.
        """
        return await self.pools.wait_synced(timeout_seconds=timeout_seconds)

    async def close(self) -> None:
        await self.pools.close()

    async def run(self, *, stop: asyncio.Event) -> None:
        """Cycle every ``pollIntervalSeconds`` until ``stop``."""
        while not stop.is_set():
            started = self.clock()
            try:
                await self.cycle()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # loop boundary: one bad cycle must not stop the controller
                self.metrics.cycle_errors.inc()
                log.exception("cycle_error", error=repr(e))
            interval = self.config.poll_interval_seconds if self.config else 5.0
            delay = max(0.0, started + interval - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    # -- config ------------------------------------------------------------

    async def _apply_config(self, config: Config, *, version: str) -> None:
        await self.pools.apply(config)
        self.config = config
        self._config_version = version
        self.metrics.config_generation.set(time.time())
        for state in self.pools.states.values():
            self.metrics.max_replicas.labels(pool=state.pool.name).set(state.pool.max_replicas)
        log.info("config_applied", version=version, pools=[p.name for p in config.pools], at=self.clock())

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
            configmap = ObjectRef(kind="ConfigMap", api_version="v1", namespace=self.settings.config_namespace,
                                  name=self.settings.config_name, uid=obj.metadata.uid)  # fmt: skip
            await self.actuator.event(
                configmap,
                type_="Warning",
                reason="InvalidConfig",
                message="refused, the last good config stays in force: " + "; ".join(e.errors),
            )
            return
        await self._apply_config(config, version=version)

    # -- the cycle -----------------------------------------------------------

    def leading(self) -> bool:
        return self.actuator.leading()

    async def cycle(self) -> dict[str, Decision]:
        """One observe-decide-act pass over every pool."""
        started = time.perf_counter()
        if self._configmap.changed.is_set():
            self._configmap.changed.clear()
            await self._reload_config()
        decisions: dict[str, Decision] = {}
        for state in list(self.pools.states.values()):
            try:
                decision = await self._cycle_pool(state)
            except KubeError as e:
                self.metrics.api_errors.labels(operation="cycle").inc()
                log.warning("pool_cycle_failed", pool=state.pool.name, error=str(e), retry="next cycle")
                continue
            if decision is not None:
                decisions[state.pool.name] = decision
        self.metrics.cycle_duration.observe(time.perf_counter() - started)
        self.metrics.is_leader.set(1 if self.actuator.writes_allowed() else 0)
        self.last_cycle_at = self.clock()
        self.cycles += 1
        return decisions

    async def _cycle_pool(self, state: PoolState) -> Decision | None:
        pool = state.pool
        if state.refused is not None and not state.pods.label_selector:
            await self.pools.retry_selector(state)
        refused = state.refused or self.pools.hpa_conflict(pool)
        if refused is not None:
            self.metrics.pool_refused.labels(pool=pool.name).set(1)
            if refused != state.reported and refused.announce:
                log.error("pool_refused", pool=pool.name, reason=refused.reason)
                message = f"not scaling: {refused.reason}"
                await self.actuator.event(deployment_ref(pool), type_="Warning", reason="PoolRefused", message=message)
                state.reported = refused
            return None
        self.metrics.pool_refused.labels(pool=pool.name).set(0)
        state.reported = None
        if not state.pods.synced.is_set():
            log.info("pool_waiting_for_pod_cache", pool=pool.name)
            return None

        scale = await self.kube.read_scale(pool.namespace, pool.deployment)
        pods = observe.live_pods(state.pods)
        config = self.config
        if config is None:
            return None
        running = [p for p in pods if observe.running(p)]
        statuses = await observe.loads(self.http, pool=pool, config=config, pods=running)
        views = tuple(observe.view(p, statuses.get(p.metadata.name), pool=pool) for p in pods)
        now = self.clock()
        decision = state.stepper.step(Observation(current_replicas=scale.replicas, pods=views), now=now)
        reporting.export(self.metrics, state, decision)
        reporting.log_decision(state, decision, unknown=observe.unknown_reasons(views, statuses), now=now)
        await self.actuator.act(state, decision, scale=scale, views=views, pods=pods, now=now)
        return decision
