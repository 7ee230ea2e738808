"""``buildkit-sidecar``: the command line and the process supervisor.

``buildkit-sidecar [run]`` follows buildkitd and serves the endpoints;
``buildkit-sidecar drain`` is the matching client for a preStop hook;
``buildkit-sidecar export-trace`` writes the completed builds buildkitd still
keeps as a simulator trace (partial: its history retention is limited).

Signals only set a flag. The first SIGTERM/SIGINT begins (or joins) the drain;
the process keeps serving until the drain ends, then exits 0, so a preStop
hook that is still waiting on ``/drain`` gets its answer. A second signal
exits at once with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, disable_created_metrics

from common import logs, trace_format
from common.addresses import host_port
from common.supervision import root_task
from common.timestamps import rfc3339
from sidecar import endpoints
from sidecar.buildkit import BuildkitClient, BuildkitError, open_channel
from sidecar.draining import Drainer
from sidecar.following import Follower
from sidecar.metrics import Metrics
from sidecar.settings import Settings, SettingsError, add_arguments, from_sources
from sidecar.state import BuilderState
from sidecar.tracking import Tracker

log = structlog.get_logger("sidecar.main")

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_STARTUP = 2

GRACEFUL_SHUTDOWN_SECONDS = 5.0
"""After the drain, how long in-flight HTTP requests get to finish (they
already have their answer: this only covers writing it)."""

IDLE_CONNECTION_SECONDS = 30.0
"""A connection that has not sent a complete request within this long (since it
opened, or since its last answer) is closed. aiohttp has no separate
header-read timeout and defaults this to an hour, which lets slow or idle
clients (slowloris) hold sockets; probes and scrapers send at once, and the
autoscaler's client drops idle connections after 15 s. A request being
handled (a drain that waits for builds) is never cut by it."""


def http_runner(app: web.Application) -> web.AppRunner:
    """The runner both listeners use, with the limits above."""
    return web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=GRACEFUL_SHUTDOWN_SECONDS,
        keepalive_timeout=IDLE_CONNECTION_SECONDS,
    )


class Sidecar:
    """All the parts of one sidecar process, wired together."""

    def __init__(self, *, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.settings = settings
        # Tombstones must outlive at least one resync interval (the rule)
        # and the ~3 s between the two COMPLETEs of a build; two intervals, 60 s at least.
        tracker = Tracker(tombstone_seconds=max(60.0, 2 * settings.resync_interval_seconds))
        self.state = BuilderState(tracker=tracker, arch=settings.arch, now=loop.time())
        self.metrics = Metrics(registry=registry or CollectorRegistry(), state=self.state)
        self.drainer = Drainer(settings=settings, state=self.state, metrics=self.metrics)
        self.follower = Follower(settings=settings, state=self.state, metrics=self.metrics)
        self.public_app = endpoints.public_app(
            settings=settings, state=self.state, drainer=self.drainer, metrics=self.metrics
        )
        self.admin_app = endpoints.admin_app(settings=settings, state=self.state, drainer=self.drainer)
        self.terminate = asyncio.Event()
        self.force = asyncio.Event()
        self.stop = asyncio.Event()

    def on_signal(self, signum: int) -> None:
        """First signal: drain then exit. Second: exit at once."""
        if self.terminate.is_set():
            self.force.set()
        else:
            self.terminate.set()
        log.info("signal_received", signal=signal.Signals(signum).name, forced=self.force.is_set())

    async def serve(self) -> int:
        """Run until a signal's drain ends (0) or a second signal (1); 2 if it cannot start."""
        runners: list[web.AppRunner] = []
        try:
            for app, listen in ((self.public_app, self.settings.listen), (self.admin_app, self.settings.admin_listen)):
                runner = http_runner(app)
                await runner.setup()
                runners.append(runner)
                host, port = host_port(listen)
                await web.TCPSite(runner, host, port).start()
        except OSError as e:
            log.error("listen_failed", error=str(e))
            for runner in runners:
                await runner.cleanup()
            return EXIT_STARTUP
        log.info(
            "sidecar_started",
            listen=self.settings.listen,
            admin_listen=self.settings.admin_listen,
            buildkit_addr=self.settings.buildkit_addr,
            arch=self.settings.arch,
        )
        code = EXIT_OK
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(root_task("follower", self.follower.run(stop=self.stop)), name="follower")
                lifecycle = tasks.create_task(root_task("lifecycle", self._lifecycle()), name="lifecycle")
            code = lifecycle.result()
        except* Exception:  # noqa: BLE001 - the supervisor's boundary; root_task logged which task died
            code = EXIT_FORCED  # root_task logged which task died and why
        finally:
            await self.drainer.close()
            for runner in runners:
                await runner.cleanup()
        log.info("sidecar_stopped", exit_code=code)
        return code

    async def _lifecycle(self) -> int:
        """Wait for a signal, drain, then stop the follower."""
        try:
            await self.terminate.wait()
            drain = self.drainer.begin()
            forced = asyncio.create_task(self.force.wait(), name="force")
            try:
                await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                forced.cancel()
            return EXIT_FORCED if self.force.is_set() else EXIT_OK
        finally:
            self.stop.set()


async def run(settings: Settings) -> int:
    sidecar = Sidecar(settings=settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, sidecar.on_signal, signum)
    return await sidecar.serve()


