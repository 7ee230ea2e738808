"""``buildkit-autoscaler simulate`` and ``buildkit-autoscaler trace``: the simulator's command line.

The chart module (matplotlib) is imported only when ``simulate`` runs: the controller's
``run`` never loads it.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
from pathlib import Path
from typing import NoReturn, TextIO

from tqdm import tqdm

from autoscaler.config import Config, ConfigError, load_config
from autoscaler.simulator import report as text_report
from autoscaler.simulator import traces
from autoscaler.simulator.model import ROUTINGS, FleetModel, SimulationError
from autoscaler.simulator.outcome import Report
from autoscaler.simulator.runs import simulate
from autoscaler.simulator.trace import Trace, TraceError, from_logs
from autoscaler.simulator.trace import parse as parse_trace
from common import trace_format
from common.timestamps import rfc3339

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2

ROUTER_FLAGS = (
    ("routers", "--routers"),
    ("agent_interval", "--agent-interval"),
    ("client_deadline_seconds", "--client-deadline-seconds"),
    ("router_queue_seconds", "--router-queue-seconds"),
)
"""The flags that describe the router: (argparse dest, flag). Refused with another routing."""


def add_simulate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    simulate = commands.add_parser(
        "simulate",
        allow_abbrev=False,
        help="replay a build trace against a config on virtual time: cost, slowdown, waits, a chart",
        description=(
            "Replay TRACE against CONFIG with the controller's own decision function on virtual time "
            "(no cluster), next to three baselines (static provisioning at the trace's peak; the same "
            "policy with HPA's default behavior; and that behind random routing, a plain Service). Prints a "
            "table; writes report.json and chart.png to --out (with --compare also compare-report.json and "
            "compare-chart.png for CONFIG2, and comparison.json and comparison.png: both, and B − A). Exit 0, "
            "1 if a config or the trace is invalid, 2 on a usage error."
        ),
    )
    simulate.add_argument("--config", required=True, metavar="CONFIG", help="config.yaml or ConfigMap manifest")
    simulate.add_argument(
        "--trace",
        required=True,
        metavar="TRACE",
        help="CSV trace (arch,start,duration_seconds), or the name of a bundled one: "
        + ", ".join(p.removesuffix(".csv") for p in traces.bundled()),
    )
    simulate.add_argument(
        "--out", default="simulation", metavar="DIR", help="where report.json and chart.png go (default ./simulation)"
    )
    simulate.add_argument(
        "--compare",
        metavar="CONFIG2",
        help="also run CONFIG2 on the same trace; print B − A, write comparison.json and comparison.png",
    )
    model = FleetModel()
    simulate.add_argument(
        "--routing",
        choices=ROUTINGS,
        default=model.routing,
        help="how a new build reaches a builder: router (the HAProxy router deploy/ ships, fed by the sidecars' "
        "agents), random (a plain Service or cloud L4 balancer), least-connections (an idealisation: one "
        f"balancer that sees every builder's true build count at once) (default {model.routing})",
    )
    simulate.add_argument(
        "--routers",
        type=_positive_int,
        default=None,
        metavar="K",
        help=f"router only: router replicas per arch, a build reaches one at random (default {model.routers})",
    )
    simulate.add_argument(
        "--agent-interval",
        type=_positive,
        default=None,
        metavar="S",
        help="router only: seconds between a router's agent checks of a builder, how stale its view is "
        f"(default {model.agent_interval_seconds:g})",
    )
    simulate.add_argument(
        "--client-deadline-seconds",
        type=_positive,
        default=None,
        metavar="S",
        help="router only: how long buildx waits for its connection; a build that would wait longer fails "
        f"(default {model.client_deadline_seconds:g})",
    )
    simulate.add_argument(
        "--router-queue-seconds",
        type=_non_negative,
        default=None,
        metavar="S",
        help="router only: how long a build waits in its router for a usable builder before it fails, "
        f"never past the client's deadline; 0: rejected at once, as shipped (default {model.router_queue_seconds:g})",
    )
    simulate.add_argument(
        "--capacity",
        type=_positive_int,
        default=None,
        metavar="N",
        help="builds a builder runs at full speed (default: each pool's targetBuildsPerReplica)",
    )
    simulate.add_argument(
        "--startup-seconds",
        type=_non_negative,
        default=60.0,
        metavar="S",
        help="pod creation to ready: node provisioning and image pull (default 60)",
    )
    simulate.add_argument(
        "--drain-timeout-seconds",
        type=_positive,
        default=3300.0,
        metavar="S",
        help="the sidecar's drain deadline; a longer drain interrupts its builds (default 3300)",
    )
    simulate.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of random routing, of the router each build reaches and of the agents' phases (default 0)",
    )
    simulate.add_argument(
        "--cold-start",
        action="store_true",
        help="start with the idle fleet's pods just created (ready after --startup-seconds), not ready",
    )
    simulate.set_defaults(handler=_simulate_command)


def add_trace(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    trace_cmd = commands.add_parser(
        "trace",
        allow_abbrev=False,
        help="make a trace from the sidecars' build_completed log lines, or check one",
        description=(
            "--from-logs: turn the sidecars' build_completed JSON log lines (kubectl logs, a log store; "
            "text before the JSON is ignored) into a trace: the complete record, which buildkitd's own "
            "history (kept in the pod, gone with it) is not. Every build counts, whatever its result. "
            "--check: validate a trace and summarise it. Exit 0, or 1 on invalid input."
        ),
    )
    what = trace_cmd.add_mutually_exclusive_group(required=True)
    what.add_argument("--from-logs", nargs="+", metavar="FILE", help="log files; - for standard input")
    what.add_argument("--check", metavar="TRACE", help="a trace to validate")
    trace_cmd.add_argument("--out", default="-", metavar="FILE", help="where the trace goes (default standard output)")
    trace_cmd.add_argument(
        "--skip-invalid",
        action="store_true",
        help="write the trace even if some build_completed lines are unusable (each is still reported)",
    )
    trace_cmd.set_defaults(handler=_trace_command)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number ≥ 1, not {text}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, not {text}")
    return value


def _number(text: str, *, expected: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {expected}, not {text}") from None


def _non_negative(text: str) -> float:
    value = _number(text, expected="a number ≥ 0")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number ≥ 0, not {text}")
    return value


def _positive(text: str) -> float:
    value = _number(text, expected="a number > 0")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, not {text}")
    return value


def fleet_model(args: argparse.Namespace) -> FleetModel | str:
    """The model the flags describe, or why they do not describe one (a router flag without the router)."""
    given = [flag for dest, flag in ROUTER_FLAGS if getattr(args, dest) is not None]
    if given and args.routing != "router":
        verb = "describes" if len(given) == 1 else "describe"
        return f"{', '.join(given)} {verb} the router: only with --routing router, not with --routing {args.routing}"
    router = {
        name: value
        for name, value in (
            ("routers", args.routers),
            ("agent_interval_seconds", args.agent_interval),
            ("client_deadline_seconds", args.client_deadline_seconds),
            ("router_queue_seconds", args.router_queue_seconds),
        )
        if value is not None
    }
    return FleetModel(
        routing=args.routing,
        capacity=args.capacity,
        startup_seconds=args.startup_seconds,
        drain_timeout_seconds=args.drain_timeout_seconds,
        seed=args.seed,
        warm_start=not args.cold_start,
        **router,
    )


def describe_routing(model: FleetModel) -> str:
    """The routing as the run's first line names it."""
    if model.routing != "router":
        return f"routing {model.routing}"
    queue = (
        f"queue {model.router_queue_seconds:g} s, client deadline {model.client_deadline_seconds:g} s"
        if model.router_queue_seconds > 0
        else "no queue"
    )
    routers = f"{model.routers} router{'' if model.routers == 1 else 's'}"
    return f"routing router ({routers}, agent every {model.agent_interval_seconds:g} s, {queue})"


