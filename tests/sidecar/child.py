"""The real ``buildkit-sidecar`` command as a child process: how to start it (the
installed console script, a clean environment, free ports) and :class:`Child`, its
process and its listeners. The ``spawn`` fixture that starts one is in this folder's
conftest.py; test_process.py, test_secrets_in_logs.py and test_hostile_input.py use them."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

_SCRIPT = Path(sys.executable).with_name("buildkit-sidecar")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "sidecar.main"]
"""The installed console script (what the image runs), or the module if not installed."""

STARTUP_SECONDS = 30.0
"""Importing grpc and aiohttp on a loaded 2-core machine can take seconds."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDKIT_SIDECAR_")}
    env.update(extra)
    return env


class Child:
    """A sidecar process and its listeners."""

    def __init__(
        self, process: asyncio.subprocess.Process, *, public: str, admin: str, agent_port: int, log: Path
    ) -> None:
        self.process = process
        self.public = public
        self.admin = admin
        self.agent_port = agent_port
        """The agent-check listener's port, on 127.0.0.1."""
        self.log = log

    async def get(self, url: str, *, seconds: float = 5.0) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=seconds)) as session,
            session.get(url) as response,
        ):
            return response.status, await response.json()

    async def post_drain(self, *, seconds: float = 30.0) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=seconds)) as session,
            session.post(self.admin + "/drain") as response,
        ):
            return response.status, await response.json()

    async def until(self, path: str, predicate: Callable[[int, Any], bool], *, within: float = STARTUP_SECONDS) -> Any:
        """Poll the public listener (real time: this is another process) until ``predicate`` holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        last: object = None
        while loop.time() < deadline:
            assert self.process.returncode is None, f"exited {self.process.returncode}: {self.log.read_text()}"
            try:
                code, body = await self.get(self.public + path, seconds=2)
            except (aiohttp.ClientError, TimeoutError) as e:
                last = e
            else:
                if predicate(code, body):
                    return body
                last = (code, body)
            await asyncio.sleep(0.05)
        raise AssertionError(f"{path}: never satisfied, last {last!r}; log: {self.log.read_text()}")

    async def exit_code(self, *, within: float = 10.0) -> int:
        return await asyncio.wait_for(self.process.wait(), within)
