"""The HAProxy agent: the pure reply over every row of the router contract's table, then
the real server over real TCP on loopback, fed by a sidecar that follows the fake
buildkitd over gRPC (fake time), then hostile peers: junk, over-long lines, silent,
slow and half-open clients, and thousands of connections at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import socket
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fakes.buildkitd import FakeBuildkitd
from sidecar.agent import (
    MAX_CONNECTIONS,
    MAX_REQUEST_BYTES,
    AgentServer,
    Defaulted,
    Kind,
    Observation,
    Tier,
    reply,
    requested_tier,
)
from tests.conftest import Running
from tests.sidecar.child import Child

Factory = Callable[..., Awaitable[Running]]
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

UP_LINE = re.compile(r"\Aup ready (100|[1-9][0-9]?)%\n\Z")
"""Every up reply: `ready` always, a weight of 1 to 100 %, never 0 %, never maxconn."""


def line(observation: Observation, tier: Tier, slots: int) -> str:
    return reply(observation, tier=tier, slots=slots).line


# -- the reply: the contract's table, row by row ---------------------------------------

UNREACHABLE = Observation(builds=None, draining=False, accepting=False)
UNKNOWN_YET = Observation(builds=None, draining=False)
"""Never synced: the count is unknown (None), whatever else is true."""


@pytest.mark.parametrize("tier", list(Tier))
@pytest.mark.parametrize("observation", [UNREACHABLE, UNKNOWN_YET, Observation(builds=None, draining=True)])
def test_unreachable_or_unknown_count_is_down_for_every_tier(observation: Observation, tier: Tier) -> None:
    for slots in (1, 2, 3, 1000):
        assert "down\n" == line(observation, tier, slots)


@pytest.mark.parametrize("tier", list(Tier))
@pytest.mark.parametrize("builds", [0, 1, 2, 3, 50])
def test_draining_is_drain_for_every_tier_whatever_the_load(builds: int, tier: Tier) -> None:
    for slots in (1, 2, 3, 1000):
        assert "drain\n" == line(Observation(builds=builds, draining=True), tier, slots)


@pytest.mark.parametrize("tier", list(Tier))
def test_buildkitd_refusing_new_connections_while_its_builds_finish_is_drain(tier: Tier) -> None:
    """Not in the contract's table (decided here): readiness already fails; the count is
    still exact, and drain leaves its sessions alone until it exits (then: down)."""
    for builds in (0, 1, 5):
        assert "drain\n" == line(Observation(builds=builds, draining=False, accepting=False), tier, 2)


SLOTS_2 = [
    # builds: 0, slots - 1, slots, above slots
    (Tier.IDLE, [(0, "up ready 100%"), (1, "drain"), (2, "drain"), (3, "drain")]),
    (Tier.FREE, [(0, "up ready 100%"), (1, "up ready 50%"), (2, "drain"), (3, "drain")]),
    (Tier.ANY, [(0, "up ready 100%"), (1, "up ready 66%"), (2, "up ready 50%"), (3, "up ready 40%")]),
]
SLOTS_3 = [
    (Tier.IDLE, [(0, "up ready 100%"), (2, "drain"), (3, "drain"), (4, "drain")]),
    (Tier.FREE, [(0, "up ready 100%"), (1, "up ready 67%"), (2, "up ready 34%"), (3, "drain"), (4, "drain")]),
    (Tier.ANY, [(0, "up ready 100%"), (2, "up ready 60%"), (3, "up ready 50%"), (4, "up ready 42%")]),
]
SLOTS_1 = [
    (Tier.IDLE, [(0, "up ready 100%"), (1, "drain"), (2, "drain")]),
    (Tier.FREE, [(0, "up ready 100%"), (1, "drain"), (2, "drain")]),
    (Tier.ANY, [(0, "up ready 100%"), (1, "up ready 50%"), (2, "up ready 33%"), (1000, "up ready 1%")]),
]


@pytest.mark.parametrize(
    ("slots", "tier", "rows"),
    [(2, tier, rows) for tier, rows in SLOTS_2]
    + [(3, tier, rows) for tier, rows in SLOTS_3]
    + [(1, tier, rows) for tier, rows in SLOTS_1],
    ids=lambda v: str(v) if isinstance(v, int | Tier) else "",
)
def test_each_tier_at_0_slots_minus_1_slots_and_above(slots: int, tier: Tier, rows: list[tuple[int, str]]) -> None:
    for builds, expected in rows:
        assert (builds, expected + "\n") == (builds, line(Observation(builds=builds, draining=False), tier, slots))


@given(slots=st.integers(1, 1000), builds=st.integers(0, 100_000))
def test_every_up_reply_says_ready_with_the_exact_weight_and_never_0_percent(slots: int, builds: int) -> None:
    observation = Observation(builds=builds, draining=False)
    idle, free, any_ = (line(observation, tier, slots) for tier in (Tier.IDLE, Tier.FREE, Tier.ANY))
    assert ("up ready 100%\n" if builds == 0 else "drain\n") == idle
    if builds < slots:
        assert f"up ready {math.ceil(Fraction(100 * (slots - builds), slots))}%\n" == free
    else:
        assert "drain\n" == free
    assert f"up ready {max(1, math.floor(Fraction(100 * slots, slots + builds)))}%\n" == any_
    for answer in (idle, free, any_):
        assert answer == "drain\n" or UP_LINE.match(answer), answer
        assert "maxconn" not in answer
    # A tier a builder belongs to at some load, it belongs to at any lower load; weights fall as load rises.
    lighter = Observation(builds=max(0, builds - 1), draining=False)
    for tier in Tier:
        now, before = reply(observation, tier=tier, slots=slots), reply(lighter, tier=tier, slots=slots)
        if now.kind is Kind.UP:
            assert before.kind is Kind.UP
            assert before.weight_percent is not None
            assert now.weight_percent is not None
            assert before.weight_percent >= now.weight_percent


# -- the request line -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"idle\n", (Tier.IDLE, None)),
        (b"free\n", (Tier.FREE, None)),
        (b"any\n", (Tier.ANY, None)),
        (b"idle", (Tier.IDLE, None)),  # ended by the peer's end of data
        (b"free\r\n", (Tier.FREE, None)),
        (b"  idle \t\n", (Tier.IDLE, None)),
        (b"idle\nfree\n", (Tier.IDLE, None)),  # one line only
        (b"", (Tier.ANY, Defaulted.EMPTY)),
        (b"\n", (Tier.ANY, Defaulted.EMPTY)),
        (b" \r\n", (Tier.ANY, Defaulted.EMPTY)),
        (b"IDLE\n", (Tier.ANY, Defaulted.INVALID)),
        (b"idle free\n", (Tier.ANY, Defaulted.INVALID)),
        (b"\xff\xfeidle\n", (Tier.ANY, Defaulted.INVALID)),
        (b"\x00\n", (Tier.ANY, Defaulted.INVALID)),
        (b"idle" + b" " * (MAX_REQUEST_BYTES - 4), (Tier.ANY, Defaulted.INVALID)),  # the limit, no newline
    ],
)
def test_the_request_names_a_tier_or_is_answered_as_any(data: bytes, expected: tuple[Tier, Defaulted | None]) -> None:
    assert expected == requested_tier(data)


@given(data=st.binary(max_size=MAX_REQUEST_BYTES))
def test_any_bytes_read_name_a_tier_or_any_with_a_reason(data: bytes) -> None:
    tier, defaulted = requested_tier(data)
    assert (defaulted is None) == (data.partition(b"\n")[0].strip() in {b"idle", b"free", b"any"})
    assert defaulted is None or tier is Tier.ANY


# -- the real server, fed by the real sidecar state ------------------------------------


async def connected(sidecar_factory: Factory, **changes: object) -> Running:
    """A sidecar following the fake daemon, connected (made inside the test: see conftest)."""
    running = await sidecar_factory(**changes)
    await running.until(lambda s: s.up)
    return running


@contextlib.asynccontextmanager
async def listening(running: Running, **limits: Any) -> AsyncIterator[AgentServer]:
    """The sidecar's own agent (or, with ``limits``, one on the same state) on a free loopback port."""
    agent = running.sidecar.agent
    if limits:
        agent = AgentServer(state=running.state, slots=2, metrics=running.metrics, **limits)
    await agent.start("127.0.0.1", 0)
    try:
        yield agent
    finally:
        await agent.close()


