"""Fixtures for the sidecar's tests. (The fake buildkitd, the in-process sidecar and
fake time are the whole suite's: tests/conftest.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.sidecar.child import COMMAND, Child, clean_env, free_port


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Child]]]:
    """Start real sidecar processes (``await spawn(*args, env=...)``) on free loopback ports
    (public, admin and agent);
    any still running are killed at the end. (test_following.py has a ``spawn`` of its own
    that starts another fake buildkitd.)"""
    children: list[Child] = []

    async def start(*args: str, env: dict[str, str] | None = None) -> Child:
        public_port, admin_port, agent_port = free_port(), free_port(), free_port()
        log = tmp_path / f"sidecar-{len(children)}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                *COMMAND,
                "--listen",
                f"127.0.0.1:{public_port}",
                "--admin-listen",
                f"127.0.0.1:{admin_port}",
                "--agent-listen",
                f"127.0.0.1:{agent_port}",
                *args,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=clean_env(**(env or {})),
            )
        child = Child(
            process,
            public=f"http://127.0.0.1:{public_port}",
            admin=f"http://127.0.0.1:{admin_port}",
            agent_port=agent_port,
            log=log,
        )
        children.append(child)
        return child

    yield start
    for child in children:
        if child.process.returncode is None:
            child.process.kill()
        await child.process.wait()
