"""The sidecar as the image ships it: a venv holding the project's runtime dependencies only.

The Dockerfile runs ``pip install .`` in a fresh venv. The benchmarks' own venv also holds the test
extra, and one of its packages changes what the sidecar loads: import-linter pulls in ``rich``,
which structlog imports whenever it is installed (for its tracebacks), 3.4 MiB of RSS that the
shipped sidecar never carries (``import sidecar.main``: 55.8 MiB with rich installed, 52.4 without).
So the sidecar benchmarks run the console script of a venv made the way the image's is: the files
the Dockerfile's build stage copies, installed by pip, at the versions installed in this venv
(its ``pip freeze`` as constraints, so both venvs run the same libraries). Made once under
``out/`` (about a minute, from PyPI), the project reinstalled on every run (about 7 s).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.assemble import ROOT
from bench.harness import BenchError

VENV = ROOT / "out" / "bench-image-venv"
"""Not committed (``out/``); delete it to start afresh."""

PIP_SECONDS = 900.0


def copied_sources(dockerfile: Path = ROOT / "Dockerfile") -> list[str]:
    """The paths the Dockerfile's build stage copies into the directory it installs from, in its order."""
    sources: list[str] = []
    stages = 0
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if not words:
            continue
        if words[0].upper() == "FROM":
            stages += 1
        elif words[0].upper() == "COPY" and stages == 1 and not any(w.startswith("--from") for w in words):
            sources.extend(w for w in words[1:-1] if not w.startswith("--"))
    if not sources:
        raise BenchError(f"{dockerfile}: no COPY in its first stage")
    return sources


def _pip(python: Path, *args: str) -> str:
    """``python -m pip ARGS``, quietly; its standard output."""
    try:
        return subprocess.run(
            [str(python), "-m", "pip", "--disable-pip-version-check", "--quiet", *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=PIP_SECONDS,
        ).stdout
    except subprocess.CalledProcessError as error:
        tail = "\n".join((error.stderr or error.stdout or "").splitlines()[-15:])
        raise BenchError(f"pip {' '.join(args[:1])} in {python.parent.parent} failed:\n{tail}") from error


def prepare() -> Path:
    """The image-like venv's ``buildkit-sidecar``, with this checkout's code installed in it now."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=120)
    frozen = _pip(Path(sys.executable), "freeze", "--exclude-editable")
    with tempfile.TemporaryDirectory(prefix="bench-image-") as scratch:
        source = Path(scratch) / "src"
        source.mkdir()
        for name in copied_sources():
            origin = ROOT / name
            if origin.is_dir():
                shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(origin, source / name)
        constraints = Path(scratch) / "constraints.txt"
        constraints.write_text(frozen, encoding="utf-8")
        _pip(python, "install", "--constraint", str(constraints), str(source))
    script = VENV / "bin" / "buildkit-sidecar"
    if not script.exists():
        raise BenchError(f"{script}: not installed by pip")
    return script
