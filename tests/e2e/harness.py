"""A whole builder fleet on loopback, with the real programs, for the end-to-end tests.

One test process plays the cluster:

* per pod *slot*, a fake buildkitd (:class:`fakes.buildkitd.FakeBuildkitd`, a real
  gRPC server) and a real ``buildkit-sidecar`` subprocess in front of it, both on the
  slot's own loopback address 127.0.<pool block>.<slot + 1>. Sidecars are started once and
  reused across pod *lives* (``DELETE /drain`` resets a finished drain), so the CPU goes
  to the run, not to interpreter start-ups;
* the fake Kubernetes API at the wire (kmock + :class:`FakeCluster`), extended here to
  identify each caller (every autoscaler has its own bearer token in its kubeconfig, as
  a real API server authenticates and audits callers) and to record every write with the
  Lease holder at the instant it arrived; faults are injected at the same place;
* a pod lifecycle playing the ReplicaSet (victims: unstarted, not ready, lowest
  ``controller.kubernetes.io/pod-deletion-cost``, ready for the shortest time, newest) and
  the kubelet (start-up delay; readiness from the sidecar's ``/readyz``; on deletion the
  preStop hook, which is the sidecar's ``/drain``, and only when it has answered, or when
  the grace period has run out, the "SIGKILL": the fake buildkitd dies with whatever still
  runs);
* a load balancer and load generator: builds with random durations, in bursts, sent to
  ready pods, and still sent to a pod for ``deregistration_seconds`` after it stopped
  being ready or began terminating;
* two real ``buildkit-autoscaler run`` subprocesses competing for the Lease.

Everything that would be a lost build or a broken guarantee is appended to
:attr:`Figures.failures`; the tests assert it stays empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import itertools
import json
import os
import random
import signal
import socket
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import yaml
from kmock import Response  # type: ignore[attr-defined]  # exported, though not in kmock's __all__

from autoscaler.controller.leadership import LeaseSettings
from fakes.buildkitd import FakeBuildkitd
from fakes.kubernetes import FakeCluster

NS = "buildkit"
CONFIG_MAP = "buildkit-autoscaler"
LEASE = "buildkit-autoscaler"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
IDENTITIES = ("autoscaler-a", "autoscaler-b")

_LEASE_DEFAULTS = LeaseSettings(namespace=NS, name=LEASE, identity="")
LEASE_DURATION_SECONDS = _LEASE_DEFAULTS.lease_duration_seconds
"""The autoscaler's lease duration (not a flag): a takeover waits this long after the last renewal."""
RETRY_PERIOD_SECONDS = _LEASE_DEFAULTS.retry_period_seconds

KMOCK_REQUESTS_KEPT = 16
"""kmock 0.8 scans its whole request log on every request; keep it short (as bench/fake_fleet.py does)."""

REPORT = Path(__file__).resolve().parents[2] / "out" / "e2e-report.json"
"""Every e2e test merges its figures here (``out/`` is not committed)."""

STARTUP_SECONDS = 90.0
"""Sixteen Python processes importing grpc and aiohttp at once on two cores take a while."""


def _command(script: str, module: str) -> list[str]:
    path = Path(sys.executable).with_name(script)
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


SIDECAR = _command("buildkit-sidecar", "sidecar.main")
AUTOSCALER = _command("buildkit-autoscaler", "autoscaler.cli")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------------------------
# What the run is made of
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PoolSpec:
    arch: str
    block: int
    """Pods of this pool live on 127.0.<block>.<slot + 1>."""
    min_replicas: int
    max_replicas: int
    slots: int
    """Sidecar processes for this pool: max replicas plus room for pods still terminating."""
    spare_replicas: int = 1
    """0 on one pool: with no idle spare, a falling load scales down builders that all still run builds."""

    @property
    def deployment(self) -> str:
        return f"buildkitd-{self.arch}"

    @property
    def labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": "buildkitd", "app.kubernetes.io/instance": self.deployment}

    def ip(self, slot: int) -> str:
        return f"127.0.{self.block}.{slot + 1}"


