"""The simulator's benchmark: speed on a week of 100k builds, and the shipped config on the
bundled traces next to both baselines, and the sweep of :mod:`bench.frontier` (can any config
meet the bursty day's targets?). Prints its sections as Markdown; with ``--results`` (``make
bench``) writes them as the ``simulator`` fragment of BENCHMARKS.md (:mod:`bench.assemble`).
The exit status is 1 when a target is missed (the fragment is written all the same).

    .venv/bin/python -m bench.simulate_bench [--results bench/results]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from autoscaler.config import Config, load_config
from autoscaler.simulator import traces
from autoscaler.simulator.model import FleetModel
from autoscaler.simulator.outcome import Outcome, Report
from autoscaler.simulator.runs import simulate
from autoscaler.simulator.trace import Build, Trace, parse
from autoscaler.simulator.traces.generate import week
from bench import frontier
from bench.assemble import render_fragment
from bench.frontier import EFFICIENCY_TARGET, SLOWDOWN_TARGET
from bench.harness import CpuSample
from bench.report import (
    Fragment,
    Machine,
    Measured,
    Row,
    Section,
    code_version,
    command_line,
    contention_row,
    load_average,
    utc,
    verdict,
)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "deploy" / "config.yaml"
SPEED_TARGET_SECONDS = 10.0
WEEK_BUILDS = 100_000
# The week carries ~70 concurrent builds on average and peaks near 200: the shipped
# ceilings (20 and 10 builders) would saturate and measure a backlog, not the simulator.
WEEK_MAX_REPLICAS = {"amd64": 150, "arm64": 75}
BURSTY = "bursty"
"""The bundled trace (by name prefix) the targets are judged on."""


def week_trace() -> Trace:
    rows = sorted(week(builds=WEEK_BUILDS), key=lambda r: r[1])
    return Trace(builds=tuple(Build(arch=a, start_seconds=s, duration_seconds=d) for a, s, d in rows))


def widened(config: Config) -> Config:
    pools = tuple(p.model_copy(update={"max_replicas": WEEK_MAX_REPLICAS.get(p.name, p.max_replicas)})
                  for p in config.pools)  # fmt: skip
    return config.model_copy(update={"pools": pools})


def speed(config: Config) -> Section:
    """Wall time of the week's simulation; a busy machine reads slow, so its load is the last row."""
    trace = week_trace()
    rows: list[Row] = []
    before = CpuSample.now()
    for label, parallel in (("simulate: config + both baselines, baselines in a child process (the CLI's "
                             "choice from 20k builds on)", True),
                            ("simulate: config + both baselines, one process", False)):  # fmt: skip
        started = time.perf_counter()
        report = simulate(config, trace, model=FleetModel(), parallel=parallel)
        elapsed = time.perf_counter() - started
        rows.append(
            Row(label, f"{elapsed:.1f} s", f"≤ {SPEED_TARGET_SECONDS:g} s", verdict(elapsed <= SPEED_TARGET_SECONDS))
        )
        print(f"{label}: {elapsed:.2f} s", file=sys.stderr)
    rows.append(contention_row(CpuSample.now().others_cores_since(before)))
    total = report.run.total
    return Section(
        title="Speed: one week, 100k builds",
        method=f"Trace: 7 days, {len(trace.builds):,} builds (autoscaler/traces/generate.py `week()`, fixed seed); "
        f"the shipped config with maxReplicas raised to {WEEK_MAX_REPLICAS} so the fleet can carry it. Wall time "
        "of one `simulate()` call.",
        rows=tuple(rows),
        after=f"(That week under the config: efficiency {_f(total.efficiency)}, slowdown p95 "
        f"{_f(total.slowdown_p95, 2)}, peak {total.peak_replicas} replicas, {total.scale_events:,} scale events.)",
    )


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def row(trace: str, name: str, m: Outcome) -> str:
    return (
        f"| {trace} | {name} | {m.builder_seconds / 3600:,.1f} | {_f(m.efficiency)} | {_f(m.slowdown_p95, 2)} | "
        f"{m.wait_p95_seconds:.1f} | {m.interrupted_builds} | {m.peak_replicas} |"
    )


def _judged(ok: bool | None) -> str | None:
    """A verdict, or none (a miss) when a metric the check needs was not measured."""
    return None if ok is None else verdict(ok)


