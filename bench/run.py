"""Run every benchmark, print the report and write it (``make bench``).

``python -m bench.run [--quick] [--out BENCHMARKS.md]``. The full run takes
about three minutes, most of it the 60 s idle-CPU window and the 1 s poll
loop's drains; ``--quick`` is a smoke run of well under a minute whose numbers
are indicative only. Progress goes to stderr, the report to stdout. The exit
status is 1 when a target was missed (the report is written all the same).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import burst, drain_latency, harness, http_latency, resources
from bench.report import Machine, Section, contention_row, load_average, render
from bench.stats import Summary


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """How much of each benchmark to run."""

    drains: int = 200
    """Sidecar drains timed (issue 2: at least 200)."""

    poll_drains: int = 30
    """Poll-loop drains timed: each lasts about one poll interval."""

    poll_interval_seconds: float = 1.0
    """The baseline's poll interval (issue 2: 1 s)."""

    rss_first_builds: int = 1_000
    rss_total_builds: int = 10_000

    idle_seconds: float = 60.0
    """Idle-CPU window (issue 2: 60 s)."""

    burst_builds: int = 10_000

    http_active_builds: int = 100
    http_rate_per_second: float = 200.0
    http_seconds: float = 10.0
    """Per endpoint: 2,000 requests each at 200/s."""

    seed: int = 2
    """Seeds where in its cycle each poll-loop drain's build completes."""


FULL = BenchSettings()
QUICK = dataclasses.replace(FULL, drains=50, poll_drains=5, idle_seconds=10.0, http_seconds=3.0)


def progress(message: str) -> None:
    print(f"bench: {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


async def drain_stage(settings: BenchSettings, daemon: harness.InstrumentedBuildkitd, directory: Path) -> Section:
    progress(f"drain latency: {settings.drains} sidecar drains")
    async with harness.sidecar(daemon=daemon, directory=directory) as sidecar:
        sidecar_latencies = await drain_latency.measure_sidecar(
            daemon=daemon, sidecar=sidecar, iterations=settings.drains
        )
    progress(f"drain latency: {settings.poll_drains} poll-loop drains at {settings.poll_interval_seconds:g} s")
    poll_latencies = await drain_latency.measure_poll(
        daemon=daemon,
        iterations=settings.poll_drains,
        interval_seconds=settings.poll_interval_seconds,
        rng=random.Random(settings.seed),
    )
    result = drain_latency.DrainLatency(
        sidecar=Summary.of(sidecar_latencies),
        poll=Summary.of(poll_latencies),
        poll_interval_seconds=settings.poll_interval_seconds,
    )
    return drain_latency.section(result, at_least_200=settings.drains >= 200)


async def resources_stage(settings: BenchSettings, daemon: harness.InstrumentedBuildkitd, directory: Path) -> Section:
    progress(f"memory: {settings.rss_total_builds:,} builds, then {settings.idle_seconds:g} s idle")
    async with harness.sidecar(daemon=daemon, directory=directory) as sidecar:
        result = await resources.measure(
            daemon=daemon,
            sidecar=sidecar,
            first=settings.rss_first_builds,
            total=settings.rss_total_builds,
            idle_seconds=settings.idle_seconds,
        )
    return resources.section(result)


async def burst_stage(settings: BenchSettings, daemon: harness.InstrumentedBuildkitd, directory: Path) -> Section:
    progress(f"burst: {settings.burst_builds:,} builds at once")
    async with harness.sidecar(daemon=daemon, directory=directory) as sidecar:
        result = await burst.measure(daemon=daemon, sidecar=sidecar, builds=settings.burst_builds)
    return burst.section(result)


async def http_stage(settings: BenchSettings, daemon: harness.InstrumentedBuildkitd, directory: Path) -> Section:
    rate = settings.http_rate_per_second
    progress(f"http: /status and /metrics at {rate:g}/s for {settings.http_seconds:g} s each")
    async with harness.sidecar(daemon=daemon, directory=directory) as sidecar:
        results = await http_latency.measure(
            daemon=daemon,
            sidecar=sidecar,
            active_builds=settings.http_active_builds,
            rate_per_second=rate,
            duration_seconds=settings.http_seconds,
        )
    return http_latency.section(results, active_builds=settings.http_active_builds, rate_per_second=rate)


STAGES = (drain_stage, resources_stage, burst_stage, http_stage)


async def run_all(settings: BenchSettings) -> list[Section]:
    """Every benchmark in turn, one fake daemon for all, a fresh sidecar process for each."""
    sections: list[Section] = []
    async with harness.workdir() as directory, harness.fake_daemon(directory) as daemon:
        for stage in STAGES:
            before = harness.CpuSample.now()
            section = await stage(settings, daemon, directory)
            others = harness.CpuSample.now().others_cores_since(before)
            sections.append(section.with_row(contention_row(others)))
    return sections


def _command(argv: Sequence[str]) -> str:
    python = sys.executable
    relative = os.path.relpath(python)
    if not relative.startswith(".."):
        python = relative
    return " ".join([python, "-m", "bench.run", *argv])


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    top.add_argument("--quick", action="store_true", help="a fast smoke run with fewer iterations and 10 s idle")
    top.add_argument("--out", type=Path, default=None, help="also write the report here (e.g. BENCHMARKS.md)")
    args = top.parse_args(args_list)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    settings = QUICK if args.quick else FULL
    started = datetime.now(UTC)
    load_before = load_average()
    t0 = time.monotonic()
    sections = asyncio.run(run_all(settings))
    runtime = time.monotonic() - t0
    report = render(
        sections=sections,
        machine=Machine.here(),
        started=started,
        command=_command(args_list),
        mode="quick" if args.quick else "full",
        runtime_seconds=runtime,
        load_before=load_before,
        load_after=load_average(),
    )
    print(report, end="")
    if args.out is not None:
        args.out.write_text(report)
        progress(f"wrote {args.out} ({runtime:.0f} s)")
    return 1 if any(s.failed for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