def _read(path: str, *, stderr: TextIO) -> str | None:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        stderr.write(f"{path}: cannot read: {e}\n")
        return None


def _load_config(path: str, *, stderr: TextIO) -> Config | None:
    text = _read(path, stderr=stderr)
    if text is None:
        return None
    try:
        return load_config(text)
    except ConfigError as e:
        for error in e.errors:
            stderr.write(f"{path}: {error}\n")
        return None


def _trace_path(name: str) -> Path | None:
    """A file, or else a bundled trace by name (with or without ``.csv``); None if neither."""
    path = Path(name)
    if name == "-" or path.exists():
        return path
    bundled = traces.bundled()
    return bundled.get(name, bundled.get(f"{name}.csv"))


def unknown_trace(name: str) -> str:
    """Why ``name`` is no trace: the bundled names, and the closest one if any is close."""
    names = [file.removesuffix(".csv") for file in traces.bundled()]
    message = f"{name}: no such file, and no bundled trace of that name (bundled: {', '.join(names)})"
    close = difflib.get_close_matches(Path(name).name.removesuffix(".csv"), names, n=1)
    return message + (f"; did you mean {close[0]}?" if close else "")


def _load_trace(name: str, *, stderr: TextIO) -> Trace | None:
    path = _trace_path(name)
    if path is None:
        stderr.write(unknown_trace(name) + "\n")
        return None
    text = _read(str(path), stderr=stderr)
    if text is None:
        return None
    try:
        return parse_trace(text)
    except TraceError as e:
        for error in e.errors[:50]:
            stderr.write(f"{path}: {error}\n")
        if len(e.errors) > 50:
            stderr.write(f"{path}: … and {len(e.errors) - 50} more\n")
        stderr.write(f"{path}: invalid ({len(e.errors)} error{'' if len(e.errors) == 1 else 's'})\n")
        return None