def targets(report: Report | None) -> Section:
    """Issue 4's targets for the shipped config on the bursty day; each is missed if not measured."""
    title = "Targets on the bursty CI day"
    method = "The shipped config under the default fleet model (above), against issue 4's targets."
    if report is None:
        absent = "not measured: no bundled bursty trace"
        names = (("efficiency", f"≥ {EFFICIENCY_TARGET}"), ("slowdown p95", f"≤ {SLOWDOWN_TARGET}"),
                 ("interrupted builds", "0"), ("builder-hours", "< HPA default's"),
                 ("slowdown p95", "≤ HPA default's"))  # fmt: skip
        return Section(title=title, method=method, rows=tuple(Row(m, absent, t) for m, t in names))
    m, hpa = report.run.total, report.hpa_default.total
    efficiency = None if m.efficiency is None else m.efficiency >= EFFICIENCY_TARGET
    slowdown = None if m.slowdown_p95 is None else m.slowdown_p95 <= SLOWDOWN_TARGET
    vs_hpa = None if m.slowdown_p95 is None or hpa.slowdown_p95 is None else m.slowdown_p95 <= hpa.slowdown_p95
    rows = (
        Row("efficiency", _f(m.efficiency), f"≥ {EFFICIENCY_TARGET}", _judged(efficiency)),
        Row("slowdown p95", _f(m.slowdown_p95, 2), f"≤ {SLOWDOWN_TARGET}", _judged(slowdown)),
        Row("interrupted builds", str(m.interrupted_builds), "0", verdict(m.interrupted_builds == 0)),
        Row(
            "builder-hours",
            f"{m.builder_seconds / 3600:,.1f} h (HPA default: {hpa.builder_seconds / 3600:,.1f} h)",
            "< HPA default's",
            verdict(m.builder_seconds < hpa.builder_seconds),
        ),
        Row(
            "slowdown p95",
            f"{_f(m.slowdown_p95, 2)} (HPA default: {_f(hpa.slowdown_p95, 2)})",
            "≤ HPA default's",
            _judged(vs_hpa),
        ),
    )
    return Section(title=title, method=method, rows=rows, after="\n".join(where_cost_goes(report)))


def where_cost_goes(report: Report) -> list[str]:
    """The cost's four parts: why efficiency is what it is."""
    lines = [
        "Where the builder-hours go on the bursty day (the report's four cost parts; a builder with one build "
        "of its capacity's two counts as busy):",
        "",
        "| run | builder-hours | starting | ready, idle | ready, busy | draining |",
        "|---|---|---|---|---|---|",
    ]
    for name, run_ in (("shipped config", report.run), ("hpa_default", report.hpa_default),
                       ("static_peak", report.static_peak)):  # fmt: skip
        m = run_.total
        cost = m.builder_seconds

        def part(seconds: float, cost: float = cost) -> str:
            return f"{seconds / 3600:,.1f} ({seconds / cost:.0%})"

        lines.append(
            f"| {name} | {cost / 3600:,.1f} | {part(m.starting_builder_seconds)} | {part(m.idle_builder_seconds)} | "
            f"{part(m.busy_builder_seconds)} | {part(m.draining_builder_seconds)} |"
        )
    return lines


def bundled(config: Config) -> tuple[Section, Report | None]:
    lines = [
        "`deploy/config.yaml`, default fleet model: random routing, capacity = targetBuildsPerReplica (2), "
        "60 s start-up, 3300 s drain deadline, warm start, seed 0. Baselines: `static_peak` (ceil(peak "
        "concurrent builds ÷ capacity) builders all day) and `hpa_default` (the same pools with HPA's default "
        "behavior: 300 s scale-down window, default policies). Totals over both pools.",
        "",
        "| trace | run | builder-hours | efficiency | slowdown p95 | wait p95 (s) | interrupted | peak replicas |",
        "|---|---|---|---|---|---|---|---|",
    ]
    bursty: Report | None = None
    for name, path in traces.bundled().items():
        trace = parse(path.read_text(encoding="utf-8"))
        report = simulate(config, trace, model=FleetModel())
        label = f"{name.removesuffix('.csv')} ({len(trace.builds):,} builds)"
        lines.append(row(label, "**shipped config**", report.run.total))
        lines.append(row(label, "static_peak", report.static_peak.total))
        lines.append(row(label, "hpa_default", report.hpa_default.total))
        if name.startswith(BURSTY):
            bursty = report
    return Section(title="The shipped config on the bundled traces", method="\n".join(lines), rows=()), bursty


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m bench.simulate_bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--results", type=Path, default=None, help="write the simulator's fragment here (make bench: bench/results)"
    )
    args = parser.parse_args(args_list)
    started = datetime.now(UTC)
    code = code_version()
    load_before = load_average()
    t0 = time.monotonic()
    config = load_config(SHIPPED.read_text(encoding="utf-8"))
    shipped, bursty = bundled(config)
    sections = (
        speed(widened(config)),
        shipped,
        targets(bursty),
        Section(title=frontier.TITLE, method="\n".join(frontier.measure(config)), rows=()),
    )
    machine = Machine.here()
    fragment = Fragment(
        part="simulator",
        title="What-if simulator (`buildkit-autoscaler simulate`)",
        intro="The simulator replays a trace of builds through the controller's own decision core on a model of "
        "the fleet: no process, no real time. Targets of issue 4.",
        measured=Measured(
            commit=code,
            date=utc(started),
            machine=machine.summary,
            command=command_line("bench.simulate_bench", args_list),
            details=(
                f"run length {time.monotonic() - t0:.0f} s",
                f"Python: {machine.python}",
                f"Load average (1, 5, 15 min) before: {load_before}; after: {load_average()}",
            ),
        ),
        sections=sections,
    )
    sys.stdout.write(render_fragment(fragment))
    if args.results is not None:
        print(f"wrote {fragment.write(args.results)}", file=sys.stderr)
    return 1 if fragment.failed else 0


if __name__ == "__main__":
    sys.exit(main())
