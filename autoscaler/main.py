"""``buildkit-autoscaler``: the command line.

``buildkit-autoscaler check-config FILE`` validates a configuration (a bare
``config.yaml`` or a ConfigMap manifest; ``-`` reads standard input) and prints
the effective config with every default filled in (exit 0), or every error
with its field path, one per line on standard error (exit 1).

``buildkit-autoscaler run --config-map NAMESPACE/NAME ...`` runs the controller
(:mod:`autoscaler.running`); a bad flag or a start-up failure exits 2.

``buildkit-autoscaler simulate --config CONFIG --trace TRACE`` replays a build
trace against a config on virtual time (:mod:`autoscaler.simulation`);
``buildkit-autoscaler trace --from-logs FILE...`` makes a trace from the
sidecars' logs (:mod:`autoscaler.trace`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from tqdm import tqdm

from autoscaler import reporting, simulation, traces
from autoscaler.config import Config, ConfigError, effective_yaml, load_config
from autoscaler.running import Options, default_identity, run, split_ref
from autoscaler.trace import Trace, TraceError, from_logs, rfc3339
from autoscaler.trace import parse as parse_trace
from autoscaler.trace import write as write_trace
from sidecar.logs import configure
from sidecar.settings import host_port

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


def check_config(path: str, *, stdout: TextIO, stderr: TextIO) -> int:
    """Validate ``path``; print the effective config, or each error prefixed with the file name."""
    name = "<stdin>" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        stderr.write(f"{name}: cannot read: {e}\n")
        return EXIT_INVALID
    try:
        config = load_config(text)
    except ConfigError as e:
        for error in e.errors:
            stderr.write(f"{name}: {error}\n")
        stderr.write(f"{name}: invalid ({len(e.errors)} error{'' if len(e.errors) == 1 else 's'})\n")
        return EXIT_INVALID
    stdout.write(effective_yaml(config))
    return EXIT_OK


def _check_config_command(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    return check_config(args.file, stdout=stdout, stderr=stderr)


def build_parser() -> argparse.ArgumentParser:
    """The command line; each subcommand sets ``handler`` (args, stdout, stderr) -> exit code."""
    parser = argparse.ArgumentParser(
        prog="buildkit-autoscaler", description="Per-arch autoscaler for BuildKit builder Deployments."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "check-config",
        help="validate a config.yaml or ConfigMap manifest and print the effective config",
        description=(
            "Validate FILE (a bare config.yaml, or a ConfigMap manifest holding it under data['config.yaml']). "
            "Prints the effective config with defaults filled in and exits 0, "
            "or prints every error with its field path and exits 1."
        ),
    )
    check.add_argument("file", metavar="FILE", help="the file to check; - for standard input")
    check.set_defaults(handler=_check_config_command)

    run = commands.add_parser(
        "run",
        allow_abbrev=False,
        help="run the controller (in-cluster configuration unless --kubeconfig)",
        description="Scale each pool's builder Deployment from its active builds. "
        "Every flag can also be set by the environment variable named in its help.",
    )
    env = os.environ.get
    run.add_argument(
        "--config-map",
        default=env("BUILDKIT_AUTOSCALER_CONFIG_MAP"),
        metavar="NAMESPACE/NAME",
        help="the ConfigMap holding config.yaml, watched through the API "
        "[env BUILDKIT_AUTOSCALER_CONFIG_MAP; required]",
    )
    run.add_argument(
        "--lease",
        default=env("BUILDKIT_AUTOSCALER_LEASE"),
        metavar="NAMESPACE/NAME",
        help="the Lease for leader election [env BUILDKIT_AUTOSCALER_LEASE; "
        "default: the ConfigMap's namespace, name buildkit-autoscaler]",
    )
    run.add_argument(
        "--listen",
        default=env("BUILDKIT_AUTOSCALER_LISTEN", "0.0.0.0:9100"),
        metavar="HOST:PORT",
        help="/metrics, /healthz, /readyz [env BUILDKIT_AUTOSCALER_LISTEN; default 0.0.0.0:9100]",
    )
    run.add_argument(
        "--kubeconfig",
        default=env("BUILDKIT_AUTOSCALER_KUBECONFIG"),
        metavar="PATH",
        help="use this kubeconfig instead of the in-cluster configuration [env BUILDKIT_AUTOSCALER_KUBECONFIG]",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        default=_flag(env("BUILDKIT_AUTOSCALER_DRY_RUN")),
        help="log the decisions; write nothing (no scale, annotations, Events or Lease) "
        "[env BUILDKIT_AUTOSCALER_DRY_RUN=true]",
    )
    run.add_argument(
        "--once",
        action="store_true",
        default=_flag(env("BUILDKIT_AUTOSCALER_ONCE")),
        help="run one cycle without leader election, then exit [env BUILDKIT_AUTOSCALER_ONCE=true]",
    )
    run.add_argument(
        "--log-level",
        default=env("BUILDKIT_AUTOSCALER_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="[env BUILDKIT_AUTOSCALER_LOG_LEVEL]",
    )
    run.set_defaults(handler=_run_command)
    _add_simulate(commands)
    _add_trace(commands)
    return parser


def _add_simulate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    simulate = commands.add_parser(
        "simulate",
        allow_abbrev=False,
        help="replay a build trace against a config on virtual time: cost, slowdown, waits, a chart",
        description=(
            "Replay TRACE against CONFIG with the controller's own decision function on virtual time "
            "(no cluster), next to two baselines (static provisioning at the trace's peak, and the same "
            "policy with HPA's default behavior). Prints a table; writes report.json and chart.png to --out. "
            "Exit 0, or 1 if the config or the trace is invalid."
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
    simulate.add_argument("--compare", metavar="CONFIG2", help="also run CONFIG2 on the same trace; print B − A")
    simulate.add_argument(
        "--routing",
        choices=simulation.ROUTINGS,
        default="random",
        help="how the load balancer picks a ready builder for a new build (default random)",
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
    simulate.add_argument("--seed", type=int, default=0, help="random routing's seed (default 0)")
    simulate.add_argument(
        "--cold-start",
        action="store_true",
        help="start with the idle fleet's pods just created (ready after --startup-seconds), not ready",
    )
    simulate.set_defaults(handler=_simulate_command)


def _add_trace(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, not {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number ≥ 0, not {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, not {text}")
    return value


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


def _trace_path(name: str) -> Path:
    """A file, or else a bundled trace by name (with or without ``.csv``)."""
    path = Path(name)
    if path.exists():
        return path
    bundled = traces.bundled()
    return bundled.get(name, bundled.get(f"{name}.csv", path))


def _load_trace(name: str, *, stderr: TextIO) -> Trace | None:
    path = _trace_path(name)
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
    config = _load_config(args.config, stderr=stderr)
    other = _load_config(args.compare, stderr=stderr) if args.compare else None
    trace = _load_trace(args.trace, stderr=stderr)
    if config is None or trace is None or (args.compare and other is None):
        return EXIT_INVALID
    model = simulation.FleetModel(
        routing=args.routing,
        capacity=args.capacity,
        startup_seconds=args.startup_seconds,
        drain_timeout_seconds=args.drain_timeout_seconds,
        seed=args.seed,
        warm_start=not args.cold_start,
    )
    out = Path(args.out)
    # A child process for the baselines pays off on long traces only (it costs ~0.5 s to start).
    parallel = len(trace.builds) >= 20_000 and (os.cpu_count() or 1) > 1
    runs = [(args.config, config, "")] + ([(args.compare, other, "compare-")] if other is not None else [])
    reports: list[simulation.Report] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, cfg, prefix in runs:
            with tqdm(total=1.0, disable=not stderr.isatty(), file=stderr, leave=False, desc=Path(name).name,
                      bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}") as bar:  # fmt: skip

                def progress(fraction: float, bar: tqdm[NoReturn] = bar) -> None:
                    bar.n = fraction
                    bar.refresh()

                report = simulation.simulate(cfg, trace, model=model, progress=progress, parallel=parallel)
            reports.append(report)
            reporting.write_json(report, out / f"{prefix}report.json")
            reporting.chart(report.run, out / f"{prefix}chart.png", title=f"{Path(name).name} on {args.trace}")
    except simulation.SimulationError as e:
        stderr.write(f"buildkit-autoscaler simulate: {e}\n")
        return EXIT_INVALID
    except OSError as e:
        stderr.write(f"buildkit-autoscaler simulate: cannot write to {out}: {e}\n")
        return EXIT_INVALID
    span = reports[0].run.span_seconds
    stdout.write(
        f"{len(trace.builds):,} builds over {span / 3600:.1f} h ({', '.join(trace.archs)}); "
        f"routing {model.routing}, startup {model.startup_seconds:g} s, "
        f"drain deadline {model.drain_timeout_seconds:g} s\n\n"
    )
    stdout.write(f"{args.config}:\n")
    stdout.write(reporting.table(reports[0]))
    if len(reports) == 2:
        stdout.write(f"\n{args.compare}:\n")
        stdout.write(reporting.table(reports[1]))
        stdout.write("\n")
        stdout.write(reporting.comparison(reports[0], reports[1], names=("A: " + args.config, "B: " + args.compare)))
    stdout.write(f"\nreport: {out / 'report.json'}\nchart: {out / 'chart.png'}\n")
    if len(reports) == 2:
        stdout.write(f"compare report: {out / 'compare-report.json'}\ncompare chart: {out / 'compare-chart.png'}\n")
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
    for error in scan.errors:
        stderr.write(f"{error}\n")
    if scan.duplicates:
        stderr.write(f"{scan.duplicates} duplicate build_completed line(s) (same arch and ref) counted once\n")
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
        count = write_trace(rows, stdout)
    else:
        try:
            with Path(args.out).open("w", encoding="utf-8", newline="") as out:
                count = write_trace(rows, out)
        except OSError as e:
            stderr.write(f"{args.out}: cannot write: {e}\n")
            return EXIT_INVALID
    stderr.write(f"{count:,} builds written" + (f" ({len(scan.errors)} lines skipped)" if scan.errors else "") + "\n")
    return EXIT_OK


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _run_command(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    try:
        if not args.config_map:
            raise ValueError("--config-map (or BUILDKIT_AUTOSCALER_CONFIG_MAP) is required")
        config_map = split_ref(args.config_map, what="--config-map")
        lease = split_ref(args.lease, what="--lease") if args.lease else (config_map[0], "buildkit-autoscaler")
        listen = host_port(args.listen)
    except ValueError as e:
        stderr.write(f"buildkit-autoscaler: {e}\n")
        return EXIT_USAGE
    configure(args.log_level)
    options = Options(
        config_map=config_map,
        lease=lease,
        listen=listen,
        kubeconfig=args.kubeconfig,
        dry_run=args.dry_run,
        once=args.once,
        identity=default_identity(),
    )
    return asyncio.run(run(options))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``buildkit-autoscaler`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace, TextIO, TextIO], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return handler(args, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