async def open_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


async def send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(ConnectionError):  # the server may have answered and closed already
        await asyncio.get_running_loop().sock_sendall(sock, data)


async def answer_on(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset after its reply keeps the reply:
    the kernel hands over queued data before the error)."""
    loop = asyncio.get_running_loop()
    answer = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await loop.sock_recv(sock, 1024):
            answer += chunk
    return answer


async def ask(port: int, request: bytes = b"", *, within: float = 30.0) -> bytes:
    """One probe as HAProxy makes it: connect, send, read the reply until the server closes."""

    async def probe() -> bytes:
        with await open_socket(port) as sock:
            if request:
                await send(sock, request)
            return await answer_on(sock)

    return await asyncio.wait_for(probe(), within)


async def tiers(port: int) -> dict[str, str]:
    return {tier.value: (await ask(port, f"{tier}\n".encode())).decode() for tier in Tier}


def replies(running: Running, tier: str, kind: str) -> float:
    return running.sample("buildkit_sidecar_agent_replies_total", arch="amd64", tier=tier, reply=kind) or 0.0


async def status_of(request: Any) -> int:
    """The status of an aiohttp request, read to the end."""
    async with request as response:
        await response.read()
        return int(response.status)


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Whatever reaches the event loop's exception handler during the test."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    yield seen
    loop.set_exception_handler(previous)


@pytest.fixture
def quiet(loop_errors: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if anything reached the loop's exception handler or asyncio's logger."""
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        yield
    assert [] == loop_errors
    assert [] == [r.getMessage() for r in caplog.records if r.name == "asyncio"]


