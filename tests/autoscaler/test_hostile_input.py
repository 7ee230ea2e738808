"""Hostile answers never crash the autoscaler's cycle: its readers of the sidecars'
``/status`` and of Prometheus refuse them with a reason (the pod counts as busy), and
every Kubernetes call, the Lease read and the watch cache's LIST included, ends at its
timeout against a server that never answers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes_asyncio import client as k8s_client

from autoscaler.controller.kube import Kube, KubeError, ObjectRef
from autoscaler.controller.leadership import Elector, LeaseSettings
from autoscaler.controller.sources import prometheus
from autoscaler.controller.sources.sidecars import (
    MAX_STATUS_BYTES,
    SidecarStatus,
    StatusError,
    Unreadable,
    fetch_one,
    parse_status,
)
from autoscaler.controller.watching import WatchCache

ServerFactory = Callable[..., Awaitable[TestServer]]


# -- the autoscaler's /status reader -------------------------------------------------

GOOD_STATUS = {"version": 1, "arch": "amd64", "buildkit_up": True, "draining": False, "active_count": 0}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 200_000, id="deep-array"),
        pytest.param(b'{"a":' * 200_000, id="deep-object"),
        pytest.param(json.dumps({**GOOD_STATUS, "x": 1}).encode()[:-1] + b', "y": ' + b"[" * 100_000, id="deep-field"),
        pytest.param(b"[" * (MAX_STATUS_BYTES // 2) + b"]" * (MAX_STATUS_BYTES // 2), id="deep-and-closed"),
    ],
)
def test_deeply_nested_json_is_refused_with_a_reason_never_a_recursion_error(body: bytes) -> None:
    with pytest.raises(StatusError, match=r"not JSON|not a JSON object"):
        parse_status(body)


def test_nesting_that_json_accepts_inside_an_unknown_field_is_ignored() -> None:
    nested: Any = 0
    for _ in range(500):
        nested = [nested]
    assert SidecarStatus(arch="amd64", buildkit_up=True, draining=False, active_count=0) == parse_status(
        json.dumps({**GOOD_STATUS, "from_the_future": nested}).encode()
    )


_any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(version=_any_json)
def test_any_version_but_1_is_refused_and_only_a_different_number_is_a_mismatch(version: object) -> None:
    body = json.dumps({**GOOD_STATUS, "version": version}).encode()
    if type(version) is int and version == 1:
        assert parse_status(body).active_count == 0
        return
    with pytest.raises(StatusError) as caught:
        parse_status(body)
    # true and 1.0 equal 1 in Python but are no integer 1: refused as a bad type, not a new version
    assert (version != 1) == caught.value.version_mismatch


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(sorted(GOOD_STATUS)), value=_any_json, builds=_any_json)
def test_a_wrong_type_in_any_field_is_refused_or_read_as_valid_never_raises_otherwise(
    field: str, value: object, builds: object
) -> None:
    body = json.dumps({**GOOD_STATUS, field: value, "active_builds": builds}).encode()
    try:
        result = parse_status(body)
    except StatusError:
        return
    assert isinstance(result.buildkit_up, bool)
    assert isinstance(result.draining, bool)
    assert result.active_count is None or (type(result.active_count) is int and result.active_count >= 0)


def fake_sidecar(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.Application:
    app = web.Application()
    app.router.add_get("/status", handler)
    return app


async def endless(request: web.Request, *, chunk: bytes, pause_seconds: float) -> web.StreamResponse:
    """A body that never ends (bounded here only so the test leaves nothing behind)."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        for _ in range(10_000):
            await response.write(chunk)
            await asyncio.sleep(pause_seconds)
    return response


