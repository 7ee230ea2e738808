"""Build traces: what the simulator replays.

A trace is CSV with the header ``arch,start,duration_seconds`` (columns in any
order), one row per build:

* ``arch``: the Go architecture the build ran on (``amd64``, ``arm64``); the
  simulator sends it to the pool with that ``arch``;
* ``start``: when the build was submitted, either as RFC 3339 with a time zone
  (``2026-03-02T09:15:00Z``) or as seconds from the trace's start (``540``,
  ``540.25``); one trace uses one form or the other, not both;
* ``duration_seconds``: how long the build takes on an unloaded builder (> 0).

Lines starting with ``#`` are comments and blank lines are ignored; rows need
not be sorted. Validation is complete: every bad row is reported with its line
number and the reason (:class:`TraceError`), and no row is ever dropped: a
trace either loads whole or not at all.

:func:`from_logs` turns the sidecar's ``build_completed`` log lines (JSON,
as ``kubectl logs`` or a log store hands them out) into trace rows: the
complete record of a fleet's builds, which buildkitd's own history (kept in
the pod, lost with it) is not.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from common.arch import arch_problem
from common.timestamps import parse_rfc3339
from common.trace_format import HEADER


class TraceError(ValueError):
    """The trace is invalid; :attr:`errors` lists every ``line N: reason``."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: tuple[str, ...] = tuple(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True, slots=True)
class Build:
    """One build of a trace."""

    arch: str
    start_seconds: float
    """Submitted this long after the trace's start (≥ 0)."""
    duration_seconds: float
    """Its duration on an unloaded builder (> 0)."""
    line: int = 0
    """Where it came from in the file (0: not from a file)."""


@dataclass(frozen=True, slots=True)
class Trace:
    """A validated trace: builds sorted by start (ties keep file order)."""

    builds: tuple[Build, ...]
    origin: datetime | None = None
    """The wall-clock time of second 0 when the file used RFC 3339; None for seconds."""

    @property
    def archs(self) -> tuple[str, ...]:
        """The architectures present, sorted."""
        return tuple(sorted({b.arch for b in self.builds}))

    @property
    def span_seconds(self) -> float:
        """From the trace's start to the last build's unloaded end."""
        return max((b.start_seconds + b.duration_seconds for b in self.builds), default=0.0)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse(text: str) -> Trace:
    """Validate a trace's CSV text; raise :class:`TraceError` with every problem found."""
    errors: list[tuple[int, str]] = []
    rows: list[tuple[int, str, str, str]] = []
    columns: dict[str, int] | None = None
    reader = csv.reader(io.StringIO(text, newline=""))
    for record in reader:
        line = reader.line_num
        if not record or all(not cell.strip() for cell in record) or record[0].lstrip().startswith("#"):
            continue
        cells = [cell.strip() for cell in record]
        if columns is None:
            if sorted(cells) != sorted(HEADER):
                return _fail(
                    [f"line {line}: the header must name the columns {','.join(HEADER)}, not {','.join(cells)}"]
                )
            columns = {name: i for i, name in enumerate(cells)}
            continue
        if len(cells) != len(HEADER):
            errors.append((line, f"line {line}: expected {len(HEADER)} fields, found {len(cells)}"))
            continue
        rows.append((line, cells[columns["arch"]], cells[columns["start"]], cells[columns["duration_seconds"]]))
    if columns is None:
        return _fail([f"line 1: empty trace: expected the header {','.join(HEADER)}"])

    form: str | None = None  # "seconds" or "rfc3339", from the first row with a readable start
    parsed: list[tuple[int, str, float | datetime, float]] = []
    for line, arch, start_text, duration_text in rows:
        problems: list[str] = []
        if arch_problem(arch) is not None:
            problems.append(f"arch {arch!r} is not a Go architecture name such as amd64")
        start: float | datetime | None = None
        seconds = _number(start_text)
        if seconds is not None:
            start = seconds
            if seconds < 0:
                problems.append(f"start {start_text!r} is negative")
            elif form == "rfc3339":
                problems.append(f"start {start_text!r} is in seconds, but earlier rows use RFC 3339")
            form = form or "seconds"
        else:
            start = when = parse_rfc3339(start_text)
            if when is None:
                problems.append(f"start {start_text!r} is neither seconds nor RFC 3339 with a time zone")
            elif form == "seconds":
                problems.append(f"start {start_text!r} is RFC 3339, but earlier rows use seconds")
            form = form or ("rfc3339" if when is not None else None)
        duration = _number(duration_text)
        if duration is None:
            problems.append(f"duration_seconds {duration_text!r} is not a number")
        elif duration <= 0:
            problems.append(f"duration_seconds {duration_text!r} must be > 0")
        if problems:
            errors.append((line, f"line {line}: " + "; ".join(problems)))
        elif start is not None and duration is not None:
            parsed.append((line, arch, start, duration))
    if errors:
        return _fail([text for _, text in sorted(errors)])
    if not parsed:
        return _fail(["no builds: the trace has a header but no rows"])

    origin: datetime | None = None
    if form == "rfc3339":
        origin = min(s for _, _, s, _ in parsed if isinstance(s, datetime))
    builds = [
        Build(arch=arch, start_seconds=_offset(start, origin), duration_seconds=duration, line=line)
        for line, arch, start, duration in parsed
    ]
    builds.sort(key=lambda b: b.start_seconds)
    return Trace(builds=tuple(builds), origin=origin)


