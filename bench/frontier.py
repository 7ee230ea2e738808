"""Can any config meet issue 4's targets on the bursty CI day? A sweep, not an argument.

The targets (for the shipped config on ``bursty-ci-day``): efficiency ≥ 0.7 *and* slowdown
p95 ≤ 1.25 with 0 interrupted builds. This runs the simulator over a grid of the knobs that
trade one against the other, under four balancers:

* ``random``: a plain Service or cloud layer-4 balancer spreads connections blindly;
* ``least-connections``: an idealisation, one balancer that sees every builder's true count;
* ``router``: the HAProxy router ``deploy/`` ships (:mod:`autoscaler.simulator.routing`, the
  fleet model's default: 2 replicas, agents polled every second, no queue);
* ``ideal admission``: random routing, but a full builder takes no new build at all and the
  build waits for a free slot (:attr:`FleetModel.admission`): what load-aware routing could
  give at best (with a spare builder: waiting builds are invisible to the controller), not
  something the fleet does.

Grid: targetBuildsPerReplica (which is also the simulated builder's capacity) 1–4,
spareReplicas 0–6, the scale-down stabilization window 0–300 s, and scale-up of the larger
of +100 % and +4 builders per 15 s (HPA's default, shipped) or of +100 % and +100 builders
(no practical limit); every other
field as shipped, maxReplicas raised so that the ceiling never binds. Then, on a smaller
grid, the same question for pods that start in 0, 5, 15, 30 and 60 s: what the targets ask
of the cluster. Writes a markdown section (default bench/FRONTIER.md; ``make bench`` puts it
in BENCHMARKS.md through :mod:`bench.simulate_bench`)::

    .venv/bin/python -m bench.frontier [--out bench/FRONTIER.md] [--jobs N] [--startup-seconds S]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from autoscaler.config import Config, load_config
from autoscaler.simulator import traces
from autoscaler.simulator.model import FleetModel, Routing, SimulationError
from autoscaler.simulator.runs import run
from autoscaler.simulator.trace import Trace, parse

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "deploy" / "config.yaml"
TRACE = "bursty-ci-day.csv"
EFFICIENCY_TARGET = 0.7
SLOWDOWN_TARGET = 1.25
TITLE = "Can any config meet the bursty-day targets? (`bench/frontier.py`)"

TARGETS = (1, 2, 3, 4)
SPARES = (0, 1, 2, 3, 4, 6)
WINDOWS = (0.0, 60.0, 120.0, 300.0)
SCALE_UP_PODS = (4, 100)
CEILINGS = {"amd64": 80, "arm64": 40}
"""Far above the trace's needs at any target: the sweep measures the policy, not the ceiling."""

BALANCERS: dict[str, tuple[Routing, bool]] = {
    "random": ("random", False),
    "least-connections": ("least-connections", False),
    "router": ("router", False),
    "ideal admission": ("random", True),
}


@dataclass(frozen=True)
class Point:
    balancer: str
    target: int
    spare: int
    window: float
    up_pods: int
    efficiency: float
    slowdown_p95: float
    wait_p95: float
    interrupted: int
    builder_hours: float
    failed: int = 0

    @property
    def knobs(self) -> str:
        up = f"up max(+100 %, +{self.up_pods})/15 s"
        return f"target {self.target}, spare {self.spare}, down window {self.window:.0f} s, {up}"

    @property
    def meets_slowdown(self) -> bool:
        return self.slowdown_p95 <= SLOWDOWN_TARGET and self.clean

    @property
    def clean(self) -> bool:
        """No build interrupted, none failed."""
        return self.interrupted == 0 and self.failed == 0

    @property
    def meets_both(self) -> bool:
        return self.meets_slowdown and self.efficiency >= EFFICIENCY_TARGET


def variant(base: Config, *, target: int, spare: int, window: float, up_pods: int) -> Config:
    pools = []
    for pool in base.pools:
        up = pool.scale_up.model_copy(
            update={"policies": tuple(
                p.model_copy(update={"value": up_pods}) if p.type == "Pods" else p for p in pool.scale_up.policies
            )}
        )  # fmt: skip
        down = pool.scale_down.model_copy(update={"stabilization_window_seconds": window})
        pools.append(
            pool.model_copy(
                update={
                    "target_builds_per_replica": target,
                    "spare_replicas": spare,
                    "max_replicas": CEILINGS.get(pool.name, 80),
                    "scale_up": up,
                    "scale_down": down,
                }
            )
        )
    return base.model_copy(update={"pools": tuple(pools)})


def _number(value: float | None) -> float:
    """A metric that a run with builds always has."""
    if value is None:
        raise SimulationError("a run with builds has no efficiency or slowdown")
    return value


