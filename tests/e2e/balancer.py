"""The fleet's clients and load balancer: bursts of builds, routed to ready pods, and for a while to pods leaving.

A real load balancer keeps sending to a target for its deregistration delay after the
target stopped being ready or began terminating: the window the sidecar's drain covers.
Every build is accounted: completed, or lost because its buildkitd was killed under it.
"""

from __future__ import annotations

import asyncio
import random

import grpc.aio

from autoscaler.policy import replicas_for
from fakes.buildkitd import new_ref
from fakes.router import CLIENT_PORT
from tests.e2e.fleet import FOREVER, Figures, Load, Pod, PoolSpec, Slot, Timing, now, until
from tests.e2e.routing import Routing

SPREAD_SAMPLE_SECONDS = 0.2
"""How often :meth:`Balancer.sample_spread` reads every builder's running builds."""
SETTLED_SECONDS = 3.0
"""A builder in service this long is known to the router (its DNS is re-resolved every second, then
a health check every 2 s): :attr:`Figures.placement_excess_settled` compares with those only."""


class Balancer:
    """The load generator (one loop per pool) and the balancer it sends through."""

    def __init__(
        self,
        *,
        pods: dict[str, list[Pod]],
        load: Load,
        timing: Timing,
        figures: Figures,
        routing: Routing | None = None,
    ) -> None:
        self.routing = routing
        """Set: builds go through the real router (per pool), which reads the DNS this keeps."""
        self.pods = pods
        self.load = load
        self.timing = timing
        self.figures = figures
        self.load_on = asyncio.Event()
        """Set: the generator sends bursts; cleared: it pauses (builds already sent run on)."""
        self.builds: set[asyncio.Task[None]] = set()
        self.quiet_until: dict[str, float] = dict.fromkeys(pods, 0.0)
        """Per pool: no burst before this (a tail's falling load, :meth:`tails`)."""
        self.picks = random.Random(f"{load.seed}-picks")
        """The random route's own draws: the load (the generators' draws) is the same whatever the route."""

    # -- the endpoints: which pods the balancer routes to -----------------------------------------

    def register(self, pod: Pod) -> None:
        """A pod became ready: routed to from now on, unless it is already terminating."""
        if not pod.deleting:
            pod.lb_until = FOREVER
        self._publish(pod.pool)

    def deregister(self, pod: Pod) -> None:
        """A pod stopped being ready or began terminating: still routed to for the deregistration delay
        (behind the router: out of DNS at once; the router stops within an agent interval)."""
        if pod.lb_until == FOREVER:
            pod.lb_until = now() + self.timing.deregistration_seconds
        self._publish(pod.pool)

    def _publish(self, pool: PoolSpec) -> None:
        if self.routing is not None:
            self.routing.publish(pool, self.pods[pool.arch])

    def landed(self, slot: Slot) -> None:
        """A build reached ``slot``'s buildkitd over the wire: count it if the pod was leaving, otherwise
        how many more builds its builder already ran than the least-loaded builder in service
        (:attr:`Figures.placement_excess`)."""
        pod = slot.pod
        if pod is None or not pod.ready or pod.deleting:
            self.figures.builds_sent_during_deregistration += 1
            return
        at = now()
        before = len(slot.daemon.active) - 1  # this build is already running there
        others = [p for p in self.pods[pod.pool.arch] if p is not pod and p.in_service]
        self.figures.placement_excess[
            max(0, before - min((len(p.slot.daemon.active) for p in others), default=before))
        ] += 1
        settled = [
            len(p.slot.daemon.active) for p in others if p.ready_at is not None and at - p.ready_at >= SETTLED_SECONDS
        ]
        self.figures.placement_excess_settled[max(0, before - min(settled, default=before))] += 1

    def in_rotation(self, pool: PoolSpec) -> list[Pod]:
        at = now()
        return [p for p in self.pods[pool.arch] if p.running and at < p.lb_until]

    def random_address(self, pool: PoolSpec) -> str | None:
        """The random route: a builder the load balancer still routes to, picked at random (None: none yet)."""
        candidates = self.in_rotation(pool)
        if not candidates:
            return None
        pod = self.picks.choice(candidates)
        if pod.gone or not pod.slot.alive:
            self.figures.sends_to_dead_pods += 1
            self.figures.fail(f"{pod.name}: the balancer sent a build to a killed pod")
            return None
        return f"{pod.slot.ip}:{CLIENT_PORT}"

    # -- where the load landed ------------------------------------------------------------------

    async def sample_spread(self) -> None:
        """Forever, while the load is on: per pool, the running builds of each builder in service
        (Ready, not terminating), max − min, into :attr:`Figures.spread_samples`."""
        while True:
            await self.load_on.wait()
            for pods in self.pods.values():
                counts = [len(p.slot.daemon.active) for p in pods if p.in_service]
                if len(counts) < 2:
                    continue
                spread = max(counts) - min(counts)
                self.figures.spread_samples[spread] += 1
                if max(counts) >= 2 and min(counts) == 0:
                    self.figures.doubled_beside_idle_samples += 1
            await asyncio.sleep(SPREAD_SAMPLE_SECONDS)

    # -- the clients ----------------------------------------------------------------------------

    async def generate(self, pool: PoolSpec) -> None:
        """Bursts of builds for ``pool`` while :attr:`load_on` is set, forever."""
        load = self.load
        rng = random.Random(f"{load.seed}-{pool.arch}")
        while True:
            await self.load_on.wait()
            await asyncio.sleep(rng.uniform(*load.burst_gap_seconds))
            if not self.load_on.is_set() or now() < self.quiet_until[pool.arch]:
                continue
            for _ in range(rng.randint(*load.burst_size)):
                delay = rng.uniform(0, load.spread_seconds)
                long = rng.random() < load.long_build_share
                duration = rng.uniform(*(load.long_build_seconds if long else load.build_seconds))
                self._track(asyncio.create_task(self.build(pool, delay=delay, duration=duration, rng=rng)))

    async def tails(self, pool: PoolSpec) -> None:
        """Forever, while the load is on and :attr:`Load.tail_min_builders` is set: the falling load's
        long tail, every :attr:`Load.tail_gap_seconds` at most.

        A tail waits until the pool runs at least that many builders in service, none starting, and, by
        the autoscaler's own rule (:func:`~autoscaler.policy.replicas_for`; demand is every running
        build, a terminating pod's too): with one more build on each, it needs no more builders than it
        runs, so no scale-up adds idle ones; with one build on each alone, it needs fewer (with a spare,
        three builders with a build each still need three). Then one long build goes straight onto each
        builder (a client that bypasses the router, as another router replica's or a direct connection
        does) and the bursts pause for :attr:`Load.tail_quiet_seconds`. As the bursts' builds end, the
        pool needs fewer builders while every one it has still runs a tail build: the scale-down's
        victim is a busy one.
        """
        load = self.load
        if load.tail_min_builders is None:
            return
        rng = random.Random(f"{load.seed}-{pool.arch}-tails")

        def need(demand: int) -> int:
            return replicas_for(demand, target=pool.target_builds_per_replica, spare=pool.spare_replicas)

        while True:
            await self.load_on.wait()
            pods = self.pods[pool.arch]
            in_service = [p for p in pods if p.in_service]
            running = sum(len(p.slot.daemon.active) for p in pods if not p.gone)
            n = len(in_service)
            starting = any(not p.in_service and not p.deleting for p in pods)
            if n < load.tail_min_builders or starting or need(running + n) > n or need(n) >= n:
                await asyncio.sleep(0.1)
                continue
            self.quiet_until[pool.arch] = now() + load.tail_quiet_seconds
            for pod in in_service:
                self.start_build_on(pod, rng.uniform(*load.tail_build_seconds))
            self.figures.tails += 1
            await asyncio.sleep(load.tail_gap_seconds)

    async def build(self, pool: PoolSpec, *, delay: float, duration: float, rng: random.Random) -> None:
        """One client build: routed by the balancer, retried while no pod takes it."""
        await asyncio.sleep(delay)
        if self.routing is not None:
            await self.wire_build(pool, duration)
            return
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
                self.figures.fail(f"{pod.name}: the balancer sent a build to a killed pod")
                await asyncio.sleep(0.1)
                continue
            break
        if waited:
            self.figures.builds_waited_for_a_ready_pod += 1
        if not pod.ready or pod.deleting:
            self.figures.builds_sent_during_deregistration += 1
        await self.run_build(pod, duration)

    async def wire_build(self, pool: PoolSpec, duration: float) -> None:
        """One mTLS build through the pool's router (or to a builder picked at random), retried while
        it is refused before reaching any buildkitd (no builder up: buildx would fail, this client
        waits); lost if it failed after."""
        assert self.routing is not None
        ref = new_ref()
        waited = False
        while True:
            address = self.routing.address(pool) if self.routing.proxied else self.random_address(pool)
            if address is None:
                waited = True
                await asyncio.sleep(0.1)
                continue
            try:
                await self.routing.client.build(address, duration, ref=ref)
            except grpc.aio.AioRpcError as error:
                slots = self.routing.slots[pool.arch]
                if any(solved.ref == ref for slot in slots for solved in slot.daemon.solves):
                    self.figures.builds_started += 1
                    self.figures.builds_lost += 1
                    self.figures.fail(f"build {ref} lost: {error.code().name} {error.details()}")
                    return
                waited = True
                await asyncio.sleep(0.1)
                continue
            self.figures.builds_started += 1
            self.figures.builds_completed += 1
            if waited:
                self.figures.builds_waited_for_a_ready_pod += 1
            return

    def start_build_on(self, pod: Pod, duration: float) -> asyncio.Task[None]:
        """A build sent straight to ``pod`` (a client that bypasses the balancer), accounted like the others."""
        return self._track(asyncio.create_task(self.run_build(pod, duration)))

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
            self.figures.fail(f"{pod.name}: build {ref} lost (its buildkitd was killed while it ran)")

    async def quiesce(self, *, within: float = 60.0) -> None:
        """Stop the load and wait for every build to end."""
        self.load_on.clear()
        await until(lambda: not self.builds, within=within, what="every build to end")

    async def close(self) -> None:
        """Stop the load and cancel the builds still running (the end of a failed run)."""
        self.load_on.clear()
        for task in self.builds:
            task.cancel()
        await asyncio.gather(*self.builds, return_exceptions=True)

    def _track(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        self.builds.add(task)
        task.add_done_callback(self.builds.discard)
        return task
