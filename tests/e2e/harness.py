"""A whole builder fleet on loopback, with the real programs, composed for the end-to-end tests.

One test process plays the cluster, one role per module:

* :mod:`~tests.e2e.cluster`: the fake Kubernetes API at the wire (kmock +
  :class:`~fakes.kubernetes.FakeCluster`), identifying each caller by its bearer token and
  recording every write with the Lease holder at the instant it arrived; faults are injected
  at the same place;
* :mod:`~tests.e2e.replicaset`: the ReplicaSet, deleting victims in the order of
  :mod:`autoscaler.policy.replicaset`;
* :mod:`~tests.e2e.kubelet`: pod start-up, readiness from the sidecar's ``/readyz``, and on
  deletion the preStop hook (the sidecar's ``/drain``), then the "SIGKILL";
* :mod:`~tests.e2e.balancer`: the load generator and a load balancer with a deregistration delay,
  or (``route="router"``) the clients of :mod:`~tests.e2e.routing`: the real HAProxy per pool,
  running the shipped config, over the cluster DNS of the Ready pods (``route="random"``: the
  same clients, each build to a builder picked at random, the baseline the router replaces);
  and where the load landed: the spread of running builds over the builders in service;
* :mod:`~tests.e2e.processes`: the real sidecars (one per pod slot, in front of a fake
  buildkitd) and two real ``buildkit-autoscaler run`` processes competing for the Lease;
* :mod:`~tests.e2e.fleet`: what they share: pools, timings, load, pods, slots, figures.

Everything that would be a lost build or a broken guarantee is appended to
:attr:`Figures.failures`; the tests assert it stays empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import yaml

from tests.e2e.balancer import Balancer
from tests.e2e.cluster import Cluster, Write
from tests.e2e.fleet import (
    DEFAULT_LOAD,
    DEFAULT_POOLS,
    DEFAULT_TIMING,
    IDENTITIES,
    NS,
    STARTUP_SECONDS,
    Figures,
    Load,
    Pod,
    PoolSpec,
    Slot,
    Timing,
    now,
    until,
)
from tests.e2e.kubelet import Kubelet
from tests.e2e.processes import Processes, autoscaler_config
from tests.e2e.replicaset import ReplicaSet
from tests.e2e.routing import Route, Routing

REPORT = Path(__file__).resolve().parents[2] / "out" / "e2e-report.json"
"""Every e2e test merges its figures here (``out/`` is not committed)."""


class Harness:
    """The fleet's roles, started and stopped in order, and what the tests drive and read of them.

    Use it only as ``async with Harness(...) as fleet``: that starts the API server, the
    sidecars, the loops and the autoscalers, and waits for a leader.
    """

    def __init__(
        self,
        *,
        workdir: Path,
        pools: tuple[PoolSpec, ...] = DEFAULT_POOLS,
        timing: Timing = DEFAULT_TIMING,
        load: Load = DEFAULT_LOAD,
        autoscalers: int = 2,
        route: Route = "balancer",
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)  # the certificates are written at once
        self.pools = pools
        self.timing = timing
        self.autoscaler_count = autoscalers
        self.figures = Figures()
        self.cluster = Cluster()
        self.pods: dict[str, list[Pod]] = {p.arch: [] for p in pools}
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
        self.routing = (
            Routing(workdir=workdir, pools=pools, timing=timing, proxied=route == "router")
            if route != "balancer"
            else None
        )
        """Set unless ``route`` is the test's own balancer: builds are mTLS calls (tests/e2e/routing.py)."""
        self.processes = Processes(
            workdir=workdir,
            pools=pools,
            timing=timing,
            cluster=self.cluster,
            http=self.http,
            certificates=self.routing.certificates if self.routing is not None else None,
        )
        self.balancer = Balancer(pods=self.pods, load=load, timing=timing, figures=self.figures, routing=self.routing)
        self.kubelet = Kubelet(
            cluster=self.cluster,
            balancer=self.balancer,
            http=self.http,
            pods=self.pods,
            timing=timing,
            figures=self.figures,
        )
        self.replicaset = ReplicaSet(
            cluster=self.cluster,
            kubelet=self.kubelet,
            balancer=self.balancer,
            pools=pools,
            slots=self.processes.slots,
            pods=self.pods,
            timing=timing,
            figures=self.figures,
        )
        self.load_on = self.balancer.load_on
        """Set it to start the load; :meth:`finish` clears it."""
        self._loops: list[asyncio.Task[None]] = []
        self._exit: contextlib.AsyncExitStack | None = None

    # -- start and stop ---------------------------------------------------------------------------

    async def __aenter__(self) -> Harness:
        stack = contextlib.AsyncExitStack()
        self._exit = stack
        await stack.__aenter__()
        try:
            stack.push_async_callback(self.http.close)
            handler = await stack.enter_async_context(kmock.KubernetesScaffold())
            await stack.enter_async_context(kmock.Server(handler))
            self.cluster.install(handler)
            await self.processes.start_sidecars()
            if self.routing is not None:
                stack.push_async_callback(self.routing.close)
                self.routing.slots = self.processes.slots
                for slots in self.processes.slots.values():
                    for slot in slots:
                        slot.daemon.on_solve = lambda _solved, slot=slot: self.balancer.landed(slot)
                await self.routing.start()
            self.cluster.seed(self.pools, config_yaml=self.render_config())
            self._loops = [
                asyncio.create_task(self.replicaset.run(), name="replicaset"),
                asyncio.create_task(self.kubelet.probe(), name="kubelet-probes"),
                *(asyncio.create_task(self.balancer.generate(pool), name=f"load-{pool.arch}") for pool in self.pools),
                *(asyncio.create_task(self.balancer.tails(pool), name=f"tails-{pool.arch}") for pool in self.pools),
                asyncio.create_task(self.balancer.sample_spread(), name="spread"),
            ]
            for identity in IDENTITIES[: self.autoscaler_count]:
                await self.start_autoscaler(identity)
            await self.until(lambda: self.lease_holder() is not None, within=STARTUP_SECONDS, what="a leader")
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.load_on.clear()
        await self.processes.stop_autoscalers()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.balancer.close()
        await self.kubelet.close()
        await self.processes.kill_slots()
        self.cluster.disconnect_watches()
        if self._exit is not None:
            stack, self._exit = self._exit, None
            await stack.__aexit__(None, None, None)

    async def finish(self) -> Figures:
        """Stop the load, let builds end, run the whole-run checks and collect the figures."""
        await self.balancer.quiesce()
        for identity in self.autoscalers:
            cycles = await self.autoscaler_cycles(identity)
            if cycles is not None:
                self.figures.cycles[identity] = cycles
        self.figures.scale_patches_rejected = sum(1 for w in self.scale_patches() if w.status >= 300)
        self.cluster.check_leadership(self.figures)
        if self.figures.builds_started != self.figures.builds_completed + self.figures.builds_lost:
            self.figures.fail(f"builds unaccounted for: {self.figures}")
        return self.figures

    # -- what the tests read and drive (each owned by one role) -----------------------------------

    @staticmethod
    def now() -> float:
        return now()

    @staticmethod
    async def until(predicate: Callable[[], bool], *, within: float, what: str, step: float = 0.05) -> None:
        await until(predicate, within=within, what=what, step=step)

    def lease_holder(self) -> str | None:
        return self.cluster.lease_holder()

    def replicas(self, pool: PoolSpec) -> int:
        return self.cluster.replicas(pool)

    def scale_patches(self) -> list[Write]:
        return self.cluster.scale_patches()

    def config(self) -> dict[str, Any]:
        return autoscaler_config(pools=self.pools, timing=self.timing, ports=self.processes.ports)

    def render_config(self, config: dict[str, Any] | None = None) -> str:
        return yaml.safe_dump(config if config is not None else self.config(), sort_keys=False)

    def edit_config(self, text: str) -> None:
        self.cluster.edit_config(text)

    def start_build_on(self, pod: Pod, duration: float) -> asyncio.Task[None]:
        return self.balancer.start_build_on(pod, duration)

    async def spawn_sidecar(self, slot: Slot) -> None:
        await self.processes.spawn_sidecar(slot)

    def stop_sidecar(self, slot: Slot) -> None:
        self.processes.stop_sidecar(slot)

    def resume_sidecar(self, slot: Slot) -> None:
        self.processes.resume_sidecar(slot)

    @property
    def autoscalers(self) -> dict[str, asyncio.subprocess.Process]:
        return self.processes.autoscalers

    async def start_autoscaler(self, identity: str) -> None:
        await self.processes.start_autoscaler(identity)

    def autoscaler_log(self, identity: str) -> str:
        return self.processes.autoscaler_log(identity)

    async def autoscaler_cycles(self, identity: str) -> int | None:
        return await self.processes.autoscaler_cycles(identity)


