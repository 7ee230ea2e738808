"""The alerts and the dashboard watch what the code exposes: the rules pass ``promtool``,
use only metrics the sidecar and autoscaler expose, the drain alerts fire at the drain
deadline, the dashboard is well formed, and a real Prometheus scraping the real sidecar
(against the fake buildkitd) and autoscaler evaluates every alert and dashboard expression.

Needs Debian's ``prometheus`` (``promtool``, ``prometheus``): .ci/run installs it.
Nothing is skipped when it is missing: the test fails and says what to install.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry

from autoscaler.config import Config
from autoscaler.controller.metrics import Metrics as AutoscalerMetrics
from fakes.buildkitd import FakeBuildkitd
from fakes.kubernetes import FakeCluster
from sidecar.metrics import Metrics as SidecarMetrics
from sidecar.state import BuilderState
from sidecar.tracking import Tracker
from tests.deploy.manifests import DEPLOY, Obj, builders, find, sidecar_settings, tool

# -- alerts and dashboard -----------------------------------------------------


def promtool() -> str:
    return tool("promtool", "install Debian's prometheus package (apt-get install prometheus), as .ci/run does")


def rules_file(objs: list[Obj], directory: Path) -> Path:
    (rule,) = find(objs, "PrometheusRule")
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
    return path


def alert_rules(objs: list[Obj]) -> list[Obj]:
    (rule,) = find(objs, "PrometheusRule")
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def dashboard(objs: list[Obj]) -> Obj:
    (configmap,) = [
        c for c in find(objs, "ConfigMap") if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    ((name, text),) = configmap["data"].items()
    assert name.endswith(".json")
    loaded: Obj = json.loads(text)
    return loaded


def dashboard_queries(board: Obj) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def test_alert_rules_pass_promtool(composed: list[Obj], tmp_path: Path) -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(rules_file(composed, tmp_path))], capture_output=True, text=True, check=False
    )
    assert 0 == done.returncode, done.stdout + done.stderr
    names = {r["alert"] for r in alert_rules(composed)}
    # the alerts the issue asks for
    assert {
        "BuildkitdDown",
        "BuildkitDrainOverran",
        "BuildkitPoolAtMaxReplicas",
        "BuildkitAutoscalerNotLeading",
        "BuildkitAutoscalerConfigRejected",
    } <= names


def exposed_metric_names() -> set[str]:
    """Every sample name the sidecar and the autoscaler expose, from their own metric objects."""
    registry = CollectorRegistry()
    state = BuilderState(tracker=Tracker(tombstone_seconds=60), arch="amd64", now=0.0)
    SidecarMetrics(registry=registry, state=state)
    AutoscalerMetrics(registry=registry)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    return {family.name + s for family in registry.collect() for s in suffixes.get(family.type, [""])}


def test_alerts_and_dashboard_use_only_metrics_the_code_exposes(composed: list[Obj]) -> None:
    exposed = exposed_metric_names()
    queries = [r["expr"] for r in alert_rules(composed)] + dashboard_queries(dashboard(composed))
    used = {m for q in queries for m in re.findall(r"\bbuildkit_[a-z_]+\b", q)}
    assert used, "no buildkit_* metric referenced"
    assert set() == used - exposed


def test_drain_alerts_fire_at_the_drain_deadline(composed: list[Obj], config: Config) -> None:
    (deadline,) = {
        sidecar_settings(d["spec"]["template"]["spec"]).drain_timeout_seconds for _, d in builders(composed, config)
    }
    rules = {r["alert"]: r["expr"] for r in alert_rules(composed)}
    overran = re.search(r"> (\d+(?:\.\d+)?)\s*$", rules["BuildkitDrainOverran"])
    near = re.search(r"> (\d+(?:\.\d+)?)\s*$", rules["BuildkitDrainNearDeadline"])
    assert overran
    assert near
    assert deadline == float(overran[1])
    assert math.isclose(0.8 * deadline, float(near[1]))


def test_the_grafana_dashboard_is_well_formed(composed: list[Obj]) -> None:
    board = dashboard(composed)
    assert board["uid"]
    assert board["title"]
    assert {"datasource", "arch"} <= {v["name"] for v in board["templating"]["list"]}
    ids = [p["id"] for p in board["panels"]]
    assert sorted(set(ids)) == sorted(ids)
    for panel in board["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert all(t["expr"] and t["refId"] for t in panel["targets"])


# -- a real Prometheus --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


SIDECAR = Path(sys.executable).with_name("buildkit-sidecar")
SCRAPE_SECONDS = 0.5
SCRAPE_INTERVAL = "500ms"
WAIT_SECONDS = 30.0


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


async def _wait_http(url: str, *, within: float = WAIT_SECONDS, process: asyncio.subprocess.Process, log: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            assert process.returncode is None, f"exited {process.returncode}: {_log(log)}"
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert loop.time() < deadline, f"{url} not up within {within} s: {_log(log)}"
            await asyncio.sleep(0.1)


class Prom:
    """Prometheus' HTTP API; ``logs`` are the processes' logs, for failure messages."""

    def __init__(self, url: str, session: aiohttp.ClientSession, *, logs: list[Path]) -> None:
        self.url = url
        self.session = session
        self.logs = logs

    def tail(self, lines: int = 20) -> str:
        return "\n".join(f"--- {log.name}\n" + "\n".join(_log(log).splitlines()[-lines:]) for log in self.logs)

    async def query(self, expr: str) -> Obj:
        async with self.session.get(self.url + "/api/v1/query", params={"query": expr}) as response:
            body: Obj = await response.json()
        assert "success" == body["status"], f"{expr}: {body}"
        return body

    async def value(self, expr: str) -> float | None:
        result = (await self.query(expr))["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    async def until(self, expr: str, expected: float, *, within: float = WAIT_SECONDS) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (last := await self.value(expr)) != expected:
            assert loop.time() < deadline, f"{expr}: {last}, expected {expected}\n{self.tail()}"
            await asyncio.sleep(SCRAPE_SECONDS / 2)


AUTOSCALER = Path(sys.executable).with_name("buildkit-autoscaler")
POD = "buildkitd-amd64-0"


def _fake_cluster(k8s: FakeCluster, *, config: str, pool: Any) -> None:
    """The amd64 builder Deployment with one pod (the real sidecar, on 127.0.0.1), and the ConfigMap."""
    labels = dict(pool.selector)
    k8s.put(
        "deployments.apps",
        pool.namespace,
        {
            "metadata": {"name": pool.deployment, "labels": labels},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {}},
        },
    )
    k8s.put(
        "pods",
        pool.namespace,
        {
            "metadata": {"name": POD, "labels": labels},
            "spec": {"containers": [{"name": "buildkitd", "image": "moby/buildkit"}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
        },
    )
    k8s.put(
        "configmaps", pool.namespace, {"metadata": {"name": "buildkit-autoscaler"}, "data": {"config.yaml": config}}
    )


@pytest.fixture
async def stack(
    daemon: FakeBuildkitd, k8s: FakeCluster, composed: list[Obj], config: Config, tmp_path: Path
) -> AsyncIterator[Prom]:
    """The real sidecar against the fake buildkitd; the real autoscaler against the fake
    API server, reading active builds from Prometheus (``source: prometheus``, the default
    query); and Debian's Prometheus scraping both every 0.5 s with the shipped alert rules
    (the monitoring component's, as the guide's overlay switches it on).
    The scrape labels are the ones the Prometheus Operator's PodMonitor gives (namespace, pod)."""
    prometheus = tool("prometheus", "install Debian's prometheus package (apt-get install prometheus)")
    for script in (SIDECAR, AUTOSCALER):
        assert script.exists(), f"{script}: the project is not installed in this interpreter's environment"
    public, admin, metrics, web = free_port(), free_port(), free_port(), free_port()
    pool = next(p for p in config.pools if p.arch == "amd64")

    # The shipped config, reduced to the amd64 pool, polling every second, reading Prometheus.
    shipped_config = yaml.safe_load((DEPLOY / "config.yaml").read_text(encoding="utf-8"))
    shipped_config["pollIntervalSeconds"] = 1
    shipped_config["source"] = {"type": "prometheus", "url": f"http://127.0.0.1:{web}"}
    shipped_config["pools"] = [{**p, "sidecarPort": public} for p in shipped_config["pools"] if p["name"] == "amd64"]
    _fake_cluster(k8s, config=yaml.safe_dump(shipped_config), pool=pool)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": k8s.url}}],
                "users": [{"name": "nobody", "user": {}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "nobody"}}],
                "current-context": "fake",
            }
        ),
        encoding="utf-8",
    )

    prometheus_config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(rules_file(composed, tmp_path))],
        "scrape_configs": [
            {
                "job_name": "buildkitd",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{public}"], "labels": {"namespace": pool.namespace, "pod": POD}}
                ],
            },
            {"job_name": "buildkit-autoscaler", "static_configs": [{"targets": [f"127.0.0.1:{metrics}"]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDKIT_SIDECAR_", "BUILDKIT_AUTOSCALER_"))}
    processes: list[tuple[asyncio.subprocess.Process, Path]] = []

    async def start(name: str, argv: list[str]) -> asyncio.subprocess.Process:
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        processes.append((process, log))
        return process

    try:
        sidecar = await start(
            "sidecar",
            [str(SIDECAR), "run", f"--buildkit-addr={daemon.address}", f"--listen=127.0.0.1:{public}",
             f"--admin-listen=127.0.0.1:{admin}", "--agent-listen=none", "--arch=amd64", "--drain-quiet-seconds=0"],
        )  # fmt: skip
        server = await start(
            "prometheus",
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{web}", "--log.level=warn"],
        )  # fmt: skip
        autoscaler = await start(
            "autoscaler",
            [str(AUTOSCALER), "run", f"--kubeconfig={kubeconfig}",
             f"--config-map={pool.namespace}/buildkit-autoscaler", f"--lease={pool.namespace}/buildkit-autoscaler",
             f"--listen=127.0.0.1:{metrics}"],
        )  # fmt: skip
        await _wait_http(f"http://127.0.0.1:{public}/healthz", process=sidecar, log=tmp_path / "sidecar.log")
        await _wait_http(f"http://127.0.0.1:{web}/-/ready", process=server, log=tmp_path / "prometheus.log")
        await _wait_http(f"http://127.0.0.1:{metrics}/metrics", process=autoscaler, log=tmp_path / "autoscaler.log")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            yield Prom(f"http://127.0.0.1:{web}", session, logs=[log for _, log in processes])
    finally:
        for process, _ in reversed(processes):
            if process.returncode is None:
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _rules(prom: Prom) -> list[Obj]:
    async with prom.session.get(prom.url + "/api/v1/rules") as response:
        groups = (await response.json())["data"]["groups"]
    return [r for g in groups for r in g["rules"]]


@pytest.mark.looptime(False)
async def test_a_real_prometheus_follows_the_builds_and_the_autoscaler_scales_from_it(
    stack: Prom, daemon: FakeBuildkitd, k8s: FakeCluster, composed: list[Obj]
) -> None:
    prom = stack
    active = 'buildkit_sidecar_active_builds{job="buildkitd", arch="amd64"}'
    await prom.until('sum(up{job=~"buildkitd|buildkit-autoscaler"})', 2)
    await prom.until(active, 0)
    await prom.until('buildkit_autoscaler_is_leader{job="buildkit-autoscaler"}', 1)

    # Builds start: the sidecar counts them, Prometheus scrapes it, the autoscaler
    # reads Prometheus and scales: 4 builds, 2 per replica, +2 spares -> 4.
    refs = [daemon.start_build() for _ in range(4)]
    await prom.until(active, 4)
    await prom.until('buildkit_autoscaler_active_builds{job="buildkit-autoscaler", pool="amd64"}', 4)
    await prom.until('buildkit_autoscaler_desired_replicas{job="buildkit-autoscaler", pool="amd64"}', 4)
    assert 4 == k8s.get("deployments.apps", "buildkit", "buildkitd-amd64")["spec"]["replicas"], prom.tail()
    for ref in refs:
        daemon.complete_build(ref)
    await prom.until(active, 0)
    await prom.until('sum(buildkit_sidecar_builds_completed_total{job="buildkitd"})', 4)
    await prom.until('buildkit_autoscaler_active_builds{job="buildkit-autoscaler", pool="amd64"}', 0)

    # Every alert and every dashboard query is valid PromQL over these series...
    for rule in alert_rules(composed):
        await prom.query(rule["expr"])
    for expr in dashboard_queries(dashboard(composed)):
        await prom.query(expr.replace("$__rate_interval", "1m").replace("$arch", ".*"))

    # ...and Prometheus evaluated every loaded rule without an error, with nothing
    # firing or pending on a healthy fleet with a leading autoscaler.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while True:
        rules = await _rules(prom)
        evaluated = rules and all(r.get("lastEvaluation", "").startswith("2") for r in rules)
        if evaluated and not any(r.get("alerts") for r in rules):
            break
        assert loop.time() < deadline, [(r["name"], r["health"], r.get("alerts")) for r in rules]
        await asyncio.sleep(SCRAPE_SECONDS)
    assert {r["alert"] for r in alert_rules(composed)} == {r["name"] for r in rules}
    assert [] == [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
