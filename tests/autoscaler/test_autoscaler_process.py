"""The real ``buildkit-autoscaler run`` command in a child process, against the fake
Kubernetes API (kmock + the stateful layer) through a kubeconfig file, and real HTTP
sidecar fakes on loopback addresses. Real time: each run is one short cycle."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from fakes.kubernetes import FakeCluster
from tests.autoscaler.fleet import DEPLOY, NS, Fleet, Sidecars, config_yaml, events

pytestmark = [pytest.mark.looptime(False)]

_SCRIPT = Path(sys.executable).with_name("buildkit-autoscaler")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "autoscaler.cli"]
"""The installed console script (what the image runs), or the module if not installed."""

EXIT_SECONDS = 30.0
"""A generous ceiling for one run (imports on a loaded machine); a run takes about a second."""

CONFIG_MAP = f"{NS}/buildkit-autoscaler"
WRITES = ("patch", "create", "replace", "delete")


@dataclass(frozen=True)
class Result:
    code: int
    output: str


Run = Callable[..., Awaitable[Result]]


@pytest.fixture
def kubeconfig(k8s: FakeCluster, tmp_path: Path) -> Path:
    """A kubeconfig for the fake API server: plain http, no credentials."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": k8s.url}}],
                "users": [{"name": "nobody", "user": {}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "nobody", "namespace": NS}}],
                "current-context": "fake",
            }
        )
    )
    return path


@pytest.fixture
def autoscaler(kubeconfig: Path) -> Run:
    """Run ``buildkit-autoscaler run --kubeconfig FILE ARGS...``; the output is stdout and stderr."""

    async def run(*args: str, kube: bool = True) -> Result:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDKIT_AUTOSCALER_")}
        process = await asyncio.create_subprocess_exec(
            *COMMAND,
            "run",
            *(["--kubeconfig", str(kubeconfig)] if kube else []),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        try:
            out, _ = await asyncio.wait_for(process.communicate(), EXIT_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert process.returncode is not None
        return Result(process.returncode, out.decode())

    return run


def writes(k8s: FakeCluster) -> list[Any]:
    return [call for call in k8s.calls if call[0] in WRITES]


async def test_once_scales_the_deployment_to_its_builds_and_says_why(
    fleet: Fleet,
    sidecars: Sidecars,
    autoscaler: Run,
) -> None:
    await fleet.reconcile()
    for ip in list(sidecars.runners):
        sidecars.loads[ip] = 3
    result = await autoscaler("--once", "--config-map", CONFIG_MAP)
    assert 0 == result.code, result.output
    assert 4 == fleet.replicas, result.output  # 6 builds, 2 per replica, +1 spare
    assert ("patch", "deployments.apps", NS, DEPLOY, "scale") in fleet.k8s.calls
    scaled = events(fleet.k8s, "ScaledUp")
    assert 1 == len(scaled)
    assert "6 active builds" in scaled[0]["message"]
    assert '"event": "scaled"' in result.output
    assert 0 == fleet.k8s.count("create", "leases.coordination.k8s.io")  # --once: no leader election


async def test_dry_run_once_logs_the_decision_and_writes_nothing(
    fleet: Fleet,
    sidecars: Sidecars,
    autoscaler: Run,
) -> None:
    await fleet.reconcile()
    for ip in list(sidecars.runners):
        sidecars.loads[ip] = 3
    before = len(fleet.k8s.calls)
    result = await autoscaler("--once", "--dry-run", "--config-map", CONFIG_MAP)
    assert 0 == result.code, result.output
    assert [] == writes(fleet.k8s)
    assert 2 == fleet.replicas
    assert [] == [c for c in fleet.k8s.calls[before:] if c[1] == "leases.coordination.k8s.io"]
    assert '"event": "scale_dry_run"' in result.output
    assert '"desired": 4' in result.output


async def test_an_invalid_configmap_at_start_up_exits_2_naming_the_field(
    fleet: Fleet,
    autoscaler: Run,
) -> None:
    broken = config_yaml(minReplicas=-4)
    fleet.k8s.put("configmaps", NS, {"metadata": {"name": "buildkit-autoscaler"}, "data": {"config.yaml": broken}})
    result = await autoscaler("--once", "--config-map", CONFIG_MAP)
    assert 2 == result.code, result.output
    assert '"event": "startup_failed"' in result.output
    assert "is invalid and there is no last good config: pools[0].minReplicas: must be" in result.output
    assert [] == writes(fleet.k8s)


async def test_a_missing_configmap_exits_2(k8s: FakeCluster, autoscaler: Run) -> None:
    result = await autoscaler("--once", "--config-map", f"{NS}/nowhere")
    assert 2 == result.code, result.output
    assert f"ConfigMap {NS}/nowhere not found" in result.output
    assert [] == writes(k8s)


@pytest.mark.parametrize("value", ["buildkit-autoscaler", "/name", "ns/", "ns/name/extra"])
async def test_a_bad_config_map_value_exits_2_with_usage(k8s: FakeCluster, autoscaler: Run, value: str) -> None:
    result = await autoscaler("--once", "--config-map", value)
    assert 2 == result.code, result.output
    assert f"--config-map must be NAMESPACE/NAME, got {value!r}" in result.output
    assert [] == k8s.calls  # refused before any API call


async def test_no_config_map_at_all_exits_2(k8s: FakeCluster, autoscaler: Run) -> None:
    result = await autoscaler("--once")
    assert 2 == result.code, result.output
    assert "--config-map (or BUILDKIT_AUTOSCALER_CONFIG_MAP) is required" in result.output
