"""The simulator's charts and comparison: what a reader sees, checked as structure, not pixels."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.patches import StepPatch

from autoscaler.simulator.chart import (
    MAX_BINS,
    MAX_RAW_SAMPLES,
    Frame,
    comparison_figure,
    run_figure,
    scale_counts,
    step_bins,
)
from autoscaler.simulator.outcome import Outcome, PoolRun, Run, Series
from tests.simulator.test_simulation import cli

WEEK_SECONDS = 7 * 86_400.0


def outcome(*, scale_events: int = 0, peak_replicas: int = 1) -> Outcome:
    return Outcome(
        builder_seconds=3600.0, lower_bound_builder_seconds=1800.0, efficiency=0.5, slowdown_p50=1.0,
        slowdown_p95=1.5, slowdown_max=2.0, waited_builds=0, wait_p95_seconds=0.0, wait_max_seconds=0.0,
        overloaded_builder_seconds=0.0, starting_builder_seconds=0.0, idle_builder_seconds=1800.0,
        busy_builder_seconds=1800.0, draining_builder_seconds=0.0, scale_events=scale_events,
        peak_replicas=peak_replicas, interrupted_builds=0, failed_builds=0,
    )  # fmt: skip


def pool_run(name: str, *, poll_seconds: float, span_seconds: float, capacity: int = 2) -> PoolRun:
    """A pool that scales at every poll between 10 and 11 replicas (one pod starting each time):
    as many scale events as polls, the worst case for a chart."""
    times, builds, replicas, ready = [], [], [], []
    scales: list[tuple[float, int]] = [(0.0, 10)]
    at, i = 0.0, 0
    while at < span_seconds:
        wanted = 11 if i % 2 else 10
        times.append(at)
        builds.append(15 + i % 7)
        replicas.append(wanted)
        ready.append(10 * capacity)
        if i:
            scales.append((at, wanted))
        at, i = at + poll_seconds, i + 1
    series = Series(times=times, active_builds=builds, replicas=replicas, capacity=ready,
                    scale_times=[t for t, _ in scales[1:]], scale_to=[r for _, r in scales[1:]])  # fmt: skip
    return PoolRun(name=name, arch=name, metrics=outcome(scale_events=len(scales) - 1, peak_replicas=11),
                   slowdowns=[], waits=[], build_seconds=0.0, capacity=capacity, scales=scales, series=series,
                   cut_work_seconds=0.0, ended=0, builds=0)  # fmt: skip


def run_of(*pools: PoolRun, span_seconds: float) -> Run:
    return Run(pools={p.name: p for p in pools}, total=outcome(), span_seconds=span_seconds)


def drawn(figure: Figure) -> Figure:
    """Lay the figure out as savefig does, so tick labels exist."""
    figure.savefig(io.BytesIO(), format="png")
    return figure


def axes(figure: Figure, label: str) -> Axes:
    return next(ax for ax in figure.axes if ax.get_label() == label)


def step(ax: Axes, label_start: str) -> StepPatch:
    return next(p for p in ax.patches if isinstance(p, StepPatch) and p.get_label().startswith(label_start))


@pytest.fixture(scope="module")
def week() -> Figure:
    runs = run_of(pool_run("amd64", poll_seconds=15, span_seconds=WEEK_SECONDS), span_seconds=WEEK_SECONDS)
    return drawn(run_figure(runs, title="a week"))


@pytest.fixture(scope="module")
def hour() -> Figure:
    runs = run_of(pool_run("amd64", poll_seconds=30, span_seconds=3600), span_seconds=3600)
    return drawn(run_figure(runs, title="an hour"))


def test_step_bins_weigh_each_value_by_the_time_it_held() -> None:
    # 2 from 0 to 10, 4 from 10 to 30, 0 after: bin [0, 20) holds 2 then 4 for 10 s each.
    assert ([3.0, 2.0], [4.0, 4.0]) == step_bins([0, 10, 30], [2, 4, 0], [0, 20, 40])


def test_frames_pick_round_bins_and_bin_only_long_runs() -> None:
    day = Frame.of(86_400, samples=2_500)
    assert (600, "10 min", False, 3) == (day.bin_seconds, day.bin_label, day.binned, day.tick_units)
    week = Frame.of(WEEK_SECONDS, samples=55_000)
    assert (3600, "1 h", True, 24) == (week.bin_seconds, week.bin_label, week.binned, week.tick_units)
    assert 168 == len(week.edges) - 1
    assert Frame.of(60, samples=MAX_RAW_SAMPLES + 1).binned


def test_replica_and_build_ticks_are_whole_numbers(hour: Figure, week: Figure) -> None:
    for figure in (hour, week):
        curves = axes(figure, "pool amd64")
        (replicas,) = curves.child_axes
        assert "replicas (× 2 builds each)" == replicas.get_ylabel()
        for ax in (curves, replicas):
            labels = [t.get_text() for t in ax.get_yticklabels()]
            assert len(labels) >= 3
            assert all(label.isdigit() for label in labels), labels


def test_capacity_is_drawn_above_the_builds_and_apart_from_the_dashed_replicas(hour: Figure) -> None:
    curves = axes(hour, "pool amd64")
    builds, capacity, replicas = (step(curves, s) for s in ("active builds", "capacity", "replicas"))
    assert builds.get_zorder() < capacity.get_zorder() < replicas.get_zorder()
    assert "solid" == capacity.get_linestyle()
    assert "solid" != replicas.get_linestyle()  # dashes on top let the capacity line show through
    assert capacity.get_linewidth() > replicas.get_linewidth()
    assert capacity.get_edgecolor() != replicas.get_edgecolor()
    legend = curves.get_legend()
    assert legend is not None
    assert {"active builds", "capacity: ready builders × 2 builds", "replicas (starting pods too)"} == {
        t.get_text() for t in legend.get_texts()
    }


def test_a_short_run_draws_every_sample(hour: Figure) -> None:
    capacity = step(axes(hour, "pool amd64"), "capacity")
    assert 120 == len(capacity.get_data().values)  # one per 30 s poll
    assert "builds" == axes(hour, "pool amd64").get_ylabel()


def test_a_week_of_scale_events_is_counted_per_bin_not_drawn_one_by_one(week: Figure) -> None:
    events = len(range(15, int(WEEK_SECONDS), 15))  # a scale at every poll but the first
    strip = axes(week, "scale events amd64")
    bins = 168
    assert bins <= MAX_BINS
    assert 0 < len(strip.patches) <= 2 * bins  # at most one bar up and one down per bin, not 40,319 markers
    heights = [abs(p.get_height()) for p in strip.patches]
    assert events == sum(heights)
    assert "scales per\n1 h" == strip.get_ylabel()
    curves = axes(week, "pool amd64")
    assert bins == len(step(curves, "capacity").get_data().values)  # binned: one value per hour
    assert "builds (mean per 1 h)" == curves.get_ylabel()
    assert any(p.get_label() == "peak in each 1 h" for p in curves.patches)


def test_scale_counts_split_ups_from_downs_per_bin() -> None:
    pool = pool_run("amd64", poll_seconds=10, span_seconds=60)  # up at 10, 30, 50; down at 20, 40
    assert ([1, 2], [1, 1]) == scale_counts(pool, [0, 30, 60])  # a scale on an edge counts in the later bin


def test_the_comparison_draws_a_and_b_on_the_same_axes_per_pool() -> None:
    a = run_of(pool_run("amd64", poll_seconds=30, span_seconds=3600), pool_run("arm64", poll_seconds=60,
               span_seconds=3600), span_seconds=3600)  # fmt: skip
    b = run_of(pool_run("amd64", poll_seconds=60, span_seconds=3600), span_seconds=3600)
    figure = drawn(comparison_figure(a, b, title="A: a.yaml and B: b.yaml"))
    amd64 = axes(figure, "pool amd64")
    assert {"A: capacity, ready × 2 builds", "B: capacity, ready × 2 builds"} <= {p.get_label() for p in amd64.patches}
    lines = [step(amd64, f"{side}: capacity") for side in "AB"]
    assert lines[0].get_linewidth() > lines[1].get_linewidth()  # A broad underneath, B thin on top
    assert lines[0].get_zorder() <= lines[1].get_zorder()
    strip = axes(figure, "scale events amd64")
    assert {"A", "B"} == {p.get_label() for p in strip.patches}
    arm64 = axes(figure, "pool arm64")  # a pool only A has: A alone
    assert ["A: capacity, ready × 2 builds"] == [p.get_label() for p in arm64.patches if "capacity" in p.get_label()]


# --- through the command --------------------------------------------------------------------------

ONE_POOL = """\
pollIntervalSeconds: 10
pools:
  - {name: amd64, namespace: b, deployment: amd, minReplicas: 1, maxReplicas: 3, targetBuildsPerReplica: 1,
     spareReplicas: %d}
  - {name: arm64, namespace: b, deployment: arm, minReplicas: 1, maxReplicas: 2}
