"""The autoscaler's reader of the sidecars' /status, at the wire and under fuzzing."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from autoscaler.controller.sources.sidecars import (
    MAX_STATUS_BYTES,
    SidecarStatus,
    StatusError,
    Unreadable,
    fetch_all,
    parse_status,
)

GOOD = {
    "version": 1,
    "arch": "amd64",
    "buildkit_up": True,
    "draining": False,
    "active_count": 2,
    "active_builds": [
        {"ref": "a", "started_at": "2026-11-28T14:53:55Z", "age_seconds": 1.5},
        {"ref": "b", "started_at": None, "age_seconds": 3},
    ],
    "buildkit_version": "v0.32.2",
    "a_field_from_a_newer_sidecar": {"x": 1},
}


def test_a_version_1_status_parses_and_unknown_fields_are_ignored() -> None:
    assert SidecarStatus(arch="amd64", buildkit_up=True, draining=False, active_count=2) == parse_status(
        json.dumps(GOOD).encode()
    )


def test_unknown_count_stays_unknown_never_zero() -> None:
    body = {**GOOD, "buildkit_up": False, "active_count": None, "active_builds": None}
    assert parse_status(json.dumps(body).encode()).active_count is None


def test_an_unknown_version_is_refused_loudly() -> None:
    with pytest.raises(StatusError, match="version 2 is not supported") as caught:
        parse_status(json.dumps({**GOOD, "version": 2}).encode())
    assert caught.value.version_mismatch


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({**GOOD, "active_count": "2"}).encode(), "active_count"),
        (json.dumps({**GOOD, "active_count": -1}).encode(), "active_count"),
        (json.dumps({**GOOD, "buildkit_up": "yes"}).encode(), "buildkit_up"),
        (json.dumps({**GOOD, "active_count": 3}).encode(), "disagrees"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "draining"}).encode(), "draining"),
        (b" " * (MAX_STATUS_BYTES + 1), "exceeds"),
    ],
)
def test_a_body_that_is_not_the_contract_is_refused_with_the_reason(body: bytes, message: str) -> None:
    with pytest.raises(StatusError, match=message):
        parse_status(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from([*GOOD, "extra"]), json_values, max_size=8) | json_values)
def test_any_json_either_parses_or_raises_status_error(value: object) -> None:
    try:
        status = parse_status(json.dumps(value).encode())
    except StatusError:
        return
    assert status.active_count is None or status.active_count >= 0


@given(st.binary(max_size=256))
def test_any_bytes_either_parse_or_raise_status_error(body: bytes) -> None:
    with contextlib.suppress(StatusError):
        parse_status(body)


async def test_fetch_all_reports_every_failure_as_unreadable_with_a_reason(aiohttp_server) -> None:
    async def good(_request: web.Request) -> web.Response:
        return web.json_response(GOOD)

    async def hang(_request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.json_response(GOOD)

    async def error(_request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    async def future(_request: web.Request) -> web.Response:
        return web.json_response({**GOOD, "version": 7})

    app = web.Application()
    app.router.add_get("/good/status", good)
    app.router.add_get("/hang/status", hang)
    app.router.add_get("/error/status", error)
    app.router.add_get("/future/status", future)
    server = await aiohttp_server(app)
    base = f"http://127.0.0.1:{server.port}"
    urls = {name: f"{base}/{name}/status" for name in ("good", "hang", "error", "future")}
    urls["refused"] = "http://127.0.0.1:1/status"
    async with aiohttp.ClientSession() as session:
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await fetch_all(session, urls, timeout_seconds=2.0, concurrency=2)
        elapsed = loop.time() - started
    assert isinstance(results["good"], SidecarStatus)
    assert Unreadable("no answer within 2 s") == results["hang"]
    assert Unreadable("HTTP 500") == results["error"]
    assert isinstance(results["future"], Unreadable)
    assert results["future"].version_mismatch
    assert isinstance(results["refused"], Unreadable)
    assert "ClientConnectorError" in results["refused"].reason
    # one hung pod costs one timeout, not one per pod
    assert elapsed == pytest.approx(2.0, abs=0.1)
