"""The simulator: hand-computed runs, drain deadlines, invariants on random traces, the CLI."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from matplotlib.image import imread

from autoscaler.cli import main
from autoscaler.config import Config, load_config
from autoscaler.simulator.model import ROUTINGS, FleetModel, SimulationError
from autoscaler.simulator.outcome import Outcome
from autoscaler.simulator.runs import check_invariants, run, simulate
from autoscaler.simulator.trace import Build, Trace, parse

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pool_config(
    *,
    poll: float = 10,
    min_replicas: int = 1,
    max_replicas: int = 3,
    target: int = 1,
    spare: int = 0,
    down_window: float = 0,
) -> Config:
    return load_config(
        textwrap.dedent(
            f"""
            pollIntervalSeconds: {poll}
            pools:
              - name: amd64
                namespace: buildkit
                deployment: buildkitd-amd64
                minReplicas: {min_replicas}
                maxReplicas: {max_replicas}
                targetBuildsPerReplica: {target}
                spareReplicas: {spare}
                scaleDown:
                  stabilizationWindowSeconds: {down_window}
                  policies: [{{type: Pods, value: 10, periodSeconds: 15}}]
            """
        )
    )


def trace_of(*builds: tuple[float, float], arch: str = "amd64") -> Trace:
    return Trace(builds=tuple(Build(arch=arch, start_seconds=s, duration_seconds=d) for s, d in builds))


def test_hand_computed_cold_start_run_has_exact_cost_slowdown_waits_and_scales() -> None:
    # Capacity 1, one pod created at 0 and ready at 30. A (0, 100 s) and B (5, 50 s) wait for
    # it (30 s and 25 s), then share it at half speed: B ends at 130, A alone at full speed at
    # 180. The poll at 30 sees 2 builds: scale 1 → 2 (pod 2 ready at 60, never used). The poll
    # at 130 sees 1 build: scale 2 → 1, the idle pod 2 goes (its cost 30 → 130).
    run_ = run(
        pool_config(),
        trace_of((0, 100), (5, 50)),
        model=FleetModel(routing="random", startup_seconds=30, warm_start=False),
    )
    m = run_.pools["amd64"].metrics
    assert 180 == run_.span_seconds
    assert (
        Outcome(
            builder_seconds=180 + 100,
            lower_bound_builder_seconds=150,
            efficiency=150 / 280,
            slowdown_p50=1.8,
            slowdown_p95=2.5,
            slowdown_max=2.5,
            waited_builds=2,
            wait_p95_seconds=30,
            wait_max_seconds=30,
            overloaded_builder_seconds=100,
            # Pod 1: starting 0–30, busy 30–180; pod 2: starting 30–60, idle 60–130.
            starting_builder_seconds=30 + 30,
            idle_builder_seconds=70,
            busy_builder_seconds=150,
            draining_builder_seconds=0,
            scale_events=2,
            peak_replicas=2,
            interrupted_builds=0,
            failed_builds=0,
        )
        == m
    )
    assert [(0, 1), (30, 2), (130, 1)] == run_.pools["amd64"].scales
    assert m == run_.total


def test_warm_fleet_takes_the_first_build_at_once() -> None:
    run_ = run(pool_config(), trace_of((0, 100)), model=FleetModel())
    m = run_.total
    assert (0, 1.0, 100.0, 0) == (m.waited_builds, m.slowdown_max, m.builder_seconds, m.scale_events)


def drain_scenario(long_build_seconds: float) -> Outcome:
    """Capacity 2, max 2 pods, drain deadline 100 s. A (1, 1000 s) and three 10 s builds share pod 1
    at half speed until 22; the poll at 10 adds pod 2 (ready at once), where E (11) goes. The poll
    at 30 sees 2 builds, needs 1 pod and removes the most recently ready: pod 2, with E on it.
    Its drain deadline is 30 + 100 = 130; E ends at 11 + its duration."""
    config = pool_config(max_replicas=2, target=2)
    trace = trace_of((1, 1000), (2, 10), (2, 10), (2, 10), (11, long_build_seconds))
    model = FleetModel(routing="least-connections", startup_seconds=0, drain_timeout_seconds=100)
    result = run(config, trace, model=model)
    assert [] == check_invariants(config, result)
    return result.total


def test_a_build_ending_exactly_at_the_drain_deadline_is_not_interrupted() -> None:
    m = drain_scenario(119)
    assert 0 == m.interrupted_builds
    assert 1011 + (130 - 10) == m.builder_seconds  # pod 2 gone when E ends, at the deadline
    assert (0, 100) == (m.starting_builder_seconds, m.draining_builder_seconds)  # pod 2 drains 30 → 130


def test_a_drain_that_would_exceed_its_deadline_interrupts_at_the_deadline() -> None:
    m = drain_scenario(119.5)
    assert 1 == m.interrupted_builds
    assert 1011 + (130 - 10) == m.builder_seconds  # pod 2 deleted at the deadline, not at 130.5
    assert 100 == m.draining_builder_seconds
    assert 2.0 == m.slowdown_max  # the 10 s builds: 20 s at half speed


def test_idle_pods_are_removed_before_busy_ones() -> None:
    # B (0, 5 s) is alone on pod 1 once; scale-down later never picks the pod that runs A.
    config = pool_config(max_replicas=3, target=1)
    trace = trace_of((0, 3000), (0, 20), (0, 20))
    result = run(config, trace, model=FleetModel(routing="least-connections", drain_timeout_seconds=10))
    assert 0 == result.total.interrupted_builds
    assert [] == check_invariants(config, result)


def test_admission_makes_a_build_wait_for_a_free_slot_instead_of_sharing() -> None:
    config = pool_config(max_replicas=1, spare=1)
    trace = trace_of((0, 100), (10, 50))
    # Sharing: from 10 s both run at half speed; the second ends at 110, the first at 150.
    shared = run(config, trace, model=FleetModel(routing="random", startup_seconds=0)).pools["amd64"]
    assert [150 / 100, 100 / 50] == shared.slowdowns
    assert 100 == shared.metrics.overloaded_builder_seconds
    # Admission: the second waits for the first (90 s), then runs alone: ends at 150.
    gated = run(config, trace, model=FleetModel(routing="random", startup_seconds=0, admission=True)).pools["amd64"]
    assert [1.0, 140 / 50] == gated.slowdowns
    assert [90.0] == gated.waits
    assert 0 == gated.metrics.overloaded_builder_seconds


def test_admission_without_a_spare_builder_does_not_grow_for_a_waiting_build() -> None:
    # The controller sees a full builder only (the waiting build is invisible): room for 3
    # builders, yet the second build waits for the first to end.
    config = pool_config(max_replicas=3, target=1, spare=0)
    model = FleetModel(routing="random", admission=True)
    gated = run(config, trace_of((0, 100), (10, 50)), model=model).pools["amd64"]
    assert [90.0] == gated.waits
    assert 1 == gated.metrics.peak_replicas


def test_a_trace_arch_without_a_pool_is_refused() -> None:
    with pytest.raises(SimulationError, match="arm64, which no pool serves"):
        run(pool_config(), trace_of((0, 10), arch="arm64"), model=FleetModel())


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Config, Trace, FleetModel]:
    min_replicas = draw(st.integers(0, 2))
    admission = draw(st.booleans())
    # Waiting builds are invisible to the controller: admission needs a spare builder to grow.
    spare = draw(st.integers(1 if min_replicas == 0 or admission else 0, 2))
    config = pool_config(
        poll=draw(st.sampled_from([1, 5, 15])),
        min_replicas=min_replicas,
        max_replicas=draw(st.integers(max(1, min_replicas), 5)),
        target=draw(st.integers(1, 3)),
        spare=spare,
        down_window=draw(st.sampled_from([0, 60, 300])),
    )
    builds = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["amd64"]),
                st.floats(0, 2000, allow_nan=False),
                st.floats(0.5, 4000, allow_nan=False),
            ),
            min_size=1,
            max_size=40,
        )
    )
    trace = Trace(
        builds=tuple(
            sorted(
                (Build(arch=a, start_seconds=s, duration_seconds=d) for a, s, d in builds),
                key=lambda b: b.start_seconds,
            )
        )
    )
    model = FleetModel(
        routing=draw(st.sampled_from(["random", "least-connections"] if admission else list(ROUTINGS))),
        routers=draw(st.integers(1, 3)),
        agent_interval_seconds=draw(st.sampled_from([0.5, 1.0, 5.0])),
        router_queue_seconds=draw(st.sampled_from([0.0, 0.0, 10.0, 30.0])),
        startup_seconds=draw(st.sampled_from([0.0, 30.0, 60.0])),
        drain_timeout_seconds=draw(st.sampled_from([10.0, 600.0, 3300.0])),
        warm_start=draw(st.booleans()),
        seed=draw(st.integers(0, 5)),
        admission=admission,
    )
    return config, trace, model


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_traces_never_break_the_invariants(scenario: tuple[Config, Trace, FleetModel]) -> None:
    config, trace, model = scenario
    for variant in ("config", "hpa_default", "static_peak"):
        result = run(config, trace, model=model, variant=variant)  # type: ignore[arg-type]
        assert [] == check_invariants(config, result) if variant != "static_peak" else True
        m = result.total
        assert m.efficiency is not None or m.failed_builds == len(trace.builds)  # no cost only if nothing ran
        assert m.interrupted_builds <= len(trace.builds)
        assert m.slowdown_max is None or m.slowdown_max >= 1 - 1e-9
        assert 0 <= m.overloaded_builder_seconds <= m.builder_seconds + 1e-6
        if model.admission:
            assert 0 == m.overloaded_builder_seconds
        if model.routing == "router":
            # A build waits in its router at most the queue's time, and never past the client's deadline.
            limit = min(model.router_queue_seconds, model.client_deadline_seconds)
            assert m.wait_max_seconds <= limit + 1e-9
        else:
            assert 0 == m.failed_builds  # a build waits for a ready builder
        assert m.interrupted_builds + m.failed_builds <= len(trace.builds)
        assert len(trace.builds) == result.pools["amd64"].ended


# --- the command ----------------------------------------------------------------------------------

CONFIG = """\
pollIntervalSeconds: 5
pools:
  - {name: amd64, namespace: b, deployment: amd, maxReplicas: 6, spareReplicas: %d}
  - {name: arm64, namespace: b, deployment: arm, maxReplicas: 4, spareReplicas: %d}