async def test_a_build_starting_and_finishing_moves_the_idle_tier_answer(
    daemon: FakeBuildkitd, sidecar_factory: Factory
) -> None:
    running = await connected(sidecar_factory)
    async with listening(running) as agent:
        assert {"idle": "up ready 100%\n", "free": "up ready 100%\n", "any": "up ready 100%\n"} == await tiers(
            agent.port
        )
        ref = daemon.start_build()
        await running.until(lambda s: s.active_count() == 1)
        assert {"idle": "drain\n", "free": "up ready 50%\n", "any": "up ready 66%\n"} == await tiers(agent.port)
        daemon.complete_build(ref)
        await running.until(lambda s: s.active_count() == 0)
        assert b"up ready 100%\n" == await ask(agent.port, b"idle\n")
    assert (1.0, 2.0) == (replies(running, "idle", "drain"), replies(running, "idle", "up"))


async def test_builds_this_router_did_not_place_count_the_same(daemon: FakeBuildkitd, sidecar_factory: Factory) -> None:
    """bake's three builds on one connection, or builds from another router: the agent
    only sees buildkitd's count, so a full builder leaves the idle and free tiers."""
    running = await connected(sidecar_factory, build_slots=2)
    for _ in range(3):
        daemon.start_build()
    await running.until(lambda s: s.active_count() == 3)
    async with listening(running) as agent:
        assert {"idle": "drain\n", "free": "drain\n", "any": "up ready 40%\n"} == await tiers(agent.port)


