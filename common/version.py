"""The version both programs report: the installed distribution's, so pyproject.toml is its one source.

``--version`` on both console scripts prints it, and the image's
``org.opencontainers.image.version`` label is checked against pyproject.toml by
the tests (tests/deploy/test_image.py).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "buildkit-fleet"
"""pyproject.toml's ``[project] name``."""


def package_version() -> str:
    """``0.1.0``; ``unknown`` when run from a source tree that was never installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"
