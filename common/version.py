"""The version both programs report: the installed distribution's, so pyproject.toml is its one source.

``--version`` on both console scripts prints it (:class:`VersionAction`), and the image's
``org.opencontainers.image.version`` label is checked against pyproject.toml by
the tests (tests/deploy/test_image.py).

The lookup imports :mod:`importlib.metadata` (and the e-mail parser it reads ``METADATA``
with), about 0.7 MiB of a process that otherwise never needs it: it happens only when
``--version`` is asked for, not when a parser is built.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

DISTRIBUTION = "buildkit-fleet"
"""pyproject.toml's ``[project] name``."""


def package_version() -> str:
    """``0.1.0``; ``unknown`` when run from a source tree that was never installed."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - only --version pays for it

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


class VersionAction(argparse.Action):
    """``--version``: prints ``PROG VERSION`` on stdout and exits 0, as argparse's own ``version``
    action does, but looks the version up only then."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        kwargs.setdefault("help", "show the program's version number and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> NoReturn:
        sys.stdout.write(f"{parser.prog} {package_version()}\n")
        sys.stdout.flush()
        parser.exit()
