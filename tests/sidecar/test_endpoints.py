"""The public and admin HTTP apps, served for real with ``aiohttp_client`` by a
sidecar that follows the fake daemon over gRPC, on fake time."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from fakes.buildkitd import FakeBuildkitd
from sidecar.state import Loss
from tests.conftest import Running

Factory = Callable[..., Awaitable[Running]]
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")

CONTRACT_METRICS = (
    "buildkit_sidecar_active_builds",
    "buildkit_sidecar_builds_started_total",
    "buildkit_sidecar_builds_completed_total",
    "buildkit_sidecar_build_duration_seconds",
    "buildkit_sidecar_buildkit_up",
    "buildkit_sidecar_draining",
    "buildkit_sidecar_drain_duration_seconds",
    "buildkit_sidecar_stream_reconnects_total",
    "buildkit_sidecar_last_sync_timestamp_seconds",
    "buildkit_sidecar_drain_started_timestamp_seconds",
    "buildkit_sidecar_info",
)


async def connected(sidecar_factory: Factory, **changes: object) -> Running:
    """A connected sidecar, made inside the test (fixtures run on looptime's real clock)."""
    running = await sidecar_factory(**changes)
    await running.until(lambda s: s.up)
    return running


async def get_json(client: TestClient[Any, Any], path: str, method: str = "GET", **kwargs: Any) -> tuple[int, Any]:
    async with client.request(method, path, **kwargs) as response:
        assert "application/json" == response.content_type
        return response.status, await response.json()


async def status_of(client: TestClient[Any, Any]) -> dict[str, Any]:
    code, body = await get_json(client, "/status")
    assert 200 == code
    assert isinstance(body, dict)
    return body


async def scrape(client: TestClient[Any, Any]) -> list[Sample]:
    async with client.get("/metrics") as response:
        assert 200 == response.status
        text = await response.text()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


# -- /status -------------------------------------------------------------------


async def test_status_reports_contract_fields_with_running_builds(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory)
    older = daemon.start_build(created_at=1_700_000_000.5)
    newer = daemon.start_build(created_at=time.time() - 120)
    await running.until(lambda s: s.active_count() == 2)
    public = await aiohttp_client(running.sidecar.public_app)

    body = await status_of(public)
    contract = {k: body[k] for k in ("version", "arch", "buildkit_up", "draining", "active_count", "buildkit_version")}
    assert {
        "version": 1,
        "arch": "amd64",
        "buildkit_up": True,
        "draining": False,
        "active_count": 2,
        "buildkit_version": "v0.32.2",
    } == contract
    builds = body["active_builds"]
    assert [older, newer] == [b["ref"] for b in builds]
    assert all({"ref", "started_at", "age_seconds"} == set(b) for b in builds)
    assert "2023-11-14T22:13:20.500000Z" == builds[0]["started_at"]
    for build in builds:
        assert RFC3339_UTC.match(build["started_at"])
        assert datetime.fromisoformat(build["started_at"]).utcoffset() is not None
    assert 120 <= builds[1]["age_seconds"] < 180
    assert builds[0]["age_seconds"] > builds[1]["age_seconds"]


async def test_status_of_idle_builder_counts_zero_builds(
    sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory)
    public = await aiohttp_client(running.sidecar.public_app)
    body = await status_of(public)
    assert (0, []) == (body["active_count"], body["active_builds"])


async def test_status_reports_unknown_builds_as_null_while_buildkitd_is_down(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory)
    daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    public = await aiohttp_client(running.sidecar.public_app)

    await daemon.kill()
    await running.until(lambda s: not s.up)
    body = await status_of(public)
    assert {"buildkit_up": False, "active_count": None, "active_builds": None, "arch": "amd64"} == {
        k: body[k] for k in ("buildkit_up", "active_count", "active_builds", "arch")
    }

    await daemon.restart()
    await running.until(lambda s: s.up)
    body = await status_of(public)
    assert (True, 0, []) == (body["buildkit_up"], body["active_count"], body["active_builds"])


async def test_status_reports_null_arch_until_buildkitd_is_first_reached(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    await daemon.kill()
    running = await sidecar_factory()
    public = await aiohttp_client(running.sidecar.public_app)
    body = await status_of(public)
    assert {
        "version": 1,
        "arch": None,
        "buildkit_up": False,
        "draining": False,
        "active_count": None,
        "active_builds": None,
        "buildkit_version": None,
    } == {
        k: body[k]
        for k in ("version", "arch", "buildkit_up", "draining", "active_count", "active_builds", "buildkit_version")
    }
    samples = await scrape(public)
    assert {"unknown"} == {s.labels["arch"] for s in samples if s.name.startswith("buildkit_sidecar_")}

    await daemon.restart()
    await running.until(lambda s: s.up)
    assert "amd64" == (await status_of(public))["arch"]


async def test_status_uses_arch_override_before_buildkitd_answers(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    await daemon.kill()
    running = await sidecar_factory(arch="arm64")
    public = await aiohttp_client(running.sidecar.public_app)
    assert "arm64" == (await status_of(public))["arch"]


# -- /readyz and /healthz ------------------------------------------------------


async def test_readyz_is_200_when_connected_and_503_with_reason_while_buildkitd_is_down(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory)
    public = await aiohttp_client(running.sidecar.public_app)
    assert (200, {"ready": True, "reason": "ok"}) == await get_json(public, "/readyz")

    await daemon.kill()
    await running.until(lambda s: not s.up)
    code, body = await get_json(public, "/readyz")
    assert (503, False) == (code, body["ready"])
    assert body["reason"].startswith("buildkitd unreachable: ")

    await daemon.restart()
    await running.until(lambda s: s.up)
    assert (200, {"ready": True, "reason": "ok"}) == await get_json(public, "/readyz")


async def test_readyz_fails_while_buildkitd_finishes_builds_before_exiting(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory, resync_interval_seconds=1)
    ref = daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    public = await aiohttp_client(running.sidecar.public_app)
    exiting = asyncio.create_task(daemon.graceful_exit())

    await running.until(lambda s: not s.connection.accepting)
    code, body = await get_json(public, "/readyz")
    assert (503, "buildkitd is shutting down and refuses new connections") == (code, body["reason"])
    status = await status_of(public)
    assert (True, 1) == (status["buildkit_up"], status["active_count"]), "the open stream still counts exactly"

    daemon.complete_build(ref)
    await exiting
    await running.until(lambda s: s.connection.loss is Loss.CLEAN_EXIT)


async def test_healthz_is_ok_while_following_even_with_buildkitd_down(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    # /healthz fails after 3 resyncs + 2 RPC timeouts + 1 reconnect delay of silence: 130 s here.
    running = await connected(sidecar_factory, reconnect_max_seconds=10)
    public = await aiohttp_client(running.sidecar.public_app)
    assert (200, {"status": "ok"}) == await get_json(public, "/healthz")
    await asyncio.sleep(200)  # several resync intervals on an open stream
    assert (200, {"status": "ok"}) == await get_json(public, "/healthz")

    await daemon.kill()
    await asyncio.sleep(200)  # liveness must not get a builder killed for its daemon
    assert (200, {"status": "ok"}) == await get_json(public, "/healthz")


async def test_healthz_fails_when_the_follower_stopped_running(
    sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory)
    public = await aiohttp_client(running.sidecar.public_app)
    running.sidecar.stop.set()
    await running.task
    await asyncio.sleep(100)
    assert 200 == (await get_json(public, "/healthz"))[0]
    await asyncio.sleep(100)
    code, body = await get_json(public, "/healthz")
    assert 503 == code
    assert "follower has not run" in body["error"]


async def test_probes_answer_head_requests(sidecar_factory: Factory, aiohttp_client: ClientFactory) -> None:
    running = await connected(sidecar_factory)
    public = await aiohttp_client(running.sidecar.public_app)
    for path in ("/healthz", "/readyz", "/status", "/metrics"):
        async with public.head(path) as response:
            assert (path, 200) == (path, response.status)


# -- /metrics ------------------------------------------------------------------


async def test_metrics_parse_and_every_series_has_arch_and_no_ref(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory)
    public = await aiohttp_client(running.sidecar.public_app)
    admin = await aiohttp_client(running.sidecar.admin_app)
    done = daemon.start_build()
    failed = daemon.start_build()
    still_running = daemon.start_build()
    await running.until(lambda s: s.active_count() == 3)
    daemon.complete_build(done)
    daemon.complete_build(failed, error_code=2, error_message="process exited with 1")
    await running.until(lambda s: s.active_count() == 1)
    # a lost and regained stream, and a finished drain, so every family has samples
    await daemon.kill()
    await running.until(lambda s: not s.up)
    await daemon.restart()
    await running.until(lambda s: s.up)
    late = daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    drain = asyncio.create_task(admin.post("/drain"))
    await running.until(lambda s: s.draining)
    daemon.complete_build(late)
    async with await drain as response:
        assert 200 == response.status

    samples = await scrape(public)
    ours = [s for s in samples if s.name.startswith("buildkit_sidecar_")]
    assert [] == [s for s in ours if "arch" not in s.labels]
    assert [] == [s for s in ours if "ref" in s.labels]
    refs = {done, failed, still_running, late}
    assert [] == [s for s in ours if refs & set(s.labels.values())]
    names = {s.name for s in ours}
    missing = [
        name
        for name in CONTRACT_METRICS
        if name not in names and f"{name}_count" not in names and f"{name}_bucket" not in names
    ]
    assert [] == missing

    def value(name: str, **labels: str) -> float:
        (match,) = [s.value for s in ours if s.name == name and s.labels == {"arch": "amd64", **labels}]
        return match

    assert 4.0 == value("buildkit_sidecar_builds_started_total")
    assert 2.0 == value("buildkit_sidecar_builds_completed_total", result="success")
    assert 1.0 == value("buildkit_sidecar_builds_completed_total", result="failed")
    assert 1.0 == value("buildkit_sidecar_stream_reconnects_total")
    assert 1.0 == value("buildkit_sidecar_drain_duration_seconds_count", reason="idle")
    assert 1.0 == value("buildkit_sidecar_draining")
    assert 1.0 == value("buildkit_sidecar_info", buildkit_version="v0.32.2")
    assert 0.0 == value("buildkit_sidecar_active_builds")
    assert 1.0 == value("buildkit_sidecar_buildkit_up")
    assert 0 < value("buildkit_sidecar_last_sync_timestamp_seconds")
    assert 0 < value("buildkit_sidecar_drain_started_timestamp_seconds")


async def test_build_duration_buckets_reach_past_two_hours(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory)
    public = await aiohttp_client(running.sidecar.public_app)
    ref = daemon.start_build(created_at=time.time() - 3 * 3600)
    daemon.complete_build(ref)
    await running.until(lambda s: s.tracker.tombstone_count() == 1)
    buckets = {
        float(s.labels["le"]): s.value
        for s in await scrape(public)
        if s.name == "buildkit_sidecar_build_duration_seconds_bucket"
    }
    assert max(b for b in buckets if math.isfinite(b)) >= 7200
    assert 0.0 == buckets[7200.0]
    assert 1.0 == buckets[math.inf]


async def test_metrics_say_active_builds_unknown_not_zero_while_buildkitd_is_down(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory)
    public = await aiohttp_client(running.sidecar.public_app)
    await daemon.kill()
    await running.until(lambda s: not s.up)
    samples = {s.name: s.value for s in await scrape(public) if s.labels == {"arch": "amd64"}}
    assert math.isnan(samples["buildkit_sidecar_active_builds"])
    assert 0.0 == samples["buildkit_sidecar_buildkit_up"]
    assert 0.0 == samples["buildkit_sidecar_ready"]


# -- the admin app serves only /drain --------------------------------------------


@pytest.mark.parametrize("path", ["/status", "/metrics", "/healthz", "/readyz", "/"])
async def test_admin_app_serves_nothing_but_drain(
    sidecar_factory: Factory, aiohttp_client: ClientFactory, path: str
) -> None:
    running = await connected(sidecar_factory)
    admin = await aiohttp_client(running.sidecar.admin_app)
    assert (404, {"error": "Not Found"}) == await get_json(admin, path)


# -- bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        ("public", "POST", "/status", "GET,HEAD"),
        ("public", "DELETE", "/metrics", "GET,HEAD"),
        ("public", "PUT", "/readyz", "GET,HEAD"),
        ("public", "POST", "/healthz", "GET,HEAD"),
        ("admin", "PUT", "/drain", "DELETE,GET,POST"),
        ("admin", "PATCH", "/drain", "DELETE,GET,POST"),
    ],
)
async def test_wrong_method_is_405_json_naming_the_allowed_ones(
    sidecar_factory: Factory, aiohttp_client: ClientFactory, case: tuple[str, str, str, str]
) -> None:
    app, method, path, allowed = case
    running = await connected(sidecar_factory)
    client = await aiohttp_client(getattr(running.sidecar, f"{app}_app"))
    async with client.request(method, path) as response:
        assert (405, "application/json") == (response.status, response.content_type)
        assert {"error": "Method Not Allowed"} == await response.json()
        assert set(allowed.split(",")) == set(response.headers["Allow"].split(","))
    assert not running.state.draining


@pytest.mark.parametrize("path", ["/", "/nope", "/status/", "/drain/x", "/../etc/passwd", "/metrics.json"])
async def test_unknown_path_is_404_json(sidecar_factory: Factory, aiohttp_client: ClientFactory, path: str) -> None:
    running = await connected(sidecar_factory)
    public = await aiohttp_client(running.sidecar.public_app)
    assert (404, {"error": "Not Found"}) == await get_json(public, path)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"drain please", id="not-json"),
        pytest.param(b"{", id="truncated-json"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'"now"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b"42", id="number"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
    ],
)
async def test_drain_with_a_body_that_is_not_a_json_object_is_400_and_does_not_drain(
    sidecar_factory: Factory, aiohttp_client: ClientFactory, body: bytes
) -> None:
    running = await connected(sidecar_factory)
    admin = await aiohttp_client(running.sidecar.admin_app)
    code, answer = await get_json(admin, "/drain", method="POST", data=body)
    assert (400, {"error": "body must be empty or a JSON object"}) == (code, answer)
    assert not running.state.draining


