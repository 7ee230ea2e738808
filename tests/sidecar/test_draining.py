"""The drain through the real admin app: the sidecar follows the fake daemon over
gRPC and ``/drain`` is called over HTTP, all on fake time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp.test_utils import TestClient

from fakes.buildkitd import FakeBuildkitd
from sidecar.state import Loss
from tests.conftest import Running

Factory = Callable[..., Awaitable[Running]]
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

NO_CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=None)
"""Drains outlast aiohttp's default 5-minute client timeout, which runs on fake time too."""


async def connected(sidecar_factory: Factory, **changes: object) -> Running:
    """A sidecar following the fake daemon, connected and reconciled.

    Made inside the test, never in a fixture: looptime runs fixtures on the real
    clock and restarts the loop's time at 0 for the test, so a sidecar started
    in a fixture would hold timestamps (idle since, lost at) from another clock.
    """
    running = await sidecar_factory(**changes)
    await running.until(lambda s: s.up)
    return running


async def call(client: TestClient[Any, Any], method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    """One request; the status and the JSON body."""
    async with client.request(method, path, timeout=NO_CLIENT_TIMEOUT, **kwargs) as response:
        return response.status, await response.json()


def now() -> float:
    return asyncio.get_running_loop().time()


# -- release on idle ---------------------------------------------------------


async def test_drain_returns_only_after_last_build_completes_and_quiet_period(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory, drain_quiet_seconds=5)
    first, last = daemon.start_build(), daemon.start_build()
    await running.until(lambda s: s.active_count() == 2)
    admin = await aiohttp_client(running.sidecar.admin_app)
    began = now()
    request = asyncio.create_task(call(admin, "POST", "/drain"))

    await asyncio.sleep(10)
    daemon.complete_build(first)
    await running.until(lambda s: s.active_count() == 1)
    await asyncio.sleep(10)
    assert not request.done()

    daemon.complete_build(last)
    await running.until(lambda s: s.active_count() == 0)
    idle_at = now()
    await asyncio.sleep(4.5)
    assert not request.done(), "released before the quiet period passed"

    status, body = await request
    assert 200 == status
    assert {"drained": True, "reason": "idle"} == {k: body[k] for k in ("drained", "reason")}
    assert pytest.approx(idle_at + 5, abs=0.1) == now()
    assert pytest.approx(idle_at + 5 - began, abs=0.1) == body["waited_seconds"]


async def test_drain_of_idle_builder_with_no_quiet_period_returns_at_once(
    sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory)
    admin = await aiohttp_client(running.sidecar.admin_app)
    began = now()
    status, body = await call(admin, "POST", "/drain")
    assert (200, {"drained": True, "reason": "idle", "waited_seconds": 0.0}) == (status, body)
    assert pytest.approx(began, abs=0.01) == now()


async def test_drain_waits_for_build_started_after_drain_began(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory, drain_quiet_seconds=5)
    admin = await aiohttp_client(running.sidecar.admin_app)
    began = now()
    request = asyncio.create_task(call(admin, "POST", "/drain"))
    await asyncio.sleep(3)  # inside the quiet period: the load balancer still routes one in
    ref = daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    await asyncio.sleep(60)
    assert not request.done()

    daemon.complete_build(ref)
    await running.until(lambda s: s.active_count() == 0)
    completed_at = now()
    status, body = await request
    assert (200, "idle") == (status, body["reason"])
    assert pytest.approx(completed_at + 5, abs=0.1) == now()
    assert completed_at + 5 - began <= body["waited_seconds"]


async def test_drain_min_seconds_holds_an_idle_builder(sidecar_factory: Factory, aiohttp_client: ClientFactory) -> None:
    running = await connected(sidecar_factory, drain_min_seconds=20, drain_quiet_seconds=1)
    admin = await aiohttp_client(running.sidecar.admin_app)
    began = now()
    status, body = await call(admin, "GET", "/drain")
    assert (200, {"drained": True, "reason": "idle", "waited_seconds": 20.0}) == (status, body)
    assert pytest.approx(began + 20, abs=0.1) == now()


async def test_drain_min_seconds_waits_for_build_arriving_during_deregistration(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory, drain_min_seconds=20, drain_quiet_seconds=0)
    admin = await aiohttp_client(running.sidecar.admin_app)
    began = now()
    request = asyncio.create_task(call(admin, "POST", "/drain"))
    await asyncio.sleep(15)
    ref = daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    await asyncio.sleep(30)  # well past drain_min_seconds
    assert not request.done()

    daemon.complete_build(ref)
    status, body = await request
    assert (200, "idle") == (status, body["reason"])
    assert pytest.approx(45, abs=0.1) == now() - began


# -- readiness and state while draining --------------------------------------


async def test_readiness_fails_at_once_when_drain_starts(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory)
    ref = daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    public = await aiohttp_client(running.sidecar.public_app)
    admin = await aiohttp_client(running.sidecar.admin_app)
    assert (200, {"ready": True, "reason": "ok"}) == await call(public, "GET", "/readyz")

    began = now()
    request = asyncio.create_task(call(admin, "POST", "/drain"))
    await running.until(lambda s: s.draining)
    assert pytest.approx(began, abs=0.1) == now()
    assert (503, {"ready": False, "reason": "draining"}) == await call(public, "GET", "/readyz")
    _, status = await call(public, "GET", "/status")
    assert (True, 1) == (status["draining"], status["active_count"])
    assert 1.0 == running.sample("buildkit_sidecar_draining", arch="amd64")
    assert 0 < (running.sample("buildkit_sidecar_drain_started_timestamp_seconds", arch="amd64") or 0)

    daemon.complete_build(ref)
    assert 200 == (await request)[0]
    assert (503, {"ready": False, "reason": "draining"}) == await call(public, "GET", "/readyz")


# -- sharing -----------------------------------------------------------------


async def test_concurrent_drains_share_one_drain_and_get_the_same_answer(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory, drain_quiet_seconds=2)
    ref = daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    admin = await aiohttp_client(running.sidecar.admin_app)
    requests = [asyncio.create_task(call(admin, method, "/drain")) for method in ("GET", "POST") * 3]
    await asyncio.sleep(5)
    assert not any(r.done() for r in requests)
    later = asyncio.create_task(call(admin, "POST", "/drain"))
    await asyncio.sleep(5)

    daemon.complete_build(ref)
    answers = await asyncio.gather(*requests, later)
    assert [(200, {"drained": True, "reason": "idle", "waited_seconds": 12.0})] * 7 == answers
    assert 1.0 == running.sample("buildkit_sidecar_drain_duration_seconds_count", arch="amd64", reason="idle")


async def test_drain_called_after_it_completed_answers_at_once_with_the_same_result(
    sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory, drain_min_seconds=7)
    admin = await aiohttp_client(running.sidecar.admin_app)
    first = await call(admin, "POST", "/drain")
    asked_again = now()
    second = await call(admin, "GET", "/drain")
    assert (200, {"drained": True, "reason": "idle", "waited_seconds": 7.0}) == first
    assert first == second
    assert asked_again == now()
    assert 1.0 == running.sample("buildkit_sidecar_drain_duration_seconds_count", arch="amd64", reason="idle")


# -- deadline ----------------------------------------------------------------


async def test_drain_timeout_answers_504_listing_the_builds_still_running(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory, drain_timeout_seconds=60)
    first, second = daemon.start_build(), daemon.start_build()
    await running.until(lambda s: s.active_count() == 2)
    admin = await aiohttp_client(running.sidecar.admin_app)
    began = now()
    status, body = await call(admin, "POST", "/drain")
    assert 504 == status
    assert {"drained": False, "reason": "timeout", "waited_seconds": 60.0} == {
        k: body[k] for k in ("drained", "reason", "waited_seconds")
    }
    assert [first, second] == [b["ref"] for b in body["active_builds"]]
    assert all(set(b) == {"ref", "started_at", "age_seconds"} for b in body["active_builds"])
    assert pytest.approx(began + 60, abs=0.1) == now()
    assert running.state.draining, "a timed-out drain still keeps new builds away"
    assert 1.0 == running.sample("buildkit_sidecar_drain_duration_seconds_count", arch="amd64", reason="timeout")


async def test_drain_waits_for_slow_buildkitd_until_the_deadline(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    # Snapshots hang: every session ends in DEADLINE_EXCEEDED, which proves nothing.
    daemon.snapshot_gate = asyncio.Event()
    running = await sidecar_factory(rpc_timeout_seconds=0.2, drain_gone_seconds=0, drain_timeout_seconds=100)
    await running.until(lambda s: s.connection.loss is Loss.SLOW)
    admin = await aiohttp_client(running.sidecar.admin_app)
    status, body = await call(admin, "POST", "/drain")
    assert (504, "timeout", None) == (status, body["reason"], body["active_builds"])
    assert 100.0 == body["waited_seconds"]
    daemon.snapshot_gate.set()


# -- cancel ------------------------------------------------------------------


async def test_delete_drain_cancels_waiting_callers_with_409_and_builder_is_ready_again(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory)
    daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    public = await aiohttp_client(running.sidecar.public_app)
    admin = await aiohttp_client(running.sidecar.admin_app)
    waiting = [asyncio.create_task(call(admin, "POST", "/drain")) for _ in range(3)]
    await running.until(lambda s: s.draining)
    await asyncio.sleep(30)

    assert (200, {"cancelled": True, "draining": False}) == await call(admin, "DELETE", "/drain")
    for status, body in await asyncio.gather(*waiting):
        assert (409, False, "cancelled") == (status, body["drained"], body["reason"])
    assert (200, {"ready": True, "reason": "ok"}) == await call(public, "GET", "/readyz")
    assert 0.0 == running.sample("buildkit_sidecar_draining", arch="amd64")
    assert 0.0 == running.sample("buildkit_sidecar_drain_started_timestamp_seconds", arch="amd64")


async def test_delete_drain_after_it_completed_makes_the_builder_ready_again(
    sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory)
    public = await aiohttp_client(running.sidecar.public_app)
    admin = await aiohttp_client(running.sidecar.admin_app)
    assert 200 == (await call(admin, "POST", "/drain"))[0]
    assert 503 == (await call(public, "GET", "/readyz"))[0]

    assert (200, {"cancelled": True, "draining": False}) == await call(admin, "DELETE", "/drain")
    assert (200, {"ready": True, "reason": "ok"}) == await call(public, "GET", "/readyz")
    assert 0.0 == running.sample("buildkit_sidecar_drain_started_timestamp_seconds", arch="amd64")


async def test_drain_after_cancel_starts_a_new_drain(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory, drain_min_seconds=10)
    admin = await aiohttp_client(running.sidecar.admin_app)
    status, body = await call(admin, "POST", "/drain")
    assert (200, 10.0) == (status, body["waited_seconds"])
    assert (200, {"cancelled": True, "draining": False}) == await call(admin, "DELETE", "/drain")
    began = now()
    status, body = await call(admin, "POST", "/drain")
    assert (200, "idle", 10.0) == (status, body["reason"], body["waited_seconds"])
    assert pytest.approx(began + 10, abs=0.1) == now()


async def test_delete_drain_without_a_drain_changes_nothing(
    sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory)
    admin = await aiohttp_client(running.sidecar.admin_app)
    assert (200, {"cancelled": False, "draining": False}) == await call(admin, "DELETE", "/drain")
    assert (True, "ok") == running.state.ready()


# -- buildkitd gone ----------------------------------------------------------


async def test_drain_releases_as_buildkitd_gone_counted_from_the_loss_not_the_drain(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory, drain_gone_seconds=30, reconnect_max_seconds=5)
    daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    admin = await aiohttp_client(running.sidecar.admin_app)
    lost_at = now()
    await daemon.kill()
    await running.until(lambda s: s.connection.loss is Loss.REFUSED)
    await asyncio.sleep(20)

    began = now()
    status, body = await call(admin, "POST", "/drain")
    assert (200, True, "buildkitd_gone") == (status, body["drained"], body["reason"])
    assert pytest.approx(10, abs=0.1) == body["waited_seconds"]
    assert pytest.approx(lost_at + 30, abs=0.1) == now()
    assert pytest.approx(began + 10, abs=0.1) == now()


async def test_drain_on_killed_buildkitd_waits_drain_gone_seconds(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory, drain_gone_seconds=30, reconnect_max_seconds=5)
    ref = daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    admin = await aiohttp_client(running.sidecar.admin_app)
    request = asyncio.create_task(call(admin, "POST", "/drain"))
    await running.until(lambda s: s.draining)
    await asyncio.sleep(5)
    lost_at = now()
    await daemon.kill()
    await asyncio.sleep(25)
    assert not request.done()
    status, body = await request
    assert (200, "buildkitd_gone") == (status, body["reason"])
    assert pytest.approx(lost_at + 30, abs=0.5) == now()
    assert ref not in str(body)


async def test_drain_rechecks_a_refusal_older_than_the_backoff_before_calling_buildkitd_gone(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    # Backoff of 120 s: after the first refusal the follower waits at least 12 s (a tenth).
    running = await connected(
        sidecar_factory, drain_gone_seconds=10, reconnect_initial_seconds=120, reconnect_max_seconds=120
    )
    admin = await aiohttp_client(running.sidecar.admin_app)
    await daemon.kill()
    await running.until(lambda s: s.connection.loss is Loss.REFUSED, within=130, poll=None)
    await asyncio.sleep(11)
    # buildkitd is back with a build; the follower, in its backoff, has not seen it.
    await daemon.restart()
    ref = daemon.start_build()
    assert Loss.REFUSED is running.state.connection.loss

    request = asyncio.create_task(call(admin, "POST", "/drain"))
    await running.until(lambda s: s.active_count() == 1, within=5)
    await asyncio.sleep(30)
    assert not request.done()
    daemon.complete_build(ref)
    status, body = await request
    assert (200, True, "idle") == (status, body["drained"], body["reason"])


async def test_drain_releases_at_once_when_buildkitd_exits_gracefully(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    # A long quiet period: only the daemon's own clean exit can end this drain early.
    running = await connected(sidecar_factory, drain_quiet_seconds=600, drain_gone_seconds=300)
    ref = daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    admin = await aiohttp_client(running.sidecar.admin_app)
    began = now()
    request = asyncio.create_task(call(admin, "POST", "/drain"))
    await running.until(lambda s: s.draining)
    exiting = asyncio.create_task(daemon.graceful_exit(builds_finish_after=5))

    with structlog.testing.capture_logs() as logged:
        status, body = await request
    assert (200, "buildkitd_gone") == (status, body["reason"])
    assert Loss.CLEAN_EXIT is running.state.connection.loss
    finished = [e for e in logged if e["event"] == "drain_finished"]
    # released on proof that buildkitd can run nothing: no builds listed as cut off
    assert [("info", True, None)] == [(e["log_level"], e["drained"], e["active_refs"]) for e in finished]
    assert now() - began < 10
    await exiting
    assert ref in daemon.stored


# -- what the drain tells the operator -----------------------------------------


async def test_the_drain_logs_the_lines_the_readme_names_with_the_builds_still_running_on_timeout(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(
        sidecar_factory, drain_quiet_seconds=2, drain_min_seconds=2.5004, drain_timeout_seconds=60
    )
    ref = daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    admin = await aiohttp_client(running.sidecar.admin_app)
    with structlog.testing.capture_logs() as logged:
        assert 504 == (await call(admin, "POST", "/drain"))[0]  # the build outlasts the deadline
        assert 200 == (await call(admin, "DELETE", "/drain"))[0]
        daemon.complete_build(ref)
        await running.until(lambda s: s.active_count() == 0)
        assert 200 == (await call(admin, "POST", "/drain"))[0]

    settings = {"quiet_seconds": 2.0, "min_seconds": 2.5004, "timeout_seconds": 60.0}
    assert [
        {"event": "drain_started", "log_level": "info", "arch": "amd64", "active": 1, **settings},
        {"event": "drain_finished", "log_level": "warning", "arch": "amd64", "reason": "timeout", "drained": False,
         "waited_seconds": 60.0, "active": 1, "active_refs": [ref]},
        {"event": "drain_cancelled", "log_level": "info", "arch": "amd64"},
        {"event": "drain_started", "log_level": "info", "arch": "amd64", "active": 0, **settings},
        {"event": "drain_finished", "log_level": "info", "arch": "amd64", "reason": "idle", "drained": True,
         "waited_seconds": 2.5, "active": 0, "active_refs": None},  # to the millisecond
    ] == [e for e in logged if e["event"].startswith("drain_")]  # fmt: skip


async def test_a_drain_cancelled_while_it_waits_logs_no_finish(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory)
    daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    admin = await aiohttp_client(running.sidecar.admin_app)
    with structlog.testing.capture_logs() as logged:
        waiting = asyncio.create_task(call(admin, "POST", "/drain"))
        await running.until(lambda s: s.draining)
        assert 200 == (await call(admin, "DELETE", "/drain"))[0]
        status, body = await waiting
    assert (409, "cancelled", None) == (status, body["reason"], body["active_builds"])  # only a timeout lists them
    assert ["drain_started", "drain_cancelled"] == [e["event"] for e in logged if e["event"].startswith("drain_")]
    assert 1.0 == running.sample("buildkit_sidecar_drain_duration_seconds_count", arch="amd64", reason="cancelled")


async def test_a_drain_shorter_than_a_second_releases_on_time_reported_to_the_millisecond(
    sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory, drain_min_seconds=0.23456)
    admin = await aiohttp_client(running.sidecar.admin_app)
    began = now()
    assert (200, {"drained": True, "reason": "idle", "waited_seconds": 0.235}) == await call(admin, "POST", "/drain")
    assert pytest.approx(began + 0.23456, abs=0.001) == now()


async def test_shutdown_stops_a_drain_that_is_still_waiting(daemon: FakeBuildkitd, sidecar_factory: Factory) -> None:
    running = await connected(sidecar_factory)
    daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    drain = running.drainer.begin()
    await running.until(lambda s: s.draining)

    await running.drainer.close()
    assert drain.cancelled()


# -- token-protected drain on the public listener ------------------------------


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "drain-token"
    path.write_text("s3cret-token\n")
    return path


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"Authorization": "Bearer wrong-token"}, id="wrong-token"),
        pytest.param({"Authorization": "Bearer s3cret-token-and-more"}, id="token-prefix"),
        pytest.param({"Authorization": "Basic s3cret-token"}, id="wrong-scheme"),
        pytest.param({"Authorization": "Bearer "}, id="empty-token"),
    ],
)
async def test_public_drain_without_the_right_token_is_401_and_does_not_drain(
    sidecar_factory: Factory, aiohttp_client: ClientFactory, token_file: Path, headers: dict[str, str]
) -> None:
    running = await connected(sidecar_factory, drain_token_file=token_file)
    public = await aiohttp_client(running.sidecar.public_app)
    for method in ("GET", "POST", "DELETE"):
        async with public.request(method, "/drain", headers=headers) as response:
            assert 401 == response.status
            assert 'Bearer realm="buildkit-sidecar"' == response.headers["WWW-Authenticate"]
            assert {"error": "missing or wrong bearer token"} == await response.json()
    assert not running.state.draining


async def test_public_drain_with_the_right_token_drains(
    sidecar_factory: Factory, aiohttp_client: ClientFactory, token_file: Path
) -> None:
    running = await connected(sidecar_factory, drain_token_file=token_file)
    public = await aiohttp_client(running.sidecar.public_app)
    headers = {"Authorization": "Bearer s3cret-token"}
    assert (200, {"drained": True, "reason": "idle", "waited_seconds": 0.0}) == await call(
        public, "POST", "/drain", headers=headers
    )
    assert running.state.draining
    assert (200, {"cancelled": True, "draining": False}) == await call(public, "DELETE", "/drain", headers=headers)


async def test_public_drain_reads_a_rotated_token(
    sidecar_factory: Factory, aiohttp_client: ClientFactory, token_file: Path
) -> None:
    running = await connected(sidecar_factory, drain_token_file=token_file)
    public = await aiohttp_client(running.sidecar.public_app)
    await asyncio.to_thread(token_file.write_text, "rotated")
    assert 401 == (await call(public, "GET", "/drain", headers={"Authorization": "Bearer s3cret-token"}))[0]
    assert 200 == (await call(public, "GET", "/drain", headers={"Authorization": "Bearer rotated"}))[0]


async def test_public_drain_with_an_empty_token_file_refuses_everybody(
    sidecar_factory: Factory, aiohttp_client: ClientFactory, token_file: Path
) -> None:
    running = await connected(sidecar_factory, drain_token_file=token_file)
    public = await aiohttp_client(running.sidecar.public_app)
    await asyncio.to_thread(token_file.write_text, "\n")
    assert 401 == (await call(public, "GET", "/drain", headers={"Authorization": "Bearer "}))[0]
    assert not running.state.draining


async def test_public_app_serves_no_drain_without_a_token_file(
    sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory)
    public = await aiohttp_client(running.sidecar.public_app)
    for method in ("GET", "POST", "DELETE"):
        assert 404 == (await call(public, method, "/drain"))[0]
    assert not running.state.draining
