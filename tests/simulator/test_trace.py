"""Traces: validation with line numbers, the sidecar logs' conversion, buildkitd's history export."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from autoscaler.cli import build_parser
from autoscaler.simulator import traces
from autoscaler.simulator.trace import Build, TraceError, from_logs, parse
from fakes.buildkitd import FakeBuildkitd
from sidecar.commands import export_trace
from sidecar.settings import Settings


def errors_of(text: str) -> tuple[str, ...]:
    with pytest.raises(TraceError) as caught:
        parse(text)
    return caught.value.errors


def test_seconds_trace_is_sorted_by_start_and_keeps_every_row() -> None:
    trace = parse("# a comment\narch,start,duration_seconds\namd64,30,10\n\narm64,0.5,20.25\namd64,30,5\n")
    assert [(b.arch, b.start_seconds, b.duration_seconds, b.line) for b in trace.builds] == [
        ("arm64", 0.5, 20.25, 5),
        ("amd64", 30.0, 10.0, 3),
        ("amd64", 30.0, 5.0, 6),
    ]
    assert trace.origin is None
    assert ("amd64", "arm64") == trace.archs


def test_rfc3339_starts_count_from_the_earliest() -> None:
    trace = parse("start,arch,duration_seconds\n2026-03-02T09:00:10Z,amd64,5\n2026-03-02T10:00:00+01:00,amd64,7\n")
    assert [0.0, 10.0] == [b.start_seconds for b in trace.builds]
    assert datetime(2026, 3, 2, 9, 0, tzinfo=UTC) == trace.origin


def test_every_bad_row_is_reported_with_its_line_and_reason() -> None:
    errors = errors_of(
        "arch,start,duration_seconds\n"
        "amd64,0,10\n"
        "AMD 64,1,10\n"
        "amd64,-1,10\n"
        "amd64,2,0\n"
        "amd64,3,abc\n"
        "amd64,4\n"
        "amd64,2026-03-02T09:00:00,10\n"
        "amd64,2026-03-02T09:00:00Z,10\n"
        "amd64,5,nan\n"
    )
    assert (
        "line 3: arch 'AMD 64' is not a Go architecture name such as amd64",
        "line 4: start '-1' is negative",
        "line 5: duration_seconds '0' must be > 0",
        "line 6: duration_seconds 'abc' is not a number",
        "line 7: expected 3 fields, found 2",
        "line 8: start '2026-03-02T09:00:00' is neither seconds nor RFC 3339 with a time zone",
        "line 9: start '2026-03-02T09:00:00Z' is RFC 3339, but earlier rows use seconds",
        "line 10: duration_seconds 'nan' is not a number",
    ) == errors


def test_seconds_after_rfc3339_rows_are_refused() -> None:
    assert ("line 3: start '12' is in seconds, but earlier rows use RFC 3339",) == errors_of(
        "arch,start,duration_seconds\namd64,2026-03-02T09:00:00Z,1\namd64,12,1\n"
    )


def test_a_wrong_header_is_refused() -> None:
    assert ("line 2: the header must name the columns arch,start,duration_seconds, not arch,start,seconds",) == (
        errors_of("# comment\narch,start,seconds\namd64,0,1\n")
    )


def test_an_empty_trace_or_one_without_rows_is_refused() -> None:
    assert ("line 1: empty trace: expected the header arch,start,duration_seconds",) == errors_of("")
    assert ("no builds: the trace has a header but no rows",) == errors_of("arch,start,duration_seconds\n")


def test_bundled_traces_cover_a_day_with_a_long_tail() -> None:
    bundled = traces.bundled()
    assert {"steady-weekday.csv", "bursty-ci-day.csv", "two-arch-migration.csv"} == set(bundled)
    for path in bundled.values():
        trace = parse(path.read_text())
        durations = sorted(b.duration_seconds for b in trace.builds)
        assert 1000 <= len(trace.builds) <= 5000
        assert trace.builds[-1].start_seconds > 0.9 * 86_400  # arrivals all day long
        assert 120 <= durations[len(durations) // 2] <= 600  # median: a few minutes
        assert durations[-1] > 3600  # a tail past an hour
        assert ("amd64", "arm64") == trace.archs


def test_migration_trace_moves_from_amd64_to_arm64() -> None:
    trace = parse(traces.bundled()["two-arch-migration.csv"].read_text())
    morning = [b for b in trace.builds if b.start_seconds < 43_200]
    evening = [b for b in trace.builds if b.start_seconds >= 43_200]

    def share(builds: list[Build]) -> float:
        return sum(1 for b in builds if b.arch == "amd64") / len(builds)

    assert share(morning) > 0.7
    assert share(evening) < 0.6


def test_bursty_trace_has_bursts_of_30_or_more_builds_within_a_minute() -> None:
    trace = parse(traces.bundled()["bursty-ci-day.csv"].read_text())
    starts = [b.start_seconds for b in trace.builds]
    windows = sum(1 for i, s in enumerate(starts) if i + 30 < len(starts) and starts[i + 29] - s <= 60)
    assert windows >= 4


# --- from the sidecar's logs ----------------------------------------------------------------------


def logged(ref: str, *, arch: str = "amd64", started: str = "2026-03-02T09:00:00.5Z", **extra: object) -> str:
    event = {"event": "build_completed", "arch": arch, "ref": ref, "started_at": started,
             "completed_at": "2026-03-02T09:01:00.5Z", "duration_seconds": 60.0, "result": "succeeded",
             "level": "info", "timestamp": "2026-03-02T09:01:00.6Z"}  # fmt: skip
    event.update(extra)
    return json.dumps(event)


def test_from_logs_keeps_every_build_once_and_reports_unusable_lines() -> None:
    lines = [
        "[pod/buildkitd-amd64-1/sidecar] " + logged("a"),
        "2026-03-02T09:01:01Z " + logged("b", arch="arm64", started="2026-03-02T08:59:00Z", result="failed"),
        json.dumps({"event": "build_started", "ref": "c"}),
        "not json at all",
        logged("a"),
        logged("d", started="yesterday"),
    ]
    scan = from_logs([("pod.log", lines)])
    assert [("arm64", "b"), ("amd64", "a")] == [(b.arch, b.ref) for b in scan.builds]
    assert ["pod.log:6: started_at 'yesterday' is not an RFC 3339 time"] == scan.errors
    assert ["pod.log:5: amd64 build a again: counted once, from pod.log:1"] == scan.duplicates
    assert 2 == scan.other_lines


def test_from_logs_uses_completed_at_when_duration_is_missing_and_says_so() -> None:
    scan = from_logs([("x", [logged("a", duration_seconds=None)])])
    assert 60.0 == scan.builds[0].duration_seconds
    assert ["x:1: duration_seconds None is not a number: used completed_at − started_at (60 s)"] == scan.corrected


def test_from_logs_reports_every_corrected_or_dropped_line_with_its_number_and_reason() -> None:
    lines = [
        logged("fine"),
        logged("cached", duration_seconds=0),
        "some other log line",
        logged("negative", duration_seconds=-3),
        logged("tiny", duration_seconds=0.0002),
        logged("fine"),
        logged("backwards", duration_seconds=None, completed_at="2026-03-02T08:59:00Z"),
    ]
    scan = from_logs([("pod.log", lines)])
    assert [
        "pod.log:2: duration_seconds 0 is below the trace's resolution: counted as 0.001 s",
        "pod.log:5: duration_seconds 0.0002 is below the trace's resolution: counted as 0.001 s",
    ] == scan.corrected
    assert [
        "pod.log:4: duration_seconds -3 is negative",
        "pod.log:7: completed_at − started_at (-60.5 s) is negative",
    ] == scan.errors
    assert ["pod.log:6: amd64 build fine again: counted once, from pod.log:1"] == scan.duplicates
    assert [("fine", 60.0), ("cached", 0.001), ("tiny", 0.001)] == [(b.ref, b.duration_seconds) for b in scan.builds]


def cli(*argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(list(argv))
    stdout, stderr = io.StringIO(), io.StringIO()
    return args.handler(args, stdout, stderr), stdout.getvalue(), stderr.getvalue()


def test_trace_command_writes_a_trace_that_validates(tmp_path: Path) -> None:
    log = tmp_path / "sidecar.log"
    log.write_text("\n".join([logged("a"), logged("b", started="2026-03-02T09:00:30Z", duration_seconds=12.5)]))
    out = tmp_path / "trace.csv"
    code, _, err = cli("trace", "--from-logs", str(log), "--out", str(out))
    assert (0, "2 builds written\n") == (code, err)
    assert "arch,start,duration_seconds\namd64,2026-03-02T09:00:00.500000Z,60\namd64,2026-03-02T09:00:30Z,12.5\n" == (
        out.read_text()
    )
    assert [0.0, 29.5] == [b.start_seconds for b in parse(out.read_text()).builds]
    assert (0, f"{out}: 2 builds over 0.0 h: amd64 2\n", "") == cli("trace", "--check", str(out))


def test_trace_command_refuses_unusable_lines_unless_told_to_skip_them(tmp_path: Path) -> None:
    log = tmp_path / "sidecar.log"
    log.write_text("\n".join([logged("a"), logged("b", arch=None)]))
    code, out, err = cli("trace", "--from-logs", str(log))
    assert (1, "") == (code, out)
    assert f"{log}:2: arch None is not a Go architecture name" in err
    code, out, err = cli("trace", "--from-logs", str(log), "--skip-invalid")
    assert 0 == code
    assert 1 == len(parse(out).builds)
    assert "1 builds written (1 lines skipped)" in err


def test_trace_command_reports_corrected_and_repeated_lines_and_still_writes_the_trace(tmp_path: Path) -> None:
    log = tmp_path / "sidecar.log"
    log.write_text("\n".join([logged("a", duration_seconds=0), logged("b"), logged("a", duration_seconds=0)]))
    out = tmp_path / "trace.csv"
    code, _, err = cli("trace", "--from-logs", str(log), "--out", str(out))
    assert 0 == code
    assert [
        f"{log}:1: duration_seconds 0 is below the trace's resolution: counted as 0.001 s",
        f"{log}:3: amd64 build a again: counted once, from {log}:1",
        "1 build_completed line(s) corrected (kept, as each line says)",
        "1 duplicate build_completed line(s) (same arch and ref) counted once",
        "2 builds written",
    ] == err.splitlines()
    assert [0.001, 60.0] == sorted(b.duration_seconds for b in parse(out.read_text()).builds)


# --- from buildkitd's history ---------------------------------------------------------------------


@pytest.mark.looptime(False)
async def test_export_trace_writes_the_completed_builds_buildkitd_keeps(daemon: FakeBuildkitd) -> None:
    started = datetime(2026, 3, 2, 9, 0, tzinfo=UTC).timestamp()
    for offset, seconds in ((10.0, 42.5), (0.0, 300.0)):
        ref = daemon.start_build(created_at=started + offset)
        daemon.complete_build(ref, completed_at=started + offset + seconds)
    daemon.start_build(created_at=started + 20)  # still running: not in the trace
    out = io.StringIO()
    code = await export_trace(
        settings=Settings(buildkit_addr=daemon.address), arch="arm64", out=out, timeout_seconds=10
    )
    assert 0 == code
    assert "arch,start,duration_seconds\narm64,2026-03-02T09:00:00Z,300\narm64,2026-03-02T09:00:10Z,42.5\n" == (
        out.getvalue()
    )
    assert 2 == len(parse(out.getvalue()).builds)


def test_export_trace_help_says_it_is_partial(capsys: pytest.CaptureFixture[str]) -> None:
    from sidecar.main import main as sidecar_main

    with pytest.raises(SystemExit):
        sidecar_main(["export-trace", "--help"])
    assert "PARTIAL" in " ".join(capsys.readouterr().out.split())
