"""Hostile input on every surface: the sidecar's HTTP listeners (fuzzed through the
real apps, raw bytes on a real socket, slow and idle clients), the autoscaler's
readers of ``/status`` and Prometheus, and a timeout on every network call."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import inspect
import json
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kubernetes_asyncio import client as k8s_client
from yarl import URL

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
from common.addresses import host_port
from sidecar import endpoints
from sidecar.buildkit import BuildkitClient, BuildkitError
from sidecar.main import IDLE_CONNECTION_SECONDS, http_runner
from sidecar.settings import Settings
from tests.conftest import Running
from tests.sidecar.test_process import COMMAND, STARTUP_SECONDS, clean_env, free_port, spawn  # noqa: F401 - fixture

Factory = Callable[..., Awaitable[Running]]
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
ServerFactory = Callable[..., Awaitable[TestServer]]

FUZZ = settings(
    max_examples=60,
    deadline=None,
    # one sidecar serves every example (see Target): the fixtures are shared on purpose
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TRACE_MARKERS = ("Traceback", 'File "', "aiohttp/", "site-packages")


def assert_no_trace(text: str) -> None:
    for marker in TRACE_MARKERS:
        assert marker not in text, f"{marker!r} in an answer: {text[:300]!r}"


class Target:
    """One connected sidecar and a client on each of its apps, made by the first
    example that needs them and reused by the rest (starting one per example
    would cost most of the run)."""

    def __init__(self, sidecar_factory: Factory, aiohttp_client: ClientFactory, **changes: object) -> None:
        self._factory = sidecar_factory
        self._client = aiohttp_client
        self._changes = changes
        self.running: Running | None = None
        self.public: TestClient[Any, Any] | None = None
        self.admin: TestClient[Any, Any] | None = None

    async def ready(self) -> Running:
        if self.running is None:
            self.running = await self._factory(**self._changes)
            await self.running.until(lambda s: s.up)
            self.public = await self._client(self.running.sidecar.public_app)
            self.admin = await self._client(self.running.sidecar.admin_app)
        return self.running


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "drain-token"
    path.write_text("correct-horse-battery-staple\n")
    return path


@pytest.fixture
def target(sidecar_factory: Factory, aiohttp_client: ClientFactory, token_file: Path) -> Target:
    return Target(sidecar_factory, aiohttp_client, drain_token_file=token_file)


# -- the sidecar's HTTP surface, fuzzed through the real apps ------------------------

_segment_chars = st.characters(codec="utf-8", exclude_characters="/?#%", exclude_categories=("Cs",))
_segment = st.one_of(
    st.text(_segment_chars, max_size=12),
    st.binary(min_size=1, max_size=6).map(lambda b: "".join(f"%{x:02X}" for x in b)),  # percent-encoded bytes
    st.sampled_from(["..", ".", "%2e%2e", "%2F", "%00", "%ZZ", "%", "drain", "status", "%64rain", "~", "%u0041"]),
)
paths = st.one_of(
    st.lists(_segment, max_size=6).map(lambda parts: "/" + "/".join(parts)),
    st.sampled_from(["/drain", "/status", "/healthz", "/readyz", "/metrics", "/", "//drain", "/drain/"]),
)
methods = st.sampled_from(
    ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "BREW"]
)
"""Known methods (the HTTP parser refuses any other token, as BREW shows, before our app)."""
_header_name = st.sampled_from(["Authorization", "Content-Type", "Accept", "Cookie"]) | st.from_regex(
    r"\A[A-Za-z0-9!#$&'*+.^_`|~-]{1,40}\Z"
).filter(lambda n: n.lower() not in ("content-length", "transfer-encoding", "host", "connection", "expect"))
_header_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=64)
_header_value |= _header_value.map(lambda v: "Bearer " + v)  # never the token: its odds are nil
headers = st.lists(st.tuples(_header_name, _header_value), max_size=8)
queries = st.one_of(
    st.just(""),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"), max_size=60),
)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=256),
    st.sampled_from([b"{}", b"[]", b"null", b'{"reason": 1}', b"\xff\xfe", b"[" * 5000]),
    st.integers(endpoints.MAX_BODY_BYTES + 1, 4 * endpoints.MAX_BODY_BYTES).map(lambda n: b"x" * n),
)
oversized = st.sampled_from([None, None, None, "path", "header", "headers", "query"])
"""Now and then one part past aiohttp's limits (8190-byte lines and fields, 128 headers)."""
HOSTILE_DRAIN_BODIES = st.one_of(
    st.sampled_from([b"[]", b"null", b"42", b'"now"', b"{", b"\xff\xfe\x00", b"[" * 5000]),
    st.integers(endpoints.MAX_BODY_BYTES + 1, 4 * endpoints.MAX_BODY_BYTES).map(lambda n: b"x" * n),
)
"""What may go to a path that serves the drain: each must be refused (the fuzzer must never drain)."""


