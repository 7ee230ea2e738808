"""The Dockerfile builds the image the manifests run: pyproject's Python, both console
scripts, a non-root user with the same ids the manifests run it as, and pyproject's
version and licence in its labels."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from common.version import package_version
from tests.deploy.manifests import PYPROJECT, ROOT, SCRIPTS, Obj, find, project_image


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def test_the_dockerfile_runs_the_console_scripts_as_non_root_on_pyprojects_python(shipped: list[Obj]) -> None:
    steps = _dockerfile()
    args = {k: v for k, _, v in (a.partition("=") for i, a in steps if i == "ARG")}
    minimum = re.fullmatch(r">=\s*(\d+\.\d+)", PYPROJECT["project"]["requires-python"])
    assert minimum
    assert minimum[1] == args["PYTHON_VERSION"] == PYPROJECT["tool"]["mypy"]["python_version"]
    froms = [a for i, a in steps if i == "FROM"]
    assert len(froms) >= 2, "multi-stage: the build tools stay out of the runtime image"
    assert all(f.startswith("python:${PYTHON_VERSION}-") for f in froms)
    (entrypoint,) = [json.loads(a) for i, a in steps if i == "ENTRYPOINT"]
    named = {entrypoint[0]} | {
        w for i, a in steps if i == "RUN" for w in shlex.split(a) if w.startswith("/opt/venv/bin/buildkit-")
    }
    named = {Path(n).name for n in named}
    assert named <= set(SCRIPTS)
    assert set(SCRIPTS) <= named, "the image checks that both commands run"
    user = [a for i, a in steps if i == "USER"][-1]
    uid, _, gid = user.partition(":")
    assert int(uid) != 0
    assert int(gid) != 0
    # the manifests run the image with the same ids, and name only its console scripts
    for deployment in find(shipped, "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            if not project_image(c["image"]):
                continue
            assert c["command"][0] in SCRIPTS, c["name"]
            context = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
            assert (int(uid), int(gid)) == (context["runAsUser"], context["runAsGroup"])
            assert context["readOnlyRootFilesystem"] is True


def test_the_image_is_labelled_with_the_package_version_and_licence() -> None:
    labels = dict(
        word.split("=", 1)
        for instruction, args in _dockerfile()
        if instruction == "LABEL"
        for word in shlex.split(args)
    )
    assert PYPROJECT["project"]["version"] == labels["org.opencontainers.image.version"]
    assert package_version() == labels["org.opencontainers.image.version"], "reinstall: make .venv/.installed"
    assert PYPROJECT["project"]["license"] == labels["org.opencontainers.image.licenses"]
    assert (ROOT / "LICENSE").is_file()
    assert ["LICENSE"] == PYPROJECT["project"]["license-files"]