async def test_a_drain_is_drain_on_every_tier_until_delete_drain_brings_back_up_ready(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await connected(sidecar_factory)
    ref = daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    admin = await aiohttp_client(running.sidecar.admin_app)
    async with listening(running) as agent:
        draining = asyncio.create_task(status_of(admin.post("/drain")))
        await running.until(lambda s: s.draining)
        assert {"idle": "drain\n", "free": "drain\n", "any": "drain\n"} == await tiers(agent.port)
        daemon.complete_build(ref)
        assert 200 == await draining, "the drain ended: idle"
        assert {"idle": "drain\n", "free": "drain\n", "any": "drain\n"} == await tiers(agent.port), (
            "a finished drain still holds new builds off"
        )
        assert 200 == await status_of(admin.delete("/drain"))
        assert {"idle": "up ready 100%\n", "free": "up ready 100%\n", "any": "up ready 100%\n"} == await tiers(
            agent.port
        )


async def test_buildkitd_unreachable_is_down_on_every_tier_and_up_again_when_it_is_back(
    daemon: FakeBuildkitd, sidecar_factory: Factory
) -> None:
    running = await connected(sidecar_factory)
    daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    async with listening(running) as agent:
        await daemon.kill()
        await running.until(lambda s: not s.up)
        assert {"idle": "down\n", "free": "down\n", "any": "down\n"} == await tiers(agent.port)
        await daemon.restart()
        await running.until(lambda s: s.up)
        assert {"idle": "up ready 100%\n", "free": "up ready 100%\n", "any": "up ready 100%\n"} == await tiers(
            agent.port
        )
    assert 3.0 == sum(replies(running, tier, "down") for tier in ("idle", "free", "any"))


async def test_a_builder_whose_count_was_never_known_is_down(daemon: FakeBuildkitd, sidecar_factory: Factory) -> None:
    await daemon.kill()
    running = await sidecar_factory()
    async with listening(running) as agent:
        assert {"idle": "down\n", "free": "down\n", "any": "down\n"} == await tiers(agent.port)


async def test_buildkitd_finishing_its_builds_before_exiting_is_drain(
    daemon: FakeBuildkitd, sidecar_factory: Factory
) -> None:
    running = await connected(sidecar_factory, resync_interval_seconds=1)
    ref = daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    async with listening(running) as agent:
        exiting = asyncio.create_task(daemon.graceful_exit())
        await running.until(lambda s: not s.connection.accepting)
        assert {"idle": "drain\n", "free": "drain\n", "any": "drain\n"} == await tiers(agent.port)
        daemon.complete_build(ref)
        await exiting
        await running.until(lambda s: not s.up)
        assert b"down\n" == await ask(agent.port, b"any\n")


# -- hostile peers ----------------------------------------------------------------------


async def busy(daemon: FakeBuildkitd, sidecar_factory: Factory) -> Running:
    """One build of two slots: every tier answers differently (idle drain, free 50 %, any 66 %)."""
    running = await connected(sidecar_factory)
    daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    return running


ANY_WHEN_BUSY = b"up ready 66%\n"


def defaulted(running: Running, reason: Defaulted) -> float:
    return running.sample("buildkit_sidecar_agent_requests_defaulted_total", arch="amd64", reason=reason.value) or 0.0


class Shared:
    """One busy sidecar with its agent listening, made by the first example that needs it
    and reused by the rest (one per example would cost most of the run)."""

    def __init__(self, daemon: FakeBuildkitd, sidecar_factory: Factory) -> None:
        self._daemon = daemon
        self._factory = sidecar_factory
        self.running: Running | None = None

    async def port(self) -> int:
        if self.running is None:
            self.running = await busy(self._daemon, self._factory)
            await self.running.sidecar.agent.start("127.0.0.1", 0)  # closed by the factory's teardown
        return self.running.sidecar.agent.port


@pytest.fixture
def shared(daemon: FakeBuildkitd, sidecar_factory: Factory) -> Shared:
    return Shared(daemon, sidecar_factory)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(min_size=1, max_size=4 * MAX_REQUEST_BYTES))
async def test_junk_is_answered_as_tier_any(shared: Shared, junk: bytes) -> None:
    assume(junk.partition(b"\n")[0].strip() not in (b"idle", b"free", b"any"))
    assert ANY_WHEN_BUSY == await ask(await shared.port(), junk)


async def test_a_line_longer_than_the_limit_is_answered_as_any_without_reading_the_rest(
    daemon: FakeBuildkitd, sidecar_factory: Factory, quiet: None
) -> None:
    running = await busy(daemon, sidecar_factory)
    async with listening(running) as agent:
        assert ANY_WHEN_BUSY == await ask(agent.port, b"idle" + b" " * MAX_REQUEST_BYTES + b"\n")
        assert ANY_WHEN_BUSY == await ask(agent.port, b"x" * 1_000_000)
        assert b"drain\n" == await ask(agent.port, b"idle\n"), "and the next probe is answered"
    assert 2.0 == defaulted(running, Defaulted.INVALID)


async def test_a_client_that_never_sends_is_answered_as_any_after_the_timeout_not_held(
    daemon: FakeBuildkitd, sidecar_factory: Factory, quiet: None
) -> None:
    running = await busy(daemon, sidecar_factory)
    async with listening(running) as agent:
        assert ANY_WHEN_BUSY == await ask(agent.port, b"", within=30)
        assert 0 == agent.open_connections
    assert 1.0 == defaulted(running, Defaulted.TIMEOUT)


