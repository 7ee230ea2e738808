"""The property the project exists for, end to end: scaling down never kills a running build.

A fleet of two pools on loopback (see :mod:`tests.e2e.harness`), bursts of builds through the
real router of each pool (HAProxy running the shipped config, fed by the sidecars' agents) and
deliberate long tails straight onto every builder, the real autoscalers scaling it up and down for
minutes. ``E2E_MIN_SCALE_DOWNS`` and ``E2E_MAX_SECONDS`` lengthen the run (``make soak``).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.e2e.fleet import IDENTITIES, TAILED_LOAD
from tests.e2e.harness import REPORT, Harness, write_report

pytestmark = [pytest.mark.looptime(False), pytest.mark.subprocess, pytest.mark.e2e]

MIN_SCALE_DOWNS = int(os.environ.get("E2E_MIN_SCALE_DOWNS", "50"))
MIN_BUSY_SCALE_DOWNS = int(os.environ.get("E2E_MIN_BUSY_SCALE_DOWNS", "10"))
MIN_CYCLES = int(os.environ.get("E2E_MIN_CYCLES", "500"))
"""Cycles of the leading autoscaler alone (the follower cycles too, and is counted apart)."""
MAX_SECONDS = float(os.environ.get("E2E_MAX_SECONDS", "600"))
"""The run ends as soon as every minimum is reached, and fails if that takes longer than this. Measured:
156–165 s, on a quiet machine and beside two CPU-bound processes; the leader's cycles are the last
minimum reached. Busy scale-downs come from :data:`~tests.e2e.fleet.TAILED_LOAD`'s tails (17–25 a run)."""


async def test_no_build_is_lost_while_the_fleet_scales_up_and_down(tmp_path: Path) -> None:
    async with Harness(workdir=tmp_path, route="router", load=TAILED_LOAD) as fleet:
        loop = asyncio.get_running_loop()
        began = loop.time()
        fleet.load_on.set()

        async def leader_cycles() -> int:
            counts = [await fleet.autoscaler_cycles(i) or 0 for i in IDENTITIES]
            return max(counts)

        while True:
            await asyncio.sleep(5)
            f = fleet.figures
            cycles = await leader_cycles()
            done = (
                f.scale_downs >= MIN_SCALE_DOWNS
                and f.scale_downs_with_busy_victims >= MIN_BUSY_SCALE_DOWNS
                and cycles >= MIN_CYCLES
            )
            if done or loop.time() - began > MAX_SECONDS or f.failures:
                break
        figures = await fleet.finish()
        seconds = loop.time() - began
        write_report(REPORT, "no_build_lost", figures, seconds=seconds)

    assert [] == figures.failures
    assert 0 == figures.builds_lost
    assert figures.builds_started == figures.builds_completed
    assert figures.scale_downs >= MIN_SCALE_DOWNS, figures
    assert figures.scale_downs_with_busy_victims >= MIN_BUSY_SCALE_DOWNS, figures
    assert max(figures.cycles.values()) >= MIN_CYCLES, figures
    assert 0 == figures.sends_to_dead_pods
    assert figures.builds_sent_during_deregistration > 0, "the deregistration window was never exercised"