def _one(args: tuple[Config, Trace, float, str, int, int, float, int]) -> Point | None:
    base, trace, startup, balancer, target, spare, window, up_pods = args
    routing, admission = BALANCERS[balancer]
    config = variant(base, target=target, spare=spare, window=window, up_pods=up_pods)
    try:
        m = run(config, trace, model=FleetModel(routing=routing, admission=admission, startup_seconds=startup)).total
        return Point(
            balancer=balancer,
            target=target,
            spare=spare,
            window=window,
            up_pods=up_pods,
            efficiency=_number(m.efficiency),
            slowdown_p95=_number(m.slowdown_p95),
            wait_p95=m.wait_p95_seconds,
            interrupted=m.interrupted_builds,
            builder_hours=m.builder_seconds / 3600,
            failed=m.failed_builds,
        )
    except SimulationError:
        return None  # a run that never ends: counted out in the section's header


Grid = tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...], tuple[int, ...]]
"""targetBuildsPerReplica, spareReplicas, scale-down windows, scale-up pods per 15 s."""
FULL_GRID: Grid = (TARGETS, SPARES, WINDOWS, SCALE_UP_PODS)
STARTUP_GRID: Grid = ((1, 2), (0, 1, 2, 3), (0.0, 60.0, 120.0), (4,))
"""The start-up sensitivity's smaller grid: every config that met both targets in the full
sweeps at 0 and 5 s start-up was target 1, spare 1, a window of 0–120 s (with scale-up +4 or
its +100 twin, which gave the same results), all inside this grid."""
STARTUPS = (0.0, 5.0, 15.0, 30.0, 60.0)


def sweep(
    base: Config, trace: Trace, *, jobs: int, startup_seconds: float = 60.0, grid: Grid = FULL_GRID
) -> list[Point]:
    grid_args = [
        (base, trace, startup_seconds, balancer, *knobs) for balancer in BALANCERS for knobs in itertools.product(*grid)
    ]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return [p for p in pool.map(_one, grid_args, chunksize=4) if p is not None]


LIMITS = (1.1, 1.25, 1.5, 2.0, 3.0, float("inf"))
"""Slowdown p95 limits of the trade-off table."""


def best_under(points: list[Point], limit: float) -> Point | None:
    """The most efficient point with slowdown p95 ≤ ``limit`` and no interrupted (or failed) build."""
    fits = (p for p in points if p.slowdown_p95 <= limit and p.clean)
    return max(fits, key=lambda p: p.efficiency, default=None)


def fastest_within(points: list[Point], builder_hours: float) -> Point | None:
    """The lowest slowdown p95 at no more than ``builder_hours``, no interrupted or failed build."""
    fits = (p for p in points if p.builder_hours <= builder_hours and p.clean)
    return min(fits, key=lambda p: p.slowdown_p95, default=None)


def section(
    points: list[Point], *, shipped: str, seconds: float, runs: int, startup_seconds: float = 60.0
) -> list[str]:
    lines = [
        f"{runs} simulations of `bursty-ci-day` ({seconds:.0f} s on {os.cpu_count()} CPUs; "
        f"{runs - len(points)} never caught up and are left out): "
        "targetBuildsPerReplica (= the simulated capacity) "
        f"{', '.join(map(str, TARGETS))}; spareReplicas {', '.join(map(str, SPARES))}; scale-down window "
        f"{', '.join(f'{w:.0f}' for w in WINDOWS)} s; scale-up the larger of +100 % and +"
        f"{' or +'.join(map(str, SCALE_UP_PODS))} pods per 15 s; maxReplicas raised to {CEILINGS}; the rest "
        f"as shipped; pods ready {startup_seconds:g} s after creation. Four balancers: `random` (a plain "
        "Service), `least-connections` (an idealisation: one balancer that sees every builder's true count), "
        "`router` (the HAProxy router `deploy/` ships, the fleet model's default: 2 replicas, agents every 1 s, "
        "no queue) and `ideal admission` (random, but a full builder takes no new build and the build waits "
        'for a free slot: load-aware routing at its best, not a feature). "0 interrupted" below also means '
        "0 failed (only the router fails builds).",
        "",
        "| balancer | configs meeting both targets | best efficiency with p95 ≤ 1.25, 0 interrupted | "
        "lowest p95 with efficiency ≥ 0.7, 0 interrupted |",
        "|---|---|---|---|",
    ]
    for balancer in BALANCERS:
        mine = [p for p in points if p.balancer == balancer]
        both = sum(p.meets_both for p in mine)
        fast = max((p for p in mine if p.meets_slowdown), key=lambda p: p.efficiency, default=None)
        cheap = min(
            (p for p in mine if p.efficiency >= EFFICIENCY_TARGET and p.clean),
            key=lambda p: p.slowdown_p95,
            default=None,
        )
        fast_text = f"{fast.efficiency:.3f} ({fast.knobs}; p95 {fast.slowdown_p95:.2f})" if fast else "none"
        cheap_text = f"{cheap.slowdown_p95:.2f} ({cheap.knobs}; efficiency {cheap.efficiency:.3f})" if cheap else "none"
        lines.append(f"| {balancer} | {both} of {len(mine)} | {fast_text} | {cheap_text} |")
    lines += ["", shipped]
    lines += [
        "",
        "The trade-off each balancer allows: the best efficiency at each limit on slowdown p95 "
        "(0 interrupted), with the config that reaches it:",
        "",
        "| slowdown p95 ≤ | " + " | ".join(BALANCERS) + " |",
        "|---|" + "---|" * len(BALANCERS),
    ]
    for limit in LIMITS:
        cells = []
        for balancer in BALANCERS:
            p = best_under([p for p in points if p.balancer == balancer], limit)
            cells.append(f"{p.efficiency:.3f} ({p.knobs}; p95 {p.slowdown_p95:.2f})" if p else "none")
        lines.append(f"| {'any' if limit == float('inf') else f'{limit:.2f}'} | " + " | ".join(cells) + " |")
    return lines


