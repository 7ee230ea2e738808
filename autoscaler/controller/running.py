"""``buildkit-autoscaler run``: wire the controller, the elector and the HTTP endpoints.

Signals only set a flag; the supervisor stops the loops, releases the Lease
(so the other replica takes over at once) and exits 0. A start-up failure (no
Kubernetes configuration, the API server unreachable or refusing, no valid
config, a port in use) exits 2 with the reason, logged and on standard error.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import signal
import socket
import sys
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from autoscaler.controller import startup
from autoscaler.controller.kube import Kube
from autoscaler.controller.leadership import Elector, LeaseSettings
from autoscaler.controller.loop import Controller, RunSettings, StartupError
from autoscaler.controller.metrics import Metrics
from common.supervision import root_task

log = structlog.get_logger("autoscaler.running")

EXIT_OK = 0
EXIT_TASK_DIED = 1
EXIT_STARTUP = 2

SYNC_TIMEOUT_SECONDS = 30.0
"""``--once``: how long to wait for the pod and HPA caches' first LIST (a cycle skips a pool without)."""


@dataclass(frozen=True, kw_only=True)
class Options:
    config_map: tuple[str, str]
    lease: tuple[str, str]
    listen: tuple[str, int]
    kubeconfig: str | None = None
    dry_run: bool = False
    once: bool = False
    identity: str = ""


def split_ref(value: str, *, what: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` into its two parts."""
    namespace, sep, name = value.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"{what} must be NAMESPACE/NAME, got {value!r}")
    return namespace, name


def default_identity() -> str:
    """The pod's name (downward API) or the host name: unique per replica."""
    return os.environ.get("POD_NAME") or socket.gethostname()


def _loop_wall() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def startup_failed(error: str) -> int:
    """A start-up failure: one JSON log line, and the same words on standard error for whoever ran it."""
    log.error("startup_failed", error=error)
    sys.stderr.write(f"buildkit-autoscaler run: {error}\n")
    return EXIT_STARTUP


def http_app(*, controller: Controller, metrics: Metrics, stale_after_seconds: float) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        last = controller.last_cycle_at
        now = asyncio.get_running_loop().time()
        if last is not None and now - last > stale_after_seconds:
            return web.json_response({"error": f"no cycle for {now - last:.0f} s"}, status=503)
        return web.json_response({"status": "ok", "cycles": controller.cycles})

    async def readyz(_request: web.Request) -> web.Response:
        ready = controller.config is not None and controller.last_cycle_at is not None
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    app = web.Application(client_max_size=16 * 1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    return app


async def run(options: Options) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    metrics = Metrics(registry=CollectorRegistry())
    try:
        api = await startup.api_client(options.kubeconfig)
    except StartupError as e:
        return startup_failed(str(e))
    async with api, aiohttp.ClientSession() as http:
        try:
            server_version = await startup.probe(api)
        except StartupError as e:
            return startup_failed(str(e))
        log.info("api_server_reachable", url=api.configuration.host, version=server_version)
        kube = Kube(api)
        # One replica acts (the Lease holder); --once acts alone, --dry-run never writes.
        elector = None
        if not options.once and not options.dry_run:
            elector = Elector(
                kube=kube,
                settings=LeaseSettings(namespace=options.lease[0], name=options.lease[1], identity=options.identity),
                clock=loop.time,
                wall=_loop_wall,
                on_change=lambda leader: metrics.is_leader.set(1 if leader else 0),
            )
        controller = Controller(
            kube=kube,
            settings=RunSettings(
                config_namespace=options.config_map[0], config_name=options.config_map[1], dry_run=options.dry_run
            ),
            metrics=metrics,
            elector=elector,
            http=http,
            clock=loop.time,
            wall=_loop_wall,
        )
        try:
            await controller.start()
        except StartupError as e:
            await controller.close()
            return startup_failed(str(e))
        try:
            if options.once:
                if not await controller.wait_synced(timeout_seconds=SYNC_TIMEOUT_SECONDS):
                    log.warning("caches_not_synced", note="pools not listed yet are skipped this cycle")
                await controller.cycle()  # logs each pool's ``decision``
                return EXIT_OK
            return await _serve(options, controller=controller, elector=elector, metrics=metrics, stop=stop)
        finally:
            await controller.close()


async def _serve(
    options: Options, *, controller: Controller, elector: Elector | None, metrics: Metrics, stop: asyncio.Event
) -> int:
    interval = controller.config.poll_interval_seconds if controller.config else 5.0
    runner = web.AppRunner(
        http_app(controller=controller, metrics=metrics, stale_after_seconds=10 * interval + 60),
        handle_signals=False,
        access_log=None,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, options.listen[0], options.listen[1]).start()
    except OSError as e:
        await runner.cleanup()
        address = f"{options.listen[0]}:{options.listen[1]}"
        return startup_failed(f"cannot listen on --listen={address!r}: {(e.strerror or str(e)).lower()}: "
                              "choose a free address (or stop what holds it)")  # fmt: skip
    code = EXIT_OK
    try:
        async with asyncio.TaskGroup() as tasks:
            if elector is not None:
                tasks.create_task(root_task("elector", elector.run(stop=stop)), name="elector")
            else:
                log.info("dry_run", note="no scale, annotations, Events or Lease will be written")
            tasks.create_task(root_task("controller", controller.run(stop=stop)), name="controller")
    except* Exception:  # noqa: BLE001 - the supervisor's boundary; root_task logged which task died
        code = EXIT_TASK_DIED
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
    log.info("stopped", exit_code=code)
    return code
