"""A router test's fleet: N builders (fake buildkitd + real sidecar), the cluster DNS, the real HAProxy.

Real time throughout (HAProxy and the sidecars are real processes): the tests opt out of
looptime, and wait on what they can observe (a build arrived, HAProxy's ``show stat``), with
generous bounds, never on a fixed sleep that a loaded machine could outrun.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from fakes.builder_pods import Builder, Certificates, Client
from fakes.cluster_dns import ServiceDNS
from fakes.router import CLIENT_PORT, Router, shipped_env

TIERS = ("tier_idle", "tier_free", "tier_any")
AGENT_INTERVAL = 1.0
"""``agent-inter``: the shipped router Deployment's ``ROUTER_AGENT_INTERVAL`` (checked by tests/deploy)."""
START_SECONDS = 120.0
"""Far above a start on a busy 2-core machine (~3 s for 4 builders)."""
HEADLESS = "buildkitd-backends-amd64.buildkit.svc.cluster.local"
"""The name the test DNS answers (the shipped Deployment's value is replaced by it)."""


async def until(what: str, check: Callable[[], Awaitable[bool]], *, within: float = 20.0) -> float:
    """Poll ``check`` every 50 ms until true; returns the time it took; fails after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await check():
        if loop.time() - start > within:
            raise AssertionError(f"waited {within} s for {what}")
        await asyncio.sleep(0.05)
    return loop.time() - start


class Fleet:
    def __init__(self, workdir: Path, http: aiohttp.ClientSession) -> None:
        self.workdir = workdir
        self.http = http
        self.certificates = Certificates(workdir)
        self.client = Client(self.certificates)
        self.dns = ServiceDNS(HEADLESS)
        self.builders: list[Builder] = []
        self.router: Router | None = None
        self.starting = ""
        """What :meth:`start` is waiting for (named if it takes too long)."""

    @property
    def address(self) -> str:
        """Where buildx connects: the router's client port."""
        assert self.router is not None
        return self.router.listen

    async def start(self, builders: int) -> None:
        """The DNS, ``builders`` builders (each ready), the router, until it sees them all idle.

        Bounded as a whole (:data:`START_SECONDS`): a start that hangs fails here, naming the
        step, rather than holding the suite until CI's own limit."""
        try:
            async with asyncio.timeout(START_SECONDS):
                await self._start(builders)
        except TimeoutError:
            stuck = self.starting
            raise AssertionError(f"the fleet did not start within {START_SECONDS} s: stuck at {stuck}") from None

    async def _start(self, builders: int) -> None:
        self.starting = "the DNS server"
        self.dns.start()
        for i in range(builders):
            builder = Builder(i, workdir=self.workdir, certificates=self.certificates, build_port=CLIENT_PORT)
            self.builders.append(builder)
            self.starting = f"{builder.name} (its buildkitd, then its sidecar until ready)"
            await builder.start(self.http)
        self.starting = "the router"
        self.dns.publish(*(b.ip for b in self.builders))
        env = shipped_env(HEADLESS)
        self.router = Router(
            self.workdir,
            env=env,
            dns_port=self.dns.port,
            listen=f"127.0.0.1:{free_port()}",
            metrics=f"127.0.0.1:{free_port()}",
        )
        await self.router.start()
        await self.until_agents("every builder idle and up", {b.ip: "idle" for b in self.builders})

    async def tiers(self) -> dict[str, set[str]]:
        """Per tier backend, the builder addresses HAProxy would send a new connection to now."""
        assert self.router is not None
        rows = await self.router.stat()
        usable: dict[str, set[str]] = {tier: set() for tier in TIERS}
        for row in rows:
            server = row["pxname"] in usable and row["svname"] not in ("FRONTEND", "BACKEND") and row.get("addr")
            if server and row["status"] == "UP" and int(row["weight"] or 0) > 0:
                usable[row["pxname"]].add(row["addr"].rpartition(":")[0])
        return usable

    async def until_agents(self, what: str, expected: dict[str, str], *, within: float = 20.0) -> float:
        """Until HAProxy sees each builder in the best tier ``expected`` names for it
        (``idle``, ``free``, ``any``, or ``none``: no new connection goes there)."""
        order = {"idle": 0, "free": 1, "any": 2, "none": 3}

        async def seen() -> bool:
            tiers = await self.tiers()
            best = {ip: next((t.removeprefix("tier_") for t in TIERS if ip in tiers[t]), "none") for ip in expected}
            return all(order[best[ip]] == order[tier] for ip, tier in expected.items())

        return await until(what, seen, within=within)

    async def close(self) -> None:
        if self.router is not None:
            await self.router.stop()
        for builder in self.builders:
            await builder.stop()
        self.dns.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