async def test_a_slow_client_is_answered_as_any_when_its_time_is_up(
    daemon: FakeBuildkitd, sidecar_factory: Factory, quiet: None
) -> None:
    running = await busy(daemon, sidecar_factory)
    async with listening(running) as agent:
        with await open_socket(agent.port) as sock:
            for byte in b"idle\n":
                await send(sock, bytes([byte]))
                await asyncio.sleep(0.2)  # the whole line takes a second: over the limit
            assert ANY_WHEN_BUSY == await asyncio.wait_for(answer_on(sock), 30)
    assert 1.0 == defaulted(running, Defaulted.TIMEOUT)


async def test_half_open_clients_are_answered_at_their_end_of_data(
    daemon: FakeBuildkitd, sidecar_factory: Factory, quiet: None
) -> None:
    running = await busy(daemon, sidecar_factory)
    async with listening(running) as agent:
        for request, expected in ((b"free", b"up ready 50%\n"), (b"fr", ANY_WHEN_BUSY), (b"", ANY_WHEN_BUSY)):
            with await open_socket(agent.port) as sock:
                await send(sock, request)
                sock.shutdown(socket.SHUT_WR)  # half-open: sends nothing more, still reads
                assert expected == await asyncio.wait_for(answer_on(sock), 30)
    assert {"invalid": 1.0, "empty": 1.0, "timeout": 0.0} == {r.value: defaulted(running, r) for r in Defaulted}


async def test_clients_that_leave_at_once_or_reset_cost_nothing(
    daemon: FakeBuildkitd, sidecar_factory: Factory, quiet: None
) -> None:
    running = await busy(daemon, sidecar_factory)
    async with listening(running) as agent:
        for _ in range(20):
            (await open_socket(agent.port)).close()
            with await open_socket(agent.port) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
        await asyncio.sleep(1)  # let every one of them end
        assert 0 == agent.open_connections
        assert b"up ready 50%\n" == await ask(agent.port, b"free\n")
    assert running.sample("buildkit_sidecar_loop_errors_total", arch="amd64", loop="agent") is None


async def test_connections_past_the_limit_are_closed_unanswered_at_once(
    daemon: FakeBuildkitd, sidecar_factory: Factory, quiet: None
) -> None:
    running = await busy(daemon, sidecar_factory)
    # A long request time: the held connections stay held, whatever fake time does meanwhile.
    async with listening(running, max_connections=3, request_seconds=3600) as agent:
        held = [await open_socket(agent.port) for _ in range(3)]
        try:
            assert b"" == await ask(agent.port, b"idle\n"), "the fourth is closed unanswered"
            assert 1.0 == running.sample("buildkit_sidecar_agent_connections_refused_total", arch="amd64")
            assert 3 == agent.open_connections
            for sock in held:
                await send(sock, b"free\n")
                assert b"up ready 50%\n" == await asyncio.wait_for(answer_on(sock), 30)
        finally:
            for sock in held:
                sock.close()
        assert b"drain\n" == await ask(agent.port, b"idle\n"), "served again once under the limit"


