"""Observe a pool: its pods from the watch cache, each running pod's load from the configured source.

A Pending pod is not asked (it has no builds yet and no sidecar to answer); a pod whose
load cannot be read is *unknown*, never 0 (:func:`autoscaler.policy.pod_view` decides
how each counts).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import structlog

from autoscaler.config import Config, Pool, PrometheusSource
from autoscaler.controller.sources.prometheus import fetch_pool
from autoscaler.controller.sources.sidecars import SidecarStatus, Unreadable, fetch_all
from autoscaler.controller.watching import WatchCache
from autoscaler.policy import PodView, pod_view

log = structlog.get_logger("autoscaler.controller")

_GONE_PHASES = frozenset({"Succeeded", "Failed"})


def live_pods(cache: WatchCache) -> list[Any]:
    """The cached pods that still exist as builders (not Succeeded or Failed)."""
    return [p for p in cache.objects.values() if (p.status.phase if p.status else None) not in _GONE_PHASES]


def running(pod: Any) -> bool:
    """Started, with an address: a Pending pod has an IP while its images are pulled, but no
    builds and no sidecar to answer (asking would count it busy and scale up for nothing)."""
    return bool(pod.status and pod.status.phase == "Running" and pod.status.pod_ip)


def view(pod: Any, status: SidecarStatus | Unreadable | None, *, pool: Pool) -> PodView:
    """What the decision needs to know of one pod (``status`` None: not asked, not running)."""
    name = pod.metadata.name
    terminating = pod.metadata.deletion_timestamp is not None
    conditions = pod.status.conditions or [] if pod.status else []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    if status is None:
        return pod_view(name=name, started=False, active_builds=0, terminating=terminating)
    if isinstance(status, Unreadable):
        return pod_view(name=name, started=True, active_builds=None, ready=ready, terminating=terminating)
    if status.arch is not None and status.arch != pool.arch:
        log.error("pod_arch_mismatch", pool=pool.name, pod=name, reported=status.arch, expected=pool.arch)
        return pod_view(name=name, started=True, active_builds=None, ready=ready, terminating=terminating)
    return pod_view(
        name=name,
        started=True,
        active_builds=status.active_count,
        ready=ready,
        terminating=terminating,
        draining=status.draining,
    )


def unknown_reasons(views: tuple[PodView, ...], statuses: dict[str, SidecarStatus | Unreadable]) -> dict[str, str]:
    """Each pod of unknown load, by name, with why (what the ``decision`` log line names)."""
    reasons: dict[str, str] = {}
    for pod in views:
        if pod.active_builds is not None:
            continue
        status = statuses.get(pod.name)
        if isinstance(status, Unreadable):
            reasons[pod.name] = status.reason
        elif isinstance(status, SidecarStatus) and status.active_count is None:
            reasons[pod.name] = "its sidecar cannot read buildkitd (active_count null)"
        else:
            reasons[pod.name] = "it reports another arch than the pool's"
    return reasons


async def loads(
    http: aiohttp.ClientSession, *, pool: Pool, config: Config, pods: list[Any]
) -> dict[str, SidecarStatus | Unreadable]:
    """Each running pod's load, from the configured source (pods not asked about have none yet)."""
    if isinstance(config.source, PrometheusSource):
        return await fetch_pool(
            http,
            source=config.source,
            pool=pool,
            pods=[p.metadata.name for p in pods],
            timeout_seconds=config.status_timeout_seconds,
        )
    urls = {p.metadata.name: f"http://{_host(p.status.pod_ip)}:{pool.sidecar_port}/status" for p in pods}
    return await fetch_all(
        http, urls, timeout_seconds=config.status_timeout_seconds, concurrency=config.status_concurrency
    )


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip
