"""Runs: a config (or a baseline made from it) over a trace, pool by pool, and their invariants.

Baselines: ``static_peak`` runs ceil(peak concurrent builds ÷ capacity) ready builders per
pool for the whole span (the trace's own peak, not capped at ``maxReplicas``);
``hpa_default`` is the same pool with HPA's default ``behavior``; both under the model's
routing. ``hpa_default_random`` is ``hpa_default`` behind ``random`` routing whatever the
model's: what an SRE runs without this project (an HPA and a plain Service).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Literal

from autoscaler.config import Config, Pool, ScaleDownRules, ScaleUpRules
from autoscaler.simulator.engine import PoolSim, pool_run
from autoscaler.simulator.model import FleetModel, SimulationError
from autoscaler.simulator.outcome import Report, Run, total
from autoscaler.simulator.trace import Build, Trace


def builds_by_pool(config: Config, trace: Trace) -> dict[str, list[Build]]:
    """Each pool's builds (by arch); :class:`SimulationError` for an arch no pool (or two) serves."""
    by_arch: dict[str, list[str]] = {}
    for pool in config.pools:
        by_arch.setdefault(pool.arch, []).append(pool.name)
    problems: list[str] = []
    for arch, names in by_arch.items():
        if len(names) > 1:
            problems.append(f"arch {arch} is served by several pools ({', '.join(names)}): the simulator needs one")
    missing = [a for a in trace.archs if a not in by_arch]
    if missing:
        problems.append(f"the trace has builds for {', '.join(missing)}, which no pool serves")
    if problems:
        raise SimulationError("; ".join(problems))
    result: dict[str, list[Build]] = {p.name: [] for p in config.pools}
    for build in trace.builds:
        result[by_arch[build.arch][0]].append(build)
    return result


def peak_concurrency(builds: Sequence[Build]) -> int:
    """The most builds running at once if each ran unloaded from its start (an end frees its slot
    before a start at the same instant takes it)."""
    edges = sorted(
        [(b.start_seconds + b.duration_seconds, -1) for b in builds] + [(b.start_seconds, 1) for b in builds]
    )
    peak = running = 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    return peak


def hpa_default(pool: Pool) -> Pool:
    """The same pool with HPA's default ``behavior`` (300 s scale-down window, default policies)."""
    return pool.model_copy(update={"scale_up": ScaleUpRules(), "scale_down": ScaleDownRules()})


Variant = Literal["config", "static_peak", "hpa_default"]


def run(
    config: Config,
    trace: Trace,
    *,
    model: FleetModel,
    variant: Variant = "config",
    record_series: bool = False,
    progress: Callable[[float], None] | None = None,
) -> Run:
    """Simulate every pool of ``config`` (or a baseline made from it) on ``trace``."""
    per_pool = builds_by_pool(config, trace)
    sims: list[PoolSim] = []
    for pool in config.pools:
        builds = per_pool[pool.name]
        static = None
        effective = pool
        if variant == "static_peak":
            static = max(1, math.ceil(peak_concurrency(builds) / model.capacity_of(pool)))
        elif variant == "hpa_default":
            effective = hpa_default(pool)
        sims.append(
            PoolSim(
                pool=effective,
                builds=builds,
                model=model,
                poll_interval_seconds=config.poll_interval_seconds,
                static_replicas=static,
                record_series=record_series,
            )
        )
    done = 0.0
    offset = 0.0
    span_hint = max(trace.span_seconds, 1.0) * len(sims)

    def report(at: float) -> None:
        if progress is not None:
            progress(min(1.0, (offset + at) / span_hint))

    end = 0.0
    for sim in sims:
        end = max(end, sim.run(progress=report if progress else None))
        offset += max(trace.span_seconds, 1.0)
        done += 1
    for sim in sims:
        sim.run(until=end)
    if progress is not None:
        progress(1.0)
    pools = {sim.pool.name: pool_run(sim, end=end) for sim in sims}
    return Run(pools=pools, total=total(list(pools.values())), span_seconds=end)


