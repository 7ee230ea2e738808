"""The router's benchmarks (``make bench``): what the real HAProxy, running the shipped config, costs and gives.

``python -m bench.router_bench [--quick] [--results bench/results]`` writes the ``router`` part
of BENCHMARKS.md. Everything runs on loopback with Debian's ``haproxy`` and the config file
``deploy/`` ships (only its addresses and resolver moved to loopback, as in tests/router):

* **Connection set-up.** A client connects and waits for the server's first byte (the
  server writes one on accept, so through the router it measures the whole path: the
  client's TCP handshake with HAProxy, the tier choice, HAProxy's own connect to the
  builder). Direct to the same server and through the router, interleaved one by one so
  both see the same machine load; the added p50/p99 and the ratio are reported.
* **Bulk upload.** 1 GiB written over one connection to a server that reads and discards
  it and answers when all arrived (a build context upload), direct then through, three
  times each, best of each kept; the ratio of throughputs.
* **Drain.** Three builders (fake buildkitd + the real sidecar, agent on); each drain
  ``POST /drain`` on one builder while short builds (mTLS ``Solve``) arrive through the
  router every 50 ms; the last build that reached the draining builder after the drain
  began is measured from the drain's start. ``DELETE /drain``, wait until the router sees
  it back, next builder. Bounded by the agent interval plus HAProxy's check and the
  build's own connection set-up.

* **Spread in the e2e fleet** (:mod:`bench.fleet_spread`): running builds per builder,
  max − min, in the end-to-end fleet behind the router and behind a random pick, same load.

The TCP servers of the first two need no agent: without one HAProxy keeps a server up at
its configured weight (an unanswered agent is not a failure; ``check`` is what marks it down).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from bench import fleet_spread
from bench.assemble import render_fragment
from bench.harness import free_port
from bench.report import Fragment, Machine, Measured, Row, Section, code_version, command_line, load_average, utc
from bench.report import verdict as _verdict
from bench.stats import Summary, ms, percentile
from fakes.builder_pods import Builder, Certificates, Client
from fakes.cluster_dns import ServiceDNS
from fakes.router import CLIENT_PORT, Router, shipped_env

TARGET_ADDED_P99_SECONDS = 0.002
TARGET_UPLOAD_RATIO = 0.8
AGENT_INTERVAL_SECONDS = 1.0
TARGET_DRAIN_SECONDS = AGENT_INTERVAL_SECONDS + 1.0
HEADLESS = "buildkitd-backends-amd64.buildkit.svc.cluster.local"
GIB = 1 << 30
CHUNK = 1 << 20


@contextlib.asynccontextmanager
async def router(workdir: Path, dns: ServiceDNS) -> AsyncIterator[Router]:
    r = Router(workdir, env=shipped_env(HEADLESS), dns_port=dns.port, listen=f"127.0.0.1:{free_port()}",
               metrics=f"127.0.0.1:{free_port()}")  # fmt: skip
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def _until(check: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise SystemExit("the router never saw the builders as expected")
        await asyncio.sleep(0.05)


async def _usable(r: Router, tier: str) -> set[str]:
    return {
        row["addr"].rpartition(":")[0]
        for row in await r.stat()
        if row["pxname"] == tier and row["svname"] not in ("FRONTEND", "BACKEND") and row["status"] == "UP"
    }


# --- connection set-up and bulk upload: plain TCP servers on the builders' addresses -----------------


async def _greeter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Writes one byte on accept; for an upload, reads until EOF and answers the byte count."""
    writer.write(b"!")
    await writer.drain()
    received = 0
    while chunk := await reader.read(CHUNK):
        received += len(chunk)
    writer.write(str(received).encode())
    await writer.drain()
    writer.close()


async def _connect_seconds(host: str, port: int) -> float:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    await reader.readexactly(1)
    elapsed = time.perf_counter() - started
    writer.close()
    await writer.wait_closed()
    return elapsed