"""


def test_compare_writes_a_comparison_of_a_b_and_b_minus_a(tmp_path: Path) -> None:
    # Two amd64 builds of 100 s, none on arm64 (so its slowdowns are null), under 0 and 2 spare builders.
    trace = tmp_path / "trace.csv"
    trace.write_text("arch,start,duration_seconds\namd64,0,100\namd64,0,100\n")
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(ONE_POOL % 0)
    b.write_text(ONE_POOL % 2)
    code, out, err = cli("simulate", "--config", str(a), "--compare", str(b), "--trace", str(trace),
                         "--routing", "least-connections", "--out", str(tmp_path))  # fmt: skip
    assert (0, "") == (code, err)
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    assert {"a", "b", "b_minus_a"} == set(comparison)
    assert json.loads((tmp_path / "report.json").read_text()) == comparison["a"]
    assert json.loads((tmp_path / "compare-report.json").read_text()) == comparison["b"]
    diff = comparison["b_minus_a"]
    assert {"pools", "total", "baselines"} == set(diff)
    for scope in ("total", "pools/amd64", "pools/arm64", "baselines/static_peak", "baselines/hpa_default",
                  "baselines/hpa_default_random"):  # fmt: skip
        ma, mb, md = (_at(report, scope) for report in (comparison["a"], comparison["b"], diff))
        assert set(ma) == set(md)
        for key, delta in md.items():
            if ma[key] is None or mb[key] is None:
                assert delta is None, (scope, key)
            else:
                assert mb[key] - ma[key] == pytest.approx(delta), (scope, key)
                assert type(mb[key] - ma[key]) is type(delta)
    assert None is diff["pools"]["arm64"]["slowdown_p50"]  # no arm64 build ran: no slowdown to subtract
    # Warm start, one build per builder: A's one idle pod takes both builds at half speed (the pod
    # it adds is ready after they started); B idles with two pods and runs them side by side.
    slowdowns = [comparison[side]["pools"]["amd64"]["slowdown_max"] for side in ("a", "b", "b_minus_a")]
    assert [2.0, 1.0, -1.0] == slowdowns
    for name in ("comparison.json", "comparison.png", "compare-report.json", "compare-chart.png", "chart.png"):
        assert (tmp_path / name).exists()
        assert f"{tmp_path / name}" in out
    assert (860, 1200) == imread(tmp_path / "comparison.png").shape[:2]  # two pools


def _at(report: dict[str, dict[str, object]], scope: str) -> dict[str, float | int | None]:
    value: object = report
    for part in scope.split("/"):
        assert isinstance(value, dict)
        value = value[part]
    assert isinstance(value, dict)
    return value
