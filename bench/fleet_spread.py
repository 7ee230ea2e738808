"""Where the builds land in the end-to-end fleet: running builds per builder, max − min, behind the router vs random.

Part of the router's benchmarks (:mod:`bench.router_bench`). The fleet of ``tests/e2e`` (real
sidecars in front of fake buildkitds, the real autoscalers scaling two pools, the fake Kubernetes
API, compressed time) runs three times with the same load (the same seeded bursts of mTLS builds):

* ``router``: each build through the pool's real HAProxy running the shipped config, fed by
  the sidecars' agents, the agent interval compressed with the builds (below);
* ``router, agent 1 s``: the same with the shipped agent interval, as ``make e2e`` runs it;
* ``random``: each build straight to a builder picked at random among those the load balancer
  still routes to (a plain Service behind a cloud L4 load balancer: the baseline the router
  replaces).

While the load is on, every 0.2 s and per pool, the harness reads each builder in service
(Ready, not terminating) for its running builds and records max − min. Reported per run:
mean and p95 of that spread, and the share of samples in which one builder ran two builds or
more while another ran none (a build waiting for CPU beside an idle builder); and per build, as
it reaches its builder, whether another builder in service ran fewer builds. The autoscalers
scale each run by its own placements, so the builders in service differ a little between the
runs; the bursts are the same seeded sequence (a few more or fewer fit in the run's last seconds).

The fleet runs on compressed time (builds of 0.3–9 s), so the ``router`` run compresses the
routers' agent interval too (``ROUTER_AGENT_INTERVAL`` 0.1 s instead of the shipped 1 s): with
the shipped interval, as long as a build here, the router places on a view of the builders as
old as the builds themselves, which real builds of minutes never see. The ``router, agent 1 s``
run shows what that costs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.report import Row, Section
from bench.report import verdict as _verdict
from bench.stats import percentile
from tests.e2e.balancer import SETTLED_SECONDS
from tests.e2e.fleet import DEFAULT_POOLS, Figures, Timing
from tests.e2e.harness import Harness
from tests.e2e.routing import Route


def _expand(histogram: Mapping[int, int]) -> list[float]:
    return [float(value) for value, n in sorted(histogram.items()) for _ in range(n)]


@dataclass(frozen=True, slots=True)
class Spread:
    """One run: its route, the routers' agent interval, what the fleet did."""

    label: str
    route: Route
    figures: Figures
    seconds: float

    @property
    def samples(self) -> list[float]:
        return _expand(self.figures.spread_samples)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples) if self.samples else math.nan

    @property
    def p95(self) -> float:
        return percentile(self.samples, 95)

    @property
    def doubled_share(self) -> float:
        return self.figures.doubled_beside_idle_samples / len(self.samples) if self.samples else math.nan

    def misplaced_share(self, *, settled: bool) -> float:
        """The share of builds placed on a builder busier than the least-loaded other one in service."""
        excess = self.figures.placement_excess_settled if settled else self.figures.placement_excess
        placed = sum(excess.values())
        return sum(n for value, n in excess.items() if value > 0) / placed if placed else math.nan


POOLS = tuple(dataclasses.replace(pool, block=pool.block + 10) for pool in DEFAULT_POOLS)
"""The e2e fleet's pools on addresses of their own (127.0.51–52.x): the benchmark can run beside ``make e2e``."""

COMPRESSED_AGENT_SECONDS = 0.1
"""The routers' agent interval compressed with the builds (see the module's docstring)."""


async def run(label: str, route: Route, workdir: Path, *, seconds: float, timing: Timing) -> Spread:
    """The fleet under load for ``seconds`` of real time, then every build left to end."""
    async with Harness(workdir=workdir, route=route, pools=POOLS, timing=timing) as fleet:
        loop = asyncio.get_running_loop()
        began = loop.time()
        fleet.load_on.set()
        await asyncio.sleep(seconds)
        figures = await fleet.finish()
        return Spread(label=label, route=route, figures=figures, seconds=loop.time() - began)