DEFAULT_POOLS = (
    PoolSpec(arch="amd64", block=41, min_replicas=1, max_replicas=5, slots=8, spare_replicas=0),
    PoolSpec(arch="arm64", block=42, min_replicas=1, max_replicas=4, slots=6),
)


@dataclass(frozen=True, kw_only=True)
class Timing:
    """Compressed time: every duration of a real fleet, divided so a run takes minutes."""

    poll_interval_seconds: float = 0.3
    """The autoscaler's cycle: ~3 cycles a second per process."""
    status_timeout_seconds: float = 1.0
    scale_down_window_seconds: float = 1.2
    """Scale-down stabilization: short, so bursts produce many scale-downs."""
    scale_down_period_seconds: float = 0.6
    """At most one pod removed per this period."""
    scale_up_period_seconds: float = 1.0
    startup_delay_seconds: float = 0.6
    """A new pod's image pull and container start."""
    probe_interval_seconds: float = 0.15
    """The kubelet's readiness probe period."""
    deregistration_seconds: float = 1.0
    """The load balancer keeps sending to a pod this long after it stopped being ready."""
    drain_min_seconds: float = 1.8
    """The sidecar's --drain-min-seconds: above deregistration plus a probe period, as docs/sidecar.md advises."""
    drain_quiet_seconds: float = 0.25
    drain_timeout_seconds: float = 14.0
    """Above the longest build plus the deregistration window."""
    grace_seconds: float = 17.0
    """terminationGracePeriodSeconds: above the drain deadline."""
    resync_interval_seconds: float = 1.0


@dataclass(frozen=True, kw_only=True)
class Load:
    """The load generator: bursts of builds at random intervals."""

    burst_gap_seconds: tuple[float, float] = (1.5, 5.0)
    burst_size: tuple[int, int] = (1, 7)
    build_seconds: tuple[float, float] = (0.3, 3.0)
    long_build_seconds: tuple[float, float] = (3.0, 9.0)
    long_build_share: float = 0.35
    """A tail of long builds keeps every pod busy while the load falls: scale-downs with busy victims."""
    spread_seconds: float = 0.8
    """A burst's builds arrive within this long."""
    seed: int = 6


