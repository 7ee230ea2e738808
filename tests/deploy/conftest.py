"""The renders of deploy/ that every deploy test reads, made once for the whole folder:
``kubectl kustomize`` takes seconds per render."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from autoscaler.config import Config, load_config
from tests.deploy.manifests import DEPLOY, Obj, tool


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


@pytest.fixture(scope="package")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Obj]]:
    overlay = _own_overlay(tmp_path_factory.mktemp("overlay"), components=["dry-run"])
    return {"deploy": kustomize(DEPLOY), "base": kustomize(DEPLOY / "base"), "with-dry-run": kustomize(overlay)}


@pytest.fixture(scope="package")
def shipped(renders: dict[str, list[Obj]]) -> list[Obj]:
    return renders["deploy"]


@pytest.fixture(scope="package")
def config() -> Config:
    return load_config((DEPLOY / "config.yaml").read_text(encoding="utf-8"))
