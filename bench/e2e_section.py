"""The end-to-end runs' parts of BENCHMARKS.md, written from the report the e2e tests leave.

Every test under ``tests/e2e`` merges its figures into ``out/e2e-report.json`` (one entry per
test, each stamped with when it ended). After a run, ``make e2e`` and ``make soak`` turn that
report into the ``e2e`` or ``soak`` fragment (:mod:`bench.assemble`)::

    python -m bench.e2e_section out/e2e-report.json --part e2e|soak --pytest-status N \\
        [--since 2026-11-28T19:00:00Z] [--min-scale-downs N --min-busy-scale-downs N --min-cycles N] \\
        [--results bench/results]

Nothing is assumed: a figure the report lacks, or an entry older than ``--since`` (left by an
earlier run), is shown as not measured, and a target that needs it is missed. The exit status
is 1 when a target of the fragment is missed (the fragment is written all the same).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.assemble import render_fragment
from bench.report import Fragment, Machine, Measured, Row, Section, code_version, utc, verdict

FLEET_RUN = "no_build_lost"
"""The report's entry for ``tests/e2e/test_no_build_lost.py`` (the soak runs the same test, longer)."""

NOT_MEASURED = "not in the report"


@dataclass(frozen=True, slots=True)
class FaultRun:
    key: str
    """The test's entry in the report."""
    fault: str
    outcome: str
    """What the test asserts beyond the whole-run checks."""


FAULT_RUNS = (
    FaultRun(
        "fault_sidecar_unreachable",
        "sidecar unreachable",
        "autoscaler holds scale-down of that pool only (the other pool scales), marks the pod do-not-disrupt; "
        "resumes after",
    ),
    FaultRun(
        "fault_sidecar_sigterm",
        "sidecar SIGTERM",
        "1st SIGTERM: not ready, keeps serving until the build ends, exit 0; 2nd: exit 1 at once, build completes "
        "in buildkitd",
    ),
    FaultRun(
        "fault_buildkitd",
        "buildkitd",
        "stream dropped: resync, build still seen; restarted: active_count null, scale-down held; gone for good: "
        "drain releases `buildkitd_gone`",
    ),
    FaultRun(
        "fault_api",
        "API",
        "retried next cycle; every scale PATCH carries its resourceVersion, no two applied from the same view; "
        "no double scaling",
    ),
    FaultRun(
        "fault_leader_killed",
        "leader killed",
        "SIGKILL right after a leader write; the other takes the Lease ≥ lease duration after the last renewal "
        "(API arrival times and the Lease's renewTime/acquireTime), ≤ duration + 2 retry periods + 1 s; no write "
        "from a non-holder",
    ),
    FaultRun(
        "fault_configmap",
        "ConfigMap",
        "garbage / out-of-range / unknown key / duplicated (typo'd) pool: refused, InvalidConfig Event naming the "
        "field, last good config kept (still scales); fixed edit applied",
    ),
)
"""The fault tests (``tests/e2e/test_faults.py``), in the order the file shows them."""