"""


@pytest.fixture
def small_trace(tmp_path: Path) -> Path:
    rows = ["arch,start,duration_seconds"]
    for i in range(60):
        rows.append(f"{'amd64' if i % 3 else 'arm64'},{i * 37.5},{120 + (i * 53) % 900}")
    rows += [f"amd64,{1000 + i},{300}" for i in range(12)]  # a small burst
    path = tmp_path / "trace.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def cli(*argv: str) -> tuple[int, str, str]:
    from autoscaler.cli import build_parser

    args = build_parser().parse_args(list(argv))
    stdout, stderr = io.StringIO(), io.StringIO()
    code = args.handler(args, stdout, stderr)
    return code, stdout.getvalue(), stderr.getvalue()


def test_simulate_writes_the_report_layout_and_prints_the_table(tmp_path: Path, small_trace: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG % (1, 1))
    code, out, err = cli("simulate", "--config", str(config), "--trace", str(small_trace), "--out", str(tmp_path))
    assert (0, "") == (code, err)
    report = json.loads((tmp_path / "report.json").read_text())
    keys = {
        "builder_seconds", "lower_bound_builder_seconds", "efficiency", "slowdown_p50", "slowdown_p95",
        "slowdown_max", "waited_builds", "wait_p95_seconds", "wait_max_seconds", "overloaded_builder_seconds",
        "starting_builder_seconds", "idle_builder_seconds", "busy_builder_seconds", "draining_builder_seconds",
        "scale_events", "peak_replicas", "interrupted_builds", "failed_builds",
    }  # fmt: skip
    assert {"routing", "pools", "total", "baselines"} == set(report)
    assert "router" == report["routing"]  # the default: what deploy/ ships
    assert {"amd64", "arm64"} == set(report["pools"])
    assert {"static_peak", "hpa_default", "hpa_default_random"} == set(report["baselines"])
    for metrics in (*report["pools"].values(), report["total"], *report["baselines"].values()):
        assert keys == set(metrics)
    assert out.startswith("72 builds over ")
    assert "; routing router (2 routers, agent every 1 s, no queue), startup 60 s" in out.splitlines()[0]
    header = out.splitlines()[3]
    assert ["metric", "amd64", "arm64", "total", "static_peak", "hpa_default", "hpa_default_random"] == header.split()
    assert any(line.split()[:2] == ["failed", "builds"] for line in out.splitlines())
    assert f"chart: {tmp_path / 'chart.png'}" in out


def test_compare_prints_both_configs_and_the_difference(tmp_path: Path, small_trace: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(CONFIG % (1, 1))
    b.write_text(CONFIG % (3, 1))
    code, out, _ = cli("simulate", "--config", str(a), "--trace", str(small_trace), "--out", str(tmp_path),
                       "--compare", str(b))  # fmt: skip
    assert 0 == code
    assert "change (B − A)" in out
    report_a = json.loads((tmp_path / "report.json").read_text())
    report_b = json.loads((tmp_path / "compare-report.json").read_text())
    cost_a, cost_b = report_a["total"]["builder_seconds"], report_b["total"]["builder_seconds"]
    assert cost_b > cost_a  # two more warm amd64 builders cost more
    comparison = out[out.index("change (B − A)") :]  # its first section is the total
    line = next(row for row in comparison.splitlines() if row.startswith("builder-seconds"))
    assert f"+{cost_b - cost_a:,.0f} (+{(cost_b - cost_a) / cost_a:.1%})" in line
    assert (tmp_path / "compare-chart.png").exists()


def test_the_chart_is_a_non_trivial_png(tmp_path: Path, small_trace: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG % (1, 1))
    assert 0 == cli("simulate", "--config", str(config), "--trace", str(small_trace), "--out", str(tmp_path))[0]
    data = (tmp_path / "chart.png").read_bytes()
    assert PNG_SIGNATURE == data[:8]
    assert len(data) > 20_000
    pixels = imread(tmp_path / "chart.png")
    assert (860, 1200) == pixels.shape[:2]  # two pools: 12 × (2 × (3 + 1) + 0.6) inches at 100 dpi
    assert float(np.std(pixels[..., :3])) > 0.05  # lines and text, not a blank canvas


def test_simulate_reports_invalid_traces_by_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG % (1, 1))
    bad = tmp_path / "bad.csv"
    bad.write_text("arch,start,duration_seconds\namd64,0,10\namd64,x,10\n")
    code, _, err = cli("simulate", "--config", str(config), "--trace", str(bad), "--out", str(tmp_path))
    assert 1 == code
    assert "line 3: start 'x' is neither seconds nor RFC 3339" in err


def test_simulate_runs_a_bundled_trace_by_name_with_the_shipped_config(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[2] / "deploy" / "config.yaml"
    code, out, _ = cli("simulate", "--config", str(shipped), "--trace", "bursty-ci-day", "--out", str(tmp_path))
    assert 0 == code
    assert "builds over 24" in out


def test_an_unknown_trace_name_lists_the_bundled_traces_and_suggests_the_closest(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG % (1, 1))
    code, _, err = cli("simulate", "--config", str(config), "--trace", "bursty-ci", "--out", str(tmp_path))
    assert 1 == code
    assert (
        "bursty-ci: no such file, and no bundled trace of that name "
        "(bundled: bursty-ci-day, steady-weekday, two-arch-migration); did you mean bursty-ci-day?\n"
    ) == err
    code, _, err = cli("trace", "--check", "nothing-like-it")
    assert 1 == code
    assert "no bundled trace of that name (bundled: bursty-ci-day, steady-weekday, two-arch-migration)\n" in err
    assert "did you mean" not in err


def test_a_bundled_trace_is_found_with_its_csv_suffix_too() -> None:
    code, out, _ = cli("trace", "--check", "steady-weekday.csv")
    assert 0 == code
    assert out.startswith("steady-weekday.csv: ")


@pytest.mark.looptime(False)
def test_simulate_command_entry_point_exits_zero(tmp_path: Path, small_trace: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG % (0, 1))
    assert 0 == main(["simulate", "--config", str(config), "--trace", str(small_trace), "--out", str(tmp_path)])


def test_simulate_is_deterministic(small_trace: Path) -> None:
    config = load_config(CONFIG % (1, 1))
    trace = parse(small_trace.read_text())
    first = simulate(config, trace, model=FleetModel(seed=3)).as_dict()
    assert first == simulate(config, trace, model=FleetModel(seed=3)).as_dict()