def _offset(start: float | datetime, origin: datetime | None) -> float:
    if isinstance(start, datetime):
        return (start - origin).total_seconds() if origin is not None else 0.0
    return start


def _fail(errors: Sequence[str]) -> Trace:
    raise TraceError(errors)


# --- from the sidecar's logs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoggedBuild:
    """One ``build_completed`` log line, as a trace row."""

    arch: str
    ref: str
    started_at: datetime
    duration_seconds: float


@dataclass
class LogScan:
    """What :func:`from_logs` found."""

    builds: list[LoggedBuild] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """``FILE:LINE: reason`` for every ``build_completed`` line that could not be used (dropped)."""
    corrected: list[str] = field(default_factory=list)
    """``FILE:LINE: what was changed and why`` for every build kept with a value it did not log
    as such: a duration under the trace's resolution, or one taken from ``completed_at``."""
    duplicates: list[str] = field(default_factory=list)
    """``FILE:LINE: ...`` for every line repeating a build already seen (same arch and ref: the
    same log read twice), dropped; it names the line that was kept."""
    other_lines: int = 0
    """Lines that are not ``build_completed`` events (other log lines, non-JSON noise)."""


def _json_object(line: str) -> dict[str, Any] | None:
    """The JSON object in a log line; ``kubectl logs --prefix/--timestamps`` put text before it."""
    brace = line.find("{")
    if brace < 0:
        return None
    try:
        value = json.loads(line[brace:])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


MIN_DURATION_SECONDS = 0.001
"""The trace's resolution (durations are written in milliseconds) and the shortest build it
holds: a fully cached build can take no measurable time, but a trace's durations are > 0."""


def _logged_build(event: dict[str, Any]) -> tuple[LoggedBuild, str | None] | str:
    """A build from one ``build_completed`` event and what was corrected in it, or why it is unusable."""
    arch = event.get("arch")
    ref = event.get("ref")
    if not isinstance(arch, str) or arch_problem(arch) is not None:
        return f"arch {arch!r} is not a Go architecture name (the sidecar did not know it yet?)"
    if not isinstance(ref, str) or not ref:
        return "no ref"
    started = parse_rfc3339(event["started_at"]) if isinstance(event.get("started_at"), str) else None
    if started is None:
        return f"started_at {event.get('started_at')!r} is not an RFC 3339 time"
    logged = event.get("duration_seconds")
    note: str | None = None
    if isinstance(logged, int | float) and not isinstance(logged, bool) and math.isfinite(logged):
        duration, source = float(logged), f"duration_seconds {logged!r}"
    else:
        completed = parse_rfc3339(event["completed_at"]) if isinstance(event.get("completed_at"), str) else None
        if completed is None:
            return "neither duration_seconds nor completed_at is usable"
        duration = (completed - started).total_seconds()
        source = f"completed_at − started_at ({duration:g} s)"
        note = f"duration_seconds {logged!r} is not a number: used {source}"
    if duration < 0:
        # The sidecar clamps durations at 0: a negative one is no line it wrote as such.
        return f"{source} is negative"
    if duration < MIN_DURATION_SECONDS:
        clamped = f"{source} is below the trace's resolution: counted as {MIN_DURATION_SECONDS:g} s"
        note = clamped if note is None else f"{note}; {clamped}"
        duration = MIN_DURATION_SECONDS
    build = LoggedBuild(arch=arch, ref=ref, started_at=started.astimezone(UTC), duration_seconds=duration)
    return build, note


def from_logs(sources: Iterable[tuple[str, Iterable[str]]]) -> LogScan:
    """Collect the builds of ``build_completed`` lines from ``(name, lines)`` sources.

    Every build the sidecars logged is kept, whatever its result (a failed or
    cancelled build occupied its builder too). Builds come out sorted by start.
    Every ``build_completed`` line not taken as logged is accounted for, by
    ``FILE:LINE``: in :attr:`LogScan.errors` or :attr:`LogScan.duplicates`
    (dropped) or :attr:`LogScan.corrected` (kept).
    """
    scan = LogScan()
    seen: dict[tuple[str, str], str] = {}  # (arch, ref) → the FILE:LINE kept
    for name, lines in sources:
        for number, line in enumerate(lines, start=1):
            event = _json_object(line)
            if event is None or event.get("event") != "build_completed":
                scan.other_lines += 1
                continue
            where = f"{name}:{number}"
            found = _logged_build(event)
            if isinstance(found, str):
                scan.errors.append(f"{where}: {found}")
                continue
            build, note = found
            key = (build.arch, build.ref)
            kept = seen.get(key)
            if kept is not None:
                scan.duplicates.append(f"{where}: {build.arch} build {build.ref} again: counted once, from {kept}")
                continue
            seen[key] = where
            if note is not None:
                scan.corrected.append(f"{where}: {note}")
            scan.builds.append(build)
    scan.builds.sort(key=lambda b: b.started_at)
    return scan
