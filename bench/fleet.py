"""What the autoscaler benchmarks stand on: the fake fleet in a child process
(:mod:`bench.fake_fleet`), the real :class:`~autoscaler.controller.loop.Controller`
in this one, and the configuration they share.

The controller is wired as ``buildkit-autoscaler run`` wires it (a
kubernetes-asyncio ``ApiClient``, one default ``aiohttp.ClientSession`` for the
sidecars, no elector: ``--once`` style, always acting), with production's
structlog chain writing JSON lines to a file instead of stdout (stdout carries
the report).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog
import yaml
from kubernetes_asyncio import client
from prometheus_client import CollectorRegistry

from autoscaler.config import Pool, load_config
from autoscaler.controller.kube import Kube
from autoscaler.controller.loop import Controller, RunSettings
from autoscaler.controller.metrics import Metrics
from bench.harness import BenchError, log_tail, loop_time, read_cpu_seconds
from common.logs import LEVELS, processors

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = ROOT / "deploy" / "config.yaml"

NAMESPACE = "buildkit"
DEPLOYMENT = "buildkitd-amd64"
CONFIG_MAP = "buildkit-autoscaler"
ARCH = "amd64"
LABELS = {"app.kubernetes.io/name": "buildkitd", "app.kubernetes.io/instance": DEPLOYMENT}

MAX_REPLICAS = 1000
"""The config's ceiling for maxReplicas, and the fleet the issue asks to measure."""

READY_TIMEOUT_SECONDS = 30.0
"""The fake fleet starts in about a second; 30 s covers a loaded machine."""

STOP_TIMEOUT_SECONDS = 10.0
SYNC_TIMEOUT_SECONDS = 30.0
"""The pod cache's first LIST of 1,000 pods and the watch events that follow."""

NOTHING_SINCE = 2**62
"""A ``since`` beyond any request count: the fake lists no calls, only its counters."""

WAIT_POLL_SECONDS = 0.005
"""How often :func:`until` looks again: small against a cycle, cheap for the loop."""


async def until(predicate: Callable[[], bool], *, within: float, what: str) -> None:
    """Wait (real time) until ``predicate()`` holds, or fail saying what was awaited."""
    deadline = loop_time() + within
    while not predicate():
        if loop_time() > deadline:
            raise BenchError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(WAIT_POLL_SECONDS)


# --- configuration ----------------------------------------------------------------------------


def config_yaml(
    *, sidecar_port: int, poll_interval_seconds: float, scale_down_window_seconds: float | None = None
) -> str:
    """The shipped ``deploy/config.yaml``, its amd64 pool only, resized for 1,000 fake pods.

    Overridden: ``pollIntervalSeconds``, ``maxReplicas`` (1,000, the schema's ceiling),
    ``sidecarPort`` (the fake's), and the scale-down window if ``scale_down_window_seconds``
    is given; everything else (policies, statusConcurrency 64, statusTimeoutSeconds 2,
    annotations) is what ships.
    """
    shipped = yaml.safe_load(SHIPPED_CONFIG.read_text())
    pool = next(p for p in shipped["pools"] if p["name"] == ARCH)
    pool = {**pool, "maxReplicas": MAX_REPLICAS, "sidecarPort": sidecar_port, "selector": dict(LABELS)}
    if scale_down_window_seconds is not None:
        pool["scaleDown"] = {**pool.get("scaleDown", {}), "stabilizationWindowSeconds": scale_down_window_seconds}
    document = {**shipped, "pollIntervalSeconds": poll_interval_seconds, "pools": [pool]}
    text: str = yaml.safe_dump(document, sort_keys=False)
    load_config(text)  # fail here, not in the controller, if the shipped config moved on
    return text


def pool_of(text: str) -> Pool:
    """The (single) pool of a benchmark config."""
    return load_config(text).pools[0]


def steady_loads(*, pods: int, target_builds_per_replica: int, spare_replicas: int) -> list[int | None]:
    """Loads that need exactly ``pods`` replicas: 0–4 builds per pod in turn (mean 2, a fifth idle),
    trimmed from the end until ceil(builds ÷ target) + spare = pods."""
    loads: list[int | None] = [i % 5 for i in range(pods)]
    want = (pods - spare_replicas) * target_builds_per_replica
    excess = sum(x or 0 for x in loads) - want
    index = pods - 1
    while excess > 0:
        current = loads[index] or 0
        cut = min(current, excess)
        loads[index] = current - cut
        excess -= cut
        index -= 1
    if excess < 0:
        raise BenchError(f"cannot spread {want} builds over {pods} pods at 0–4 each")
    return loads


def count_verbs(calls: Iterable[list[Any]]) -> dict[str, int]:
    """API requests by verb (``list``, ``watch``, ``get``, ``patch``, ``create``, ...)."""
    return dict(collections.Counter(str(c[0]) for c in calls))


# --- the child process ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Calls:
    """The fake API's request log from some index on, and the fleet's counters now."""

    count: int
    """Requests logged in total (the next ``since``)."""
    calls: list[list[Any]]
    """(verb, resource, namespace, name, subresource) of each request since."""
    times: list[float]
    """Each one's arrival instant (``time.monotonic()``)."""
    status_requests: int
    """``/status`` GETs the fake sidecars answered in total."""
    status_read_before: list[float | None]
    """Per call, for a scale PATCH: when the fake sidecars last answered a ``/status`` before it."""
    replicas: int | None

    def scale_patches(self) -> list[float]:
        """Arrival instants of the ``deployments/scale`` PATCHes."""
        return [t for c, t in zip(self.calls, self.times, strict=True) if c[0] == "patch" and c[4] == "scale"]


