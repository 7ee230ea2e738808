"""Leader election on a Lease, through the real client against the fake API, on fake time."""

from __future__ import annotations

import asyncio
import contextlib
import datetime

import kmock
from kubernetes_asyncio import client

from autoscaler.controller.kube import Kube
from autoscaler.controller.leadership import Elector, LeaseSettings
from fakes.kubernetes import FakeCluster

EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _elector(api_client: client.ApiClient, identity: str) -> Elector:
    loop = asyncio.get_running_loop()
    return Elector(
        kube=Kube(api_client),
        settings=LeaseSettings(namespace="buildkit", name="buildkit-autoscaler", identity=identity),
        clock=loop.time,
        wall=lambda: EPOCH + datetime.timedelta(seconds=loop.time()),
    )


def _parse(stamp: str) -> datetime.datetime:
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)


async def test_only_one_of_two_candidates_leads_and_the_other_takes_over_after_the_lease_expires(
    k8s: FakeCluster, api: client.ApiClient
) -> None:
    a, b = _elector(api, "a"), _elector(api, "b")
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    task_a = asyncio.create_task(a.run(stop=stop_a), name="elector-a")
    await asyncio.sleep(1)  # a first
    task_b = asyncio.create_task(b.run(stop=stop_b), name="elector-b")
    samples = []
    for _ in range(30):
        await asyncio.sleep(0.5)
        samples.append((a.is_leader(), b.is_leader()))
    assert (True, False) == samples[-1]
    assert all(not (x and y) for x, y in samples)

    lease = k8s.get("leases.coordination.k8s.io", "buildkit", "buildkit-autoscaler")
    assert "a" == lease["spec"]["holderIdentity"]
    last_renew_by_a = _parse(lease["spec"]["renewTime"])

    # a dies: its loop stops and its parting release never reaches the API server
    def is_release(request: kmock.Request) -> bool:
        return request.method.value == "PUT" and (request.data or {}).get("spec", {}).get("holderIdentity") == ""

    k8s.handler[is_release] << 503
    task_a.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task_a
    assert not a.is_leader()
    while not b.is_leader():
        await asyncio.sleep(0.5)
    lease = k8s.get("leases.coordination.k8s.io", "buildkit", "buildkit-autoscaler")
    assert "b" == lease["spec"]["holderIdentity"]
    assert 1 == lease["spec"]["leaseTransitions"]
    takeover = _parse(lease["spec"]["acquireTime"]) - last_renew_by_a
    settings = b.settings
    assert settings.lease_duration_seconds <= takeover.total_seconds()
    assert takeover.total_seconds() <= settings.lease_duration_seconds + 2 * settings.retry_period_seconds
    stop_b.set()
    await task_b


async def test_a_leader_that_cannot_renew_stops_leading_before_the_lease_expires(
    k8s: FakeCluster, api: client.ApiClient
) -> None:
    a = _elector(api, "a")
    stop = asyncio.Event()
    task = asyncio.create_task(a.run(stop=stop), name="elector-a")
    while not a.is_leader():
        await asyncio.sleep(0.5)
    # every further request fails: the API server is unreachable for a
    k8s.handler["get"] << 503
    k8s.handler["put"] << 503
    lost_at = None
    loop = asyncio.get_running_loop()
    start = loop.time()
    while lost_at is None:
        await asyncio.sleep(0.25)
        if not a.is_leader():
            lost_at = loop.time() - start
    assert lost_at <= a.settings.renew_deadline_seconds
    stop.set()
    await task


async def test_a_stopping_leader_releases_the_lease_so_the_other_takes_over_at_once(
    k8s: FakeCluster, api: client.ApiClient
) -> None:
    a, b = _elector(api, "a"), _elector(api, "b")
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    task_a = asyncio.create_task(a.run(stop=stop_a), name="elector-a")
    await asyncio.sleep(1)
    task_b = asyncio.create_task(b.run(stop=stop_b), name="elector-b")
    await asyncio.sleep(5)
    assert (True, False) == (a.is_leader(), b.is_leader())
    stop_a.set()
    await task_a
    loop = asyncio.get_running_loop()
    released = loop.time()
    while not b.is_leader():
        await asyncio.sleep(0.1)
    assert loop.time() - released <= b.settings.retry_period_seconds + 0.5
    stop_b.set()
    await task_b
