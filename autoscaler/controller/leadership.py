"""Leader election on a ``coordination.k8s.io/v1`` Lease, on an injected clock.

kubernetes-asyncio ships an elector, but it reads the wall clock
(``time.time()``) for its deadlines, so it cannot run on the tests' fake time.
This one follows client-go's rules with the event loop's clock:

* a candidate takes the Lease only when its holder has not renewed it for
  ``lease_duration_seconds``, judged by *when this process last saw the
  record change* (local monotonic time), never by comparing the holder's
  timestamps with our clock, so clock skew between nodes cannot cause two
  leaders;
* every write carries the Lease's ``resourceVersion``: of two candidates that
  race, the second gets 409 and stays a follower;
* a leader that has not renewed for ``renew_deadline_seconds`` (shorter than
  the lease duration) stops acting before anyone else may take over.

Takeover after a leader dies takes, counted from its last renewal, the lease
duration plus up to two retry periods: one until the follower first sees the
record stop changing, one until its next attempt after the duration (measured
in the end-to-end run: 18.0 s with 15 s and 2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from autoscaler.controller.kube import TRANSIENT, Kube, KubeError, wrap

log = structlog.get_logger("autoscaler.leadership")


@dataclass(frozen=True, kw_only=True)
class LeaseSettings:
    namespace: str
    name: str
    identity: str
    lease_duration_seconds: float = 15.0
    """How long a silent holder keeps the Lease: client-go's default."""
    renew_deadline_seconds: float = 10.0
    """A leader that could not renew for this long stops acting (< lease duration)."""
    retry_period_seconds: float = 2.0
    """How often the leader renews and a follower tries."""


def micro_time(moment: datetime.datetime) -> str:
    """Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Elector:
    """Holds (or waits for) the Lease; :meth:`is_leader` gates every write."""

    def __init__(
        self,
        *,
        kube: Kube,
        settings: LeaseSettings,
        clock: Callable[[], float],
        wall: Callable[[], datetime.datetime],
        on_change: Callable[[bool], None] = lambda _leader: None,
    ) -> None:
        if settings.renew_deadline_seconds >= settings.lease_duration_seconds:
            raise ValueError("renew_deadline_seconds must be shorter than lease_duration_seconds")
        self._kube = kube
        self.settings = settings
        self._clock = clock
        self._wall = wall
        self._on_change = on_change
        self._renewed_at: float | None = None
        self._observed_version: str | None = None
        self._observed_at = 0.0
        self._was_leader = False

    def is_leader(self) -> bool:
        """True only while the last successful renewal is within the renew deadline."""
        renewed = self._renewed_at
        return renewed is not None and self._clock() - renewed < self.settings.renew_deadline_seconds

    def _announce(self) -> None:
        leader = self.is_leader()
        if leader != self._was_leader:
            self._was_leader = leader
            log.info("leadership_changed", leader=leader, identity=self.settings.identity, lease=self.settings.name)
            self._on_change(leader)

    async def run(self, *, stop: asyncio.Event) -> None:
        """Try and renew every retry period until ``stop``; then release the Lease if held."""
        try:
            while not stop.is_set():
                try:
                    await self.try_acquire_or_renew()
                except KubeError as e:
                    log.warning("lease_error", error=str(e), leader=self.is_leader())
                self._announce()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.retry_period_seconds)
        finally:
            await self.release()

    async def try_acquire_or_renew(self) -> bool:
        """One attempt. Returns whether this process holds the Lease now."""
        s = self.settings
        now = self._clock()
        stamp = micro_time(self._wall())
        coordination = self._kube.coordination
        try:
            lease = await coordination.read_namespaced_lease(s.name, s.namespace, _request_timeout=self._kube.timeout)
        except TRANSIENT as e:
            error = wrap(e, what=f"read leases/{s.name} in {s.namespace}")
            if not error.not_found:
                raise error from e
            return await self._create(stamp=stamp, now=now)
        version = str(lease.metadata.resource_version)
        if version != self._observed_version:
            self._observed_version = version
            self._observed_at = now
        spec = lease.spec
        holder = spec.holder_identity or ""
        held_by_other = holder not in ("", s.identity)
        duration = float(spec.lease_duration_seconds or s.lease_duration_seconds)
        if held_by_other and self._observed_at + duration > now:
            self._renewed_at = None
            return False
        # The client accepts plain dicts (its annotations say model objects only).
        body: Any = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": s.name,
                "namespace": s.namespace,
                "resourceVersion": version,
                "labels": dict(lease.metadata.labels or {}),
                "annotations": dict(lease.metadata.annotations or {}),
            },
            "spec": {
                "holderIdentity": s.identity,
                "leaseDurationSeconds": max(1, round(s.lease_duration_seconds)),
                "acquireTime": micro_time(spec.acquire_time) if holder == s.identity and spec.acquire_time else stamp,
                "renewTime": stamp,
                "leaseTransitions": (spec.lease_transitions or 0) + (0 if holder == s.identity else 1),
            },
        }
        try:
            updated = await coordination.replace_namespaced_lease(
                s.name, s.namespace, body, _request_timeout=self._kube.timeout
            )
        except TRANSIENT as e:
            error = wrap(e, what=f"replace leases/{s.name} in {s.namespace}")
            if error.conflict:
                return False  # somebody else wrote first: we saw a stale record
            raise error from e
        self._observed_version = str(updated.metadata.resource_version)
        self._observed_at = now
        self._renewed_at = now
        return True

    async def _create(self, *, stamp: str, now: float) -> bool:
        s = self.settings
        body: Any = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": s.name, "namespace": s.namespace},
            "spec": {
                "holderIdentity": s.identity,
                "leaseDurationSeconds": max(1, round(s.lease_duration_seconds)),
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": 0,
            },
        }
        try:
            created = await self._kube.coordination.create_namespaced_lease(
                s.namespace, body, _request_timeout=self._kube.timeout
            )
        except TRANSIENT as e:
            error = wrap(e, what=f"create leases/{s.name} in {s.namespace}")
            if error.conflict:
                return False
            raise error from e
        self._observed_version = str(created.metadata.resource_version)
        self._observed_at = now
        self._renewed_at = now
        return True

    async def release(self) -> None:
        """Give the Lease up at shutdown so the other replica takes over at once."""
        if not self.is_leader():
            self._renewed_at = None
            return
        s = self.settings
        self._renewed_at = None
        self._announce()
        try:
            lease = await self._kube.coordination.read_namespaced_lease(
                s.name, s.namespace, _request_timeout=self._kube.timeout
            )
            if lease.spec.holder_identity != s.identity:
                return
            body: Any = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": s.name,
                    "namespace": s.namespace,
                    "resourceVersion": lease.metadata.resource_version,
                },
                "spec": {
                    "holderIdentity": "",
                    "leaseDurationSeconds": 1,
                    "renewTime": micro_time(self._wall()),
                    "acquireTime": micro_time(lease.spec.acquire_time) if lease.spec.acquire_time else None,
                    "leaseTransitions": lease.spec.lease_transitions or 0,
                },
            }
            await self._kube.coordination.replace_namespaced_lease(
                s.name, s.namespace, body, _request_timeout=self._kube.timeout
            )
            log.info("lease_released", identity=s.identity, lease=s.name)
        except TRANSIENT as e:
            log.warning("lease_release_failed", error=str(wrap(e, what="release lease")))
