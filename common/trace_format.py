"""The trace CSV the simulator replays: its columns and how a row is written.

Written by ``buildkit-autoscaler trace --from-logs``, ``buildkit-sidecar export-trace``
and the bundled traces' generator; read by :mod:`autoscaler.simulator.trace`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import TextIO

HEADER = ("arch", "start", "duration_seconds")
"""The trace's columns (any order in a file; written in this order)."""


def seconds_text(value: float) -> str:
    """Milliseconds are plenty for build timing; no ``1e-05`` or trailing noise."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def write(builds: Iterable[tuple[str, str | float, float]], out: TextIO) -> int:
    """Write ``(arch, start, duration_seconds)`` rows as a trace; returns the row count.

    ``start`` is RFC 3339 text (:func:`common.timestamps.rfc3339`) or seconds from the trace's start.
    """
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    count = 0
    for arch, start, duration in builds:
        writer.writerow((arch, start if isinstance(start, str) else seconds_text(start), seconds_text(duration)))
        count += 1
    return count