@pytest.mark.parametrize("body", [b"", b"  \n", b"{}", b'{"reason": "preStop"}'])
async def test_drain_accepts_an_empty_body_or_a_json_object(
    sidecar_factory: Factory, aiohttp_client: ClientFactory, body: bytes
) -> None:
    running = await connected(sidecar_factory)
    admin = await aiohttp_client(running.sidecar.admin_app)
    code, answer = await get_json(admin, "/drain", method="POST", data=body)
    assert (200, True) == (code, answer["drained"])


async def test_drain_with_a_body_over_the_limit_is_413_and_does_not_drain(
    sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory)
    admin = await aiohttp_client(running.sidecar.admin_app)
    huge = b'{"pad": "' + b"x" * (64 * 1024) + b'"}'
    code, answer = await get_json(admin, "/drain", method="POST", data=huge)
    assert (413, {"error": "Request Entity Too Large"}) == (code, answer)
    assert not running.state.draining


async def test_error_bodies_never_carry_a_stack_trace(sidecar_factory: Factory, aiohttp_client: ClientFactory) -> None:
    running = await connected(sidecar_factory)
    public = await aiohttp_client(running.sidecar.public_app)
    admin = await aiohttp_client(running.sidecar.admin_app)
    attempts = [
        (public, "GET", "/nope", None),
        (public, "POST", "/status", None),
        (admin, "PUT", "/drain", None),
        (admin, "POST", "/drain", b"[1, 2"),
        (admin, "POST", "/drain", b"x" * (32 * 1024)),
    ]
    for client, method, path, data in attempts:
        async with client.request(method, path, data=data) as response:
            text = await response.text()
            assert 400 <= response.status < 500
            assert "Traceback" not in text
            assert 'File "' not in text
            assert len(text) < 200