async def drain_client(*, url: str, token: str | None, timeout_seconds: float) -> int:
    """POST /drain and print the answer. 0 drained, 1 not drained, 2 unreachable."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url.rstrip("/") + "/drain", headers=headers) as response,
        ):
            print(await response.text())
            return 0 if response.status == 200 else 1
    except (aiohttp.ClientError, TimeoutError) as e:
        print(f"buildkit-sidecar drain: {url}: {e!r}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="buildkit-sidecar",
        description="Drain-aware sidecar for a buildkitd pod. Without a command: run.",
    )
    commands = top.add_subparsers(dest="command")
    run_cmd = commands.add_parser(
        "run", allow_abbrev=False, help="follow buildkitd and serve /status, /metrics, /drain (default)"
    )
    add_arguments(run_cmd)
    drain_cmd = commands.add_parser(
        "drain", allow_abbrev=False, help="ask the local sidecar to drain; returns when it did"
    )
    drain_cmd.add_argument("--admin-url", default="http://127.0.0.1:9091", help="the sidecar's admin listener")
    drain_cmd.add_argument("--token-file", default=None, help="bearer token, for a public-listener URL")
    drain_cmd.add_argument(
        "--timeout-seconds",
        type=float,
        default=3600.0,
        help="give up after this long (default 3600: above the drain deadline)",
    )
    export_cmd = commands.add_parser(
        "export-trace",
        allow_abbrev=False,
        help="write the completed builds one buildkitd still keeps as a simulator trace (partial: see --help)",
        description=(
            "Read the completed builds this buildkitd still keeps in its history (ListenBuildHistory "
            "without ActiveOnly, EarlyExit) and write them as a trace for `buildkit-autoscaler simulate` "
            "(CSV: arch,start,duration_seconds; start in RFC 3339 from CreatedAt, duration from CompletedAt). "
            "PARTIAL: buildkitd keeps a limited history (its history GC drops old records) in the pod, "
            "and it is lost with the pod; one daemon also knows only its own builds. For the complete "
            "record use `buildkit-autoscaler trace --from-logs` on the sidecars' build_completed log lines."
        ),
    )
    export_cmd.add_argument("--buildkit-addr", default="unix:///run/buildkit/buildkitd.sock",
                            help="buildkitd's control API: unix:///path or tcp://host:port")  # fmt: skip
    export_cmd.add_argument("--tls-ca-cert", type=Path, default=None, help="CA bundle (tcp:// only)")
    export_cmd.add_argument("--tls-cert", type=Path, default=None, help="client certificate for mTLS")
    export_cmd.add_argument("--tls-key", type=Path, default=None, help="client key for mTLS")
    export_cmd.add_argument("--tls-server-name", default=None, help="name to verify the server certificate against")
    export_cmd.add_argument("--arch", default=None, help="the arch column (default: asked from ListWorkers)")
    export_cmd.add_argument("--out", default="-", help="where the trace goes (default standard output)")
    export_cmd.add_argument("--timeout-seconds", type=float, default=60.0, help="deadline of the history read")
    return top


async def export_trace(*, settings: Settings, arch: str | None, out: TextIO, timeout_seconds: float) -> int:
    """Write the completed builds buildkitd keeps as trace rows. 0 written, 2 unreachable."""
    channel = open_channel(settings)
    try:
        client = BuildkitClient(channel, rpc_timeout_seconds=timeout_seconds)
        arch = arch or await client.arch() or "unknown"
        rows = [
            (r.created_at, (r.completed_at - r.created_at).total_seconds())
            async for r in client.history()
            if r.created_at is not None and r.completed_at is not None
        ]
    except BuildkitError as e:
        print(f"buildkit-sidecar export-trace: {settings.buildkit_addr}: {e}", file=sys.stderr)
        return EXIT_STARTUP
    finally:
        await channel.close(grace=None)
    rows.sort()
    # A zero duration (clock granularity) would be refused by the trace's reader: 1 ms instead.
    trace_format.write(((arch, rfc3339(started), max(seconds, 0.001)) for started, seconds in rows), out)
    print(f"{len(rows)} completed builds (partial: only what buildkitd still keeps)", file=sys.stderr)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0].startswith("-"):
        args_list.insert(0, "run")
    args = parser().parse_args(args_list)
    if args.command == "drain":
        try:
            token = Path(args.token_file).read_text().strip() if args.token_file else None
        except OSError as e:
            print(f"buildkit-sidecar drain: --token-file={args.token_file!r}: {e.strerror}", file=sys.stderr)
            return EXIT_STARTUP
        return asyncio.run(drain_client(url=args.admin_url, token=token, timeout_seconds=args.timeout_seconds))
    if args.command == "export-trace":
        export = Settings(
            buildkit_addr=args.buildkit_addr,
            tls_ca_cert=args.tls_ca_cert,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_server_name=args.tls_server_name,
        )
        with contextlib.ExitStack() as files:
            out = sys.stdout if args.out == "-" else files.enter_context(open(args.out, "w", newline=""))
            return asyncio.run(
                export_trace(settings=export, arch=args.arch, out=out, timeout_seconds=args.timeout_seconds)
            )
    try:
        settings = from_sources(args)
    except SettingsError as e:
        print(f"buildkit-sidecar: {e}", file=sys.stderr)
        return EXIT_STARTUP
    logs.configure(settings.log_level)
    disable_created_metrics()
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(settings))
    return EXIT_FORCED


if __name__ == "__main__":
    sys.exit(main())
