"""``source: prometheus``: the query against a real aiohttp fake of Prometheus' HTTP API
(``aiohttp_server``), its strict parsing and failures, and the controller driven by it
against the fake Kubernetes API, on fake time."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from kubernetes_asyncio.client import V1ObjectMeta, V1Pod, V1PodCondition, V1PodStatus

from autoscaler.config import Pool, PrometheusSource
from autoscaler.controller.observe import view as pod_view
from autoscaler.controller.sources.prometheus import fetch_pool, render_query
from autoscaler.controller.sources.sidecars import SidecarStatus, Unreadable
from tests.autoscaler.fleet import DEPLOY, NS, Fleet, Sidecars, config_yaml, events, sample, step

ServerFactory = Callable[..., Awaitable[TestServer]]
POOL = Pool(name="amd64", namespace="buildkit", deployment="buildkitd-amd64", max_replicas=10)


class FakePrometheus:
    """``GET /api/v1/query``: one vector sample per entry of :attr:`samples` (pod -> value string),
    or whatever :attr:`reply` returns; every request's parameters are kept in :attr:`queries`."""

    def __init__(self) -> None:
        self.samples: dict[str, str] = {}
        self.reply: Callable[[], web.Response] | None = None
        self.hold: asyncio.Event | None = None
        """When set (to an unset Event): requests wait for it, as a Prometheus that does not answer."""
        self.queries: list[dict[str, str]] = []

    def app(self, prefix: str = "") -> web.Application:
        app = web.Application()
        app.router.add_get(f"{prefix}/api/v1/query", self._query)
        return app

    async def _query(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        if self.hold is not None:
            await self.hold.wait()
        if self.reply is not None:
            return self.reply()
        result = [{"metric": {"pod": pod}, "value": [1767225600.0, value]} for pod, value in self.samples.items()]
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})


@pytest.fixture
async def prometheus(aiohttp_server: ServerFactory) -> tuple[FakePrometheus, str]:
    fake = FakePrometheus()
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url(""))


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


async def read(
    http: aiohttp.ClientSession, url: str, pods: list[str], *, query: str | None = None
) -> dict[str, SidecarStatus | Unreadable]:
    source = PrometheusSource(type="prometheus", url=url, **({"query": query} if query else {}))
    return await fetch_pool(http, source=source, pool=POOL, pods=pods, timeout_seconds=1.0)


def active(status: SidecarStatus | Unreadable) -> int | str | None:
    return status.active_count if isinstance(status, SidecarStatus) else f"unreadable: {status.reason}"


# --- the query ------------------------------------------------------------------------------------


def test_the_query_gets_the_pools_namespace_and_arch() -> None:
    template = 'sum by (pod) (x{namespace="$namespace", arch="${arch}", other="$archive", y="$namespace_"})'
    assert 'sum by (pod) (x{namespace="buildkit", arch="amd64", other="$archive", y="$namespace_"})' == render_query(
        template, pool=POOL
    )


async def test_each_pod_reads_its_own_sample_and_the_request_carries_the_rendered_query(
    prometheus: tuple[FakePrometheus, str], http: aiohttp.ClientSession
) -> None:
    fake, url = prometheus
    fake.samples = {"b-1": "3", "b-2": "0", "someone-else": "7"}
    statuses = await read(http, url, ["b-1", "b-2"])
    assert {"b-1": 3, "b-2": 0} == {pod: active(s) for pod, s in statuses.items()}
    assert SidecarStatus(arch=None, buildkit_up=True, draining=False, active_count=3) == statuses["b-1"]
    expected = 'max by (pod) (buildkit_sidecar_active_builds{namespace="buildkit", arch="amd64"})'
    assert [{"query": expected, "timeout": "1"}] == fake.queries