async def status_from(
    aiohttp_server: ServerFactory, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> tuple[SidecarStatus | Unreadable, float]:
    server = await aiohttp_server(fake_sidecar(handler))
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with aiohttp.ClientSession() as session:
        result = await fetch_one(session, url=str(server.make_url("/status")), timeout_seconds=2.0)
    return result, loop.time() - started


async def test_an_endless_fast_body_stops_at_the_size_limit(aiohttp_server: ServerFactory) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await endless(request, chunk=b"[" * 65536, pause_seconds=0)

    result, _ = await status_from(aiohttp_server, handler)
    assert Unreadable(f"body of {MAX_STATUS_BYTES + 1} bytes exceeds {MAX_STATUS_BYTES}") == result


async def test_an_endless_trickling_body_ends_at_the_status_timeout(aiohttp_server: ServerFactory) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await endless(request, chunk=b" ", pause_seconds=0.1)

    result, elapsed = await status_from(aiohttp_server, handler)
    assert Unreadable("no answer within 2 s") == result
    assert 2.0 == pytest.approx(elapsed, abs=0.2)


async def test_a_body_that_arrives_in_pieces_is_read_whole(aiohttp_server: ServerFactory) -> None:
    builds = [{"ref": f"build-{i:04}", "started_at": None, "age_seconds": 1.0} for i in range(1000)]
    body = json.dumps({**GOOD_STATUS, "active_count": 1000, "active_builds": builds}).encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for i in range(0, len(body), 4096):
            await response.write(body[i : i + 4096])
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    result, _ = await status_from(aiohttp_server, handler)
    assert SidecarStatus(arch="amd64", buildkit_up=True, draining=False, active_count=1000) == result


async def test_a_redirect_is_not_followed(aiohttp_server: ServerFactory) -> None:
    followed: list[str] = []

    async def elsewhere(_request: web.Request) -> web.Response:
        followed.append("yes")
        return web.json_response(GOOD_STATUS)

    app = fake_sidecar(redirect)
    app.router.add_get("/elsewhere", elsewhere)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        result = await fetch_one(session, url=str(server.make_url("/status")), timeout_seconds=2.0)
    assert (Unreadable("HTTP 302"), []) == (result, followed)


async def redirect(_request: web.Request) -> web.Response:
    raise web.HTTPFound("/elsewhere")


async def endless_fast(request: web.Request) -> web.StreamResponse:
    return await endless(request, chunk=b"[" * 1_048_576, pause_seconds=0)


async def endless_trickle(request: web.Request) -> web.StreamResponse:
    return await endless(request, chunk=b" ", pause_seconds=0.1)


async def deep_503(_request: web.Request) -> web.Response:
    return web.Response(status=503, body=b"[" * 500_000, content_type="application/json")


async def deep_200(_request: web.Request) -> web.Response:
    return web.Response(status=200, body=b"[" * 500_000, content_type="application/json")


async def never_followed(_request: web.Request) -> web.Response:
    raise AssertionError("a redirect was followed")


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        pytest.param("text/html", b"<html><body>502 Bad Gateway</body></html>", "not JSON", id="html-page"),
        pytest.param("text/plain", b"", "not JSON", id="empty"),
        pytest.param("application/octet-stream", b"\x00\xff" * 100, "not JSON", id="binary"),
        pytest.param("application/json", b"[" * 500_000, "not JSON: nested too deeply", id="deep-nesting"),
    ],
)
async def test_a_body_of_the_wrong_kind_is_unreadable_with_the_reason(
    aiohttp_server: ServerFactory, content_type: str, body: bytes, expected: str
) -> None:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    result, _ = await status_from(aiohttp_server, handler)
    assert isinstance(result, Unreadable)
    assert result.reason.startswith(expected)


async def test_json_sent_as_text_plain_is_still_read(aiohttp_server: ServerFactory) -> None:
    """The content type is not checked: the body is, strictly (a proxy may relabel it)."""

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(GOOD_STATUS), content_type="text/plain")

    result, _ = await status_from(aiohttp_server, handler)
    assert isinstance(result, SidecarStatus)


# -- the autoscaler's Prometheus reader ----------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 200_000, id="deep-array"),
        pytest.param(b'{"status": "success", "data": ' + b"[" * 200_000, id="deep-data"),
        pytest.param(b"<html>", id="html"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b'{"status": "success", "data": {"resultType": "matrix", "result": []}}', id="matrix"),
        pytest.param(b'{"status": "success", "data": {"resultType": "vector", "result": {}}}', id="result-object"),
        pytest.param(b'{"status": "success", "data": {"resultType": "vector", "result": [1]}}', id="sample-number"),
        pytest.param(b'{"status": "error", "errorType": "bad_data", "error": "parse error"}', id="error"),
        pytest.param(
            b'{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}', id="no-pod-label"
        ),
    ],
)
def test_a_prometheus_answer_that_is_not_the_vector_is_refused_with_a_reason(body: bytes) -> None:
    with pytest.raises(prometheus.PrometheusError) as caught:
        prometheus.parse_response(body)
    assert str(caught.value)


@settings(max_examples=200, deadline=None)
@given(value=_any_json, metric=_any_json)
def test_any_sample_either_reads_as_a_count_or_unknown_or_is_refused(value: object, metric: object) -> None:
    body = json.dumps(
        {
            "status": "success",
            "data": {"resultType": "vector", "result": [{"metric": metric, "value": value}]},
        }
    ).encode()
    try:
        found = prometheus.parse_response(body)
    except prometheus.PrometheusError:
        return
    for result in found.values():
        if isinstance(result, SidecarStatus):
            assert result.active_count is None or result.active_count >= 0


