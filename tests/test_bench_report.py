"""BENCHMARKS.md's verdict: every target of every part counts, and nothing unmeasured passes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from bench.assemble import OUT, PARTS, RESULTS, Part, judge, load, main, render
from bench.e2e_section import FAULT_RUNS, FLEET_RUN, Minimums, fault_row, fleet_rows, fresh
from bench.image import copied_sources
from bench.report import MET, MISSED, Fragment, Measured, Row, Section

MEASURED = Measured(commit="abc1234", date="2026-01-01 00:00:00 UTC", machine="test", command="make test")


def fragment(part: str, *rows: Row) -> Fragment:
    section = Section(title=f"{part} section", method="", rows=rows)
    return Fragment(part=part, title=part.title(), intro="", measured=MEASURED, sections=(section,))


def all_parts_met() -> dict[str, Fragment]:
    return {p.name: fragment(p.name, Row("latency", "1 ms", "≤ 2 ms", MET)) for p in PARTS}


def test_a_target_without_a_result_is_missed_not_passed() -> None:
    parts = (Part("a", "make a"),)
    verdict = judge({"a": fragment("a", Row("latency", "n/a", "≤ 2 ms", None))}, parts)
    assert 1 == len(verdict.misses)
    assert "1 of 1 targets missed" == verdict.headline


def test_rows_without_a_target_are_context_and_not_counted() -> None:
    parts = (Part("a", "make a"),)
    verdict = judge({"a": fragment("a", Row("load", "0.1 cores"), Row("latency", "1 ms", "≤ 2 ms", MET))}, parts)
    assert verdict.ok
    assert 1 == verdict.targets


def test_a_part_without_results_is_a_missed_target() -> None:
    parts = (Part("a", "make a"), Part("b", "make b"))
    verdict = judge({"a": fragment("a", Row("latency", "1 ms", "≤ 2 ms", MET))}, parts)
    assert ["b: no results (run `make b`)"] == [str(miss) for miss in verdict.misses]
    assert 2 == verdict.targets


def test_one_verdict_counts_the_targets_of_every_part() -> None:
    fragments = all_parts_met()
    fragments["simulator"] = fragment(
        "simulator", Row("efficiency", "0.451", "≥ 0.7", MISSED), Row("interrupted builds", "0", "0", MET)
    )
    verdict = judge(fragments)
    assert len(PARTS) + 1 == verdict.targets
    assert ["3. simulator section: efficiency ≥ 0.7 (measured 0.451)"] == [str(m) for m in verdict.misses]


def write(results: Path, fragments: dict[str, Fragment]) -> None:
    for made in fragments.values():
        made.write(results)


def test_assemble_exits_zero_when_every_target_is_met(tmp_path: Path) -> None:
    write(tmp_path / "results", all_parts_met())
    out = tmp_path / "BENCHMARKS.md"
    assert 0 == main(["--results", str(tmp_path / "results"), "--out", str(out)])
    assert f"**Verdict: all {len(PARTS)} targets met.**" in out.read_text()


def test_assemble_exits_non_zero_and_says_so_when_a_target_is_missed(tmp_path: Path) -> None:
    fragments = all_parts_met()
    fragments["soak"] = fragment("soak", Row("builds lost", "1", "0", MISSED))
    write(tmp_path / "results", fragments)
    out = tmp_path / "BENCHMARKS.md"
    assert 1 == main(["--results", str(tmp_path / "results"), "--out", str(out)])
    text = out.read_text()
    assert f"**Verdict: 1 of {len(PARTS)} targets missed.** Missed:" in text
    assert "builds lost 0 (measured 1)" in text
    assert 0 == main(["--results", str(tmp_path / "results"), "--out", str(out), "--exit-zero"])


def test_assemble_exits_non_zero_when_a_part_has_no_fragment(tmp_path: Path) -> None:
    fragments = all_parts_met()
    del fragments["e2e"]
    write(tmp_path / "results", fragments)
    assert 1 == main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "BENCHMARKS.md")])


def test_a_fragment_reads_back_as_written(tmp_path: Path) -> None:
    made = fragment("sidecar", Row("p99", "1 ms", "≤ 2 ms", MET), Row("load", "0.1"))
    assert made == Fragment.from_json(made.write(tmp_path).read_text())


def test_an_e2e_report_without_a_figure_misses_its_target() -> None:
    entry = {"builds_started": 5, "builds_completed": 5, "sends_to_dead_pods": 0, "failures": []}
    rows = {row.measure: row for row in fleet_rows(entry, minimums=Minimums(scale_downs=500))}
    assert rows["builds **lost**"].missed
    assert not rows["builds started / completed"].missed
    assert fault_row(FAULT_RUNS[0], None).missed


def test_the_soak_minimum_is_missed_when_the_run_fell_short() -> None:
    entry = {"scale_downs": 499}
    rows = {row.measure: row for row in fleet_rows(entry, minimums=Minimums(scale_downs=500))}
    assert "≥ 500" == rows["scale-downs"].target
    assert rows["scale-downs"].missed


def test_the_tails_row_shows_only_for_a_run_that_counted_them() -> None:
    tails = "deliberate tails (a long build onto every builder)"
    counted = {row.measure: row for row in fleet_rows({"tails": 17}, minimums=Minimums())}
    assert "17" == counted[tails].value
    assert tails not in {row.measure for row in fleet_rows({}, minimums=Minimums())}


def test_report_entries_from_before_the_run_are_left_out() -> None:
    report = {
        FLEET_RUN: {"at": "2026-01-01T10:00:00+00:00"},
        "fault_api": {"at": "2026-01-01T12:00:00+00:00"},
    }
    kept, stale = fresh(report, since=datetime(2026, 1, 1, 11, tzinfo=UTC))
    assert ["fault_api"] == list(kept)
    assert 1 == len(stale)


def test_benchmarks_md_is_exactly_what_the_committed_fragments_assemble_to() -> None:
    """A hand edit of BENCHMARKS.md (or a fragment committed without reassembling) fails here."""
    assert render(load(RESULTS)) == OUT.read_text(encoding="utf-8")


def test_issue_11_router_targets_are_missed_when_not_measured_behind_the_router() -> None:
    from autoscaler.config import load_config
    from autoscaler.simulator.model import FleetModel
    from autoscaler.simulator.runs import simulate
    from autoscaler.simulator.trace import Build, Trace
    from bench.simulate_bench import SHIPPED, router_targets

    config = load_config(SHIPPED.read_text(encoding="utf-8"))
    absent = router_targets(config, None, [])
    assert ["slowdown p95", "builder-hours", "interrupted builds", "failed builds"] == [r.measure for r in absent.rows]
    assert all(row.missed for row in absent.rows)
    trace = Trace(builds=(Build(arch="amd64", start_seconds=0.0, duration_seconds=60.0),))
    behind_random = router_targets(config, simulate(config, trace, model=FleetModel(routing="random")), [])
    assert all(row.missed for row in behind_random.rows)
    assert "not measured: routing random" == behind_random.rows[0].value


def test_the_benchmarked_sidecar_is_installed_from_what_the_image_copies() -> None:
    """bench/image.py installs the files the Dockerfile's build stage copies, read from the Dockerfile."""
    assert ["pyproject.toml", "README.md", "LICENSE", "sidecar", "autoscaler", "common"] == copied_sources()