@dataclass
class FleetProcess:
    """The running ``python -m bench.fake_fleet`` and a client for its control API."""

    process: asyncio.subprocess.Process
    control_url: str
    api_url: str
    sidecar_port: int
    log_path: Path
    session: aiohttp.ClientSession
    pods: int = field(default=0)

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """utime + stime of the fake fleet process so far."""
        return read_cpu_seconds(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.process.returncode is not None:
            raise BenchError(f"the fake fleet exited with {self.process.returncode}:\n{self.log_tail()}")
        async with self.session.post(self.control_url + path, json=body) as response:
            if response.status != 200:
                raise BenchError(f"fake fleet {path}: HTTP {response.status}: {await response.text()}")
            answer: dict[str, Any] = await response.json()
            return answer

    async def setup(self, *, pods: int, replicas: int, loads: list[int | None], config: str) -> None:
        """Deployment, ConfigMap and exactly ``pods`` pods with these loads."""
        await self._post(
            "/setup",
            {
                "spec": {"namespace": NAMESPACE, "deployment": DEPLOYMENT, "labels": LABELS, "arch": ARCH},
                "pods": pods,
                "replicas": replicas,
                "config_map": CONFIG_MAP,
                "config_yaml": config,
                "loads": loads,
            },
        )
        self.pods = pods

    async def set_loads(self, loads: list[int | None]) -> float:
        """Every pod's ``/status`` reports these from the returned instant on."""
        answer = await self._post("/loads", {"loads": loads})
        return float(answer["at"])

    async def set_replicas(self, replicas: int) -> float:
        answer = await self._post("/replicas", {"replicas": replicas})
        return float(answer["at"])

    async def counters(self) -> Calls:
        """The counters only (``count``, ``status_requests``, ``replicas``): no calls listed."""
        return await self.calls(since=NOTHING_SINCE)

    async def calls(self, since: int = 0) -> Calls:
        async with self.session.get(self.control_url + "/calls", params={"since": str(since)}) as response:
            if response.status != 200:
                raise BenchError(f"fake fleet /calls: HTTP {response.status}")
            raw = await response.json()
        return Calls(
            count=raw["count"],
            calls=raw["calls"],
            times=raw["times"],
            status_requests=raw["status_requests"],
            status_read_before=raw["status_read_before"],
            replicas=raw["replicas"],
        )


@contextlib.asynccontextmanager
async def fake_fleet(*, directory: Path, pods: int) -> AsyncIterator[FleetProcess]:
    """Start the fake fleet process (answering for ``pods`` addresses); stop and reap it at exit."""
    log_path = directory / "fake-fleet.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.fake_fleet",
            "--pods",
            str(pods),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
    try:
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT_SECONDS)
            ready = json.loads(line)
        except (TimeoutError, ValueError) as e:
            raise BenchError(f"the fake fleet did not start: {log_path.read_text(errors='replace')[-2000:]}") from e
        async with aiohttp.ClientSession() as session:
            yield FleetProcess(
                process=process,
                control_url=ready["control_url"],
                api_url=ready["api_url"],
                sidecar_port=int(ready["sidecar_port"]),
                log_path=log_path,
                session=session,
            )
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_SECONDS)
            except TimeoutError:
                process.kill()
                await process.wait()  # reaped: its CPU time now counts as this process's children's


# --- the controller ---------------------------------------------------------------------------


@contextlib.contextmanager
def logging_to(path: Path, level: str = "info") -> Iterator[None]:
    """Production's structlog chain (``common.logs.configure``), into ``path`` instead of stdout.

    Loggers are not cached (production caches them), so that the defaults come back at exit; the
    controller logs nothing in a steady cycle, so this costs the measurements nothing.
    """
    with path.open("a") as log_file:
        structlog.configure(
            processors=processors(),
            wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
            logger_factory=structlog.WriteLoggerFactory(file=log_file),
            cache_logger_on_first_use=False,
        )
        try:
            yield
        finally:
            structlog.reset_defaults()


def _wall() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


@contextlib.asynccontextmanager
async def controller(fleet: FleetProcess) -> AsyncIterator[Controller]:
    """A started Controller on the fake API, its pod cache holding every pod of the fleet."""
    loop = asyncio.get_running_loop()
    configuration = client.Configuration(host=fleet.api_url)
    async with client.ApiClient(configuration) as api, aiohttp.ClientSession() as http:
        made = Controller(
            kube=Kube(api),
            settings=RunSettings(config_namespace=NAMESPACE, config_name=CONFIG_MAP),
            metrics=Metrics(registry=CollectorRegistry()),
            elector=None,
            http=http,
            clock=loop.time,
            wall=_wall,
        )
        started = loop_time()
        try:
            mark = (await fleet.counters()).count
            await made.start()
            await until(lambda: pods_cached(made) == fleet.pods, within=SYNC_TIMEOUT_SECONDS, what="the pod cache")
            # Each cache LISTs, then opens its WATCH: wait for every watch, so none lands in a timed cycle.
            while True:
                verbs = count_verbs((await fleet.calls(since=mark)).calls)
                if verbs.get("watch", 0) >= verbs.get("list", 0):
                    break
                if loop_time() - started > SYNC_TIMEOUT_SECONDS:
                    raise BenchError(f"the controller's watches did not all open: {verbs}")
                await asyncio.sleep(WAIT_POLL_SECONDS)
            yield made
        finally:
            await made.close()


def pods_cached(made: Controller) -> int | None:
    """Pods in the (single) pool's watch cache; None until its first LIST."""
    for state in made.pools.states.values():
        return len(state.pods.objects) if state.pods.synced.is_set() else None
    return None
