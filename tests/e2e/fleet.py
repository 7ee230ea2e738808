"""What an end-to-end fleet is made of: its pools, compressed timings and load, its pod slots and pods, its figures.

The vocabulary every role of :mod:`tests.e2e.harness` shares (the API server, the ReplicaSet,
the kubelet, the load balancer, the process manager); no behaviour beyond bookkeeping.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autoscaler.controller.leadership import LeaseSettings
from fakes.buildkitd import FakeBuildkitd

NS = "buildkit"
CONFIG_MAP = "buildkit-autoscaler"
LEASE = "buildkit-autoscaler"
IDENTITIES = ("autoscaler-a", "autoscaler-b")

_LEASE_DEFAULTS = LeaseSettings(namespace=NS, name=LEASE, identity="")
LEASE_DURATION_SECONDS = _LEASE_DEFAULTS.lease_duration_seconds
"""The autoscaler's lease duration (not a flag): a takeover waits this long after the last renewal."""
RETRY_PERIOD_SECONDS = _LEASE_DEFAULTS.retry_period_seconds

STARTUP_SECONDS = 90.0
"""Sixteen Python processes importing grpc and aiohttp at once on two cores take a while."""

FOREVER = float("inf")


def now() -> float:
    """The harness clock: the loop's (real time here: the e2e tests opt out of looptime)."""
    return asyncio.get_running_loop().time()


async def until(predicate: Callable[[], bool], *, within: float, what: str, step: float = 0.05) -> None:
    """Wait for ``predicate``; fail the test with ``what`` if it does not hold within ``within`` seconds."""
    deadline = now() + within
    while not predicate():
        if now() > deadline:
            raise AssertionError(f"never: {what} (within {within} s)")
        await asyncio.sleep(step)


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
    target_builds_per_replica: int = 2

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

SMALL_POOLS = (
    PoolSpec(arch="amd64", block=43, min_replicas=1, max_replicas=4, slots=6, spare_replicas=0),
    PoolSpec(arch="arm64", block=44, min_replicas=1, max_replicas=3, slots=4),
)
"""A smaller fleet for the fault tests: fewer processes to start."""


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
    agent_interval_seconds: float = 1.0
    """The routers' ``ROUTER_AGENT_INTERVAL``, as shipped (1 s). Not compressed: against these builds of
    seconds it keeps builds reaching draining builders (the window the drain covers) far more often
    than in a real fleet, which is what these tests stress. Placement quality needs it compressed
    with the builds: the spread benchmark (bench/fleet_spread.py) runs 0.1 s."""


DEFAULT_TIMING = Timing()


@dataclass(frozen=True, kw_only=True)
class Load:
    """The load generator: bursts of builds at random intervals."""

    burst_gap_seconds: tuple[float, float] = (1.5, 5.0)
    burst_size: tuple[int, int] = (1, 7)
    build_seconds: tuple[float, float] = (0.3, 3.0)
    long_build_seconds: tuple[float, float] = (3.0, 9.0)
    long_build_share: float = 0.35
    """A tail of long builds keeps pods busy while the load falls."""
    spread_seconds: float = 0.8
    """A burst's builds arrive within this long."""
    seed: int = 6
    tail_min_builders: int | None = None
    """Set: the falling load's long tail, on purpose (:meth:`tests.e2e.balancer.Balancer.tails`): when a
    pool has at least this many builders in service, one long build goes straight onto each and the
    bursts pause, so that the pool scales down builders that all run a build. None: bursts only."""
    tail_build_seconds: tuple[float, float] = (6.0, 9.0)
    """A tail's builds: long, and ending close together, so that the scale-down meets them all running."""
    tail_quiet_seconds: float = 5.0
    """No burst for the pool this long after a tail: the load falls. The bursts' builds end within
    3.8 s (but for their long ones), then the scale-down window, a cycle and a status poll: the pool
    is scaled down before the tail's builds end."""
    tail_gap_seconds: float = 12.0
    """At least this long between two tails of one pool."""


DEFAULT_LOAD = Load()

TAILED_LOAD = Load(tail_min_builders=3)
"""Bursts plus deliberate tails: scale-downs with busy victims in every run, whatever the machine.

Left to the bursts alone, 3 to 10 % of scale-downs took a busy builder, depending on the machine and on
how evenly the router spread the builds: a CI run reached 7 in 420 s against the test's minimum of 10."""


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
    tails: int = 0
    """Deliberate tails (:attr:`Load.tail_min_builders`): one long build straight onto every builder in service."""
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
    spread_samples: Counter[int] = field(default_factory=Counter)
    """Per pool and sample, while the load is on: max − min of the running builds over the builders in
    service (Ready, not terminating; two or more) → how many samples had that spread."""
    doubled_beside_idle_samples: int = 0
    """Samples in which a builder ran two builds or more while another builder in service ran none:
    the placement the router exists to prevent."""
    placement_excess: Counter[int] = field(default_factory=Counter)
    """Per build that reached a builder in service over the wire: how many more builds that builder
    already ran than the least-loaded other builder in service (0: it went to a least-loaded one)."""
    placement_excess_settled: Counter[int] = field(default_factory=Counter)
    """The same, against the builders in service for :data:`~tests.e2e.balancer.SETTLED_SECONDS` or more."""
    failures: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        """Record a broken guarantee, stamped with the harness clock; the tests assert there is none."""
        self.failures.append(f"{now():.2f} {message}")

    def as_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["drains"] = dict(self.drains)
        body["faults"] = dict(self.faults)
        for name in ("spread_samples", "placement_excess", "placement_excess_settled"):
            body[name] = {str(k): v for k, v in sorted(getattr(self, name).items())}
        body["cycles_total"] = sum(self.cycles.values())
        return body


@dataclass(eq=False)
class Pod:
    """One pod life, as the ReplicaSet, the kubelet and the load balancer see it."""

    name: str
    pool: PoolSpec
    slot: Slot
    created_at: float
    running: bool = False
    ready: bool = False
    ready_at: float | None = None
    """When it last became ready (kept after it stops being ready)."""
    deleting: bool = False
    gone: bool = False
    lb_until: float = -FOREVER
    """The load balancer routes to the pod until then (FOREVER while ready)."""
    started: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def in_service(self) -> bool:
        """Running, Ready and not terminating: a builder the Service lists (where the load is measured)."""
        return self.running and self.ready and not self.deleting


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
