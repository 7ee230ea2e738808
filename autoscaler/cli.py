"""``buildkit-autoscaler``: the command line.

``buildkit-autoscaler check-config FILE`` validates a configuration (a bare
``config.yaml`` or a ConfigMap manifest; ``-`` reads standard input) and prints
the effective config with every default filled in (exit 0), or every error
with its field path, one per line on standard error (exit 1).

``buildkit-autoscaler run --config-map NAMESPACE/NAME ...`` runs the controller
(:mod:`autoscaler.controller.running`); a bad flag or a start-up failure exits 2.

``buildkit-autoscaler simulate --config CONFIG --trace TRACE`` replays a build
trace against a config on virtual time, and ``buildkit-autoscaler trace
--from-logs FILE...`` makes a trace from the sidecars' logs
(:mod:`autoscaler.simulator.commands`).

The one module that reaches both the controller and the simulator: each command
loads only its own side (``run`` never imports the simulator's chart).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from autoscaler.config import ConfigError, effective_yaml, load_config
from autoscaler.controller.running import Options, default_identity, run, split_ref
from autoscaler.simulator import commands as simulator_commands
from common.addresses import host_port
from common.logs import configure
from common.version import VersionAction

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


def check_config(path: str, *, stdout: TextIO, stderr: TextIO) -> int:
    """Validate ``path``; print the effective config, or each error prefixed with the file name."""
    name = "<stdin>" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as e:
        stderr.write(f"{name}: cannot read: {(e.strerror or str(e)).lower()}\n")
        return EXIT_INVALID
    except UnicodeDecodeError:
        stderr.write(f"{name}: cannot read: not UTF-8 text\n")
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
        prog="buildkit-autoscaler",
        description="Per-arch autoscaler for BuildKit builder Deployments.",
        epilog="Exit status: 0 success; 1 an invalid config or trace (check-config, simulate, trace); "
        "2 a usage error or a start-up failure of run (see docs/autoscaler.md).",
    )
    parser.add_argument("--version", action=VersionAction)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
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
    simulator_commands.add_simulate(commands)
    simulator_commands.add_trace(commands)
    return parser


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
