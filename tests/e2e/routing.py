"""The fleet's routers: per pool, the real HAProxy running the shipped config, and the cluster DNS it resolves.

What a routed fleet (``Harness(route="router")``) puts between the clients and the builders, as
``deploy/`` does: the headless Service's DNS lists the pool's Ready, not terminating pods (the
endpoints controller's view), and HAProxy places each build by the sidecars' agents, asked every
:attr:`Timing.agent_interval_seconds` (the Deployment's ``ROUTER_AGENT_INTERVAL``, compressed). Builds
are mTLS ``Solve`` calls over their own connection (:class:`fakes.builder_pods.Client`).

``Harness(route="random")`` is the baseline the router replaces: the same mTLS builds, each sent
straight to a builder picked at random among those the load balancer still routes to (what a
plain Service's kube-proxy does behind a cloud L4 load balancer with its deregistration delay).
No HAProxy and no DNS then; the picking is :meth:`tests.e2e.balancer.Balancer.random_address`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fakes.builder_pods import Certificates, Client
from fakes.cluster_dns import ServiceDNS
from fakes.router import Router, shipped_env
from tests.e2e.fleet import Pod, PoolSpec, Slot, Timing
from tests.e2e.processes import free_port

Route = Literal["balancer", "router", "random"]
"""How the fleet's clients reach a builder: the test's own least-connections balancer (builds
played in-process), the real router, or a random pick (both of the latter over mTLS)."""


class Routing:
    """The certificates every daemon, sidecar and client uses; with ``proxied``, one router and one
    DNS name per pool."""

    def __init__(self, *, workdir: Path, pools: tuple[PoolSpec, ...], timing: Timing, proxied: bool = True) -> None:
        self.workdir = workdir
        self.timing = timing
        self.proxied = proxied
        """True: builds go through HAProxy; False: straight to a builder picked at random."""
        self.certificates = Certificates(workdir)
        self.client = Client(self.certificates)
        self.dns = (
            {p.arch: ServiceDNS(f"buildkitd-backends-{p.arch}.buildkit.svc.cluster.local") for p in pools}
            if proxied
            else {}
        )
        self.routers: dict[str, Router] = {}
        self.slots: dict[str, list[Slot]] = {}
        """Every pod slot of each pool (the process manager's), to tell a lost build from a refused one."""

    async def start(self) -> None:
        for arch, dns in self.dns.items():
            dns.start()
            router = Router(
                self.workdir / f"router-{arch}",
                env={
                    **shipped_env(f"buildkitd-backends-{arch}.buildkit.svc.cluster.local", arch=arch),
                    "ROUTER_AGENT_INTERVAL": f"{round(self.timing.agent_interval_seconds * 1000)}ms",
                },
                dns_port=dns.port,
                listen=f"127.0.0.1:{free_port()}",
                metrics=f"127.0.0.1:{free_port()}",
            )
            await router.start()
            self.routers[arch] = router

    def publish(self, pool: PoolSpec, pods: list[Pod]) -> None:
        """The headless Service's records: the pool's Ready pods that are not terminating."""
        if self.proxied:
            self.dns[pool.arch].publish(*(p.slot.ip for p in pods if p.ready and not p.deleting and not p.gone))

    def address(self, pool: PoolSpec) -> str:
        return self.routers[pool.arch].listen

    async def close(self) -> None:
        for router in self.routers.values():
            await router.stop()
        for dns in self.dns.values():
            dns.stop()
