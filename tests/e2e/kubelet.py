"""The fleet's kubelet: starts pods, probes their readiness at the sidecar's /readyz, and kills them on deletion.

A deleted pod gets its preStop hook (the sidecar's ``POST /drain``), and only when that
has answered, or when the grace period has run out, the "SIGKILL": the fake buildkitd dies
with whatever still runs on it. Every way that could lose a build is a recorded failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import aiohttp

from tests.e2e.balancer import Balancer
from tests.e2e.cluster import Cluster
from tests.e2e.fleet import NS, Figures, Pod, Timing, now


class Kubelet:
    """Pod start-up, readiness probes and termination, for every pool's pods."""

    def __init__(
        self,
        *,
        cluster: Cluster,
        balancer: Balancer,
        http: aiohttp.ClientSession,
        pods: dict[str, list[Pod]],
        timing: Timing,
        figures: Figures,
    ) -> None:
        self.cluster = cluster
        self.balancer = balancer
        self.http = http
        self.pods = pods
        self.timing = timing
        self.figures = figures
        self.tasks: set[asyncio.Task[None]] = set()
        """Start-ups and terminations in flight."""

    def start(self, pod: Pod) -> None:
        """A pod was scheduled: start it in the background (see :meth:`_start`)."""
        self._spawn(self._start(pod), f"start-{pod.name}")

    def terminate(self, pod: Pod) -> None:
        """A pod was deleted: terminate it in the background (see :meth:`_terminate`)."""
        self._spawn(self._terminate(pod), f"terminate-{pod.name}")

    async def probe(self) -> None:
        """The readiness probes of every running pod, every probe period, forever."""
        while True:
            pods = [p for pods in self.pods.values() for p in pods if p.running and not p.gone]
            await asyncio.gather(*(self._probe(p) for p in pods))
            await asyncio.sleep(self.timing.probe_interval_seconds)

    async def close(self) -> None:
        """Cancel the start-ups and terminations still in flight (the end of a run)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    # -- one pod ---------------------------------------------------------------------------------

    async def _start(self, pod: Pod) -> None:
        """Image pull and container start, then Running (not yet Ready: the probe decides that)."""
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
            obj = self.cluster.pod(pod.name)
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

    async def _terminate(self, pod: Pod) -> None:
        """The preStop hook (the sidecar's /drain), then SIGKILL at the latest at the grace period."""
        await pod.started.wait()
        slot = pod.slot
        began = now()
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
            self.figures.fail(
                f"{pod.name}: grace period ran out before the drain answered (builds {list(slot.daemon.active)})"
            )
        waited = now() - began
        self.figures.drain_seconds_max = max(self.figures.drain_seconds_max, waited)
        reason = (answer or {}).get("reason", "no answer")
        self.figures.drains[str(reason)] += 1
        active = list(slot.daemon.active) if slot.alive else []
        if answer is not None and status != 200:
            self.figures.fail(f"{pod.name}: drain answered {status} {answer}")
        if answer is not None and status == 200 and active:
            self.figures.fail(f"{pod.name}: drain answered {answer} while builds ran: {active}")
        if now() > deadline + 0.5:
            self.figures.fail(f"{pod.name}: killed {now() - deadline:.1f} s after its grace period")
        await slot.daemon.kill()
        pod.gone = True
        with contextlib.suppress(KeyError):
            self.cluster.delete("pods", NS, pod.name)
        self.pods[pod.pool.arch].remove(pod)
        slot.pod = None
        self.figures.pods_deleted += 1

    async def _probe(self, pod: Pod) -> None:
        try:
            async with self.http.get(pod.slot.public + "/readyz", timeout=aiohttp.ClientTimeout(total=1)) as response:
                ready = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ready = False
        if pod.gone or ready == pod.ready:
            return
        pod.ready = ready
        if ready:
            pod.ready_at = now()
            self.balancer.register(pod)
        else:
            self.balancer.deregister(pod)
        obj = self.cluster.pod(pod.name)
        obj["status"]["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        self.cluster.put("pods", NS, obj)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(self._crashed)

    def _crashed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.figures.fail(f"harness task {task.get_name()} crashed: {task.exception()!r}")