def routes_to_drain(raw_path: str) -> bool:
    with contextlib.suppress(ValueError):
        return URL.build(path=raw_path, encoded=True).path == "/drain"
    return False


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a fresh connection; the answer's status, headers and body
    (the request asks the server to close, so the body ends with the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError):  # a 413 may close before a big upload ends
            writer.write(request)
            await writer.drain()
        answer = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(65536), IDLE_CONNECTION_SECONDS + 10):
                answer += chunk
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), f"no HTTP answer: {answer[:300]!r}"
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split(" ", 2)[1]), {k.lower(): v for k, v in fields.items()}, body


def check_answer(*, code: int, fields: dict[str, str], body: bytes, method: str) -> None:
    text = body.decode("utf-8", "replace")
    assert code < 500, (code, text[:300])
    assert_no_trace(text)
    if code < 400 or method == "HEAD":
        return
    if fields.get("content-type", "").startswith("application/json"):
        answer = json.loads(text)
        assert isinstance(answer, dict)
        assert isinstance(answer["error"], str)
        assert answer["error"]
    else:
        # Only a request aiohttp cannot parse as HTTP (an over-long line, too many
        # headers, a bad byte) is answered by aiohttp itself, before our app: a 400
        # with the parser's reason.
        assert 400 == code, text[:300]
        assert fields.get("content-type", "").startswith("text/plain")
        assert text.strip()