async def test_a_base_url_with_a_path_keeps_it(aiohttp_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    fake = FakePrometheus()
    fake.samples = {"b-1": "1"}
    server = await aiohttp_server(fake.app("/prometheus"))
    statuses = await read(http, str(server.make_url("/prometheus/")), ["b-1"])
    assert {"b-1": 1} == {pod: active(s) for pod, s in statuses.items()}


async def test_no_pods_asks_nothing(prometheus: tuple[FakePrometheus, str], http: aiohttp.ClientSession) -> None:
    fake, url = prometheus
    assert {} == await read(http, url, [])
    assert [] == fake.queries


# --- per-pod outcomes -------------------------------------------------------------------------------


async def test_a_pod_without_a_sample_has_unknown_load(
    prometheus: tuple[FakePrometheus, str], http: aiohttp.ClientSession
) -> None:
    fake, url = prometheus
    fake.samples = {"b-1": "2"}
    statuses = await read(http, url, ["b-1", "b-2"])
    assert 2 == active(statuses["b-1"])
    assert Unreadable("no sample in Prometheus' answer") == statuses["b-2"]


async def test_nan_is_unknown_load_never_zero(
    prometheus: tuple[FakePrometheus, str], http: aiohttp.ClientSession
) -> None:
    fake, url = prometheus
    fake.samples = {"b-1": "NaN"}
    status = (await read(http, url, ["b-1"]))["b-1"]
    assert SidecarStatus(arch=None, buildkit_up=False, draining=False, active_count=None) == status
    pod = _pod("b-1")
    assert None is pod_view(pod, status, pool=POOL).active_builds


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("-1", "not a finite number ≥ 0"),
        ("+Inf", "not a finite number ≥ 0"),
        ("-Inf", "not a finite number ≥ 0"),
        ("three", "not a number"),
    ],
)
async def test_a_value_that_is_not_a_count_makes_only_that_pod_unreadable(
    prometheus: tuple[FakePrometheus, str], http: aiohttp.ClientSession, value: str, why: str
) -> None:
    fake, url = prometheus
    fake.samples = {"b-1": value, "b-2": "1"}
    statuses = await read(http, url, ["b-1", "b-2"])
    assert isinstance(statuses["b-1"], Unreadable)
    assert why in statuses["b-1"].reason
    assert 1 == active(statuses["b-2"])


async def test_a_malformed_sample_value_makes_only_that_pod_unreadable(
    prometheus: tuple[FakePrometheus, str], http: aiohttp.ClientSession
) -> None:
    fake, url = prometheus
    result = [{"metric": {"pod": "b-1"}, "value": "3"}, {"metric": {"pod": "b-2"}, "value": [1.0, "2"]}]
    fake.reply = lambda: web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})
    statuses = await read(http, url, ["b-1", "b-2"])
    assert isinstance(statuses["b-1"], Unreadable)
    assert 2 == active(statuses["b-2"])


async def test_a_fractional_value_rounds_up(
    prometheus: tuple[FakePrometheus, str], http: aiohttp.ClientSession
) -> None:
    fake, url = prometheus
    fake.samples = {"b-1": "1.25"}
    assert 2 == active((await read(http, url, ["b-1"]))["b-1"])


async def test_two_samples_for_one_pod_make_it_unreadable(
    prometheus: tuple[FakePrometheus, str], http: aiohttp.ClientSession
) -> None:
    fake, url = prometheus
    result = [
        {"metric": {"pod": "b-1", "namespace": "a"}, "value": [1.0, "0"]},
        {"metric": {"pod": "b-1", "namespace": "b"}, "value": [1.0, "4"]},
        {"metric": {"pod": "b-2"}, "value": [1.0, "1"]},
    ]
    fake.reply = lambda: web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})
    statuses = await read(http, url, ["b-1", "b-2"])
    assert Unreadable("2 samples for this pod (the query must return one)") == statuses["b-1"]
    assert 1 == active(statuses["b-2"])


async def test_an_arch_label_is_checked_against_the_pool(
    prometheus: tuple[FakePrometheus, str], http: aiohttp.ClientSession
) -> None:
    fake, url = prometheus
    result = [{"metric": {"pod": "b-1", "arch": "arm64"}, "value": [1.0, "0"]}]
    fake.reply = lambda: web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})
    status = (await read(http, url, ["b-1"]))["b-1"]
    assert None is pod_view(_pod("b-1"), status, pool=POOL).active_builds  # an arm64 builder in the amd64 pool


# --- the query as a whole fails ----------------------------------------------------------------------


def _json(payload: Any, status: int = 200) -> Callable[[], web.Response]:
    return lambda: web.json_response(payload, status=status)


def _text(text: str, status: int) -> Callable[[], web.Response]:
    return lambda: web.Response(text=text, status=status)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (
            _json({"status": "error", "errorType": "bad_data", "error": "1:5: parse error: unexpected"}, 400),
            "HTTP 400: bad_data: 1:5: parse error: unexpected",
        ),
        (_text("<html>Bad Gateway</html>", 502), "HTTP 502"),
        (_json({"status": "error", "errorType": "timeout", "error": "query timed out"}), "timeout: query timed out"),
        (_text("not json", 200), "not JSON"),
        (_json(["success"]), "not a JSON object"),
        (_json({"status": "success"}), "no data object"),
        (
            _json({"status": "success", "data": {"resultType": "matrix", "result": []}}),
            "resultType 'matrix', not 'vector'",
        ),
        (_json({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}}), "resultType 'scalar'"),
        (_json({"status": "success", "data": {"resultType": "vector", "result": {}}}), "not a list"),
        (_json({"status": "success", "data": {"resultType": "vector", "result": [[1.0, "2"]]}}), "result[0] is not"),
        (
            _json(
                {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "6"]}]}}
            ),
            "result[0] has no pod label",
        ),
    ],
    ids=[
        "bad-query",
        "proxy-error",
        "error-status",
        "not-json",
        "not-object",
        "no-data",
        "matrix",
        "scalar",
        "result-not-list",
        "sample-not-object",
        "no-pod-label",
    ],
)
async def test_a_failed_query_makes_every_pod_unreadable_with_the_reason(
    prometheus: tuple[FakePrometheus, str],
    http: aiohttp.ClientSession,
    reply: Callable[[], web.Response],
    reason: str,
) -> None:
    fake, url = prometheus
    fake.reply = reply
    statuses = await read(http, url, ["b-1", "b-2"])
    assert ["b-1", "b-2"] == sorted(statuses)
    for status in statuses.values():
        assert isinstance(status, Unreadable)
        assert status.reason.startswith("Prometheus query failed: ")
        assert reason in status.reason


