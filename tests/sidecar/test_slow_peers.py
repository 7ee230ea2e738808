"""Slow and silent peers cannot hold the sidecar: a client that trickles its request or
sits idle is cut off at the idle limit while others are served, a long drain on a
keep-alive connection is not, a trickled drain body is a 408, and a buildkitd that
never answers costs one RPC timeout."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from sidecar import endpoints
from sidecar.buildkit import BuildkitClient, BuildkitError
from sidecar.main import IDLE_CONNECTION_SECONDS
from tests.conftest import Running
from tests.sidecar.serving import served

Factory = Callable[..., Awaitable[Running]]


# -- slow and idle clients on a real socket ------------------------------------------


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


# -- a buildkitd that never answers --------------------------------------------------


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
