"""The real ``buildkit-sidecar`` command in a child process, against a fake
buildkitd served by the test on a unix socket. Real time: kept short."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from fakes.buildkitd import FakeBuildkitd
from tests.conftest import Running
from tests.sidecar.child import COMMAND, Child, clean_env, free_port

pytestmark = [pytest.mark.looptime(False), pytest.mark.subprocess]

Factory = Callable[..., Awaitable[Running]]
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


async def run_command(*args: str, env: dict[str, str] | None = None, within: float = 30.0) -> tuple[int, str, str]:
    """Run ``buildkit-sidecar ARGS`` to completion: exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(**(env or {})),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def active_count_is(n: int) -> Callable[[int, Any], bool]:
    return lambda code, body: code == 200 and body["active_count"] == n


# -- signals -------------------------------------------------------------------


async def test_sigterm_while_a_build_runs_keeps_serving_drains_then_exits_zero(
    daemon: FakeBuildkitd, spawn: Callable[..., Awaitable[Child]]
) -> None:
    ref = daemon.start_build()
    child = await spawn("--buildkit-addr", daemon.address, "--drain-quiet-seconds", "0.2")
    await child.until("/status", active_count_is(1))

    child.process.send_signal(signal.SIGTERM)
    await child.until("/readyz", lambda code, body: (code, body["reason"]) == (503, "draining"), within=5)
    prestop = asyncio.create_task(child.post_drain())
    await asyncio.sleep(0.5)
    assert child.process.returncode is None, "exited while a build was running"
    assert not prestop.done()
    status = await child.until("/status", active_count_is(1), within=5)
    assert True is status["draining"]

    daemon.complete_build(ref)
    code, body = await asyncio.wait_for(prestop, 10)
    assert (200, True, "idle") == (code, body["drained"], body["reason"])
    assert 0 == await child.exit_code()
    log = child.log.read_text()
    assert '"event": "drain_finished"' in log
    assert '"exit_code": 0' in log


async def test_sigterm_on_an_idle_builder_exits_zero(
    daemon: FakeBuildkitd, spawn: Callable[..., Awaitable[Child]]
) -> None:
    child = await spawn("--buildkit-addr", daemon.address, "--drain-quiet-seconds", "0")
    await child.until("/readyz", lambda code, _body: code == 200)
    child.process.send_signal(signal.SIGINT)
    assert 0 == await child.exit_code()


async def test_second_sigterm_exits_at_once_with_status_1(
    daemon: FakeBuildkitd, spawn: Callable[..., Awaitable[Child]]
) -> None:
    daemon.start_build()
    child = await spawn("--buildkit-addr", daemon.address)
    await child.until("/status", active_count_is(1))
    child.process.send_signal(signal.SIGTERM)
    await child.until("/readyz", lambda code, body: (code, body["reason"]) == (503, "draining"), within=5)

    child.process.send_signal(signal.SIGTERM)
    assert 1 == await child.exit_code(within=5)


# -- start-up failures -----------------------------------------------------------


async def test_startup_on_a_busy_port_exits_2(daemon: FakeBuildkitd) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = await run_command(
            "--buildkit-addr",
            daemon.address,
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{free_port()}",
        )
    assert 2 == code
    assert '"event": "listen_failed"' in out
    assert f"cannot listen on --listen='127.0.0.1:{port}': address already in use: choose a free address" in err


async def test_bad_flag_value_exits_2_naming_the_flag() -> None:
    code, out, err = await run_command("--drain-timeout-seconds=0", "--drain-quiet-seconds", "soon")
    assert 2 == code
    assert "--drain-timeout-seconds='0': must be in [1, 86400]" in err
    assert "--drain-quiet-seconds='soon': must be a number" in err
    assert "" == out


async def test_bad_environment_value_exits_2_naming_the_variable() -> None:
    code, _, err = await run_command(env={"BUILDKIT_SIDECAR_DRAIN_GONE_SECONDS": "-1"})
    assert 2 == code
    assert "BUILDKIT_SIDECAR_DRAIN_GONE_SECONDS='-1': must be in [0, 3600]" in err


async def test_unknown_flag_exits_2_naming_it() -> None:
    code, _, err = await run_command("run", "--no-such-flag")
    assert 2 == code
    assert "--no-such-flag" in err


# -- the drain client --------------------------------------------------------------


async def test_drain_command_exits_0_and_prints_the_answer(
    sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await sidecar_factory(drain_quiet_seconds=0)
    await running.until(lambda s: s.up)
    admin = await aiohttp_client(running.sidecar.admin_app)
    code, out, err = await run_command("drain", "--admin-url", str(admin.make_url("/")))
    assert (0, "") == (code, err)
    assert {"drained": True, "reason": "idle"} == {k: v for k, v in json.loads(out).items() if k != "waited_seconds"}
    assert running.state.draining


async def test_drain_command_exits_1_when_the_drain_times_out(
    daemon: FakeBuildkitd, sidecar_factory: Factory, aiohttp_client: ClientFactory
) -> None:
    running = await sidecar_factory(drain_timeout_seconds=1)
    await running.until(lambda s: s.up)
    ref = daemon.start_build()
    await running.until(lambda s: s.active_count() == 1)
    admin = await aiohttp_client(running.sidecar.admin_app)
    code, out, _ = await run_command("drain", "--admin-url", str(admin.make_url("/")))
    assert 1 == code
    answer = json.loads(out)
    assert ("timeout", [ref]) == (answer["reason"], [b["ref"] for b in answer["active_builds"]])


async def test_drain_command_sends_the_token_from_its_file(
    sidecar_factory: Factory, aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    running = await sidecar_factory(drain_token_file=token)
    await running.until(lambda s: s.up)
    public = await aiohttp_client(running.sidecar.public_app)
    url = str(public.make_url("/"))
    code, out, err = await run_command("drain", "--admin-url", url)
    assert (2, "") == (code, out), "no drain was asked: the public listener refused a request without the token"
    assert "--token-file" in err
    code, out, _ = await run_command("drain", "--admin-url", url, "--token-file", str(token))
    assert (0, True) == (code, json.loads(out)["drained"])


async def test_drain_command_exits_2_when_the_sidecar_is_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = await run_command("drain", "--admin-url", url, "--timeout-seconds", "5")
    assert 2 == code
    assert f"connection refused at {url}/drain" in err
    assert "Traceback" not in err


async def test_drain_command_with_a_missing_token_file_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    code, _, err = await run_command("drain", "--admin-url", "http://127.0.0.1:9", "--token-file", str(missing))
    assert 2 == code
    assert "--token-file" in err
    assert str(missing) in err
    assert "Traceback" not in err
