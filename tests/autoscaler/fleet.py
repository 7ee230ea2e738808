"""The cluster side of a controller test: one builder Deployment whose pods a stand-in
ReplicaSet keeps (:class:`Fleet`), a real HTTP ``/status`` server per pod IP
(:class:`Sidecars`), and the steps that drive a :class:`Controller` through its cycles.

The fixtures that build these (``sidecars``, ``fleet``, ``controller_factory``) are in
this folder's conftest.py; the tests of the controller, of ``source: prometheus`` and of
the real ``buildkit-autoscaler`` process share them."""

from __future__ import annotations

import asyncio
import datetime
import socket
from typing import Any

import yaml
from aiohttp import web

from autoscaler.controller.actuate import DELETION_COST
from autoscaler.controller.loop import Controller
from autoscaler.policy.replicaset import Candidate, victims
from fakes.kubernetes import FakeCluster

NS = "buildkit"
DEPLOY = "buildkitd-amd64"
LABELS = {"app.kubernetes.io/name": "buildkitd", "app.kubernetes.io/instance": DEPLOY}
EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


SIDECAR_PORT: list[int] = []


def config_yaml(**pool: Any) -> str:
    base: dict[str, Any] = {
        "sidecarPort": SIDECAR_PORT[-1],
        "name": "amd64",
        "namespace": NS,
        "deployment": DEPLOY,
        "selector": LABELS,
        "minReplicas": 1,
        "maxReplicas": 10,
        "targetBuildsPerReplica": 2,
        "spareReplicas": 1,
        "scaleDown": {
            "stabilizationWindowSeconds": 60,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 30}],
        },
    }
    base.update(pool)
    return yaml.safe_dump({"pollIntervalSeconds": 5, "statusTimeoutSeconds": 1, "pools": [base]})


class Sidecars:
    """Real HTTP /status servers, one per pod IP (127.0.0.x), on one shared port."""

    def __init__(self) -> None:
        self.loads: dict[str, int | None] = {}
        self.draining: set[str] = set()
        """IPs whose sidecar reports ``draining: true`` (its pod is being drained)."""
        self.failing: set[str] = set()
        """IPs whose sidecar answers, but with a 500 (its load cannot be read)."""
        self.down: set[str] = set()
        self.runners: dict[str, web.AppRunner] = {}
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]

    async def _status(self, request: web.Request) -> web.Response:
        ip = request.transport.get_extra_info("sockname")[0] if request.transport else ""
        if ip in self.failing:
            return web.json_response({"error": "internal"}, status=500)
        active = self.loads.get(ip, 0)
        return web.json_response(
            {
                "version": 1,
                "arch": "amd64",
                "buildkit_up": active is not None,
                "draining": ip in self.draining,
                "active_count": active,
                "active_builds": None
                if active is None
                else [{"ref": f"b{i}", "started_at": None, "age_seconds": 1.0} for i in range(active)],
            }
        )

    async def add(self, ip: str) -> None:
        if ip in self.runners or ip in self.down:
            return
        app = web.Application()
        app.router.add_get("/status", self._status)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, ip, self.port).start()
        self.runners[ip] = runner

    async def stop(self, ip: str) -> None:
        runner = self.runners.pop(ip, None)
        self.down.add(ip)
        if runner is not None:
            await runner.cleanup()

    async def close(self) -> None:
        for runner in self.runners.values():
            await runner.cleanup()


class Fleet:
    """The cluster side of a test: the Deployment, its pods (as a ReplicaSet would keep them), sidecars."""

    def __init__(self, k8s: FakeCluster, sidecars: Sidecars) -> None:
        self.k8s = k8s
        self.sidecars = sidecars
        self.next_ip = 2

    def deployment(self) -> dict[str, Any]:
        return self.k8s.get("deployments.apps", NS, DEPLOY)

    @property
    def replicas(self) -> int:
        return int(self.deployment()["spec"]["replicas"])

    def pods(self) -> list[dict[str, Any]]:
        return [o for (r, n, _), o in self.k8s.objects.items() if r == "pods" and n == NS]

    def pod_by_ip(self, ip: str) -> dict[str, Any]:
        return next(p for p in self.pods() if p["status"].get("podIP") == ip)

    async def reconcile(self) -> None:
        """Play the ReplicaSet: add pods, or remove the lowest pod-deletion-cost ones first."""
        pods = self.pods()
        while len(pods) < self.replicas:
            ip = f"127.0.0.{self.next_ip}"
            self.next_ip += 1
            self.k8s.put(
                "pods",
                NS,
                {
                    "metadata": {"name": f"{DEPLOY}-{ip.rsplit('.', 1)[1]}", "labels": dict(LABELS)},
                    "spec": {"containers": [{"name": "buildkitd", "image": "moby/buildkit"}]},
                    "status": {
                        "phase": "Running",
                        "podIP": ip,
                        "conditions": [{"type": "Ready", "status": "True"}],
                    },
                },
            )
            await self.sidecars.add(ip)
            pods = self.pods()
        while len(pods) > self.replicas:

            def candidate(pod: dict[str, Any]) -> Candidate:
                # Every pod here runs and is ready from the start: the deletion cost decides.
                cost = int((pod["metadata"].get("annotations") or {}).get(DELETION_COST, "0"))
                return Candidate(running=True, ready=True, deletion_cost=cost, ready_since=0.0, created_at=0.0)

            [victim] = victims(pods, 1, candidate=candidate)
            self.k8s.delete("pods", NS, victim["metadata"]["name"])
            if "podIP" in victim["status"]:
                await self.sidecars.stop(victim["status"]["podIP"])
            pods = self.pods()


class FixedElector:
    """Leadership decided by the test (the Lease itself is tested in test_leadership)."""

    def __init__(self, leader: bool) -> None:
        self.leader = leader

    def is_leader(self) -> bool:
        return self.leader


async def settle(controller: Controller, fleet: Fleet) -> None:
    """Let the pod cache catch up with the cluster (watch events are asynchronous)."""
    await fleet.reconcile()
    want = {p["metadata"]["name"] for p in fleet.pods()}
    for state in controller.pools.states.values():
        if not state.pods.label_selector:
            continue  # a refused pool: its cache never started
        await asyncio.wait_for(state.pods.synced.wait(), 10)
        for _ in range(200):
            if set(state.pods.objects) == want:
                break
            await asyncio.sleep(0.01)


async def step(controller: Controller, fleet: Fleet, seconds: float = 5.0) -> None:
    """One poll interval: wait, let the cluster catch up, run one cycle, apply its result."""
    await asyncio.sleep(seconds)
    await settle(controller, fleet)
    await controller.cycle()
    await fleet.reconcile()


def events(k8s: FakeCluster, reason: str) -> list[dict[str, Any]]:
    return [o for (r, _n, _), o in k8s.objects.items() if r == "events" and o.get("reason") == reason]


def sample(controller: Controller, name: str, **labels: str) -> float | None:
    return controller.metrics.registry.get_sample_value(name, labels)