async def prometheus_query(
    aiohttp_server: ServerFactory, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> tuple[str, float]:
    app = web.Application()
    app.router.add_get("/api/v1/query", handler)
    app.router.add_get("/elsewhere", never_followed)
    server = await aiohttp_server(app)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(prometheus.PrometheusError) as caught:
            await prometheus.query(session, url=str(server.make_url("")), promql="up", timeout_seconds=2.0)
    return str(caught.value), loop.time() - started


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        pytest.param(endless_fast, f"answer exceeds {prometheus.MAX_RESPONSE_BYTES} bytes", id="endless-fast"),
        pytest.param(endless_trickle, "no answer within 2 s", id="endless-trickle"),
        pytest.param(redirect, "HTTP 302", id="redirect"),
        pytest.param(deep_503, "HTTP 503", id="error-with-deep-body"),
        pytest.param(deep_200, "not JSON: nested too deeply", id="deep-body"),
    ],
)
async def test_a_hostile_prometheus_fails_the_query_with_a_reason(
    aiohttp_server: ServerFactory, handler: Callable[[web.Request], Awaitable[web.StreamResponse]], expected: str
) -> None:
    reason, elapsed = await prometheus_query(aiohttp_server, handler)
    assert reason.startswith(expected)
    assert elapsed <= 2.2


# -- a timeout on every network call -------------------------------------------------


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """Accepts connections, reads what comes, never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def kube_against(port: int, *, timeout_seconds: float) -> AsyncIterator[Kube]:
    configuration = k8s_client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    async with k8s_client.ApiClient(configuration) as api:
        yield Kube(api, request_timeout_seconds=timeout_seconds)


KUBE_CALLS: dict[str, Callable[[Kube], Awaitable[object]]] = {
    "read_scale": lambda kube: kube.read_scale("ns", "deploy"),
    "patch_scale": lambda kube: kube.patch_scale("ns", "deploy", replicas=1, resource_version="1"),
    "deployment_selector": lambda kube: kube.deployment_selector("ns", "deploy"),
    "patch_pod_annotations": lambda kube: kube.patch_pod_annotations("ns", "pod", {"a": "b"}),
    "hpa_targets": lambda kube: kube.hpa_targets("ns"),
    "post_event": lambda kube: kube.post_event(
        ObjectRef(kind="Deployment", api_version="apps/v1", namespace="ns", name="deploy"),
        type_="Normal",
        reason="Test",
        message="m",
        now=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    ),
}


def test_every_kubernetes_call_of_kube_is_in_the_timeout_test() -> None:
    calls = {name for name, _ in inspect.getmembers(Kube, inspect.iscoroutinefunction) if not name.startswith("_")}
    assert calls == set(KUBE_CALLS), "a new Kubernetes call needs its entry in KUBE_CALLS"


@pytest.mark.parametrize("call", sorted(KUBE_CALLS))
async def test_a_kubernetes_call_to_a_server_that_never_answers_ends_at_the_request_timeout(call: str) -> None:
    async with silent_server() as port, kube_against(port, timeout_seconds=7.0) as kube:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(KubeError) as caught:
            await KUBE_CALLS[call](kube)
        elapsed = loop.time() - started
    assert caught.value.retryable
    assert 7.0 == pytest.approx(elapsed, abs=0.5)


async def test_the_lease_read_to_a_server_that_never_answers_ends_at_the_request_timeout() -> None:
    async with silent_server() as port, kube_against(port, timeout_seconds=3.0) as kube:
        loop = asyncio.get_running_loop()
        elector = Elector(
            kube=kube,
            settings=LeaseSettings(namespace="ns", name="lease", identity="me"),
            clock=loop.time,
            wall=lambda: datetime.datetime.now(tz=datetime.UTC),
        )
        started = loop.time()
        with pytest.raises(KubeError):
            await elector.try_acquire_or_renew()
        assert 3.0 == pytest.approx(loop.time() - started, abs=0.5)


async def test_a_cache_list_to_a_server_that_never_answers_ends_at_its_timeout_and_is_retried() -> None:
    async with silent_server() as port, kube_against(port, timeout_seconds=3.0) as kube:
        loop = asyncio.get_running_loop()
        cache = WatchCache(list_call=kube.core.list_namespaced_pod, namespace="ns", what="pods")
        stop = asyncio.Event()
        started = loop.time()
        task = asyncio.create_task(cache.run(stop=stop), name="cache")
        try:
            while cache.errors == 0:
                await asyncio.sleep(0.5)
            assert 30.0 == pytest.approx(loop.time() - started, abs=1.0)  # watching.py's LIST timeout
            assert not cache.synced.is_set()
        finally:
            stop.set()
            await task
