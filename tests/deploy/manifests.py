"""Reading the rendered deploy/ in the deploy tests: where the files are, picking objects
and containers out of a render, and a builder's sidecar settings parsed exactly as the
sidecar parses its own args and env. The renders themselves are fixtures (conftest.py).

The tests need ``kubectl`` (1.27+, kustomize v5), ``openssl`` for the guide's certificate
steps, for the alerts Debian's ``prometheus`` (``promtool``, ``prometheus``), and for the
router Debian's ``haproxy``: .ci/run installs the last three. Nothing is skipped when one
is missing: the test fails and says what to install.
"""

from __future__ import annotations

import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoscaler.config import Config
from sidecar.main import parser as sidecar_parser
from sidecar.settings import Settings, from_sources

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BUILDER_TEMPLATE = DEPLOY / "base" / "builders" / "template" / "deployment.yaml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]

Obj = dict[str, Any]


def tool(name: str, install: str) -> str:
    """The path of ``name`` on PATH; the test fails, saying how to install it, if it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: {install}")
    return path


VARIANTS = ("deploy", "base", "with-components", "with-dry-run", "with-pool", "without-router")
"""What is rendered: deploy/ as shipped (what `kubectl apply -k deploy` applies: no CRD),
deploy/base alone, and overlays outside deploy/, as a user's GitOps repository has them:
the guide's (docs/deployment.md, "Your overlay": the cert-manager and monitoring
components on), one adding the dry-run component, the guide's "Adding a pool", and the
guide's "Running without the router"."""


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = find(objs, kind, name)
    assert 1 == len(found), f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(pod_spec: Obj, name: str) -> Obj:
    for c in [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name!r}")


def builders(objs: list[Obj], config: Config) -> Iterator[tuple[Any, Obj]]:
    """Each pool with its builder Deployment."""
    for pool in config.pools:
        deployment = one(objs, "Deployment", pool.deployment)
        assert pool.namespace == deployment["metadata"]["namespace"]
        yield pool, deployment


def project_image(image: str) -> bool:
    """The project's own image (Dockerfile), as opposed to buildkitd's or HAProxy's."""
    return image.rsplit(":", 1)[0].endswith("/buildkit-fleet")


def env(container_spec: Obj) -> dict[str, str]:
    """A container's plain ``env`` values (``valueFrom`` entries left out)."""
    return {e["name"]: e["value"] for e in container_spec.get("env", []) if "value" in e}


def selects(selector: dict[str, str], template: Obj) -> bool:
    """Whether a label selector (matchLabels, or a Service's selector) picks a pod template's pods."""
    return bool(selector) and selector.items() <= template["metadata"]["labels"].items()


def way_in(objs: list[Obj], pool: Any) -> tuple[Obj, Obj, Obj]:
    """A pool's builds, as a client's connection takes them: the LoadBalancer Service named
    after the pool's Deployment (the name buildx dials and the server certificate carries),
    the router Deployment whose pods it selects, and the headless Service over the builders
    that this router resolves (its ``ROUTER_BACKENDS``, a fully qualified Service name)."""
    service = one(objs, "Service", pool.deployment)
    (router,) = [d for d in find(objs, "Deployment") if selects(service["spec"]["selector"], d["spec"]["template"])]
    fqdn = env(container(router["spec"]["template"]["spec"], "haproxy"))["ROUTER_BACKENDS"]
    name, namespace, rest = fqdn.split(".", 2)
    assert "svc.cluster.local" == rest, fqdn
    backends = one(objs, "Service", name)
    assert namespace == backends["metadata"]["namespace"], fqdn
    return service, router, backends


def sidecar_settings(pod_spec: Obj) -> Settings:
    """The sidecar's settings exactly as the sidecar itself parses its container's args and env."""
    sidecar = container(pod_spec, "sidecar")
    assert sidecar["command"][0] in SCRIPTS, sidecar["command"]
    args = sidecar_parser().parse_args(sidecar["args"])
    assert "run" == args.command
    return from_sources(args, env(sidecar))


def flag(args: list[str], name: str) -> list[str]:
    """Every value of ``--name=value`` in ``args``."""
    return [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]


def quantity_bytes(text: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?|k)?", str(text))
    assert match, f"not a quantity: {text!r}"
    return float(match[1]) * units.get(match[2] or "", 1)