async def _upload_seconds(host: str, port: int, size: int) -> float:
    reader, writer = await asyncio.open_connection(host, port, limit=CHUNK)
    await reader.readexactly(1)
    block = b"\0" * CHUNK
    started = time.perf_counter()
    for _ in range(size // CHUNK):
        writer.write(block)
        await writer.drain()
    writer.write_eof()
    received = int(await reader.read())
    elapsed = time.perf_counter() - started
    writer.close()
    if received != size:
        raise SystemExit(f"upload: {received} bytes arrived of {size}")
    return elapsed


async def data_path(workdir: Path, *, connections: int, upload_bytes: int, uploads: int) -> Section:
    dns = ServiceDNS(HEADLESS)
    dns.start()
    servers = [await asyncio.start_server(_greeter, f"127.0.2.{10 + i}", CLIENT_PORT) for i in range(2)]
    dns.publish(*(f"127.0.2.{10 + i}" for i in range(2)))
    try:
        async with router(workdir, dns) as r:
            await _until(lambda: _both_up(r))
            host, port = r.listen.rsplit(":", 1)
            direct: list[float] = []
            through: list[float] = []
            for _ in range(connections):
                direct.append(await _connect_seconds("127.0.2.10", CLIENT_PORT))
                through.append(await _connect_seconds(host, int(port)))
            up_direct = min([await _upload_seconds("127.0.2.10", CLIENT_PORT, upload_bytes) for _ in range(uploads)])
            up_through = min([await _upload_seconds(host, int(port), upload_bytes) for _ in range(uploads)])
    finally:
        for server in servers:
            server.close()
        dns.stop()
    d, t = Summary.of(direct), Summary.of(through)
    added_p99 = t.p99_seconds - d.p99_seconds
    ratio = up_direct / up_through
    mib = upload_bytes / (1 << 20)
    return Section(
        title="Router: connection set-up and bulk upload (real HAProxy, shipped config, loopback)",
        method=f"{connections} connections each way, interleaved; {mib:.0f} MiB uploads, best of {uploads} each way.",
        rows=(
            Row("connection set-up, direct: p50 / p99", f"{ms(d.p50_seconds)} / {ms(d.p99_seconds)}"),
            Row("connection set-up, through the router: p50 / p99", f"{ms(t.p50_seconds)} / {ms(t.p99_seconds)}"),
            Row(
                "added by the router: p50 / p99",
                f"{ms(t.p50_seconds - d.p50_seconds)} / {ms(added_p99)} "
                f"(p99 ratio {t.p99_seconds / d.p99_seconds:.1f}×)",
                target=f"p99 ≤ {ms(TARGET_ADDED_P99_SECONDS)}",
                result=_verdict(added_p99 <= TARGET_ADDED_P99_SECONDS),
            ),
            Row(
                f"{mib:.0f} MiB upload: direct / through the router",
                f"{mib / up_direct:.0f} MiB/s / {mib / up_through:.0f} MiB/s",
            ),
            Row(
                "upload throughput, through ÷ direct",
                f"{ratio:.2f}",
                target=f"≥ {TARGET_UPLOAD_RATIO}",
                result=_verdict(ratio >= TARGET_UPLOAD_RATIO and upload_bytes >= GIB),
            ),
        ),
    )


async def _both_up(r: Router) -> bool:
    return len(await _usable(r, "tier_idle")) == 2


# --- drain: real builders, real sidecars (agent on) -----------------------------------------------------


async def drains(workdir: Path, *, count: int) -> Section:
    dns = ServiceDNS(HEADLESS)
    dns.start()
    certificates = Certificates(workdir)
    client = Client(certificates)
    builders = [
        Builder(i, workdir=workdir, certificates=certificates, build_port=CLIENT_PORT, block=3) for i in range(3)
    ]
    lasts: list[float] = []
    async with aiohttp.ClientSession() as http:
        try:
            for builder in builders:
                await builder.start(http)
            dns.publish(*(b.ip for b in builders))
            async with router(workdir, dns) as r:
                everyone = {b.ip for b in builders}
                await _until(lambda: _is(r, "tier_idle", everyone))
                loop = asyncio.get_running_loop()
                for n in range(count):
                    draining = builders[n % len(builders)]
                    began = loop.time()
                    began_mono = time.monotonic()
                    async with http.post(draining.admin + "/drain") as response:
                        if response.status != 200:
                            raise SystemExit(f"drain {n}: {response.status} {await response.text()}")
                    builds = []
                    while loop.time() < began + 2 * AGENT_INTERVAL_SECONDS + 1.0:
                        builds.append(asyncio.create_task(client.build(r.listen, 0.0)))
                        await asyncio.sleep(0.05)
                    await asyncio.gather(*builds)
                    after = [s.at - began_mono for s in draining.daemon.solves if s.at >= began_mono]
                    lasts.append(max(after, default=0.0))
                    async with http.delete(draining.admin + "/drain") as response:
                        response.raise_for_status()
                    await _until(lambda: _is(r, "tier_idle", everyone))
        finally:
            for builder in builders:
                await builder.stop()
            dns.stop()
    worst = max(lasts)
    return Section(
        title="Router: how fast a draining builder stops getting builds (real HAProxy, real sidecars)",
        method=(
            f"{count} drains over 3 builders; short mTLS builds through the router every 50 ms; "
            f"per drain, the last build that reached the draining builder, from the drain's start. "
            f"`agent-inter` {AGENT_INTERVAL_SECONDS:g} s."
        ),
        rows=(
            Row("drains", str(count), target="≥ 50", result=_verdict(count >= 50)),
            Row(
                "last new build after the drain began: p50 / p99",
                f"{ms(percentile(lasts, 50))} / {ms(percentile(lasts, 99))}",
            ),
            Row(
                "last new build after the drain began: max",
                ms(worst),
                target=f"≤ agent interval + 1 s = {TARGET_DRAIN_SECONDS:g} s",
                result=_verdict(worst <= TARGET_DRAIN_SECONDS),
            ),
        ),
        notes=(
            "A drain that found no build of its own still counts: the builder answers `drain` from the "
            "instant it began, and builds that arrived after are what is measured (0 when none did).",
        ),
    )


async def _is(r: Router, tier: str, addresses: set[str]) -> bool:
    return await _usable(r, tier) == addresses


async def measure(*, quick: bool) -> tuple[Section, ...]:
    with tempfile.TemporaryDirectory(prefix="router-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "data").mkdir()
        (workdir / "drain").mkdir()
        path = await data_path(
            workdir / "data",
            connections=300 if quick else 3000,
            upload_bytes=(64 << 20) if quick else GIB,
            uploads=1 if quick else 3,
        )
        drain = await drains(workdir / "drain", count=6 if quick else 60)
        spread = await fleet_spread.measure(workdir / "spread", seconds=30 if quick else 180)
    return (path, drain, spread)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.router_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run (fewer connections, 64 MiB, 6 drains, 30 s fleets)"
    )
    parser.add_argument("--results", type=Path, default=None, help="write the router's fragment here")
    args = parser.parse_args(args_list)
    started = datetime.now(UTC)
    code = code_version()
    load_before = load_average()
    t0 = time.monotonic()
    sections = asyncio.run(measure(quick=args.quick))
    machine = Machine.here()
    fragment = Fragment(
        part="router",
        title="Router (HAProxy per arch, fed by the sidecars' agents)",
        intro="The router of issue 11, measured with Debian's HAProxy running the config file deploy/ ships.",
        measured=Measured(
            commit=code,
            date=utc(started),
            machine=machine.summary,
            command=command_line("bench.router_bench", args_list),
            details=(
                f"run length {time.monotonic() - t0:.0f} s",
                f"Python: {machine.python}; HAProxy: {os.popen('haproxy -v').readline().strip()}",  # noqa: S605
                f"Load average (1, 5, 15 min) before: {load_before}; after: {load_average()}",
            ),
        ),
        sections=sections,
    )
    sys.stdout.write(render_fragment(fragment))
    if args.results is not None:
        print(f"wrote {fragment.write(args.results)}", file=sys.stderr)
    return 1 if fragment.failed else 0


if __name__ == "__main__":
    sys.exit(main())
