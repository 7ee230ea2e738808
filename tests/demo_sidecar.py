"""``make demo``: the real sidecar process against a fake buildkitd, on this machine.

No cluster and no buildkitd needed. The fake daemon (the test suite's, a real
gRPC server speaking BuildKit's Control API on a unix socket) runs synthetic
builds; the real ``buildkit-sidecar`` command follows it. The demo shows, in
about half a minute of real time:

1. the active-build count in ``/status`` following builds as they start and end;
2. a drain (what the preStop hook does): readiness fails at once, a build that
   sneaks in during the load balancer's deregistration window is waited for,
   and ``/drain`` answers only once the builder has been idle for the quiet period;
3. SIGTERM: the sidecar exits 0 once drained.

Run it with ``make demo`` (or ``python -m tests.demo_sidecar``).
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from fakes.buildkitd import FakeBuildkitd

PUBLIC = "127.0.0.1:19090"
ADMIN = "127.0.0.1:19091"
AGENT = "127.0.0.1:19092"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


async def status(session: aiohttp.ClientSession) -> dict[str, object]:
    async with session.get(f"http://{PUBLIC}/status") as response:
        body: dict[str, object] = await response.json()
        return body


async def ready(session: aiohttp.ClientSession) -> int:
    async with session.get(f"http://{PUBLIC}/readyz") as response:
        return response.status


async def build(daemon: FakeBuildkitd, seconds: float, *, fail: bool = False) -> None:
    ref = daemon.start_build()
    await asyncio.sleep(seconds)
    if fail:
        daemon.complete_build(ref, error_code=2, error_message='process "/bin/sh -c make" failed')
    else:
        daemon.complete_build(ref)


async def wait_until_up(session: aiohttp.ClientSession) -> None:
    for _ in range(100):
        try:
            if (await status(session)).get("buildkit_up"):
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("the sidecar did not come up; see its log above")


async def main() -> int:
    rng = random.Random(7)
    workdir = Path(tempfile.mkdtemp(prefix="bk-demo-"))
    daemon = FakeBuildkitd(platforms=["linux/arm64"])
    address = await daemon.start(f"unix:{workdir / 'buildkitd.sock'}")
    log_path = workdir / "sidecar.log"
    with log_path.open("wb") as log_file:
        sidecar = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidecar.main",
            "--buildkit-addr",
            address,
            "--listen",
            PUBLIC,
            "--admin-listen",
            ADMIN,
            "--agent-listen",
            AGENT,
            "--drain-quiet-seconds",
            "2",
            "--drain-min-seconds",
            "3",
            stdout=log_file,
            stderr=log_file,
        )
        try:
            async with aiohttp.ClientSession() as session:
                await wait_until_up(session)
                say(f"sidecar up, following a fake buildkitd at {address}")
                say("phase 1: synthetic builds (2-6 s each, one fails)")
                builds = [
                    asyncio.create_task(build(daemon, rng.uniform(2, 6), fail=(i == 3)), name=f"build-{i}")
                    for i in range(6)
                ]
                for _ in range(8):
                    await asyncio.sleep(1)
                    body = await status(session)
                    say(f"  /status active_count={body['active_count']} draining={body['draining']}")

                say("phase 2: drain with 2 builds running (what the preStop hook does)")
                builds += [
                    asyncio.create_task(build(daemon, 4), name="long-1"),
                    asyncio.create_task(build(daemon, 5), name="long-2"),
                ]
                await asyncio.sleep(0.2)
                started = time.monotonic()
                drain = asyncio.create_task(session.post(f"http://{ADMIN}/drain"), name="drain")
                await asyncio.sleep(0.3)
                say(f"  /readyz -> {await ready(session)} (the Service stops routing new builds at once)")
                say("  a build sneaks in during the deregistration window (--drain-min-seconds 3)")
                builds.append(asyncio.create_task(build(daemon, 3), name="sneaky"))
                while not drain.done():
                    body = await status(session)
                    say(f"  draining... active_count={body['active_count']}")
                    await asyncio.wait({drain}, timeout=1)
                response = drain.result()
                answer = await response.json()
                response.release()
                say(f"  /drain -> {response.status} {json.dumps(answer)} after {time.monotonic() - started:.1f} s")
                await asyncio.gather(*builds)

                say("phase 3: SIGTERM (the kubelet stopping the sidecar)")
                sidecar.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(sidecar.wait(), 30)
                say(f"  sidecar exited with status {code}")
        finally:
            if sidecar.returncode is None:
                sidecar.kill()
                await sidecar.wait()
            await daemon.kill()
    say("the sidecar's log lines about builds and the drain:")
    for line in log_path.read_text().splitlines():
        if any(word in line for word in ('"build_completed"', '"drain_', '"buildkitd_connected"', '"arch_detected"')):
            print("  " + line)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if code == 0 and answer.get("drained") else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
