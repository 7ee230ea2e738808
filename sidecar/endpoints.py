"""HTTP endpoints: the public app (probes, metrics, status) and the admin app (drain).

The admin app listens on loopback by default, so only a process inside the
pod (the preStop ``exec`` hook) can drain the builder. With a token file the
public app serves ``/drain`` too, behind ``Authorization: Bearer``, for
``httpGet`` hooks.

Every error is a small JSON body ``{"error": "..."}`` with a 4xx (or 5xx)
status; no stack trace ever reaches a client.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from sidecar.draining import Drainer, DrainResult, Reason
from sidecar.metrics import Metrics
from sidecar.settings import Settings
from sidecar.state import BuilderState

log = structlog.get_logger("sidecar.endpoints")

STATUS_VERSION = 1
MAX_BODY_BYTES = 16 * 1024
"""Nothing here takes a body larger than a tiny JSON object."""
BODY_READ_SECONDS = 10.0
"""A drain's body (empty, or a tiny JSON object) arrives with its headers; a
client that trickles it is answered 408 instead of holding a handler."""

STATE_KEY = web.AppKey("state", BuilderState)
DRAINER_KEY = web.AppKey("drainer", Drainer)
SETTINGS_KEY = web.AppKey("settings", Settings)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """4xx from aiohttp (404, 405, 413) as JSON; anything unexpected as a bare 500."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k.lower() == "allow"}
        response = _error(e.status, e.reason)
        response.headers.update(headers)
        return response
    except asyncio.CancelledError:
        raise
    except Exception as e:  # boundary: never leak a trace to a client
        log.exception("http_handler_error", path=request.path, error=repr(e))
        return _error(500, "internal error (see the sidecar's log)")


# -- public ---------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process and its loops are alive. Never depends on buildkitd,
    so a slow daemon cannot get a builder killed mid-build."""
    state = request.app[STATE_KEY]
    settings = request.app[SETTINGS_KEY]
    stale_after = (
        3 * settings.resync_interval_seconds + 2 * settings.rpc_timeout_seconds + settings.reconnect_max_seconds
    )
    silent = asyncio.get_running_loop().time() - state.heartbeat
    if silent > stale_after:
        return _error(503, f"the buildkitd follower has not run for {silent:.0f} s")
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: buildkitd is reachable, accepting, and the builder is not draining."""
    ready, why = request.app[STATE_KEY].ready()
    return web.json_response({"ready": ready, "reason": why}, status=200 if ready else 503)


async def status(request: web.Request) -> web.Response:
    """The autoscaler's input (contract, version 1): unknown is null, never 0."""
    state = request.app[STATE_KEY]
    builds = state.describe_builds(now=asyncio.get_running_loop().time(), now_unix=time.time())
    ready, why = state.ready()
    body = {
        "version": STATUS_VERSION,
        "arch": state.arch,
        "buildkit_up": state.up,
        "draining": state.draining,
        "active_count": None if builds is None else len(builds),
        "active_builds": builds,
        "buildkit_version": state.buildkit_version,
        "ready": ready,
        "ready_reason": why,
        "last_sync_timestamp": state.last_sync_unix,
    }
    return web.json_response(body)


# -- drain ----------------------------------------------------------------


def _drain_response(result: DrainResult) -> web.Response:
    if result.reason is Reason.CANCELLED:
        status_code = 409
    elif result.drained:
        status_code = 200
    else:
        status_code = 504
    return web.json_response(result.as_json(), status=status_code)


async def _check_body(request: web.Request) -> web.Response | None:
    """POST /drain takes no parameters: an empty body or a JSON object."""
    if not request.can_read_body:
        return None
    try:
        async with asyncio.timeout(BODY_READ_SECONDS):
            raw = await request.read()  # bounded by client_max_size
    except TimeoutError:
        return _error(408, f"request body not received within {BODY_READ_SECONDS:g} s")
    if not raw.strip():
        return None
    try:
        parsed = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _error(400, "body must be empty or a JSON object")
    if not isinstance(parsed, dict):
        return _error(400, "body must be empty or a JSON object")
    return None


async def drain(request: web.Request) -> web.Response:
    """Begin (or join) the drain; answer when it ends."""
    bad = await _check_body(request)
    if bad is not None:
        return bad
    result = await request.app[DRAINER_KEY].drain()
    return _drain_response(result)


async def undrain(request: web.Request) -> web.Response:
    """Cancel the drain: the builder takes builds again."""
    cancelled = await request.app[DRAINER_KEY].cancel()
    return web.json_response({"cancelled": cancelled, "draining": request.app[STATE_KEY].draining})


def _token_guard(token_file: Path, handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            expected = (await asyncio.to_thread(token_file.read_text)).strip().encode()
        except OSError:
            log.error("drain_token_unreadable", path=str(token_file))
            return _error(503, "drain token file unreadable")
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        # compare_digest on bytes: constant time whatever the content. aiohttp decodes
        # header bytes that are not UTF-8 as surrogates: encode them back, never raise.
        given_bytes = given.strip().encode("utf-8", "surrogateescape")
        if not expected or scheme.lower() != "bearer" or not hmac.compare_digest(given_bytes, expected):
            log.warning("drain_unauthorized", remote=request.remote)
            return web.json_response(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="buildkit-sidecar"'},
            )
        return await handler(request)

    return guarded


def _drain_routes(app: web.Application, wrap: Callable[[Handler], Handler]) -> None:
    app.router.add_route("GET", "/drain", wrap(drain))
    app.router.add_route("POST", "/drain", wrap(drain))
    app.router.add_route("DELETE", "/drain", wrap(undrain))


def _app(*, settings: Settings, state: BuilderState, drainer: Drainer) -> web.Application:
    app = web.Application(middlewares=[errors_as_json], client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = state
    app[DRAINER_KEY] = drainer
    app[SETTINGS_KEY] = settings
    return app


def public_app(*, settings: Settings, state: BuilderState, drainer: Drainer, metrics: Metrics) -> web.Application:
    """/healthz, /readyz, /metrics, /status (+ token-protected /drain if configured)."""
    app = _app(settings=settings, state=state, drainer=drainer)
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/readyz", readyz, allow_head=True)
    app.router.add_get("/status", status, allow_head=True)
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry), allow_head=True)
    if settings.drain_token_file is not None:
        token_file = settings.drain_token_file
        _drain_routes(app, lambda handler: _token_guard(token_file, handler))
    return app


def admin_app(*, settings: Settings, state: BuilderState, drainer: Drainer) -> web.Application:
    """/drain without a token: bind it to loopback only."""
    app = _app(settings=settings, state=state, drainer=drainer)
    _drain_routes(app, lambda handler: handler)
    return app
