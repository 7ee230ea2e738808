"""The cluster side of the autoscaler benchmarks, run in a child process.

``python -m bench.fake_fleet --pods N`` serves, in one process of its own:

* the fake Kubernetes API of the tests (kmock's ``KubernetesScaffold`` and
  ``Server`` with :class:`fakes.kubernetes.FakeCluster` on top), every
  request timestamped on arrival;
* every builder pod's sidecar ``/status``: ONE aiohttp server listening on
  the pods' addresses 127.0.x.y (all on one port, loopback only) and
  answering for the pod whose address the connection reached (the socket's
  local address), from pre-encoded bodies;
* a small JSON control API on 127.0.0.1 for the benchmark process: set up the
  fleet, change the pods' loads or the Deployment's replicas (each change is
  atomic and answers with the instant it took effect), read the API calls
  and the scale PATCHes' arrival times.

Why a child process: the controller's CPU time is then the benchmark
process's own, and the fakes' load is measured apart (``/proc/<pid>/stat``).
Instants are ``time.monotonic()``, a clock shared by every process of the
machine (``CLOCK_MONOTONIC``), though the reaction benchmark only compares
instants taken here. Ready when the first stdout line, a JSON object with the
control URL, is printed; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import kmock
from aiohttp import web
from kmock import Response

from fakes.kubernetes import FakeCluster

ADDRESSES_PER_BLOCK = 250
"""Pod i answers on 127.0.(1 + i // 250).(1 + i % 250): 127.0.0.x stays free for the API and control."""


KMOCK_REQUESTS_KEPT = 16
"""See :meth:`TimedCluster._forget_old_requests`."""


def pod_ip(index: int) -> str:
    """The loopback address of pod ``index`` (0-based)."""
    return f"127.0.{1 + index // ADDRESSES_PER_BLOCK}.{1 + index % ADDRESSES_PER_BLOCK}"


def pod_name(deployment: str, index: int) -> str:
    return f"{deployment}-{index:04d}"


def status_body(*, arch: str, active: int | None) -> bytes:
    """A version-1 ``/status`` as the sidecar writes it (``active`` None: buildkitd unknown)."""
    builds = (
        None if active is None else [{"ref": f"b{i}", "started_at": None, "age_seconds": 1.0} for i in range(active)]
    )
    return json.dumps(
        {
            "version": 1,
            "arch": arch,
            "buildkit_up": active is not None,
            "draining": False,
            "active_count": active,
            "active_builds": builds,
        }
    ).encode()


class TimedCluster(FakeCluster):
    """The tests' stateful fake API, with each request's arrival instant beside its ``calls`` entry."""

    def __init__(self) -> None:
        super().__init__()
        self.call_times: list[float] = []
        self.last_status_at: float | None = None
        """When the fake sidecars last answered a ``/status`` (set by :class:`Fleet`)."""
        self.status_read_before_scale: dict[int, float | None] = {}
        """Per scale PATCH (its index in :attr:`calls`): the last ``/status`` answer before it arrived."""

    async def handle(self, req: kmock.Request) -> Response:
        at = time.monotonic()
        self._forget_old_requests()
        logged = len(self.calls)
        if req.subresource == "scale" and req.method.value == "PATCH":
            self.status_read_before_scale[logged] = self.last_status_at
        response: Response = await super().handle(req)
        # FakeCluster.handle logs each request synchronously, before any await: index stays aligned.
        self.call_times.extend([at] * (len(self.calls) - logged))
        return response

    def _forget_old_requests(self) -> None:
        """Keep kmock's own request log short: it is scanned in full on every request.

        kmock 0.8 decides whether a reaction matches a request by iterating over every request the
        handler ever received (``request in view``, applying the view's filters to each), so each
        request costs time proportional to all before it: measured, a pod PATCH took 3 ms within the
        first 200 requests and 19 ms between the 1,000th and the 1,200th, time that would be charged
        to the controller.
        The benchmark reads :attr:`calls` instead, so only the newest requests are kept (matching of
        a request is over before its handler runs, so dropping older ones is safe).
        """
        assert self.handler is not None
        log: list[kmock.Request] = self.handler._requests
        if len(log) > KMOCK_REQUESTS_KEPT:
            del log[:-KMOCK_REQUESTS_KEPT]


@dataclass
class FleetSpec:
    namespace: str
    deployment: str
    labels: dict[str, str]
    arch: str


class Fleet:
    """The pods, their loads and the Deployment, kept in the fake API."""

    def __init__(self, *, cluster: TimedCluster, capacity: int) -> None:
        self.cluster = cluster
        self.capacity = capacity
        self.spec: FleetSpec | None = None
        self.pods = 0
        self.loads: list[int | None] = [0] * capacity
        self.by_ip = {pod_ip(i): i for i in range(capacity)}
        self.bodies: dict[int | None, bytes] = {}
        self.status_requests = 0

    def body_for(self, ip: str) -> bytes:
        self.status_requests += 1
        self.cluster.last_status_at = time.monotonic()
        index = self.by_ip.get(ip)
        load = self.loads[index] if index is not None and index < self.pods else 0
        body = self.bodies.get(load)
        if body is None:
            arch = self.spec.arch if self.spec else "amd64"
            body = self.bodies[load] = status_body(arch=arch, active=load)
        return body

    def deployment(self) -> dict[str, Any]:
        assert self.spec is not None
        return self.cluster.get("deployments.apps", self.spec.namespace, self.spec.deployment)

    def set_replicas(self, replicas: int) -> None:
        assert self.spec is not None
        deployment = copy.deepcopy(self.deployment())
        deployment["spec"]["replicas"] = replicas
        self.cluster.put("deployments.apps", self.spec.namespace, deployment)

    def set_loads(self, loads: list[int | None]) -> None:
        if len(loads) != self.pods:
            raise ValueError(f"{len(loads)} loads for {self.pods} pods")
        self.loads[: len(loads)] = loads

    def setup(self, *, spec: FleetSpec, pods: int, replicas: int, config_map: str, config_yaml: str) -> None:
        """The Deployment, the ConfigMap, and exactly ``pods`` Running pods (created or deleted as needed)."""
        if pods > self.capacity:
            raise ValueError(f"{pods} pods, but this process listens for {self.capacity}")
        self.spec = spec
        ns = spec.namespace
        self.cluster.put(
            "deployments.apps",
            ns,
            {
                "metadata": {"name": spec.deployment, "labels": dict(spec.labels)},
                "spec": {"replicas": replicas, "selector": {"matchLabels": dict(spec.labels)}, "template": {}},
            },
        )
        self.cluster.put("configmaps", ns, {"metadata": {"name": config_map}, "data": {"config.yaml": config_yaml}})
        for index in range(self.pods, pods):
            self.cluster.put(
                "pods",
                ns,
                {
                    "metadata": {"name": pod_name(spec.deployment, index), "labels": dict(spec.labels)},
                    "spec": {"containers": [{"name": "buildkitd", "image": "moby/buildkit"}]},
                    "status": {
                        "phase": "Running",
                        "podIP": pod_ip(index),
                        "conditions": [{"type": "Ready", "status": "True"}],
                    },
                },
            )
        for index in range(pods, self.pods):
            self.cluster.delete("pods", ns, pod_name(spec.deployment, index))
        self.pods = pods


def control_app(fleet: Fleet) -> web.Application:
    """The benchmark process's handle on the fleet (JSON in, JSON out)."""
    cluster = fleet.cluster

    async def setup(request: web.Request) -> web.Response:
        body = await request.json()
        fleet.setup(
            spec=FleetSpec(**body["spec"]),
            pods=body["pods"],
            replicas=body["replicas"],
            config_map=body["config_map"],
            config_yaml=body["config_yaml"],
        )
        fleet.set_loads(body["loads"])
        return web.json_response({"api_url": cluster.url, "at": time.monotonic()})

    async def loads(request: web.Request) -> web.Response:
        fleet.set_loads((await request.json())["loads"])
        return web.json_response({"at": time.monotonic()})

    async def replicas(request: web.Request) -> web.Response:
        fleet.set_replicas((await request.json())["replicas"])
        return web.json_response({"at": time.monotonic()})

    async def calls(request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        count = len(cluster.calls)
        return web.json_response(
            {
                "count": count,
                "calls": [list(c) for c in cluster.calls[since:count]],
                "times": cluster.call_times[since:count],
                "status_requests": fleet.status_requests,
                "status_read_before": [cluster.status_read_before_scale.get(i) for i in range(since, count)],
                "replicas": fleet.deployment()["spec"]["replicas"] if fleet.spec else None,
            }
        )

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/setup", setup)
    app.router.add_post("/loads", loads)
    app.router.add_post("/replicas", replicas)
    app.router.add_get("/calls", calls)
    return app


def sidecars_app(fleet: Fleet) -> web.Application:
    async def status(request: web.Request) -> web.Response:
        local = request.transport.get_extra_info("sockname") if request.transport else None
        body = fleet.body_for(local[0] if local else "")
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/status", status)
    return app


def _shared_port(host: str) -> int:
    """A port free on ``host`` now; all the pod addresses are then bound to it."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


async def serve(*, pods: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    cluster = TimedCluster()
    fleet = Fleet(cluster=cluster, capacity=pods)
    async with kmock.KubernetesScaffold() as handler, kmock.Server(handler):
        cluster.install(handler)
        sidecars = web.AppRunner(sidecars_app(fleet), access_log=None, handle_signals=False)
        control = web.AppRunner(control_app(fleet), access_log=None, handle_signals=False)
        await sidecars.setup()
        await control.setup()
        addresses = [pod_ip(i) for i in range(pods)]
        port = _shared_port(addresses[0])
        # One server, one socket per pod address: nothing listens beyond loopback.
        assert sidecars.server is not None  # set up above
        listener = await loop.create_server(sidecars.server, host=addresses, port=port, backlog=1024)
        site = web.TCPSite(control, "127.0.0.1", 0)
        await site.start()
        control_port = control.addresses[0][1]
        print(
            json.dumps(
                {"control_url": f"http://127.0.0.1:{control_port}", "sidecar_port": port, "api_url": cluster.url}
            ),
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            cluster.disconnect_watches()
            listener.close()
            await sidecars.cleanup()
            await control.cleanup()
            await listener.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, required=True, help="how many pod addresses to answer for")
    args = parser.parse_args()
    asyncio.run(serve(pods=args.pods))
    sys.exit(0)


if __name__ == "__main__":
    main()
