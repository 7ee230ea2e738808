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
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, disable_created_metrics

from common import logs
from common.addresses import host_port
from common.supervision import root_task
from common.version import VersionAction
from sidecar import endpoints
from sidecar.agent import AgentServer
from sidecar.commands import ADMIN_URL, NO_DRAIN, admin_url_problem, drain_client, export_trace, out_problem
from sidecar.draining import Drainer
from sidecar.following import Follower
from sidecar.metrics import Metrics
from sidecar.settings import DISABLED, Settings, SettingsError, add_arguments, from_sources
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
        self.agent = AgentServer(state=self.state, slots=settings.build_slots, metrics=self.metrics)
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
        listeners = (
            ("--listen", self.public_app, self.settings.listen),
            ("--admin-listen", self.admin_app, self.settings.admin_listen),
        )
        for flag, app, listen in listeners:
            runner = http_runner(app)
            await runner.setup()
            runners.append(runner)
            host, port = host_port(listen)
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as e:
                _listen_failed(flag, listen, e)
                for started in runners:
                    await started.cleanup()
                return EXIT_STARTUP
        if self.settings.agent_listen != DISABLED:
            host, port = host_port(self.settings.agent_listen)
            try:
                await self.agent.start(host, port)
            except OSError as e:
                _listen_failed("--agent-listen", self.settings.agent_listen, e)
                for started in runners:
                    await started.cleanup()
                return EXIT_STARTUP
        log.info(
            "sidecar_started",
            listen=self.settings.listen,
            admin_listen=self.settings.admin_listen,
            agent_listen=self.settings.agent_listen,
            build_slots=self.settings.build_slots,
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
            await self.agent.close()
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


def _listen_failed(flag: str, listen: str, error: OSError) -> None:
    log.error("listen_failed", flag=flag, listen=listen, error=str(error))
    # asyncio words a bind failure "error while attempting to bind on address ...": the errno says it plainly.
    reason = (os.strerror(error.errno) if error.errno else error.strerror or str(error)).lower()
    print(f"buildkit-sidecar: cannot listen on {flag}={listen!r}: {reason}: choose a free address "
          "(or stop what holds it)", file=sys.stderr)  # fmt: skip


async def run(settings: Settings) -> int:
    sidecar = Sidecar(settings=settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, sidecar.on_signal, signum)
    return await sidecar.serve()


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number of seconds > 0")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="buildkit-sidecar",
        description="Drain-aware sidecar for a buildkitd pod.",
        epilog="Without a command: run (its flags: buildkit-sidecar run --help). "
        "Exit status of run: 0 after a drain that SIGTERM began, 1 on a second signal or a dead task, "
        "2 on a start-up failure (an invalid flag or variable, a port in use).",
    )
    top.add_argument("--version", action=VersionAction)
    commands = top.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    run_cmd = commands.add_parser(
        "run",
        allow_abbrev=False,
        help="follow buildkitd and serve /status, /metrics, /drain (the default)",
        description="Follow buildkitd and serve /healthz, /readyz, /metrics, /status and /drain, "
        "and answer the router's HAProxy agent-check. "
        "Every flag can also be set by the environment variable named in its help. "
        "Exit 0 after a drain that SIGTERM began, 1 on a second signal, 2 on a start-up failure.",
    )
    add_arguments(run_cmd)
    drain_cmd = commands.add_parser(
        "drain",
        allow_abbrev=False,
        help="ask the local sidecar to drain; returns when it did",
        description="POST /drain to the sidecar and print its answer (a preStop hook). "
        "Exit 0 drained; 1 not drained (the drain's deadline passed, it was cancelled, or no answer "
        "within --timeout-seconds); 2 no drain was asked (an invalid flag, the sidecar unreachable, "
        "the URL not a sidecar's drain endpoint, the token refused).",
    )
    drain_cmd.add_argument("--admin-url", default=ADMIN_URL,
                           help=f"the sidecar's admin listener (default {ADMIN_URL})")  # fmt: skip
    drain_cmd.add_argument("--token-file", default=None, help="bearer token, for a public-listener URL")
    drain_cmd.add_argument(
        "--timeout-seconds",
        type=_positive_seconds,
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
            "record use `buildkit-autoscaler trace --from-logs` on the sidecars' build_completed log lines. "
            "Exit 0 written; 2 an invalid flag, an unwritable --out, or buildkitd unreachable."
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
    export_cmd.add_argument("--timeout-seconds", type=_positive_seconds, default=60.0,
                            help="deadline of the history read (default 60)")  # fmt: skip
    return top


def _drain_command(args: argparse.Namespace) -> int:
    problem = admin_url_problem(args.admin_url)
    if problem:
        print(f"buildkit-sidecar drain: --admin-url={args.admin_url!r}: {problem}", file=sys.stderr)
        return NO_DRAIN
    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as e:
            print(f"buildkit-sidecar drain: --token-file={args.token_file!r}: {e.strerror}", file=sys.stderr)
            return NO_DRAIN
        except UnicodeDecodeError:
            print(f"buildkit-sidecar drain: --token-file={args.token_file!r}: not text", file=sys.stderr)
            return NO_DRAIN
        if not token:
            print(f"buildkit-sidecar drain: --token-file={args.token_file!r}: empty", file=sys.stderr)
            return NO_DRAIN
    return asyncio.run(
        drain_client(url=args.admin_url, token=token, timeout_seconds=args.timeout_seconds, token_file=args.token_file)
    )


def _export_trace_command(args: argparse.Namespace) -> int:
    errors = []
    try:
        # The same checks as run's flags (flags only: run's environment variables do not apply).
        export = from_sources(args, environ={})
    except SettingsError as e:
        errors.append(str(e))
    out = None if args.out == "-" else Path(args.out)
    problem = out_problem(out) if out is not None else None
    if problem:
        errors.append(f"--out={args.out!r}: {problem}")
    if errors:
        print(f"buildkit-sidecar export-trace: {'; '.join(errors)}", file=sys.stderr)
        return EXIT_STARTUP
    return asyncio.run(
        export_trace(settings=export, arch=args.arch, out=out or sys.stdout, timeout_seconds=args.timeout_seconds)
    )


def _run_command(args: argparse.Namespace) -> int:
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


TOP_LEVEL_FLAGS = frozenset({"-h", "--help", "--version"})
"""Flags of the program itself; any other first flag belongs to the default command, run."""


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in TOP_LEVEL_FLAGS):
        args_list.insert(0, "run")
    args = parser().parse_args(args_list)
    if args.command == "drain":
        return _drain_command(args)
    if args.command == "export-trace":
        return _export_trace_command(args)
    return _run_command(args)


if __name__ == "__main__":
    sys.exit(main())
