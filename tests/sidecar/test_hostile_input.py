"""Hostile requests to the sidecar's HTTP listeners are answered below 500, without a
trace, and never start a drain: any request fuzzed through the real apps, bytes that are
not HTTP, bodies over the limit (with the real process's memory staying bounded), and
the drain is not reachable from outside the pod by default."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from common.addresses import host_port
from sidecar import endpoints
from sidecar.main import IDLE_CONNECTION_SECONDS
from sidecar.settings import Settings
from tests.conftest import Running
from tests.sidecar.child import COMMAND, STARTUP_SECONDS, clean_env, free_port
from tests.sidecar.serving import served

Factory = Callable[..., Awaitable[Running]]
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

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
@example(data=b"\n", where="raw")  # blank lines only: no request ever starts, so no answer; the idle limit closes it
async def test_bytes_that_are_not_http_get_a_400_with_a_reason_and_no_trace(
    target: Target, data: bytes, where: str
) -> None:
    running = await target.ready()
    if where == "request-line":
        payload = b"GET /" + data + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    elif where == "header":
        payload = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Odd: " + data + b"\r\nConnection: close\r\n\r\n"
    else:
        payload = data + b"\r\n\r\n"
    # Served as sidecar/main.py serves it: its idle limit is what ends a connection that never sends a request.
    async with served(running.sidecar.public_app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
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
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as response:
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
    spawn: Callable[..., Awaitable[Any]],
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
    public_port, admin_port, agent_port = free_port(), free_port(), free_port()
    env = clean_env(
        BUILDKIT_SIDECAR_LISTEN=f"0.0.0.0:{public_port}",  # the default host
        BUILDKIT_SIDECAR_ADMIN_LISTEN=f"{admin_host}:{admin_port}",  # the default host
        BUILDKIT_SIDECAR_AGENT_LISTEN=f"0.0.0.0:{agent_port}",  # the default host
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
