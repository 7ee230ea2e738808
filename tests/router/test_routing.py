"""The shipped router (real HAProxy, the config deploy/ ships) in front of real sidecars: where builds go.

Each build is an mTLS ``Solve`` that HAProxy passes through untouched: the fake buildkitd sees
the client's own certificate. Builders answer HAProxy's agent checks from their true build
counts, so load this router did not place (a bake's builds on one connection, another router's,
a direct connection's) steers it too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import aiohttp
import grpc
import pytest

from fakes.builder_pods import CLIENT_NAME, SLOTS, Builder, solves
from fakes.router import Router
from tests.router.fleet import AGENT_INTERVAL, Fleet, free_port, until

pytestmark = [pytest.mark.looptime(False)]

LONG = 120.0
"""A build that outlives the test (cancelled at its end)."""


@contextlib.contextmanager
def running() -> Iterator[set[asyncio.Task[None]]]:
    """Builds started in the block, cancelled at its end if still running."""
    tasks: set[asyncio.Task[None]] = set()
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()


def active(builder: Builder) -> int:
    return len(builder.daemon.active)


async def _arrived(fleet: Fleet, total: int) -> None:
    await until(f"{total} builds running", lambda: _true(sum(active(b) for b in fleet.builders) == total))


async def _true(value: bool) -> bool:
    return value


async def test_builds_one_at_a_time_never_give_a_builder_its_second_while_another_has_none(fleet: Fleet) -> None:
    await fleet.start(4)
    with running() as builds:
        for placed in range(1, 2 * len(fleet.builders) + 1):
            builds.add(asyncio.create_task(fleet.client.build(fleet.address, LONG)))
            await _arrived(fleet, placed)
            counts = sorted(active(b) for b in fleet.builders)
            assert counts[-1] - counts[0] <= 1, f"after {placed} builds: {counts}"
    # passthrough: every build reached buildkitd with the client's own certificate
    assert {CLIENT_NAME} == {solved.client for _, solved in solves(fleet.builders)}


async def test_a_bake_filling_its_builder_steers_the_next_connections_elsewhere(fleet: Fleet) -> None:
    await fleet.start(3)
    with running() as builds:
        builds.add(asyncio.create_task(fleet.client.bake(fleet.address, LONG, builds=3)))
        await _arrived(fleet, 3)
        [baked] = [b for b in fleet.builders if active(b) == 3]
        assert 1 == len(baked.connections)  # three builds, one connection
        others = [b for b in fleet.builders if b is not baked]
        await fleet.until_agents("the bake's builder full", {baked.ip: "any", **{b.ip: "idle" for b in others}})

        for placed in range(4, 4 + 2 * len(others)):  # fill every other builder's slots, one build at a time
            builds.add(asyncio.create_task(fleet.client.build(fleet.address, LONG)))
            await _arrived(fleet, placed)
        assert 3 == active(baked)
        assert [SLOTS] * len(others) == [active(b) for b in others]


async def test_builds_placed_without_this_router_steer_it_like_its_own(fleet: Fleet) -> None:
    await fleet.start(3)
    assert fleet.router is not None
    other = Router(
        fleet.workdir / "other",
        env=fleet.router.env,
        dns_port=fleet.dns.port,
        listen=f"127.0.0.1:{free_port()}",
        metrics=f"127.0.0.1:{free_port()}",
    )
    await other.start()
    try:
        with running() as builds:
            builds.add(asyncio.create_task(fleet.client.build(other.listen, LONG)))  # another router replica's
            await _arrived(fleet, 1)
            [by_other] = [b for b in fleet.builders if active(b)]
            direct = next(b for b in fleet.builders if b is not by_other)
            builds.add(asyncio.create_task(fleet.client.build(direct.address, LONG)))  # straight to a builder
            await _arrived(fleet, 2)
            [left] = [b for b in fleet.builders if not active(b)]
            await fleet.until_agents("two builders busy", {by_other.ip: "free", direct.ip: "free", left.ip: "idle"})

            builds.add(asyncio.create_task(fleet.client.build(fleet.address, LONG)))
            await _arrived(fleet, 3)
            assert [1, 1, 1] == [active(b) for b in fleet.builders]
    finally:
        await other.stop()


async def test_every_builder_full_still_places_a_new_build(fleet: Fleet) -> None:
    await fleet.start(2)
    with running() as builds:
        for placed in range(1, SLOTS * 2 + 1):
            builds.add(asyncio.create_task(fleet.client.build(fleet.address, LONG)))
            await _arrived(fleet, placed)
        await fleet.until_agents("both full", {b.ip: "any" for b in fleet.builders})
        await asyncio.wait_for(fleet.client.build(fleet.address, 0.1), 10)  # placed and run, not refused


async def test_a_draining_builder_gets_no_new_connection_after_one_agent_interval(fleet: Fleet) -> None:
    await fleet.start(3)
    loop = asyncio.get_running_loop()
    draining = fleet.builders[0]
    with running() as builds:
        for placed in range(1, 4):
            builds.add(asyncio.create_task(fleet.client.build(fleet.address, 6.0)))
            await _arrived(fleet, placed)
        assert 1 == active(draining)
        [running_build] = list(draining.daemon.active)

        drain_began = loop.time()
        drain = asyncio.create_task(fleet.http.post(draining.admin + "/drain", timeout=aiohttp.ClientTimeout(60)))
        short: list[asyncio.Task[None]] = []
        while loop.time() < drain_began + 3 * AGENT_INTERVAL + 1:  # short builds all the while
            short.append(asyncio.create_task(fleet.client.build(fleet.address, 0.05)))
            await asyncio.sleep(0.1)
        fleet.dns.publish(*(b.ip for b in fleet.builders[1:]))  # the terminating pod leaves the Service's DNS
        await asyncio.gather(*short)

        after = [s.at - drain_began for s in draining.daemon.solves if s.at > drain_began]
        assert max(after, default=0.0) <= AGENT_INTERVAL + 1.0, after
        response = await asyncio.wait_for(drain, 30)  # returns once its build has ended
        assert 200 == response.status
        assert running_build in draining.daemon.stored  # completed, not lost: its session was kept
        assert 0 == draining.daemon.stored[running_build].error_code


async def test_a_reload_and_a_soft_stop_with_builds_running_cut_no_build(fleet: Fleet) -> None:
    await fleet.start(2)
    router = fleet.router
    assert router is not None
    assert router.process is not None
    first = [asyncio.create_task(fleet.client.build(fleet.address, 3.0)) for _ in range(3)]
    await _arrived(fleet, 3)
    router.reload()  # as a new config rolled out in place
    await asyncio.sleep(0.5)
    second = [asyncio.create_task(fleet.client.build(fleet.address, 3.0)) for _ in range(2)]
    await _arrived(fleet, 5)
    router.soft_stop()  # the preStop: stop listening, let the sessions end
    await asyncio.gather(*first, *second)  # every build completed: none raised
    assert 0 == await asyncio.wait_for(router.process.wait(), 20)


async def test_a_builder_whose_buildkitd_is_gone_gets_no_new_builds(fleet: Fleet) -> None:
    await fleet.start(2)
    gone, left = fleet.builders
    await gone.daemon.kill()
    await fleet.until_agents("the dead builder out", {gone.ip: "none", left.ip: "idle"})
    for _ in range(3):
        await asyncio.wait_for(fleet.client.build(fleet.address, 0.05), 10)
    assert 3 == len(left.daemon.solves)


async def test_zero_ready_builders_refuse_a_connection_at_once(fleet: Fleet) -> None:
    await fleet.start(1)
    [builder] = fleet.builders
    await builder.daemon.kill()
    fleet.dns.publish()
    await fleet.until_agents("no builder up", {builder.ip: "none"})
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await fleet.client.build(fleet.address, 0.05)
    assert grpc.StatusCode.UNAVAILABLE == refused.value.code()
    assert loop.time() - began < 5.0  # refused, not held until the client's own deadline