@dataclass
class Figures:
    """What a run did; ``failures`` lists every broken guarantee."""

    builds_started: int = 0
    builds_completed: int = 0
    builds_lost: int = 0
    builds_sent_during_deregistration: int = 0
    """Builds the load balancer sent to a pod that had stopped being ready (the window the drain covers)."""
    sends_to_dead_pods: int = 0
    """Connection refused: the balancer still routed to a pod whose buildkitd had been killed."""
    builds_waited_for_a_ready_pod: int = 0
    scale_ups: int = 0
    scale_downs: int = 0
    """Scale PATCHes that lowered the replicas."""
    scale_down_victims: int = 0
    busy_victims: int = 0
    """Pods the ReplicaSet picked for deletion while builds ran on them."""
    scale_downs_with_busy_victims: int = 0
    """ReplicaSet scale-downs (one reconcile's victims) in which a victim had running builds."""
    pods_started: int = 0
    pods_deleted: int = 0
    drains: dict[str, int] = field(default_factory=Counter)
    drain_seconds_max: float = 0.0
    scale_patches_rejected: int = 0
    cycles: dict[str, int] = field(default_factory=dict)
    leader_changes: int = 0
    faults: dict[str, int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["drains"] = dict(self.drains)
        body["faults"] = dict(self.faults)
        body["cycles_total"] = sum(self.cycles.values())
        return body


# --------------------------------------------------------------------------------------------
# The API server, with callers identified and writes recorded
# --------------------------------------------------------------------------------------------


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
        lease = self.lease()
        holder = (lease or {}).get("spec", {}).get("holderIdentity") or None
        response: Response = await super().handle(req)
        status = response.status or 200
        if verb == "read":
            return response
        if res == "leases.coordination.k8s.io":
            if status < 300:
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


# --------------------------------------------------------------------------------------------
# Pods
# --------------------------------------------------------------------------------------------

FOREVER = float("inf")


@dataclass(eq=False)
class Pod:
    name: str
    pool: PoolSpec
    slot: Slot
    created_at: float
    running: bool = False
    ready: bool = False
    ready_at: float | None = None
    deleting: bool = False
    gone: bool = False
    lb_until: float = -FOREVER
    """The load balancer routes to the pod until then (FOREVER while ready)."""
    started: asyncio.Event = field(default_factory=asyncio.Event)


class Slot:
    """One pod address: a fake buildkitd and a sidecar process, reused across pod lives."""

    def __init__(self, pool: PoolSpec, index: int, *, logs: Path) -> None:
        self.pool = pool
        self.index = index
        self.ip = pool.ip(index)
        self.daemon = FakeBuildkitd(platforms=(f"linux/{pool.arch}",))
        self.process: asyncio.subprocess.Process | None = None
        self.public = ""
        self.admin = ""
        self.log = logs / f"sidecar-{pool.arch}-{index}.log"
        self.pod: Pod | None = None
        self.unreachable = False
        """Fault: the sidecar process is stopped (SIGSTOP) or gone."""

    @property
    def alive(self) -> bool:
        return self.daemon.server is not None


# --------------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------------


class Harness:
    def __init__(
        self,
        *,
        workdir: Path,
        pools: tuple[PoolSpec, ...] = DEFAULT_POOLS,
        timing: Timing = Timing(),
        load: Load = Load(),
        autoscalers: int = 2,
    ) -> None:
        self.workdir = workdir
        self.pools = pools
        self.timing = timing
        self.load = load
        self.autoscaler_count = autoscalers
        self.figures = Figures()
        self.cluster = Cluster()
        self.random = random.Random(load.seed)
        self.slots: dict[str, list[Slot]] = {}
        self.pods: dict[str, list[Pod]] = {p.arch: [] for p in pools}
        self.ports: dict[str, tuple[int, int]] = {}
        self.autoscalers: dict[str, asyncio.subprocess.Process] = {}
        self.autoscaler_ports: dict[str, int] = {}
        self.http: aiohttp.ClientSession | None = None
        self.load_on = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._builds: set[asyncio.Task[None]] = set()
        self._names = itertools.count(1)
        self._exit: contextlib.AsyncExitStack | None = None
        self._last_replicas: dict[str, int] = {}
        self.config_yaml = ""

    # -- set-up and tear-down ------------------------------------------------------------------

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def fail(self, message: str) -> None:
        self.figures.failures.append(f"{self.now():.2f} {message}")

    async def __aenter__(self) -> Harness:
        self.workdir.mkdir(parents=True, exist_ok=True)
        stack = contextlib.AsyncExitStack()
        self._exit = stack
        await stack.__aenter__()
        try:
            handler = await stack.enter_async_context(kmock.KubernetesScaffold())
            await stack.enter_async_context(kmock.Server(handler))
            self.cluster.install(handler)
            self.http = await stack.enter_async_context(
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
            )
            await self._start_sidecars()
            self._seed_cluster()
            self._loops = [
                asyncio.create_task(self._replicaset_loop(), name="replicaset"),
                asyncio.create_task(self._probe_loop(), name="kubelet-probes"),
                *(asyncio.create_task(self._load_loop(pool), name=f"load-{pool.arch}") for pool in self.pools),
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
        self._stop.set()
        self.load_on.clear()
        for process in self.autoscalers.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.autoscalers.values():
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        for task in [*self._loops, *self._tasks, *self._builds]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._tasks, *self._builds, return_exceptions=True)
        for slots in self.slots.values():
            for slot in slots:
                if slot.process is not None and slot.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        slot.process.send_signal(signal.SIGCONT)
                    slot.process.kill()
                    await slot.process.wait()
                await slot.daemon.kill()
        self.cluster.disconnect_watches()
        if self._exit is not None:
            stack, self._exit = self._exit, None
            await stack.__aexit__(None, None, None)

    def sidecar_args(self, slot: Slot) -> list[str]:
        t = self.timing
        public_port, admin_port = self.ports[slot.pool.arch]
        return [
            "--buildkit-addr",
            slot.daemon.address,
            "--arch",
            slot.pool.arch,
            "--listen",
            f"{slot.ip}:{public_port}",
            "--admin-listen",
            f"{slot.ip}:{admin_port}",
            "--drain-quiet-seconds",
            str(t.drain_quiet_seconds),
            "--drain-min-seconds",
            str(t.drain_min_seconds),
            "--drain-timeout-seconds",
            str(t.drain_timeout_seconds),
            "--drain-gone-seconds",
            "2",
            "--resync-interval-seconds",
            str(t.resync_interval_seconds),
            "--reconnect-initial-seconds",
            "0.05",
            "--reconnect-max-seconds",
            "0.3",
            "--rpc-timeout-seconds",
            "2",
            "--log-level",
            "info",
        ]

    async def spawn_sidecar(self, slot: Slot) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDKIT_SIDECAR_")}
        with slot.log.open("ab") as out:
            slot.process = await asyncio.create_subprocess_exec(
                *SIDECAR, *self.sidecar_args(slot), stdout=out, stderr=asyncio.subprocess.STDOUT, env=env
            )
        slot.unreachable = False

    async def _start_sidecars(self) -> None:
        for pool in self.pools:
            # One public and one admin port per pool, on every pod address: the autoscaler
            # reads http://<podIP>:<sidecarPort>/status with one port per pool.
            self.ports[pool.arch] = (free_port(pool.ip(0)), free_port(pool.ip(0)))
            slots = [Slot(pool, i, logs=self.workdir) for i in range(pool.slots)]
            self.slots[pool.arch] = slots
            for slot in slots:
                await slot.daemon.start(f"{slot.ip}:0")
                await slot.daemon.kill()  # the port is known now; the daemon runs during pod lives
                public_port, admin_port = self.ports[pool.arch]
                slot.public = f"http://{slot.ip}:{public_port}"
                slot.admin = f"http://{slot.ip}:{admin_port}"
                await self.spawn_sidecar(slot)
        for slots in self.slots.values():
            for slot in slots:
                await self.until_http(slot.public + "/healthz", within=STARTUP_SECONDS, slot=slot)

    def _seed_cluster(self) -> None:
        for pool in self.pools:
            self.cluster.put(
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
            self._last_replicas[pool.arch] = pool.min_replicas
        self.config_yaml = self.render_config()
        self.cluster.put(
            "configmaps", NS, {"metadata": {"name": CONFIG_MAP}, "data": {"config.yaml": self.config_yaml}}
        )

    def config(self) -> dict[str, Any]:
        t = self.timing
        return {
            "pollIntervalSeconds": t.poll_interval_seconds,
            "statusTimeoutSeconds": t.status_timeout_seconds,
            "source": "sidecars",
            "pools": [
                {
                    "name": pool.arch,
                    "namespace": NS,
                    "deployment": pool.deployment,
                    "selector": dict(pool.labels),
                    "sidecarPort": self.ports[pool.arch][0],
                    "minReplicas": pool.min_replicas,
                    "maxReplicas": pool.max_replicas,
                    "targetBuildsPerReplica": 2,
                    "spareReplicas": pool.spare_replicas,
                    "scaleUp": {
                        "stabilizationWindowSeconds": 0,
                        "policies": [{"type": "Pods", "value": 4, "periodSeconds": t.scale_up_period_seconds}],
                    },
                    "scaleDown": {
                        "stabilizationWindowSeconds": t.scale_down_window_seconds,
                        "policies": [{"type": "Pods", "value": 1, "periodSeconds": t.scale_down_period_seconds}],
                    },
                }
                for pool in self.pools
            ],
        }

    def render_config(self, config: dict[str, Any] | None = None) -> str:
        return yaml.safe_dump(config if config is not None else self.config(), sort_keys=False)

    def edit_config(self, text: str) -> None:
        cm = copy.deepcopy(self.cluster.get("configmaps", NS, CONFIG_MAP))
        cm["data"] = {"config.yaml": text}
        self.cluster.put("configmaps", NS, cm)

    def kubeconfig(self, identity: str) -> Path:
        path = self.workdir / f"kubeconfig-{identity}"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.cluster.url}}],
                    "users": [{"name": identity, "user": {"token": identity}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": identity, "namespace": NS}}],
                    "current-context": "fake",
                }
            )
        )
        return path

    async def start_autoscaler(self, identity: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDKIT_AUTOSCALER_")}
        env["POD_NAME"] = identity
        port = self.autoscaler_ports.setdefault(identity, free_port())
        log = self.workdir / f"autoscaler-{identity}.log"
        with log.open("ab") as out:
            self.autoscalers[identity] = await asyncio.create_subprocess_exec(
                *AUTOSCALER,
                "run",
                "--kubeconfig",
                str(self.kubeconfig(identity)),
                "--config-map",
                f"{NS}/{CONFIG_MAP}",
                "--listen",
                f"127.0.0.1:{port}",
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
            )

    def autoscaler_log(self, identity: str) -> str:
        return (self.workdir / f"autoscaler-{identity}.log").read_text(errors="replace")

    async def autoscaler_cycles(self, identity: str) -> int | None:
        assert self.http is not None
        try:
            async with self.http.get(
                f"http://127.0.0.1:{self.autoscaler_ports[identity]}/healthz", timeout=aiohttp.ClientTimeout(total=3)
            ) as response:
                cycles: int = (await response.json())["cycles"]
                return cycles
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
            return None

    # -- waiting ------------------------------------------------------------------------------

    async def until(self, predicate: Callable[[], bool], *, within: float, what: str, step: float = 0.05) -> None:
        deadline = self.now() + within
        while not predicate():
            if self.now() > deadline:
                raise AssertionError(f"never: {what} (within {within} s)")
            await asyncio.sleep(step)

    async def until_http(self, url: str, *, within: float, slot: Slot | None = None) -> None:
        assert self.http is not None
        deadline = self.now() + within
        while True:
            if slot is not None and slot.process is not None and slot.process.returncode is not None:
                raise AssertionError(f"sidecar exited {slot.process.returncode}: {slot.log.read_text()}")
            try:
                async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if self.now() > deadline:
                raise AssertionError(f"{url} never answered 200")
            await asyncio.sleep(0.1)

    def lease_holder(self) -> str | None:
        lease = self.cluster.lease()
        return (lease or {}).get("spec", {}).get("holderIdentity") or None

    def replicas(self, pool: PoolSpec) -> int:
        replicas: int = self.cluster.get("deployments.apps", NS, pool.deployment)["spec"]["replicas"]
        return replicas

    def live_pods(self, pool: PoolSpec) -> list[Pod]:
        return [p for p in self.pods[pool.arch] if not p.deleting]

    # -- the ReplicaSet -------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._task_failed)

    def _task_failed(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.fail(f"harness task {task.get_name()} crashed: {task.exception()!r}")

    async def _replicaset_loop(self) -> None:
        while True:
            for pool in self.pools:
                self._reconcile(pool)
            await asyncio.sleep(0.05)

    def _reconcile(self, pool: PoolSpec) -> None:
        want = self.replicas(pool)
        if want != self._last_replicas[pool.arch]:
            if not pool.min_replicas <= want <= pool.max_replicas:
                self.fail(f"{pool.deployment} replicas {want} outside [{pool.min_replicas}, {pool.max_replicas}]")
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
            victims = sorted(live, key=self._deletion_rank)[: len(live) - want]
            busy = [v for v in victims if v.slot.alive and v.slot.daemon.active]
            self.figures.scale_down_victims += len(victims)
            self.figures.busy_victims += len(busy)
            if busy:
                self.figures.scale_downs_with_busy_victims += 1
            for victim in victims:
                self._delete_pod(victim)

    def _deletion_rank(self, pod: Pod) -> tuple[Any, ...]:
        """The ReplicaSet's order (``ActivePodsWithRanks``): first in the list goes first."""
        obj = self.cluster.objects.get(("pods", NS, pod.name), {})
        try:
            cost = int((obj.get("metadata", {}).get("annotations") or {}).get(DELETION_COST, "0"))
        except ValueError:
            cost = 0
        return (
            pod.running,  # unscheduled / Pending before Running
            pod.ready,  # not ready before ready
            cost,  # lower pod-deletion-cost first
            -(pod.ready_at or 0.0),  # ready for the shorter time first
            -pod.created_at,  # newer first
        )

    def _pod_object(self, pod: Pod) -> dict[str, Any]:
        return copy.deepcopy(self.cluster.get("pods", NS, pod.name))

    def _create_pod(self, pool: PoolSpec, slot: Slot) -> None:
        pod = Pod(name=f"{pool.deployment}-{next(self._names):05d}", pool=pool, slot=slot, created_at=self.now())
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
        self._spawn(self._start_pod(pod), f"start-{pod.name}")

    async def _start_pod(self, pod: Pod) -> None:
        assert self.http is not None
        try:
            await asyncio.sleep(self.timing.startup_delay_seconds)
            slot = pod.slot
            await slot.daemon.restart()
            # The sidecar is reused: a new life begins with its last drain cancelled.
            for _ in range(200):
                try:
                    async with self.http.delete(
                        slot.admin + "/drain", timeout=aiohttp.ClientTimeout(total=self.timing.grace_seconds)
                    ) as response:
                        if response.status < 500:
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.1)
            obj = self._pod_object(pod)
            obj["status"] = {
                "phase": "Running",
                "podIP": slot.ip,
                "conditions": [{"type": "Ready", "status": "False"}],
            }
            self.cluster.put("pods", NS, obj)
            pod.running = True
            self.figures.pods_started += 1
        finally:
            pod.started.set()

    def _delete_pod(self, pod: Pod) -> None:
        pod.deleting = True
        obj = self._pod_object(pod)
        obj["metadata"]["deletionTimestamp"] = self.cluster.now()
        obj["metadata"]["deletionGracePeriodSeconds"] = self.timing.grace_seconds
        self.cluster.put("pods", NS, obj)
        self._leave_balancer(pod)  # the endpoints controller removes a terminating pod at once
        self._spawn(self._terminate(pod), f"terminate-{pod.name}")

    async def _terminate(self, pod: Pod) -> None:
        """The kubelet: the preStop hook (the sidecar's /drain), then SIGKILL at the latest at the grace period."""
        assert self.http is not None
        await pod.started.wait()
        slot = pod.slot
        began = self.now()
        deadline = began + self.timing.grace_seconds
        answer: dict[str, Any] | None = None
        status = 0
        try:
            async with asyncio.timeout(self.timing.grace_seconds):
                while answer is None:
                    try:
                        async with self.http.post(slot.admin + "/drain") as response:
                            status = response.status
                            answer = await response.json()
                    except aiohttp.ClientError:
                        # The exec hook could not reach the sidecar: a failed hook; the kubelet
                        # goes on to SIGTERM at once. Here: keep trying until the grace period
                        # (a strictly safer kubelet), and record it.
                        self.figures.faults["prestop_unreachable"] += 1
                        await asyncio.sleep(0.2)
        except TimeoutError:
            self.fail(f"{pod.name}: grace period ran out before the drain answered (builds {list(slot.daemon.active)})")
        waited = self.now() - began
        self.figures.drain_seconds_max = max(self.figures.drain_seconds_max, waited)
        reason = (answer or {}).get("reason", "no answer")
        self.figures.drains[str(reason)] += 1
        active = list(slot.daemon.active) if slot.alive else []
        if answer is not None and status != 200:
            self.fail(f"{pod.name}: drain answered {status} {answer}")
        if answer is not None and status == 200 and active:
            self.fail(f"{pod.name}: drain answered {answer} while builds ran: {active}")
        if self.now() > deadline + 0.5:
            self.fail(f"{pod.name}: killed {self.now() - deadline:.1f} s after its grace period")
        await slot.daemon.kill()
        pod.gone = True
        with contextlib.suppress(KeyError):
            self.cluster.delete("pods", NS, pod.name)
        self.pods[pod.pool.arch].remove(pod)
        slot.pod = None
        self.figures.pods_deleted += 1

    # -- the kubelet's readiness probe and the load balancer -----------------------------------

    def _leave_balancer(self, pod: Pod) -> None:
        if pod.lb_until == FOREVER:
            pod.lb_until = self.now() + self.timing.deregistration_seconds

    async def _probe_loop(self) -> None:
        while True:
            pods = [p for pods in self.pods.values() for p in pods if p.running and not p.gone]
            await asyncio.gather(*(self._probe(p) for p in pods))
            await asyncio.sleep(self.timing.probe_interval_seconds)

    async def _probe(self, pod: Pod) -> None:
        assert self.http is not None
        try:
            async with self.http.get(pod.slot.public + "/readyz", timeout=aiohttp.ClientTimeout(total=1)) as response:
                ready = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ready = False
        if pod.gone or ready == pod.ready:
            return
        pod.ready = ready
        if ready:
            pod.ready_at = self.now()
            if not pod.deleting:
                pod.lb_until = FOREVER
        else:
            self._leave_balancer(pod)
        obj = self._pod_object(pod)
        obj["status"]["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        self.cluster.put("pods", NS, obj)

    def in_rotation(self, pool: PoolSpec) -> list[Pod]:
        now = self.now()
        return [p for p in self.pods[pool.arch] if p.running and now < p.lb_until]

    async def _load_loop(self, pool: PoolSpec) -> None:
        load = self.load
        rng = random.Random(f"{load.seed}-{pool.arch}")
        while True:
            await self.load_on.wait()
            await asyncio.sleep(rng.uniform(*load.burst_gap_seconds))
            if not self.load_on.is_set():
                continue
            for _ in range(rng.randint(*load.burst_size)):
                delay = rng.uniform(0, load.spread_seconds)
                long = rng.random() < load.long_build_share
                duration = rng.uniform(*(load.long_build_seconds if long else load.build_seconds))
                task = asyncio.create_task(self.build(pool, delay=delay, duration=duration, rng=rng))
                self._builds.add(task)
                task.add_done_callback(self._builds.discard)

    async def build(self, pool: PoolSpec, *, delay: float, duration: float, rng: random.Random) -> None:
        """One client build: routed by the balancer, retried while no pod takes it."""
        await asyncio.sleep(delay)
        waited = False
        while True:
            candidates = self.in_rotation(pool)
            if not candidates:
                waited = True
                await asyncio.sleep(0.1)
                continue
            # Least connections, ties broken at random: builds spread over every pod.
            fewest = min(len(p.slot.daemon.active) for p in candidates)
            pod = rng.choice([p for p in candidates if len(p.slot.daemon.active) == fewest])
            if pod.gone or not pod.slot.alive:
                self.figures.sends_to_dead_pods += 1
                self.fail(f"{pod.name}: the balancer sent a build to a killed pod")
                await asyncio.sleep(0.1)
                continue
            break
        if waited:
            self.figures.builds_waited_for_a_ready_pod += 1
        if not pod.ready or pod.deleting:
            self.figures.builds_sent_during_deregistration += 1
        await self.run_build(pod, duration)

    def start_build_on(self, pod: Pod, duration: float) -> asyncio.Task[None]:
        """A build sent straight to ``pod`` (a client that bypasses the balancer), accounted like the others."""
        task = asyncio.create_task(self.run_build(pod, duration))
        self._builds.add(task)
        task.add_done_callback(self._builds.discard)
        return task

    async def run_build(self, pod: Pod, duration: float) -> None:
        daemon = pod.slot.daemon
        ref = daemon.start_build()
        self.figures.builds_started += 1
        await asyncio.sleep(duration)
        if ref in daemon.active:
            daemon.complete_build(ref)
            self.figures.builds_completed += 1
        else:
            self.figures.builds_lost += 1
            self.fail(f"{pod.name}: build {ref} lost (its buildkitd was killed while it ran)")

    async def quiesce(self, *, within: float = 60.0) -> None:
        """Stop the load and wait for every build to end."""
        self.load_on.clear()
        await self.until(lambda: not self._builds, within=within, what="every build to end")

    # -- faults -------------------------------------------------------------------------------

    def stop_sidecar(self, slot: Slot) -> None:
        """Freeze the sidecar process: connections hang (SIGSTOP)."""
        assert slot.process is not None
        slot.process.send_signal(signal.SIGSTOP)
        slot.unreachable = True

    def resume_sidecar(self, slot: Slot) -> None:
        assert slot.process is not None
        slot.process.send_signal(signal.SIGCONT)
        slot.unreachable = False

    # -- checks over the whole run ----------------------------------------------------------------

    def check_leadership(self) -> None:
        """Every write came from the Lease's holder, whose lease had not expired; takeovers waited."""
        for write in self.cluster.writes:
            if write.who not in IDENTITIES:
                continue
            if write.holder != write.who:
                self.fail(f"{write.who} wrote {write.verb} {write.resource}/{write.name} while {write.holder} led")
            elif write.holder_renewed_at is None or write.at - write.holder_renewed_at >= LEASE_DURATION_SECONDS:
                self.fail(f"{write.who} wrote {write.resource}/{write.name} on an expired lease")
        previous: LeaseRecord | None = None
        for record in self.cluster.leases:
            if previous is not None and record.holder and record.holder != previous.holder:
                self.figures.leader_changes += 1
                if previous.holder and record.at - previous.at < LEASE_DURATION_SECONDS:
                    self.fail(
                        f"{record.holder} took the Lease {record.at - previous.at:.2f} s after "
                        f"{previous.holder} renewed it (lease duration {LEASE_DURATION_SECONDS} s)"
                    )
            previous = record

    def scale_patches(self) -> list[Write]:
        return [w for w in self.cluster.writes if w.subresource == "scale"]

    async def finish(self) -> Figures:
        """Stop the load, let builds end, run the whole-run checks and collect the figures."""
        await self.quiesce()
        for identity in self.autoscalers:
            cycles = await self.autoscaler_cycles(identity)
            if cycles is not None:
                self.figures.cycles[identity] = cycles
        self.figures.scale_patches_rejected = sum(1 for w in self.scale_patches() if w.status >= 300)
        self.check_leadership()
        if self.figures.builds_started != self.figures.builds_completed + self.figures.builds_lost:
            self.fail(f"builds unaccounted for: {self.figures}")
        return self.figures


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


# --------------------------------------------------------------------------------------------
# Helpers for the fault tests
# --------------------------------------------------------------------------------------------

SMALL_POOLS = (
    PoolSpec(arch="amd64", block=43, min_replicas=1, max_replicas=4, slots=6, spare_replicas=0),
    PoolSpec(arch="arm64", block=44, min_replicas=1, max_replicas=3, slots=4),
)
"""A smaller fleet for the fault tests: fewer processes to start."""


def set_replicas(fleet: Harness, pool: PoolSpec, replicas: int) -> None:
    """What an operator's ``kubectl scale`` does."""
    deployment = copy.deepcopy(fleet.cluster.get("deployments.apps", NS, pool.deployment))
    deployment["spec"]["replicas"] = replicas
    fleet.cluster.put("deployments.apps", NS, deployment)


def events(fleet: Harness, reason: str) -> list[dict[str, Any]]:
    return [o for (r, _, _), o in list(fleet.cluster.objects.items()) if r == "events" and o.get("reason") == reason]


async def status_of(fleet: Harness, slot: Slot) -> dict[str, Any] | None:
    assert fleet.http is not None
    try:
        async with fleet.http.get(slot.public + "/status", timeout=aiohttp.ClientTimeout(total=2)) as response:
            body: dict[str, Any] = await response.json()
            return body
    except (aiohttp.ClientError, TimeoutError):
        return None
