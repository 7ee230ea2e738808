"""Memory and idle CPU of the sidecar process.

Builds run through the fake daemon in batches (STARTED for the batch, then
each COMPLETE and its duplicate), and the next batch waits until the sidecar
has counted the last one, as builds arrive in a pod: spread over time, not in
one burst (that is :mod:`bench.burst`). RSS is read from ``/proc/<pid>/status``
once the sidecar has processed 1k builds and again after 10k. Every completed
ref leaves a tombstone for at least 60 s, so at 10k the sidecar holds 10k of
them: the worst case for memory.

Idle CPU follows on the same process: no builds, no HTTP requests, the
periodic resync (30 s default) still running; utime + stime from
``/proc/<pid>/stat`` over the idle window, as a percentage of one core.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bench.harness import InstrumentedBuildkitd, Memory, SidecarProcess, at_least, loop_time
from bench.report import Row, Section, verdict

TARGET_RSS_MIB = 60.0
"""Issue 2: RSS ≤ 60 MiB after 10k builds."""

TARGET_GROWTH_MIB = 5.0
"""Issue 2: less than 5 MiB growth between 1k and 10k builds."""

BATCH_BUILDS = 100
"""Builds per batch: more than a busy builder runs at once, few enough to stay realistic."""

SETTLE_SECONDS = 1.0
"""Pause before the idle window, so the last batch's logging and collection are over."""


@dataclass(frozen=True, slots=True)
class Resources:
    at_start: Memory
    first_builds: int
    at_first: Memory
    total_builds: int
    at_total: Memory
    feed_seconds: float
    idle_seconds: float
    idle_cpu_percent: float


async def feed_builds(*, daemon: InstrumentedBuildkitd, sidecar: SidecarProcess, builds: int, done_before: int) -> None:
    """Run ``builds`` builds through the fake, one batch at a time, until the sidecar counted them."""
    done = done_before
    remaining = builds
    while remaining > 0:
        batch = min(BATCH_BUILDS, remaining)
        refs = [daemon.start_build() for _ in range(batch)]
        for ref in refs:
            daemon.complete_build(ref)
        done += batch
        remaining -= batch
        await sidecar.wait_metric("buildkit_sidecar_builds_completed_total", at_least(done))


async def measure(
    *, daemon: InstrumentedBuildkitd, sidecar: SidecarProcess, first: int, total: int, idle_seconds: float
) -> Resources:
    at_start = sidecar.memory()
    t0 = loop_time()
    await feed_builds(daemon=daemon, sidecar=sidecar, builds=first, done_before=0)
    at_first = sidecar.memory()
    await feed_builds(daemon=daemon, sidecar=sidecar, builds=total - first, done_before=first)
    feed_seconds = loop_time() - t0
    await sidecar.wait_status(lambda s: s["active_count"] == 0, what="no active builds")
    at_total = sidecar.memory()

    await asyncio.sleep(SETTLE_SECONDS)
    cpu_before, wall_before = sidecar.cpu_seconds(), loop_time()
    await asyncio.sleep(idle_seconds)
    cpu_after, wall_after = sidecar.cpu_seconds(), loop_time()
    sidecar.check_alive()
    return Resources(
        at_start=at_start,
        first_builds=first,
        at_first=at_first,
        total_builds=total,
        at_total=at_total,
        feed_seconds=feed_seconds,
        idle_seconds=wall_after - wall_before,
        idle_cpu_percent=100.0 * (cpu_after - cpu_before) / (wall_after - wall_before),
    )


def _split(memory: Memory) -> str:
    return f"{memory.anon_mib:.1f} anonymous + {memory.file_mib:.1f} file-backed"


def section(result: Resources) -> Section:
    start, first, total = result.at_start, result.at_first, result.at_total
    growth = total.rss_mib - first.rss_mib
    rows = (
        Row("RSS after start (connected, idle)", f"{start.rss_mib:.1f} MiB"),
        Row(f"RSS after {result.first_builds:,} builds", f"{first.rss_mib:.1f} MiB"),
        Row(
            f"RSS after {result.total_builds:,} builds",
            f"{total.rss_mib:.1f} MiB",
            f"≤ {TARGET_RSS_MIB:g} MiB",
            verdict(total.rss_mib <= TARGET_RSS_MIB),
        ),
        Row(
            f"growth {result.first_builds:,} → {result.total_builds:,} builds",
            f"{growth:+.1f} MiB",
            f"< {TARGET_GROWTH_MIB:g} MiB",
            verdict(growth < TARGET_GROWTH_MIB),
        ),
        Row("RSS after start, split (MiB)", _split(start)),
        Row(f"RSS after {result.total_builds:,} builds, split (MiB)", _split(total)),
        Row("peak RSS (VmHWM)", f"{total.peak_mib:.1f} MiB"),
        Row(
            f"time to run {result.total_builds:,} builds in batches of {BATCH_BUILDS}",
            f"{result.feed_seconds:.1f} s",
        ),
        Row(f"idle CPU over {result.idle_seconds:.0f} s", f"{result.idle_cpu_percent:.2f} % of one core"),
    )
    notes = (
        "Most of the RSS is there before the first build: the interpreter and its imports (gRPC, "
        "protobuf, aiohttp, prometheus-client, structlog). File-backed pages are mostly gRPC's shared "
        "library, shared with any other process mapping it.",
    )
    return Section(
        title="Memory and idle CPU",
        method=(
            f"One sidecar process. Builds run through the fake daemon in batches of {BATCH_BUILDS} "
            "(STARTED for the batch, then each COMPLETE and its duplicate, as buildkitd sends them); each "
            "batch waits until `buildkit_sidecar_builds_completed_total` counted it. VmRSS from "
            "`/proc/<pid>/status` after the first and after the last build was processed; every completed "
            "ref is still tombstoned then (≥ 60 s), so this is the sidecar's worst case. Idle CPU: utime + "
            "stime from `/proc/<pid>/stat` over the idle window that follows (no builds, no HTTP requests, "
            "the 30 s resync still running), as a percentage of one core."
        ),
        rows=rows,
        notes=notes,
    )
