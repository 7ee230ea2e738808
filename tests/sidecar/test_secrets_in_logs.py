"""The drain token: wrong ones are refused whatever their length or bytes, the
right one works whatever its length, and it never reaches a log line, neither
ours (structlog, captured) nor aiohttp's (the real process's output)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Running
from tests.sidecar.child import Child

Factory = Callable[..., Awaitable[Running]]
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

TOKEN = "tok-3f9a1c7e55d04b2a9e61c0ffee"  # noqa: S105 - the test's own secret, to look for in logs


@pytest.fixture
def shared() -> dict[str, Any]:
    """State that every example of one hypothesis test shares (one sidecar for all)."""
    return {}


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "drain-token"
    path.write_text(TOKEN + "\n")
    return path


async def connected(sidecar_factory: Factory, **changes: object) -> Running:
    running = await sidecar_factory(**changes)
    await running.until(lambda s: s.up)
    return running


async def answer(client: TestClient[Any, Any], method: str, token: str | None) -> tuple[int, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with client.request(method, "/drain", headers=headers) as response:
        return response.status, await response.json()


def wrong_tokens() -> list[str]:
    """Wrong tokens of every length from 0 to twice the right one's, and near misses."""
    filler = "abcdefghijklmnopqrstuvwxyz0123456789"
    tokens = [(filler * 3)[:n] for n in range(2 * len(TOKEN) + 1)]
    tokens += [
        TOKEN[:-1],  # a prefix
        TOKEN + "x",  # an extension
        TOKEN[:-1] + ("0" if TOKEN[-1] != "0" else "1"),  # same length, last byte differs
        "x" + TOKEN[1:],  # same length, first byte differs
        TOKEN.upper(),
        TOKEN + " " + TOKEN,
        "x" * 4096,
    ]
    return [t for t in tokens if t.strip() != TOKEN]


async def test_every_wrong_token_is_401_the_right_one_drains_and_none_is_logged(
    sidecar_factory: Factory, aiohttp_client: ClientFactory, token_file: Path
) -> None:
    running = await connected(sidecar_factory, drain_token_file=token_file)
    public = await aiohttp_client(running.sidecar.public_app)
    with structlog.testing.capture_logs() as captured:
        for token in wrong_tokens():
            assert (token, 401) == (token, (await answer(public, "POST", token))[0])
        assert not running.state.draining
        assert 200 == (await answer(public, "POST", TOKEN))[0]
        assert running.state.draining
        assert 200 == (await answer(public, "DELETE", TOKEN))[0]
    assert [] != captured, "the refusals and the drain were logged"
    assert TOKEN not in repr(captured)
    assert {"drain_unauthorized"} == {e["event"] for e in captured if e["log_level"] == "warning"}


async def test_a_rotated_token_of_another_length_works_and_the_old_one_no_longer_does(
    sidecar_factory: Factory, aiohttp_client: ClientFactory, token_file: Path
) -> None:
    """Behavioural evidence of a comparison that does not depend on the length matching
    (``hmac.compare_digest``): short, long and same-length tokens are each told apart."""
    running = await connected(sidecar_factory, drain_token_file=token_file)
    public = await aiohttp_client(running.sidecar.public_app)
    for new in ("k", TOKEN * 8, TOKEN[::-1]):
        await asyncio.to_thread(token_file.write_text, new + "\n")
        assert 401 == (await answer(public, "GET", TOKEN if new != TOKEN else "nope"))[0]
        assert 401 == (await answer(public, "GET", new + "x"))[0]
        assert 401 == (await answer(public, "GET", new[:-1] or "x"))[0]
        assert 200 == (await answer(public, "GET", new))[0]
        assert 200 == (await answer(public, "DELETE", new))[0]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(value=st.binary(max_size=300).filter(lambda b: b"\r" not in b and b"\n" not in b))
async def test_any_bytes_as_a_bearer_token_are_a_json_401_never_a_5xx(
    sidecar_factory: Factory, aiohttp_client: ClientFactory, token_file: Path, shared: dict[str, Any], value: bytes
) -> None:
    if not shared:  # the first example makes the sidecar (inside the test: fixtures run on the real clock)
        shared["running"] = await connected(sidecar_factory, drain_token_file=token_file)
        shared["public"] = await aiohttp_client(shared["running"].sidecar.public_app)
    running, public = shared["running"], shared["public"]
    reader, writer = await asyncio.open_connection("127.0.0.1", public.port)
    try:
        writer.write(b"POST /drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + value + b"\r\n")
        writer.write(b"Connection: close\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    code = int(head.split(b" ", 2)[1])
    if code == 400:  # bytes the HTTP parser refuses (a control character): never reaches us
        assert b"Traceback" not in body
    else:
        assert (401, {"error": "missing or wrong bearer token"}) == (code, json.loads(body))
    assert not running.state.draining


# -- the real process: nothing secret in its output --------------------------------


@pytest.mark.looptime(False)
@pytest.mark.subprocess
async def test_the_token_never_appears_in_the_process_output_even_inside_malformed_requests(
    spawn: Callable[..., Awaitable[Child]],
    token_file: Path,
    tmp_path: Path,
) -> None:
    child = await spawn(
        "--buildkit-addr",
        f"unix://{tmp_path}/absent.sock",
        "--drain-token-file",
        str(token_file),
        "--drain-gone-seconds",
        "0",
    )
    await child.until("/healthz", lambda code, _body: code == 200)
    port = int(child.public.rsplit(":", 1)[1])
    secret = TOKEN.encode()
    requests = [
        b"POST /drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret + b"x\r\n\r\n",
        b"POST /drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret + b"\x01\r\n\r\n",  # bad byte
        b"POST /drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret + b"v" * 9000 + b"\r\n\r\n",  # too long
        b"POST /drain?token=" + secret + b"\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /" + secret + b" HTTP/1.1\r\nHost: x\r\nX-Odd: \x7f" + secret + b"\r\n\r\n",
        b"DELETE /drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret + b"\r\n\r\n",  # the right one
    ]
    codes = []
    for request in requests:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readline(), 10)
        codes.append(int(head.split(b" ", 2)[1]))
        writer.close()
        await writer.wait_closed()
    assert [401, 400, 400, 400, 400, 200] == codes
    async with aiohttp.ClientSession() as session, session.get(child.public + "/status") as response:
        assert 200 == response.status
    child.process.terminate()
    assert 0 == await child.exit_code(within=30)
    output = child.log.read_bytes()
    assert secret not in output
    lines = output.decode().splitlines()
    assert any('"http_server_error"' in line for line in lines), "aiohttp's refusals are logged, as JSON"
    for line in lines:
        json.loads(line)  # every line is one JSON object: no multi-line traceback