def _rows(r: Spread) -> list[Row]:
    f = r.figures
    return [
        Row(
            f"{r.label}: builds started / completed / lost",
            f"{f.builds_started:,} / {f.builds_completed:,} / {f.builds_lost:,}",
            target="0 lost",
            result=_verdict(f.builds_lost == 0 and f.builds_started == f.builds_completed),
        ),
        Row(
            f"{r.label}: running builds per builder, max − min: mean / p95 ({len(r.samples):,} samples)",
            f"{r.mean:.2f} / {r.p95:.0f}",
        ),
        Row(f"{r.label}: samples with a builder at ≥ 2 builds beside an idle one", f"{r.doubled_share:.1%}"),
        Row(
            f"{r.label}: builds placed on a builder busier than another in service "
            f"(in service ≥ {SETTLED_SECONDS:g} s / any)",
            f"{r.misplaced_share(settled=True):.1%} / {r.misplaced_share(settled=False):.1%}",
        ),
    ]


async def measure(workdir: Path, *, seconds: float) -> Section:
    router = await run(
        "router", "router", workdir / "router", seconds=seconds,
        timing=Timing(agent_interval_seconds=COMPRESSED_AGENT_SECONDS),
    )  # fmt: skip
    shipped = await run("router, agent 1 s", "router", workdir / "router-1s", seconds=seconds, timing=Timing())
    random = await run("random", "random", workdir / "random", seconds=seconds, timing=Timing())
    runs = (router, shipped, random)
    broken = [f"{r.label}: {failure}" for r in runs for failure in r.figures.failures]
    ratio = router.mean / random.mean if random.mean else math.nan
    rows = [row for r in runs for row in _rows(r)]
    rows += [
        Row(
            "router ÷ random, mean max − min",
            f"{ratio:.2f}",
            target="< 1 (same load, same run)",
            result=_verdict(ratio < 1.0),
        ),
        Row(
            "router, a builder at ≥ 2 builds beside an idle one",
            f"{router.doubled_share:.1%} of samples vs {random.doubled_share:.1%} random",
            target="< random's",
            result=_verdict(router.doubled_share < random.doubled_share),
        ),
        Row(
            f"router, builds placed on a busier builder (against builders in service ≥ {SETTLED_SECONDS:g} s)",
            f"{router.misplaced_share(settled=True):.1%} vs {random.misplaced_share(settled=True):.1%} random",
            target="< random's",
            result=_verdict(router.misplaced_share(settled=True) < random.misplaced_share(settled=True)),
        ),
        Row(
            "guarantees broken (the harness's whole-run checks, every run)",
            f"{len(broken)}" if broken else "none",
            target="none",
            result=_verdict(not broken),
        ),
    ]
    return Section(
        title="Router: builds per builder in the end-to-end fleet, behind the router vs random",
        method=(
            f"The fleet of `make e2e` (two pools, amd64 max 5 and arm64 max 4 builders, scaled by the real "
            f"autoscalers), {seconds:.0f} s of the same seeded bursts of mTLS builds (0.3–9 s each) per run: "
            "through the real HAProxy running the shipped config, its agent interval compressed with the builds "
            f"(`router`: {COMPRESSED_AGENT_SECONDS:g} s) and as shipped (`router, agent 1 s`: as long as a build "
            "here, which a real fleet's builds of minutes never see), then each build straight to a builder "
            "picked at random among those the load balancer routes to (`random`: a plain Service). Every 0.2 s "
            "per pool: max − min of the running builds over the builders in service (Ready, not terminating). "
            "Per build, as it reaches its builder: did another builder in service run fewer builds? Against every "
            f"builder in service, and against those in service for {SETTLED_SECONDS:g} s or more: the router "
            "learns of a new builder from its DNS, re-resolved every second, and a health check every 2 s."
        ),
        rows=tuple(rows),
        notes=(
            "Most of the remaining spread is not placement: a burst's builds are placed on the builders there "
            "are, and the builders the autoscaler adds for it start empty beside them (and a builder's short "
            "builds end while its neighbour's long ones run on). No router moves a running build.",
            *broken[:10],
        ),
    )