def random_routing(model: FleetModel) -> FleetModel:
    """``model`` behind a plain Service: ``hpa_default_random``'s routing."""
    return dataclasses.replace(model, routing="random")


def simulate(
    config: Config,
    trace: Trace,
    *,
    model: FleetModel,
    progress: Callable[[float], None] | None = None,
    parallel: bool = False,
) -> Report:
    """The config's run (with the chart's series) and the three baselines, on the same trace.

    ``parallel``: run the baselines in child processes meanwhile (each HPA baseline costs as
    much as the config's run; a week of 100k builds then takes less than half the time on
    more than one core). Under ``random`` routing ``hpa_default_random`` is ``hpa_default``:
    run once.
    """
    random_too = model.routing != "random"
    if parallel:
        with ProcessPoolExecutor(max_workers=2 if random_too else 1) as executor:
            rest = executor.submit(_baselines, config, trace, model)
            other = (
                executor.submit(run, config, trace, model=random_routing(model), variant="hpa_default")
                if random_too
                else None
            )
            main = run(config, trace, model=model, record_series=True, progress=progress)
            hpa, static = rest.result()
            hpa_random = other.result() if other is not None else hpa
        return Report(routing=model.routing, run=main, static_peak=static, hpa_default=hpa,
                      hpa_default_random=hpa_random)  # fmt: skip

    parts = 4 if random_too else 3

    def part(index: int) -> Callable[[float], None] | None:
        if progress is None:
            return None
        return lambda fraction: progress((index + fraction) / parts)

    main = run(config, trace, model=model, record_series=True, progress=part(0))
    hpa = run(config, trace, model=model, variant="hpa_default", progress=part(1))
    static = run(config, trace, model=model, variant="static_peak", progress=part(2))
    hpa_random = (
        run(config, trace, model=random_routing(model), variant="hpa_default", progress=part(3)) if random_too else hpa
    )
    return Report(routing=model.routing, run=main, static_peak=static, hpa_default=hpa, hpa_default_random=hpa_random)


def _baselines(config: Config, trace: Trace, model: FleetModel) -> tuple[Run, Run]:
    """(hpa_default, static_peak): what :func:`simulate` runs in a child process."""
    return (
        run(config, trace, model=model, variant="hpa_default"),
        run(config, trace, model=model, variant="static_peak"),
    )


def check_invariants(config: Config, result: Run) -> list[str]:
    """What does not hold of ``result``: every build ended exactly once (completed, interrupted
    or failed), cost ≥ the lower bound (of the work that ran, when builds were interrupted;
    failed builds are not in it) and the sum of its four parts, replicas within [min, max]."""
    problems: list[str] = []
    for pool in config.pools:
        pool_run = result.pools[pool.name]
        m = pool_run.metrics
        if pool_run.ended != pool_run.builds:
            problems.append(f"{pool.name}: {pool_run.ended} of {pool_run.builds} builds ended exactly once")
        # Interrupted builds never ran their whole duration: the bound is on the work that ran.
        ran = (pool_run.build_seconds - pool_run.cut_work_seconds) / pool_run.capacity
        slack = 1e-6 * max(1.0, ran)
        if m.builder_seconds + slack < ran:
            problems.append(f"{pool.name}: cost {m.builder_seconds} below the work that ran, {ran}")
        parts = (
            m.starting_builder_seconds + m.idle_builder_seconds + m.busy_builder_seconds + m.draining_builder_seconds
        )
        if abs(parts - m.builder_seconds) > 1e-6 * max(1.0, m.builder_seconds):
            problems.append(f"{pool.name}: cost {m.builder_seconds} is not the sum of its parts, {parts}")
        if m.interrupted_builds == 0 and m.builder_seconds + slack < m.lower_bound_builder_seconds:
            problems.append(f"{pool.name}: cost {m.builder_seconds} below {m.lower_bound_builder_seconds}")
        for at, replicas in pool_run.scales:
            if not pool.min_replicas <= replicas <= pool.max_replicas:
                problems.append(
                    f"{pool.name}: {replicas} replicas at {at} outside [{pool.min_replicas}, {pool.max_replicas}]"
                )
    return problems