async def test_two_thousand_connections_at_once_are_answered_or_refused_and_the_server_goes_on(
    daemon: FakeBuildkitd, sidecar_factory: Factory, quiet: None
) -> None:
    running = await busy(daemon, sidecar_factory)
    count = 2000
    async with listening(running) as agent:
        # Connect a few at a time (all stay open): fewer handshakes in flight than the listen
        # backlog, so the kernel never drops one and waits a real second to retry it.
        connecting = asyncio.Semaphore(50)

        async def connect() -> socket.socket:
            async with connecting:
                return await open_socket(agent.port)

        socks = await asyncio.gather(*(connect() for _ in range(count)))
        try:
            assert agent.open_connections <= MAX_CONNECTIONS
            tier_names = [b"idle\n", b"free\n", b"any\n", b"junk\n"]

            async def exchange(i: int, sock: socket.socket) -> bytes:
                await send(sock, tier_names[i % len(tier_names)])
                return await answer_on(sock)

            answers = await asyncio.wait_for(asyncio.gather(*(exchange(i, s) for i, s in enumerate(socks))), 300)
        finally:
            for sock in socks:
                sock.close()
        well_formed = [a for a in answers if a in {b"drain\n", b"down\n"} or UP_LINE.match(a.decode())]
        refused = [a for a in answers if a == b""]
        assert count == len(well_formed) + len(refused), [a for a in answers if a not in well_formed + refused][:5]
        answered = sum(
            replies(running, tier, kind) for tier in ("idle", "free", "any") for kind in ("up", "drain", "down")
        )
        assert (len(well_formed), len(refused)) == (
            answered,
            running.sample("buildkit_sidecar_agent_connections_refused_total", arch="amd64") or 0,
        ), "every connection is counted once: answered or refused"
        await running.until(lambda s: s.up and s.active_count() == 1)
        assert {"idle": "drain\n", "free": "up ready 50%\n", "any": "up ready 66%\n"} == await tiers(agent.port)
        assert 0 == agent.open_connections
    assert running.sample("buildkit_sidecar_loop_errors_total", arch="amd64", loop="agent") is None


# -- the real process -------------------------------------------------------------------


@pytest.mark.looptime(False)
@pytest.mark.subprocess
async def test_the_sidecar_process_answers_on_its_agent_listener(
    daemon: FakeBuildkitd, spawn: Callable[..., Awaitable[Child]]
) -> None:
    child = await spawn("--buildkit-addr", daemon.address, "--build-slots", "4")
    await child.until("/readyz", lambda code, _body: code == 200)
    daemon.start_build()
    await child.until("/status", lambda code, body: code == 200 and body["active_count"] == 1)
    assert b"up ready 75%\n" == await ask(child.agent_port, b"free\n")


@pytest.mark.looptime(False)
@pytest.mark.subprocess
async def test_an_agent_port_in_use_stops_the_sidecar_at_start_up_naming_the_flag(
    daemon: FakeBuildkitd, spawn: Callable[..., Awaitable[Child]]
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        child = await spawn("--buildkit-addr", daemon.address, "--agent-listen", f"127.0.0.1:{port}")
        assert 2 == await child.exit_code(within=30)
    assert f"cannot listen on --agent-listen='127.0.0.1:{port}': address already in use" in child.log.read_text()


@pytest.mark.looptime(False)
@pytest.mark.subprocess
async def test_agent_listen_none_serves_no_agent(daemon: FakeBuildkitd, spawn: Callable[..., Awaitable[Child]]) -> None:
    child = await spawn("--buildkit-addr", daemon.address, "--agent-listen", "none")
    await child.until("/readyz", lambda code, _body: code == 200)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", child.agent_port)


def rss_bytes(pid: int) -> int:
    for text in Path(f"/proc/{pid}/status").read_text().splitlines():
        if text.startswith("VmRSS:"):
            return int(text.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.looptime(False)
@pytest.mark.subprocess
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_memory_stays_bounded_under_thousands_of_junk_connections(
    daemon: FakeBuildkitd, spawn: Callable[..., Awaitable[Child]]
) -> None:
    child = await spawn("--buildkit-addr", daemon.address)
    await child.until("/readyz", lambda code, _body: code == 200)

    async def flood(count: int) -> list[bytes]:
        """``count`` connections, 500 at a time (past the limit), each sending 64 KiB of junk."""
        at_once = asyncio.Semaphore(500)

        async def one() -> bytes:
            async with at_once:
                with await open_socket(child.agent_port) as sock:
                    await send(sock, b"x" * 65536)
                    return await answer_on(sock)

        return await asyncio.gather(*(one() for _ in range(count)))

    await flood(500)  # first-use allocations, and the high-water mark of 500 at once
    before = rss_bytes(child.process.pid)
    answers = await flood(2000)
    after = rss_bytes(child.process.pid)
    assert set(answers) <= {b"up ready 100%\n", b""}, "junk is answered as any, or refused past the limit"
    assert after - before < 10 * 1024 * 1024, f"RSS grew {(after - before) / 2**20:.1f} MiB"
    assert b"up ready 100%\n" == await ask(child.agent_port, b"idle\n")