@FUZZ
@given(
    app=st.sampled_from(["public", "admin"]),
    method=methods,
    path=paths,
    query=queries,
    header_list=headers,
    body=bodies,
    drain_body=HOSTILE_DRAIN_BODIES,
    too_big=oversized,
    size=st.integers(8_200, 20_000),
)
async def test_any_request_is_answered_below_500_without_a_trace_and_never_drains(  # noqa: PLR0917 - hypothesis
    target: Target,
    app: str,
    method: str,
    path: str,
    query: str,
    header_list: list[tuple[str, str]],
    body: bytes | None,
    drain_body: bytes,
    too_big: str | None,
    size: int,
) -> None:
    if too_big == "path":
        path += "/" + "a" * size
    elif too_big == "query":
        query += "&q=" + "z" * size
    elif too_big == "header":
        header_list = [*header_list, ("X-Huge", "v" * size)]
    elif too_big == "headers":
        header_list = [*header_list, *((f"X-Many-{i}", "x") for i in range(size // 100))]
    running = await target.ready()
    client = target.public if app == "public" else target.admin
    assert client is not None
    assert client.port is not None
    if routes_to_drain(path):
        if method == "DELETE":
            method = "PUT"  # undrain is harmless, but it is no hostile input either
        body = drain_body
    target_line = path + ("?" + query if query else "")
    request = f"{method} {target_line} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    for name, value in header_list:
        request += f"{name}: {value}\r\n".encode("latin-1")
    if body is not None:
        request += f"Content-Length: {len(body)}\r\n".encode()
    request += b"Connection: close\r\n\r\n" + (body or b"")
    code, fields, answer = await exchange(client.port, request)
    check_answer(code=code, fields=fields, body=answer, method=method)
    event(f"HTTP {code}")  # --hypothesis-show-statistics: which answers the run reached
    assert not running.state.draining


@FUZZ
@given(data=st.binary(min_size=1, max_size=600), where=st.sampled_from(["request-line", "header", "raw"]))
async def test_bytes_that_are_not_http_get_a_400_with_a_reason_and_no_trace(
    target: Target, data: bytes, where: str
) -> None:
    running = await target.ready()
    assert target.public is not None
    server = target.public.server
    if where == "request-line":
        payload = b"GET /" + data + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    elif where == "header":
        payload = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Odd: " + data + b"\r\nConnection: close\r\n\r\n"
    else:
        payload = data + b"\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(payload)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), IDLE_CONNECTION_SECONDS + 10)
    except ConnectionError:
        answer = b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if answer:
        head, _, text = answer.partition(b"\r\n\r\n")
        code = int(head.split(b" ", 2)[1])
        assert code < 500, answer[:300]
        assert_no_trace(text.decode("utf-8", "replace"))
    assert not running.state.draining
    async with target.public.get("/healthz") as response:
        assert 200 == response.status, "the server keeps answering after hostile bytes"


async def test_a_huge_body_is_413_on_every_drain_route_and_does_not_drain(target: Target, token_file: Path) -> None:
    running = await target.ready()
    assert target.public is not None
    assert target.admin is not None
    token = {"Authorization": "Bearer " + (await asyncio.to_thread(token_file.read_text)).strip()}
    huge = b'{"pad": "' + b"x" * (4 * endpoints.MAX_BODY_BYTES) + b'"}'
    for client, auth in ((target.admin, {}), (target.public, token)):
        for method in ("GET", "POST"):
            async with client.request(method, "/drain", data=huge, headers=auth) as response:
                assert (413, {"error": "Request Entity Too Large"}) == (response.status, await response.json())
    assert not running.state.draining


# -- slow and idle clients on a real socket ------------------------------------------


@contextlib.asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[int]:
    """``app`` served as sidecar/main.py serves it (same runner options), on a free port."""
    runner = http_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        assert runner.addresses
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return b"" == await reader.read(65536)
    except ConnectionError:
        return True


async def test_a_client_sending_headers_one_byte_at_a_time_is_cut_off_while_others_are_served(
    sidecar_factory: Factory,
) -> None:
    running = await sidecar_factory()
    await running.until(lambda s: s.up)
    async with served(running.sidecar.public_app) as port:
        loop = asyncio.get_running_loop()
        opened = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = b"GET /status HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"s" * 200 + b"\r\n\r\n"

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in request:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(1.0)  # the whole request would take minutes

        slow = asyncio.create_task(trickle(), name="slowloris")
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(5):
                    await asyncio.sleep(3)
                    async with session.get(f"http://127.0.0.1:{port}/status") as response:
                        assert 200 == response.status, "other clients are served meanwhile"
            assert await asyncio.wait_for(closed_by_server(reader), IDLE_CONNECTION_SECONDS + 5)
            assert loop.time() - opened == pytest.approx(IDLE_CONNECTION_SECONDS, abs=2)
        finally:
            slow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await slow
            writer.close()


async def test_many_idle_connections_are_closed_and_do_not_stop_the_server(sidecar_factory: Factory) -> None:
    running = await sidecar_factory()
    await running.until(lambda s: s.up)
    async with served(running.sidecar.public_app) as port:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(200)]
        try:
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/status") as response:
                assert 200 == response.status
            closed = await asyncio.wait_for(
                asyncio.gather(*(closed_by_server(reader) for reader, _ in idle)), IDLE_CONNECTION_SECONDS + 5
            )
            assert all(closed)
        finally:
            for _, writer in idle:
                writer.close()


async def test_a_keepalive_connection_held_by_a_long_drain_is_not_cut_by_the_idle_limit(
    daemon: Any, sidecar_factory: Factory
) -> None:
    running = await sidecar_factory()
    await running.until(lambda s: s.up)
    ref = daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    async with served(running.sidecar.admin_app) as port, aiohttp.ClientSession() as session:
        finish = asyncio.get_running_loop().call_later(10 * IDLE_CONNECTION_SECONDS, daemon.complete_build, ref)
        try:
            url = f"http://127.0.0.1:{port}/drain"
            async with session.post(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
                assert (200, True) == (response.status, (await response.json())["drained"])
        finally:
            finish.cancel()


async def test_a_drain_body_trickled_slower_than_the_limit_is_408_and_does_not_drain(
    sidecar_factory: Factory,
) -> None:
    running = await sidecar_factory()
    await running.until(lambda s: s.up)
    async with served(running.sidecar.admin_app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"POST /drain HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(65536), endpoints.BODY_READ_SECONDS + 5)
        finally:
            writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert "not received within" in json.loads(body)["error"]
    assert not running.state.draining


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


class SilentBuildkitd:
    """A gRPC server that accepts every call and never answers."""

    def __init__(self) -> None:
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers([self])

    def service(self, _details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        async def never(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
            await asyncio.Event().wait()
            return b""

        async def never_stream(_request: bytes, _context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            await asyncio.Event().wait()
            yield b""

        if _details.method.endswith("ListenBuildHistory"):
            return grpc.unary_stream_rpc_method_handler(never_stream)
        return grpc.unary_unary_rpc_method_handler(never)


@pytest.mark.looptime(False)  # gRPC deadlines run on the C core's real clock
@pytest.mark.parametrize("call", ["version", "arch", "snapshot"])
async def test_a_buildkitd_call_to_a_daemon_that_never_answers_ends_at_the_rpc_timeout(
    call: str, socket_path: Path
) -> None:
    silent = SilentBuildkitd()
    silent.server.add_insecure_port(f"unix:{socket_path}")
    await silent.server.start()
    channel = grpc.aio.insecure_channel(f"unix:{socket_path}")
    try:
        client = BuildkitClient(channel, rpc_timeout_seconds=0.5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(BuildkitError):
            await getattr(client, call)()
        assert 0.5 == pytest.approx(loop.time() - started, abs=0.4)
    finally:
        await channel.close(grace=None)
        await silent.server.stop(grace=None)


# -- the real process: memory and where the drain listens ----------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def rejected_upload(port: int, *, size: int) -> int:
    """POST a body of ``size`` bytes to /drain; the status of the answer (the server
    may answer and close before the upload ends)."""
    request = f"POST /drain HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request.encode())
        with contextlib.suppress(ConnectionError):
            for _ in range(size // 65536):
                writer.write(b"x" * 65536)
                await writer.drain()
        head = await asyncio.wait_for(reader.readline(), 30)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return int(head.split(b" ", 2)[1])


@pytest.mark.looptime(False)
@pytest.mark.subprocess
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_memory_stays_bounded_under_many_huge_rejected_bodies(
    spawn: Callable[..., Awaitable[Any]],  # noqa: F811 - the fixture imported from test_process
    tmp_path: Path,
) -> None:
    child = await spawn("--buildkit-addr", f"unix://{tmp_path}/absent.sock")
    await child.until("/healthz", lambda code, _body: code == 200)
    admin_port = int(child.admin.rsplit(":", 1)[1])
    for _ in range(20):  # warm up: first-use allocations are not growth
        assert 413 == await rejected_upload(admin_port, size=1024 * 1024)
    before = rss_bytes(child.process.pid)
    limit = asyncio.Semaphore(8)

    async def one() -> int:
        async with limit:
            return await rejected_upload(admin_port, size=1024 * 1024)

    codes = await asyncio.gather(*(one() for _ in range(300)))  # 300 MiB offered
    after = rss_bytes(child.process.pid)
    assert {413} == set(codes)
    assert after - before < 10 * 1024 * 1024, f"RSS grew {(after - before) / 2**20:.1f} MiB"
    status_code, body = await child.get(child.public + "/status")
    assert (200, False) == (status_code, body["draining"])


def non_loopback_address() -> str | None:
    """This machine's address on its default route, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only selects a route
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_the_admin_listener_defaults_to_loopback_and_the_public_one_to_every_address() -> None:
    defaults = Settings()
    assert ("127.0.0.1", 9091) == host_port(defaults.admin_listen)
    assert "0.0.0.0" == host_port(defaults.listen)[0]
    assert defaults.drain_token_file is None, "no /drain on the public listener unless a token is configured"


@pytest.mark.looptime(False)
@pytest.mark.subprocess
async def test_the_drain_is_not_reachable_from_outside_the_pod_by_default(tmp_path: Path) -> None:
    """The real process with the default listeners (ports moved to free ones): the
    admin port answers on loopback, refuses on the machine's other address, and the
    public listener, reachable there, has no /drain."""
    admin_host, _ = host_port(Settings().admin_listen)
    public_port, admin_port = free_port(), free_port()
    env = clean_env(
        BUILDKIT_SIDECAR_LISTEN=f"0.0.0.0:{public_port}",  # the default host
        BUILDKIT_SIDECAR_ADMIN_LISTEN=f"{admin_host}:{admin_port}",  # the default host
        BUILDKIT_SIDECAR_BUILDKIT_ADDR=f"unix://{tmp_path}/absent.sock",
    )
    process = await asyncio.create_subprocess_exec(
        *COMMAND, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=env
    )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STARTUP_SECONDS
            while True:
                try:
                    async with session.delete(f"http://127.0.0.1:{admin_port}/drain") as response:
                        assert 200 == response.status, "the admin listener answers on loopback"
                        break
                except aiohttp.ClientConnectionError:
                    assert loop.time() < deadline, "the sidecar never started"
                    await asyncio.sleep(0.05)
            outside = non_loopback_address()
            if outside is None:
                pytest.skip("this machine has no address but loopback")
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(outside, admin_port)
            async with session.post(f"http://{outside}:{public_port}/drain") as response:
                assert (404, {"error": "Not Found"}) == (response.status, await response.json())
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