def _simulate_command(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    model = fleet_model(args)
    if isinstance(model, str):
        stderr.write(f"buildkit-autoscaler simulate: {model}\n")
        return EXIT_USAGE
    config = _load_config(args.config, stderr=stderr)
    other = _load_config(args.compare, stderr=stderr) if args.compare else None
    trace = _load_trace(args.trace, stderr=stderr)
    if config is None or trace is None or (args.compare and other is None):
        return EXIT_INVALID
    out = Path(args.out)
    # A child process for the baselines pays off on long traces only (it costs ~0.5 s to start).
    parallel = len(trace.builds) >= 20_000 and (os.cpu_count() or 1) > 1
    runs = [(args.config, config, "")] + ([(args.compare, other, "compare-")] if other is not None else [])
    reports: list[Report] = []
    from autoscaler.simulator import chart  # noqa: PLC0415 - matplotlib only when a chart is drawn

    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, cfg, prefix in runs:
            with tqdm(total=1.0, disable=not stderr.isatty(), file=stderr, leave=False, desc=Path(name).name,
                      bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}") as bar:  # fmt: skip

                def progress(fraction: float, bar: tqdm[NoReturn] = bar) -> None:
                    bar.n = fraction
                    bar.refresh()

                report = simulate(cfg, trace, model=model, progress=progress, parallel=parallel)
            reports.append(report)
            text_report.write_json(report, out / f"{prefix}report.json")
            chart.chart(report.run, out / f"{prefix}chart.png",
                        title=f"{Path(name).name} on {args.trace}, {describe_routing(model)}")  # fmt: skip
        if len(reports) == 2:
            names = (f"A: {Path(args.config).name}", f"B: {Path(args.compare).name}")
            text_report.write_comparison_json(reports[0], reports[1], out / "comparison.json")
            title = f"{names[0]} and {names[1]} on {args.trace}, {describe_routing(model)}"
            chart.comparison_chart(reports[0].run, reports[1].run, out / "comparison.png", title=title)
    except SimulationError as e:
        stderr.write(f"buildkit-autoscaler simulate: {e}\n")
        return EXIT_INVALID
    except OSError as e:
        stderr.write(f"buildkit-autoscaler simulate: cannot write to {out}: {e}\n")
        return EXIT_INVALID
    span = reports[0].run.span_seconds
    stdout.write(
        f"{len(trace.builds):,} builds over {span / 3600:.1f} h ({', '.join(trace.archs)}); "
        f"{describe_routing(model)}, startup {model.startup_seconds:g} s, "
        f"drain deadline {model.drain_timeout_seconds:g} s\n\n"
    )
    stdout.write(f"{args.config}:\n")
    stdout.write(text_report.table(reports[0]))
    if len(reports) == 2:
        stdout.write(f"\n{args.compare}:\n")
        stdout.write(text_report.table(reports[1]))
        stdout.write("\n")
        stdout.write(text_report.comparison(reports[0], reports[1], names=("A: " + args.config, "B: " + args.compare)))
    stdout.write(f"\nreport: {out / 'report.json'}\nchart: {out / 'chart.png'}\n")
    if len(reports) == 2:
        stdout.write(f"compare report: {out / 'compare-report.json'}\ncompare chart: {out / 'compare-chart.png'}\n")
        stdout.write(f"comparison: {out / 'comparison.json'}\ncomparison chart: {out / 'comparison.png'}\n")
    return EXIT_OK


def _trace_command(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    if args.check:
        trace = _load_trace(args.check, stderr=stderr)
        if trace is None:
            return EXIT_INVALID
        per_arch = {a: sum(1 for b in trace.builds if b.arch == a) for a in trace.archs}
        stdout.write(
            f"{args.check}: {len(trace.builds):,} builds over {trace.span_seconds / 3600:.1f} h: "
            + ", ".join(f"{a} {n:,}" for a, n in per_arch.items())
            + "\n"
        )
        return EXIT_OK
    sources: list[tuple[str, list[str]]] = []
    for name in args.from_logs:
        text = _read(name, stderr=stderr)
        if text is None:
            return EXIT_INVALID
        sources.append(("<stdin>" if name == "-" else name, text.splitlines()))
    scan = from_logs(sources)
    for line in (*scan.errors, *scan.corrected, *scan.duplicates):
        stderr.write(f"{line}\n")
    if scan.corrected:
        stderr.write(f"{len(scan.corrected)} build_completed line(s) corrected (kept, as each line says)\n")
    if scan.duplicates:
        stderr.write(f"{len(scan.duplicates)} duplicate build_completed line(s) (same arch and ref) counted once\n")
    if scan.errors and not args.skip_invalid:
        stderr.write(
            f"{len(scan.errors)} unusable build_completed line(s): no trace written "
            "(--skip-invalid writes the others)\n"
        )
        return EXIT_INVALID
    if not scan.builds:
        stderr.write("no build_completed lines found: no trace written\n")
        return EXIT_INVALID
    rows = ((b.arch, rfc3339(b.started_at), b.duration_seconds) for b in scan.builds)
    if args.out == "-":
        count = trace_format.write(rows, stdout)
    else:
        try:
            with Path(args.out).open("w", encoding="utf-8", newline="") as out:
                count = trace_format.write(rows, out)
        except OSError as e:
            stderr.write(f"{args.out}: cannot write: {e}\n")
            return EXIT_INVALID
    stderr.write(f"{count:,} builds written" + (f" ({len(scan.errors)} lines skipped)" if scan.errors else "") + "\n")
    return EXIT_OK
