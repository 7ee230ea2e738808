"""The renders of deploy/ that every deploy test reads, made once for the whole folder:
``kubectl kustomize`` takes seconds per render."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from autoscaler.config import Config, load_config
from tests.deploy import documented
from tests.deploy.manifests import DEPLOY, ROOT, Obj, tool


def kubectl() -> str:
    return tool("kubectl", "the manifests render with kubectl 1.27+ (kustomize v5); Debian's 1.20 is too old")


def kustomize(directory: Path) -> list[Obj]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert 0 == done.returncode, f"kubectl kustomize {directory}:\n{done.stderr}"
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


def _own_overlay(tmp: Path, *, components: list[str]) -> Path:
    """An overlay outside deploy/ (as a user's GitOps repository has), adding components."""
    tmp.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(DEPLOY, tmp)
    text = yaml.safe_dump(
        {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [rel],
            "components": [f"{rel}/components/{c}" for c in components],
        }
    )
    (tmp / "kustomization.yaml").write_text(text, encoding="utf-8")
    return tmp


def guide_overlay(tmp: Path, heading: str) -> Path:
    """The overlay a section of docs/deployment.md shows, written out verbatim as the guide
    lays it out: ``fleet/`` next to a clone of this repository in ``buildkit-fleet/`` (here a
    symlink to it). A pool block in the section (a YAML list) is appended to the pools of a
    copy of deploy/config.yaml, which is what the guide says ``fleet/config.yaml`` is."""
    text = documented.section(heading)
    shown = documented.files(text, prefix="fleet/")
    assert "fleet/kustomization.yaml" in shown, f"docs/deployment.md {heading!r} shows no fleet/kustomization.yaml"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "buildkit-fleet").symlink_to(ROOT, target_is_directory=True)
    for path, body in shown.items():
        (tmp / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp / path).write_text(body, encoding="utf-8")
    pools = [p for b in documented.blocks(text, "yaml") if isinstance(p := yaml.safe_load(b), list)]
    if pools:
        config = yaml.safe_load((DEPLOY / "config.yaml").read_text(encoding="utf-8"))
        config["pools"] += [pool for block in pools for pool in block]
        (tmp / "fleet" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return tmp / "fleet"


@pytest.fixture(scope="package")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Obj]]:
    dry_run = _own_overlay(tmp_path_factory.mktemp("overlay"), components=["dry-run"])
    with_components = guide_overlay(tmp_path_factory.mktemp("guide"), "### Your overlay")
    with_pool = guide_overlay(tmp_path_factory.mktemp("guide-pool"), "## Adding a pool")
    without_router = guide_overlay(tmp_path_factory.mktemp("guide-no-router"), "### Running without the router")
    return {
        "deploy": kustomize(DEPLOY),
        "base": kustomize(DEPLOY / "base"),
        "with-components": kustomize(with_components),
        "with-dry-run": kustomize(dry_run),
        "with-pool": kustomize(with_pool),
        "without-router": kustomize(without_router),
    }


@pytest.fixture(scope="package")
def shipped(renders: dict[str, list[Obj]]) -> list[Obj]:
    """What ``kubectl apply -k deploy`` applies: the base, no component."""
    return renders["deploy"]


@pytest.fixture(scope="package")
def composed(renders: dict[str, list[Obj]]) -> list[Obj]:
    """The guide's own overlay: deploy/ with the cert-manager and monitoring components on."""
    return renders["with-components"]


@pytest.fixture(scope="package")
def config() -> Config:
    return load_config((DEPLOY / "config.yaml").read_text(encoding="utf-8"))
