"""The fleet's API server: the fake Kubernetes API at the wire, knowing who calls, recording writes, injecting faults.

A real API server authenticates and audits its callers: here every autoscaler has its own
bearer token in its kubeconfig, every write is recorded with the Lease's holder at the
instant it arrived, and the whole-run leadership check reads those records.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import kmock
import yaml
from kmock import Response  # type: ignore[attr-defined]  # exported, though not in kmock's __all__

from fakes.kubernetes import FakeCluster
from tests.e2e.fleet import CONFIG_MAP, IDENTITIES, LEASE, LEASE_DURATION_SECONDS, NS, Figures, PoolSpec

KMOCK_REQUESTS_KEPT = 16
"""kmock 0.8 scans its whole request log on every request; keep it short (as bench/fake_fleet.py does)."""


@dataclass(frozen=True)
class Write:
    at: float
    who: str
    verb: str
    resource: str
    name: str | None
    subresource: str | None
    holder: str | None
    """The Lease's holder when the write arrived."""
    holder_renewed_at: float | None
    """When that holder's last successful Lease write arrived (harness clock)."""
    status: int
    body: Any


@dataclass(frozen=True)
class LeaseRecord:
    at: float
    who: str
    holder: str
    acquire_time: str | None
    renew_time: str | None
    transitions: int


Fault = Callable[[kmock.Request, str, str], Awaitable[Response | None]]
"""(request, caller, verb) -> a response to answer instead, or None to serve it normally."""


class Cluster(FakeCluster):
    """The tests' FakeCluster, knowing who calls, recording writes and the Lease's history."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[Write] = []
        self.leases: list[LeaseRecord] = []
        self.last_renewal: dict[str, float] = {}
        self.fault: Fault | None = None

    @staticmethod
    def caller(req: kmock.Request) -> str:
        auth = req.headers.get("Authorization") or req.headers.get("authorization") or ""
        return auth.removeprefix("Bearer ").strip() or "anonymous"

    def lease(self) -> dict[str, Any] | None:
        return self.objects.get(("leases.coordination.k8s.io", NS, LEASE))

    def lease_holder(self) -> str | None:
        return (self.lease() or {}).get("spec", {}).get("holderIdentity") or None

    def replicas(self, pool: PoolSpec) -> int:
        replicas: int = self.get("deployments.apps", NS, pool.deployment)["spec"]["replicas"]
        return replicas

    def pod(self, name: str) -> dict[str, Any]:
        """A copy of a pod's object, to change and put back."""
        return copy.deepcopy(self.get("pods", NS, name))

    def seed(self, pools: tuple[PoolSpec, ...], *, config_yaml: str) -> None:
        """What the chart installs: a Deployment per pool at its minimum, and the autoscaler's ConfigMap."""
        for pool in pools:
            self.put(
                "deployments.apps",
                NS,
                {
                    "metadata": {"name": pool.deployment, "labels": dict(pool.labels)},
                    "spec": {
                        "replicas": pool.min_replicas,
                        "selector": {"matchLabels": dict(pool.labels)},
                        "template": {"metadata": {"labels": dict(pool.labels)}},
                    },
                    "status": {"replicas": 0},
                },
            )
        self.edit_config(config_yaml)

    def edit_config(self, text: str) -> None:
        """An operator's edit of the autoscaler's ConfigMap (creates it the first time)."""
        key = ("configmaps", NS, CONFIG_MAP)
        cm = copy.deepcopy(self.objects[key]) if key in self.objects else {"metadata": {"name": CONFIG_MAP}}
        cm["data"] = {"config.yaml": text}
        self.put("configmaps", NS, cm)

    def kubeconfig(self, identity: str) -> str:
        """A kubeconfig for ``identity``: its own bearer token, which :meth:`caller` reads back."""
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                "users": [{"name": identity, "user": {"token": identity}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": identity, "namespace": NS}}],
                "current-context": "fake",
            }
        )

    async def handle(self, req: kmock.Request) -> Response:
        assert self.handler is not None
        log: list[kmock.Request] = self.handler._requests
        if len(log) > KMOCK_REQUESTS_KEPT:
            del log[:-KMOCK_REQUESTS_KEPT]
        loop = asyncio.get_running_loop()
        who = self.caller(req)
        method = req.method.value
        verb = {"POST": "create", "PUT": "replace", "PATCH": "patch", "DELETE": "delete"}.get(method, "read")
        res = self._res(req)
        if self.fault is not None:
            injected = await self.fault(req, who, verb)
            if injected is not None:
                self.calls.append((f"fault:{verb}", res, req.namespace, req.name, req.subresource))
                return injected
        at = loop.time()
        holder = self.lease_holder()
        response: Response = await super().handle(req)
        status = response.status or 200
        if verb == "read":
            return response
        if res == "leases.coordination.k8s.io":
            if status < 300:
                self._record_lease(at=at, who=who)
            return response
        self.writes.append(
            Write(
                at=at,
                who=who,
                verb=verb,
                resource=res,
                name=req.name,
                subresource=req.subresource,
                holder=holder,
                holder_renewed_at=self.last_renewal.get(holder) if holder else None,
                status=status,
                body=copy.deepcopy(req.data),
            )
        )
        return response

    def _record_lease(self, *, at: float, who: str) -> None:
        spec = (self.lease() or {}).get("spec", {})
        new_holder = spec.get("holderIdentity") or ""
        self.leases.append(
            LeaseRecord(
                at=at,
                who=who,
                holder=new_holder,
                acquire_time=spec.get("acquireTime"),
                renew_time=spec.get("renewTime"),
                transitions=int(spec.get("leaseTransitions") or 0),
            )
        )
        if new_holder:
            self.last_renewal[new_holder] = at
        else:
            self.last_renewal.pop(who, None)

    def scale_patches(self) -> list[Write]:
        return [w for w in self.writes if w.subresource == "scale"]

    def check_leadership(self, figures: Figures) -> None:
        """Every write came from the Lease's holder, whose lease had not expired; takeovers waited."""
        for write in self.writes:
            if write.who not in IDENTITIES:
                continue
            if write.holder != write.who:
                figures.fail(f"{write.who} wrote {write.verb} {write.resource}/{write.name} while {write.holder} led")
            elif write.holder_renewed_at is None or write.at - write.holder_renewed_at >= LEASE_DURATION_SECONDS:
                figures.fail(f"{write.who} wrote {write.resource}/{write.name} on an expired lease")
        previous: LeaseRecord | None = None
        for record in self.leases:
            if previous is not None and record.holder and record.holder != previous.holder:
                figures.leader_changes += 1
                if previous.holder and record.at - previous.at < LEASE_DURATION_SECONDS:
                    figures.fail(
                        f"{record.holder} took the Lease {record.at - previous.at:.2f} s after "
                        f"{previous.holder} renewed it (lease duration {LEASE_DURATION_SECONDS} s)"
                    )
            previous = record
