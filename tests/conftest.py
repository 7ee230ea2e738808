"""Shared fixtures: a fake buildkitd at the wire, the real sidecar wired to it,
fake time everywhere (looptime), and a guard against leaked asyncio tasks."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hypothesis.internal.observability  # noqa: F401 - see below
import pytest
from prometheus_client import CollectorRegistry

from fakes.buildkitd import FakeBuildkitd
from fakes.kubernetes import api, k8s  # noqa: F401 - fixtures for the autoscaler tests
from sidecar.main import Sidecar
from sidecar.settings import Settings

# gRPC's C core answers from its own threads: give it time before fake time
# jumps to the next timer, or a pending wait_for fires early (measured: 42
# cycles, the default, gave false timeouts; 10000 gave none under CPU load).
LOOPTIME_NOOP_CYCLES = 10_000

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

# The import above is hypothesis's pytest plugin's lazy one, done early: on
# CPython 3.11.7, compiling a module at the end of a session that ran the
# kmock-based tests fails with "SystemError: AST constructor recursion depth
# mismatch" (an interpreter bug fixed in later 3.11 releases), which crashed
# the terminal summary after all tests had passed.


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.looptime(noop_cycles=LOOPTIME_NOOP_CYCLES), append=True)


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running behind it."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    # give cancellations a moment to land
    if leaked:
        await asyncio.sleep(0)
        leaked = [t for t in leaked if not t.done()]
    assert leaked == [], f"leaked tasks: {[t.get_name() for t in leaked]}"


@pytest.fixture
def socket_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # unix socket paths are limited to ~107 bytes: keep it short
    base = Path(f"/tmp/bks-{os.getpid()}-{id(tmp_path_factory)}")
    base.mkdir(exist_ok=True)
    path = base / "buildkitd.sock"
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture
async def daemon(socket_path: Path) -> AsyncIterator[FakeBuildkitd]:
    fake = FakeBuildkitd()
    await fake.start(f"unix:{socket_path}")
    yield fake
    await fake.kill()


def make_settings(daemon: FakeBuildkitd, **changes: object) -> Settings:
    """Settings for a sidecar in a test: ephemeral ports, fast reconnects, no quiet period."""
    values: dict[str, object] = {
        "buildkit_addr": daemon.address,
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:1",
        "drain_quiet_seconds": 0.0,
        "reconnect_initial_seconds": 0.1,
        "reconnect_max_seconds": 1.0,
    }
    values.update(changes)
    return Settings(**values)  # type: ignore[arg-type]


class Running:
    """A real Sidecar whose follower runs in the background of the test."""

    def __init__(self, sidecar: Sidecar, task: asyncio.Task[None]) -> None:
        self.sidecar = sidecar
        self.task = task
        self.state = sidecar.state
        self.metrics = sidecar.metrics
        self.drainer = sidecar.drainer

    async def until(self, predicate, within: float = 30.0, *, poll: float | None = 0.05) -> None:
        """Wait (on fake time) until ``predicate(state)`` holds, looking at every change and every
        ``poll`` seconds. ``poll=None``: at changes only, so fake time leaps to the next one (a
        long backoff costs no real time)."""

        async def wait() -> None:
            while not predicate(self.state):
                await self.state.wait_changed(poll)

        await asyncio.wait_for(wait(), within)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    async def stop(self) -> None:
        self.sidecar.stop.set()
        await self.sidecar.drainer.close()
        await self.sidecar.agent.close()
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def sidecar_factory(daemon: FakeBuildkitd):
    """Start real sidecars inside the test body (call ``await sidecar_factory(**settings)``).

    Not a ready-made ``sidecar`` fixture on purpose: looptime runs fixtures on
    the real clock and restarts the loop's clock when the test begins, so a
    sidecar started in a fixture would carry real-clock times (idle since,
    lost at) into a fake-time test.
    """
    started: list[Running] = []

    async def make(**changes: object) -> Running:
        sidecar = Sidecar(settings=make_settings(daemon, **changes), registry=CollectorRegistry())
        task = asyncio.create_task(sidecar.follower.run(stop=sidecar.stop), name="test-follower")
        running = Running(sidecar, task)
        started.append(running)
        return running

    yield make
    for running in started:
        await running.stop()