FLEET = (
    "One test process plays the cluster on loopback with the real programs: fake buildkitd gRPC servers, each "
    "behind a real `buildkit-sidecar` subprocess on its own address 127.0.x.y, in two pools (amd64 max 5, arm64 "
    "max 4); the fake Kubernetes API (kmock + FakeCluster) with a ReplicaSet/kubelet played faithfully (victims: "
    "not ready, then lowest pod-deletion-cost; preStop = the sidecar's `/drain`, buildkitd killed only after it "
    "answered); two real `buildkit-autoscaler run` processes competing for the Lease; per pool the real HAProxy "
    "running the shipped config (agent interval 1 s, as shipped) over a DNS server listing the Ready pods, clients "
    "sending mTLS builds through it (the fault tests: a least-connections load balancer that keeps sending to "
    "a pod for 1 s after it stops being ready). The load: seeded bursts of builds, plus in the scaling run "
    "deliberate long tails (when one build on each builder in service would leave the pool more builders than "
    "it needs, a 6–9 s build goes straight onto each and the bursts pause 5 s: the scale-down that follows "
    "takes a builder running a build). Compressed time: poll 0.3 s, "
    "scale-down window 1.2 s, drain-min 1.8 s, builds 0.3–9 s. The harness's whole-run checks (broken "
    "guarantees): no build lost, no pod killed with a running build or before its drain answered, no send to a "
    "killed pod, replicas within [min, max], every write from the Lease holder of the moment."
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Minimums:
    """What a run must reach before it ends (the soak's ``E2E_MIN_*``); None: no target shown."""

    scale_downs: int | None = None
    busy_scale_downs: int | None = None
    cycles: int | None = None
    """Of the busier autoscaler (the leader's, mostly)."""


def _judged(ok: bool | None) -> str | None:
    """A verdict, or none (a miss) when a figure it needs was not measured."""
    return None if ok is None else verdict(ok)


def _count(value: Any) -> str:
    return NOT_MEASURED if value is None else f"{value:,}"


def _ints(entry: Mapping[str, Any], *keys: str) -> list[int] | None:
    """The figures, or None if the report lacks any of them."""
    values = [entry.get(key) for key in keys]
    return [int(v) for v in values if v is not None] if None not in values else None


def _at_least(value: int | None, minimum: int | None, *, of: str = "") -> tuple[str, str | None]:
    """The target and result of a run's minimum, or neither when no minimum is set."""
    if minimum is None:
        return "", None
    return f"≥ {minimum:,}" + (f" ({of})" if of else ""), _judged(None if value is None else value >= minimum)


def fleet_rows(entry: Mapping[str, Any], minimums: Minimums) -> list[Row]:
    """The fleet run's figures (``tests/e2e/test_no_build_lost.py``)."""
    seconds = entry.get("seconds")
    cycles: dict[str, int] | None = entry.get("cycles")
    busiest = max(cycles.values()) if cycles else None
    cycles_text = (
        NOT_MEASURED
        if not cycles
        else f"{sum(cycles.values()):,} ({', '.join(f'{k}: {v:,}' for k, v in sorted(cycles.items()))})"
    )
    builds = _ints(entry, "builds_started", "builds_completed")
    lost = entry.get("builds_lost")
    deregistration = entry.get("builds_sent_during_deregistration")
    downs = entry.get("scale_downs")
    busy = entry.get("scale_downs_with_busy_victims")
    busy_victims = entry.get("busy_victims")
    pods = _ints(entry, "pods_started", "pods_deleted")
    drains: dict[str, int] | None = entry.get("drains")
    longest = entry.get("drain_seconds_max")
    dead = entry.get("sends_to_dead_pods")
    failures: list[str] | None = entry.get("failures")
    return [
        Row("run length (real time)", NOT_MEASURED if seconds is None else f"{seconds:,.1f} s"),
        Row("controller cycles", cycles_text, *_at_least(busiest, minimums.cycles, of="the busier autoscaler's")),
        Row(
            "builds started / completed",
            NOT_MEASURED if builds is None else f"{builds[0]:,} / {builds[1]:,}",
            "all complete",
            _judged(None if builds is None else builds[0] == builds[1]),
        ),
        Row("builds **lost**", _count(lost), "0", _judged(None if lost is None else lost == 0)),
        Row(
            "builds sent during a deregistration window",
            _count(deregistration),
            "> 0 (the window the drain covers was exercised)",
            _judged(None if deregistration is None else deregistration > 0),
        ),
        Row("scale-ups", _count(entry.get("scale_ups"))),
        Row("scale-downs", _count(downs), *_at_least(downs, minimums.scale_downs)),
        Row(
            "scale-downs whose victims had running builds",
            _count(busy) + ("" if busy_victims is None else f" ({busy_victims:,} busy victims)"),
            *_at_least(busy, minimums.busy_scale_downs),
        ),
        *(
            [Row("deliberate tails (a long build onto every builder)", _count(entry["tails"]))]
            if "tails" in entry
            else []
        ),
        Row("pods started / deleted", NOT_MEASURED if pods is None else f"{pods[0]:,} / {pods[1]:,}"),
        Row(
            "drains (by reason)",
            NOT_MEASURED
            if drains is None
            else "; ".join(f"{k}: {v:,}" for k, v in sorted(drains.items()))
            + ("" if longest is None else f"; longest {longest:.1f} s"),
        ),
        Row("sends to killed pods", _count(dead), "0", _judged(None if dead is None else dead == 0)),
        Row("scale PATCHes rejected", _count(entry.get("scale_patches_rejected"))),
        Row(
            "guarantees broken (the harness's whole-run checks)",
            NOT_MEASURED if failures is None else (f"{len(failures)}" if failures else "none"),
            "none",
            _judged(None if failures is None else not failures),
        ),
    ]


def fault_row(run: FaultRun, entry: Mapping[str, Any] | None) -> Row:
    """One fault test's run: what it injected, and that it lost no build and broke no guarantee."""
    target = "injected; 0 lost; none broken"
    if entry is None:
        return Row(run.fault, NOT_MEASURED, target)
    faults: dict[str, int] | None = entry.get("faults")
    lost = entry.get("builds_lost")
    failures: list[str] | None = entry.get("failures")
    injected = NOT_MEASURED if faults is None else ", ".join(f"{k} ×{v}" for k, v in sorted(faults.items()))
    broken = NOT_MEASURED if failures is None else (f"{len(failures)} broken" if failures else "none broken")
    ok = None if faults is None or lost is None or failures is None else bool(faults) and lost == 0 and not failures
    return Row(f"{run.fault}: {injected or 'nothing injected'}", f"{_count(lost)} lost; {broken}", target, _judged(ok))


def pytest_row(command: str, status: int | None) -> Row:
    """The test run's own verdict: every assertion of the tests, beyond the figures above."""
    value = "not recorded" if status is None else str(status)
    return Row(f"`{command}` exit status", value, "0", _judged(None if status is None else status == 0))


def fresh(report: Mapping[str, Any], *, since: datetime | None) -> tuple[dict[str, Any], list[str]]:
    """The report's entries written at or after ``since`` (this run's), and a note for each older one."""
    kept: dict[str, Any] = {}
    stale: list[str] = []
    for key, entry in report.items():
        at = entry.get("at") if isinstance(entry, Mapping) else None
        if since is not None and (at is None or _moment(at) < since):
            stale.append(f"{key} (written {at or 'at an unknown time'}, before this run began)")
            continue
        kept[key] = entry
    return kept, stale


def _failures_notes(name: str, entry: Mapping[str, Any] | None) -> list[str]:
    failures = (entry or {}).get("failures") or []
    return [f"{name}: {failure}" for failure in failures]


def e2e_sections(report: Mapping[str, Any], *, pytest_command: str, pytest_status: int | None) -> tuple[Section, ...]:
    fleet_entry = report.get(FLEET_RUN)
    fleet = Section(
        title="The fleet scaling up and down (`tests/e2e/test_no_build_lost.py`)",
        method=FLEET,
        rows=(
            *fleet_rows(fleet_entry or {}, Minimums()),
            pytest_row(pytest_command, pytest_status),
        ),
        notes=tuple(_failures_notes(FLEET_RUN, fleet_entry)),
    )
    outcomes = [
        "Each fault is a separate run of a smaller fleet with its expected outcome, asserted by its test "
        "(`tests/e2e/test_faults.py`) on top of the whole-run checks:",
        "",
        "| fault | outcome asserted |",
        "|---|---|",
        *(f"| {run.fault} | {run.outcome} |" for run in FAULT_RUNS),
    ]
    faults = Section(
        title="Faults (`tests/e2e/test_faults.py`)",
        method="\n".join(outcomes),
        rows=tuple(fault_row(run, report.get(run.key)) for run in FAULT_RUNS),
        notes=tuple(note for run in FAULT_RUNS for note in _failures_notes(run.key, report.get(run.key))),
    )
    return fleet, faults


def soak_sections(
    report: Mapping[str, Any], *, minimums: Minimums, pytest_command: str, pytest_status: int | None
) -> tuple[Section, ...]:
    entry = report.get(FLEET_RUN)
    return (
        Section(
            title="The fleet scaling up and down, long",
            method="The fleet of the end-to-end section, run until it reached every minimum below.",
            rows=(*fleet_rows(entry or {}, minimums), pytest_row(pytest_command, pytest_status)),
            notes=tuple(_failures_notes(FLEET_RUN, entry)),
        ),
    )


PARTS = {
    "e2e": ("End-to-end: no build lost (`make e2e`)", "pytest tests/e2e"),
    "soak": ("Soak: the end-to-end fleet, long (`make soak`)", "pytest tests/e2e/test_no_build_lost.py"),
}
"""Each part's heading, and the test run its figures come from."""


def fragment(
    part: str,
    report: Mapping[str, Any],
    *,
    measured: Measured,
    pytest_status: int | None,
    minimums: Minimums = Minimums(),
) -> Fragment:
    """The ``e2e`` or ``soak`` fragment from a report's entries (already filtered by :func:`fresh`)."""
    title, command = PARTS[part]
    if part == "e2e":
        sections = e2e_sections(report, pytest_command=command, pytest_status=pytest_status)
        intro = ""
    else:
        sections = soak_sections(report, minimums=minimums, pytest_command=command, pytest_status=pytest_status)
        intro = "The end-to-end fleet run (`tests/e2e/test_no_build_lost.py`) for longer: until every minimum is met."
    return Fragment(part=part, title=title, intro=intro, measured=measured, sections=sections)


def _moment(text: str) -> datetime:
    """An ISO 8601 time; UTC unless it says otherwise (the report's times are UTC)."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _read(path: Path) -> tuple[dict[str, Any], str]:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        return {}, f"No report at {path} ({e.strerror}): the run wrote none."
    except ValueError as e:
        return {}, f"The report at {path} is not JSON ({e}): nothing in it is counted."
    if not isinstance(body, dict):
        return {}, f"The report at {path} is not a JSON object: nothing in it is counted."
    return body, ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.e2e_section",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("report", type=Path, help="the e2e tests' report (out/e2e-report.json)")
    parser.add_argument("--part", choices=sorted(PARTS), required=True)
    parser.add_argument("--pytest-status", type=int, default=None, help="the exit status of the test run")
    parser.add_argument("--since", type=_moment, default=None, help="when the run began: older entries are not its")
    parser.add_argument("--min-scale-downs", type=int, default=None)
    parser.add_argument("--min-busy-scale-downs", type=int, default=None)
    parser.add_argument("--min-cycles", type=int, default=None)
    parser.add_argument("--command", default=None, help="what ran the tests (default: make <part>)")
    parser.add_argument("--results", type=Path, default=None, help="write the fragment here (bench/results)")
    args = parser.parse_args(argv)
    report, problem = _read(args.report)
    kept, stale = fresh(report, since=args.since)
    machine = Machine.here()
    minimums = Minimums(
        scale_downs=args.min_scale_downs, busy_scale_downs=args.min_busy_scale_downs, cycles=args.min_cycles
    )
    notes = [problem] if problem else []
    if stale:
        notes.append("Left out, from an earlier run: " + "; ".join(stale) + ".")
    measured = Measured(
        commit=code_version(),
        date=utc(datetime.now(UTC)),
        machine=machine.summary,
        command=args.command or f"make {args.part}",
        details=(f"figures from `{args.report}`", f"Python: {machine.python}"),
        note=" ".join(notes),
    )
    made = fragment(args.part, kept, measured=measured, pytest_status=args.pytest_status, minimums=minimums)
    sys.stdout.write(render_fragment(made))
    if args.results is not None:
        print(f"wrote {made.write(args.results)}", file=sys.stderr)
    return 1 if made.failed else 0


if __name__ == "__main__":
    sys.exit(main())