def write_report(path: Path, name: str, figures: Figures, *, seconds: float) -> dict[str, Any]:
    """Merge this run's figures into the JSON report (one key per test) and print them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        report = {}
    entry = {
        "at": datetime.datetime.now(tz=datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        **figures.as_json(),
    }
    report[name] = entry
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"\n{name}: " + json.dumps({k: v for k, v in entry.items() if k != "failures"}, sort_keys=True))
    return entry


# -- helpers for the fault tests ---------------------------------------------------------------------


def set_replicas(fleet: Harness, pool: PoolSpec, replicas: int) -> None:
    """What an operator's ``kubectl scale`` does."""
    deployment = copy.deepcopy(fleet.cluster.get("deployments.apps", NS, pool.deployment))
    deployment["spec"]["replicas"] = replicas
    fleet.cluster.put("deployments.apps", NS, deployment)


def events(fleet: Harness, reason: str) -> list[dict[str, Any]]:
    return [o for (r, _, _), o in list(fleet.cluster.objects.items()) if r == "events" and o.get("reason") == reason]


async def status_of(fleet: Harness, slot: Slot) -> dict[str, Any] | None:
    try:
        async with fleet.http.get(slot.public + "/status", timeout=aiohttp.ClientTimeout(total=2)) as response:
            body: dict[str, Any] = await response.json()
            return body
    except (aiohttp.ClientError, TimeoutError):
        return None
