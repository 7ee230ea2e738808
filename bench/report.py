"""What a benchmark run reports, and where it keeps it.

A run writes one *fragment* per part of BENCHMARKS.md (``bench/results/<part>.json``): when,
at which commit, on which machine and by which command it was measured, then its sections,
each a table of rows. A row with a target carries its own result; :mod:`bench.assemble`
turns every fragment into BENCHMARKS.md under one verdict.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

MET = "pass"
MISSED = "**FAIL**"


MEASURED_PATHS = ("sidecar", "autoscaler", "common", "bench", "deploy", "fakes/buildkitd.py", "fakes/kubernetes.py")
"""The code a fragment's numbers depend on: uncommitted changes there are named beside its commit."""

RESULTS_PATH = "bench/results"
"""Where the fragments live (outside what :data:`MEASURED_PATHS` describes)."""

LIBRARIES = (
    "grpcio",
    "protobuf",
    "aiohttp",
    "prometheus-client",
    "structlog",
    "kubernetes-asyncio",
    "pydantic",
    "kmock",
)
"""The versions a header lists."""


def verdict(ok: bool) -> str:
    return MET if ok else MISSED


@dataclass(frozen=True, slots=True)
class Row:
    """One measured number. ``target`` is empty when it is for context only; a row with a
    target is met only when its ``result`` says so: no result (nothing measured) is a miss."""

    measure: str
    value: str
    target: str = ""
    result: str | None = None

    @property
    def is_target(self) -> bool:
        return bool(self.target) or self.result is not None

    @property
    def missed(self) -> bool:
        return self.is_target and self.result != MET


@dataclass(frozen=True, slots=True)
class Section:
    """One benchmark: how it was measured (Markdown), its table, notes, and any Markdown after."""

    title: str
    method: str
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()
    after: str = ""

    @property
    def failed(self) -> bool:
        return any(row.missed for row in self.rows)

    def with_row(self, row: Row) -> Section:
        return dataclasses.replace(self, rows=(*self.rows, row))


@dataclass(frozen=True, slots=True, kw_only=True)
class Measured:
    """Where a fragment's numbers come from: the header line beside its sections."""

    commit: str
    """``git rev-parse --short HEAD`` when measured, plus any uncommitted changes in :data:`MEASURED_PATHS`."""
    date: str
    """UTC, as ``YYYY-MM-DD HH:MM:SS UTC``."""
    machine: str
    command: str
    """The command that wrote the fragment (rerun it to replace the fragment)."""
    details: tuple[str, ...] = ()
    """More of the setting (library versions, load average, run length), one bullet each."""
    note: str = ""
    """Anything a reader must know about where the numbers come from (e.g. carried over)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Fragment:
    """One part of BENCHMARKS.md, as one run wrote it."""

    part: str
    """Its file's stem in ``bench/results/`` (:data:`bench.assemble.PARTS`)."""
    title: str
    intro: str
    measured: Measured
    sections: tuple[Section, ...]

    @property
    def targets(self) -> list[Row]:
        return [row for section in self.sections for row in section.rows if row.is_target]

    @property
    def failed(self) -> bool:
        return any(row.missed for row in self.targets)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Fragment:
        body: dict[str, Any] = json.loads(text)
        sections = tuple(
            Section(
                title=s["title"],
                method=s["method"],
                rows=tuple(Row(**row) for row in s["rows"]),
                notes=tuple(s["notes"]),
                after=s["after"],
            )
            for s in body["sections"]
        )
        measured = body["measured"]
        return cls(
            part=body["part"],
            title=body["title"],
            intro=body["intro"],
            measured=Measured(**{**measured, "details": tuple(measured["details"])}),
            sections=sections,
        )

    def write(self, results: Path) -> Path:
        """Write ``results/<part>.json``, replacing the part's previous fragment."""
        results.mkdir(parents=True, exist_ok=True)
        path = results / f"{self.part}.json"
        path.write_text(self.to_json(), encoding="utf-8")
        return path


def contention_row(others_cores: float) -> Row:
    """How busy the rest of the machine was while a benchmark ran: results under load read high."""
    return Row("other processes' CPU meanwhile (machine load)", f"{others_cores:.2f} of {os.cpu_count()} cores")


def _first(path: str, prefix: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def _versions(*packages: str) -> str:
    found = []
    for name in packages:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def code_version() -> str:
    """The commit being measured, and the measured paths it does not describe (uncommitted changes)."""
    commit = _git("rev-parse", "--short", "HEAD")
    # The fragments are what runs write, not what they measure: a run after another would otherwise look dirty.
    changed = _git("status", "--porcelain", "--", *MEASURED_PATHS, f":(exclude){RESULTS_PATH}").splitlines()
    # "XY path" per line (_git strips the first line's leading blank: split, do not slice).
    dirty = sorted({line.split(maxsplit=1)[-1].split("/", 1)[0] + "/" for line in changed if line.strip()})
    return (commit or "unknown") + (f" with uncommitted changes in {', '.join(dirty)}" if dirty else "")


def command_line(module: str, argv: Sequence[str]) -> str:
    """How this run was started, with the interpreter relative to the checkout when inside it."""
    python = os.path.relpath(sys.executable)
    return " ".join([sys.executable if python.startswith("..") else python, "-m", module, *argv])


def utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True, slots=True)
class Machine:
    cpu: str
    cores: str
    memory: str
    python: str
    kernel: str
    libraries: str

    @classmethod
    def here(cls) -> Machine:
        mem_kib = _first("/proc/meminfo", "MemTotal")
        memory = f"{int(mem_kib.split()[0]) / 1024 / 1024:.1f} GiB" if mem_kib else "unknown"
        usable = len(os.sched_getaffinity(0))
        cores = f"{os.cpu_count()} online, {usable} usable by this process"
        return cls(
            cpu=_first("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
            cores=cores,
            memory=memory,
            python=f"{platform.python_implementation()} {platform.python_version()}",
            kernel=f"{platform.system()} {platform.release()} ({platform.machine()})",
            libraries=_versions(*LIBRARIES),
        )

    @property
    def summary(self) -> str:
        """The header line's machine: CPU, cores, RAM, kernel."""
        return f"{self.cpu}, {self.cores}, {self.memory} RAM, {self.kernel}"