@dataclass(frozen=True)
class Frontier:
    """The sweep's Markdown section and the points behind it."""

    lines: list[str]
    points: list[Point] = field(default_factory=list)


def measure(base: Config, *, jobs: int | None = None, startup_seconds: float = 60.0) -> Frontier:
    """Run the sweep around ``base`` (the shipped config): its markdown section and its points."""
    trace = parse(traces.bundled()[TRACE].read_text(encoding="utf-8"))
    started = time.perf_counter()
    points = sweep(base, trace, jobs=jobs or os.cpu_count() or 1, startup_seconds=startup_seconds)
    seconds = time.perf_counter() - started
    runs = len(BALANCERS) * len(TARGETS) * len(SPARES) * len(WINDOWS) * len(SCALE_UP_PODS)
    shipped = "The shipped config in the same models: " + "; ".join(
        _shipped(base, trace, balancer, startup_seconds) for balancer in BALANCERS if not BALANCERS[balancer][1]
    )
    lines = section(points, shipped=shipped + ".", seconds=seconds, runs=runs, startup_seconds=startup_seconds)
    return Frontier(
        lines=[*lines, "", *startup_sensitivity(base, trace, jobs=jobs or os.cpu_count() or 1)], points=points
    )


def _shipped(base: Config, trace: Trace, balancer: str, startup_seconds: float) -> str:
    routing, admission = BALANCERS[balancer]
    m = run(base, trace, model=FleetModel(routing=routing, admission=admission, startup_seconds=startup_seconds)).total
    return (
        f"{balancer}, efficiency {_number(m.efficiency):.3f}, slowdown p95 {_number(m.slowdown_p95):.2f}, "
        f"{m.interrupted_builds} interrupted, {m.failed_builds} failed"
    )


def startup_sensitivity(base: Config, trace: Trace, *, jobs: int) -> list[str]:
    """The same question as pods start faster: what the targets ask of the cluster."""
    targets, spares, windows, ups = STARTUP_GRID
    configs = len(targets) * len(spares) * len(windows) * len(ups)
    lines = [
        "How fast pods must start for the targets to be reachable: the same question on a smaller grid "
        f"({configs} configs per balancer: target {', '.join(map(str, targets))}; spare "
        f"{', '.join(map(str, spares))}; scale-down window {', '.join(f'{w:.0f}' for w in windows)} s; scale-up "
        f"max(+100 %, +{ups[0]})/15 s). Each cell: configs meeting both targets, and the best efficiency "
        f"with slowdown p95 ≤ {SLOWDOWN_TARGET} and 0 interrupted.",
        "",
        "| pods ready after (s) | " + " | ".join(BALANCERS) + " |",
        "|---|" + "---|" * len(BALANCERS),
    ]
    for startup in STARTUPS:
        points = sweep(base, trace, jobs=jobs, startup_seconds=startup, grid=STARTUP_GRID)
        cells = []
        for balancer in BALANCERS:
            mine = [p for p in points if p.balancer == balancer]
            best = best_under(mine, SLOWDOWN_TARGET)
            best_text = f"{best.efficiency:.3f} ({best.knobs})" if best else "none"
            cells.append(f"{sum(p.meets_both for p in mine)} of {len(mine)}; {best_text}")
        lines.append(f"| {startup:g} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "FRONTIER.md")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument(
        "--startup-seconds", type=float, default=60.0, help="pod creation to ready (default 60, the fleet model's)"
    )
    args = parser.parse_args(argv)
    base = load_config(SHIPPED.read_text(encoding="utf-8"))
    lines = measure(base, jobs=args.jobs, startup_seconds=args.startup_seconds).lines
    text = "\n".join([f"### {TITLE}", "", *lines]) + "\n"
    args.out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
