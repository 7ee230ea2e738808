"""Bundled sample traces for ``buildkit-autoscaler simulate`` (written by :mod:`.generate`)."""

from __future__ import annotations

from pathlib import Path

DIRECTORY = Path(__file__).parent
"""Where the bundled ``*.csv`` traces are installed."""


def bundled() -> dict[str, Path]:
    """The bundled traces by file name."""
    return {path.name: path for path in sorted(DIRECTORY.glob("*.csv"))}