async def test_no_answer_within_the_timeout_makes_every_pod_unreadable(
    prometheus: tuple[FakePrometheus, str], http: aiohttp.ClientSession
) -> None:
    fake, url = prometheus
    fake.hold = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        statuses = await read(http, url, ["b-1"])
    finally:
        fake.hold.set()
    assert Unreadable("Prometheus query failed: no answer within 1 s") == statuses["b-1"]
    assert math.isclose(1.0, loop.time() - started, abs_tol=0.1)


async def test_an_unreachable_prometheus_makes_every_pod_unreadable(http: aiohttp.ClientSession) -> None:
    server = TestServer(web.Application())
    await server.start_server()
    url = str(server.make_url(""))
    await server.close()  # nothing listens there any more
    statuses = await read(http, url, ["b-1"])
    assert isinstance(statuses["b-1"], Unreadable)
    assert "ClientConnectorError" in statuses["b-1"].reason


def _pod(name: str) -> Any:
    return V1Pod(
        metadata=V1ObjectMeta(name=name),
        status=V1PodStatus(
            phase="Running", pod_ip="127.0.0.2", conditions=[V1PodCondition(type="Ready", status="True")]
        ),
    )


# --- the controller on the Prometheus source ----------------------------------------------------------


def prometheus_config(url: str, **pool: Any) -> str:
    config = yaml.safe_load(config_yaml(**pool))
    config["source"] = {"type": "prometheus", "url": url}
    return yaml.safe_dump(config)


def use(cluster: Fleet, config: str) -> None:
    cluster.k8s.put("configmaps", NS, {"metadata": {"name": "buildkit-autoscaler"}, "data": {"config.yaml": config}})


async def test_a_surge_prometheus_reports_scales_up_without_asking_the_sidecars(
    fleet: Fleet,
    sidecars: Sidecars,
    controller_factory: Any,
    prometheus: tuple[FakePrometheus, str],
) -> None:
    fake, url = prometheus
    use(fleet, prometheus_config(url))
    await fleet.reconcile()
    controller = await controller_factory()
    # The sidecars say idle; Prometheus says 3 builds on each of the 2 builders.
    fake.samples = {pod["metadata"]["name"]: "3" for pod in fleet.pods()}
    await step(controller, fleet)
    assert 4 == fleet.replicas  # 6 builds, 2 per replica, +1 spare
    scaled = events(fleet.k8s, "ScaledUp")
    assert 1 == len(scaled)
    assert "6 active builds" in scaled[0]["message"]
    expected = f'max by (pod) (buildkit_sidecar_active_builds{{namespace="{NS}", arch="amd64"}})'
    assert {expected} == {q["query"] for q in fake.queries}


async def test_a_pod_prometheus_has_no_sample_for_blocks_scale_down_until_it_has_one(
    fleet: Fleet,
    sidecars: Sidecars,
    controller_factory: Any,
    prometheus: tuple[FakePrometheus, str],
) -> None:
    fake, url = prometheus
    use(fleet, prometheus_config(url))
    fleet.k8s.put("deployments.apps", NS, {**fleet.deployment(), "spec": {**fleet.deployment()["spec"], "replicas": 3}})
    await fleet.reconcile()
    controller = await controller_factory()
    names = sorted(pod["metadata"]["name"] for pod in fleet.pods())
    fake.samples = dict.fromkeys(names[:2], "0")  # idle, and nothing known of the third
    for _ in range(30):  # 150 s: well past the 60 s scale-down window
        await step(controller, fleet)
    assert 3 == fleet.replicas
    assert 1.0 == sample(controller, "buildkit_autoscaler_unreadable_pods", pool="amd64")
    assert f"{DEPLOY}-" in names[2]

    fake.samples[names[2]] = "0"
    for _ in range(30):
        await step(controller, fleet)
    assert 1 == fleet.replicas
    assert 0.0 == sample(controller, "buildkit_autoscaler_unreadable_pods", pool="amd64")
