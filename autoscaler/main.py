"""``buildkit-autoscaler``: the command line.

``buildkit-autoscaler check-config FILE`` validates a configuration (a bare
``config.yaml`` or a ConfigMap manifest; ``-`` reads standard input) and prints
the effective config with every default filled in (exit 0), or every error
with its field path, one per line on standard error (exit 1).

The controller's ``run`` command is not built yet.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from autoscaler.config import ConfigError, effective_yaml, load_config

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
    return parser


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
