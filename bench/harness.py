"""What every benchmark stands on: the fake buildkitd in this process, the real
``buildkit-sidecar`` in a child process, an HTTP client for it, and ``/proc``.

The sidecar runs exactly as in a pod: the installed console script, its own
interpreter, JSON logs on stdout (here into a file, as a container runtime
would), gRPC over a unix socket, HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc.aio
from prometheus_client.parser import text_string_to_metric_families

from fakes.buildkitd import FakeBuildkitd
from sidecar.protocol import control_pb2

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

READY_TIMEOUT_SECONDS = 30.0
"""A sidecar starts in well under a second; 30 s covers a loaded machine."""

STOP_TIMEOUT_SECONDS = 10.0
"""After SIGTERM an idle sidecar's drain ends at once (quiet period 0)."""

POLL_INTERVAL_SECONDS = 0.002
"""How often the harness re-reads /status or /metrics while waiting for a state:
small against what is measured, large enough not to load the sidecar."""


class BenchError(RuntimeError):
    """A benchmark could not run as designed (the sidecar died, a wait timed out)."""


def at_least(threshold: float) -> Callable[[float], bool]:
    """A predicate for :meth:`SidecarProcess.wait_metric`."""
    return lambda value: value >= threshold


def loop_time() -> float:
    """Monotonic time, the clock every measurement here uses."""
    return asyncio.get_running_loop().time()


class InstrumentedBuildkitd(FakeBuildkitd):
    """The tests' fake daemon, also noting when its live streams sent their last event.

    The burst benchmark reports it, so a reader can tell the fake's share of
    the time from the sidecar's.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live_events_sent = 0
        self.last_live_sent_at: float | None = None

    async def ListenBuildHistory(
        self, request: control_pb2.BuildHistoryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[control_pb2.BuildHistoryEvent]:
        async for event in super().ListenBuildHistory(request, context):
            yield event
            if not request.EarlyExit:
                self.live_events_sent += 1
                self.last_live_sent_at = loop_time()

    def complete_all(self) -> int:
        """Complete every running build (so a sidecar's SIGTERM drain ends at once)."""
        refs = list(self.active)
        for ref in refs:
            self.complete_build(ref)
        return len(refs)


@contextlib.asynccontextmanager
async def workdir() -> AsyncIterator[Path]:
    """A short temporary directory (unix socket paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="bkbench-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def fake_daemon(directory: Path) -> AsyncIterator[InstrumentedBuildkitd]:
    """The fake buildkitd serving on ``directory/buildkitd.sock``."""
    daemon = InstrumentedBuildkitd()
    await daemon.start(f"unix:{directory / 'buildkitd.sock'}")
    try:
        yield daemon
    finally:
        await daemon.kill()


def free_port() -> int:
    """A loopback port nobody listens on right now (the sidecar refuses port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def sidecar_command() -> list[str]:
    """The installed console script beside this interpreter, or the one on PATH."""
    beside = Path(sys.executable).parent / "buildkit-sidecar"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("buildkit-sidecar")
    if found is None:
        raise BenchError("buildkit-sidecar is not installed (pip install -e .)")
    return [found]


@dataclass(frozen=True, slots=True)
class Memory:
    """Memory of a process from ``/proc/<pid>/status``, in MiB."""

    rss_mib: float
    """VmRSS: resident now (anonymous + file-backed + shared)."""
    anon_mib: float
    """RssAnon: the heap, stacks; what the process itself allocated."""
    file_mib: float
    """RssFile: resident pages of mapped files, mostly shared libraries (gRPC's is large)."""
    peak_mib: float
    """VmHWM: the highest VmRSS so far."""


def read_memory(pid: int) -> Memory:
    kib: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            kib[name] = int(value.split()[0])
    if len(kib) != 4:
        raise BenchError(f"/proc/{pid}/status lacks memory fields: {sorted(kib)}")
    return Memory(
        rss_mib=kib["VmRSS"] * 1024 / MIB,
        anon_mib=kib["RssAnon"] * 1024 / MIB,
        file_mib=kib["RssFile"] * 1024 / MIB,
        peak_mib=kib["VmHWM"] * 1024 / MIB,
    )


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` of a child's log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def read_cpu_seconds(pid: int) -> float:
    """utime + stime of ``/proc/<pid>/stat`` (all threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces: split after its ")".
    fields = stat.rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS_PER_SECOND


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Where the machine's CPU time went so far, to tell a benchmark's load from other processes'."""

    wall_seconds: float
    machine_busy_seconds: float
    """All CPUs' non-idle time (user, nice, system, irq, softirq, steal) from ``/proc/stat``."""
    own_seconds: float
    """This process and its reaped children (every sidecar that has exited)."""

    @classmethod
    def now(cls) -> CpuSample:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        times = os.times()
        return cls(
            wall_seconds=times.elapsed,
            machine_busy_seconds=(user + nice + system + irq + softirq + steal) / CLOCK_TICKS_PER_SECOND,
            own_seconds=times.user + times.system + times.children_user + times.children_system,
        )

    def others_cores_since(self, earlier: CpuSample) -> float:
        """Average CPUs (cores) used by other processes, or stolen by the hypervisor, since ``earlier``."""
        wall = self.wall_seconds - earlier.wall_seconds
        busy = self.machine_busy_seconds - earlier.machine_busy_seconds
        own = self.own_seconds - earlier.own_seconds
        return max(0.0, busy - own) / wall if wall > 0 else 0.0


@dataclass
class SidecarProcess:
    """A running ``buildkit-sidecar`` and a client session for its two listeners."""

    process: asyncio.subprocess.Process
    public_url: str
    admin_url: str
    log_path: Path
    session: aiohttp.ClientSession
    exit_code: int | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def memory(self) -> Memory:
        return read_memory(self.pid)

    def cpu_seconds(self) -> float:
        return read_cpu_seconds(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)

    def check_alive(self) -> None:
        if self.process.returncode is not None:
            raise BenchError(f"buildkit-sidecar exited with {self.process.returncode}:\n{self.log_tail()}")

    async def status(self) -> dict[str, Any]:
        async with self.session.get(self.public_url + "/status") as response:
            response.raise_for_status()
            body: dict[str, Any] = await response.json()
            return body

    async def metrics(self) -> dict[str, float]:
        """Every sample of ``/metrics`` by name, summed over label values."""
        async with self.session.get(self.public_url + "/metrics") as response:
            response.raise_for_status()
            text = await response.text()
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    async def completed_total(self) -> float:
        """``buildkit_sidecar_builds_completed_total`` over every result."""
        return (await self.metrics()).get("buildkit_sidecar_builds_completed_total", 0.0)

    async def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout_seconds: float = 30.0, what: str
    ) -> dict[str, Any]:
        """Re-read ``/status`` until ``predicate`` holds."""
        deadline = loop_time() + timeout_seconds
        while True:
            body = await self.status()
            if predicate(body):
                return body
            if loop_time() > deadline:
                raise BenchError(f"timed out waiting for {what}; last /status: {body}")
            self.check_alive()
            await asyncio.sleep(POLL_INTERVAL_SECONDS)

    async def wait_metric(
        self,
        name: str,
        predicate: Callable[[float], bool],
        *,
        timeout_seconds: float = 60.0,
        interval_seconds: float = POLL_INTERVAL_SECONDS,
    ) -> float:
        """Re-read ``/metrics`` until the (summed) sample ``name`` satisfies ``predicate``."""
        deadline = loop_time() + timeout_seconds
        while True:
            value = (await self.metrics()).get(name, 0.0)
            if predicate(value):
                return value
            if loop_time() > deadline:
                raise BenchError(f"timed out waiting on {name}; last value {value}")
            self.check_alive()
            await asyncio.sleep(interval_seconds)

    async def wait_ready(self, *, timeout_seconds: float = READY_TIMEOUT_SECONDS) -> None:
        deadline = loop_time() + timeout_seconds
        while True:
            self.check_alive()
            with contextlib.suppress(aiohttp.ClientError):
                async with self.session.get(self.public_url + "/readyz") as response:
                    if response.status == 200:
                        return
            if loop_time() > deadline:
                raise BenchError(f"buildkit-sidecar not ready after {timeout_seconds} s:\n{self.log_tail()}")
            await asyncio.sleep(0.02)

    async def stop(self) -> int:
        """SIGTERM (the drain ends at once when idle), then a second one, then SIGKILL."""
        for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
            if self.process.returncode is not None:
                break
            self.process.send_signal(sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_SECONDS)
        self.exit_code = await self.process.wait()
        return self.exit_code


@contextlib.asynccontextmanager
async def sidecar(
    *,
    daemon: FakeBuildkitd,
    directory: Path,
    extra_args: Sequence[str] = (),
    command: Sequence[str] | None = None,
) -> AsyncIterator[SidecarProcess]:
    """The real ``buildkit-sidecar`` following ``daemon``, ready (connected, reconciled).

    Every benchmark sidecar has ``--drain-quiet-seconds 0`` (the drain benchmark
    needs it; the others stop faster with it). On exit the daemon's running
    builds complete and the sidecar gets SIGTERM; an exit status other than 0
    is reported on stderr, since it means the graceful path misbehaved. ``command``: the
    ``buildkit-sidecar`` to run (default :func:`sidecar_command`).
    """
    public_port, admin_port = free_port(), free_port()
    log_path = directory / f"sidecar-{public_port}.log"
    args = [
        *(command or sidecar_command()),
        "run",
        "--buildkit-addr",
        daemon.address,
        "--listen",
        f"127.0.0.1:{public_port}",
        "--admin-listen",
        f"127.0.0.1:{admin_port}",
        "--agent-listen",
        "none",
        "--drain-quiet-seconds",
        "0",
        *extra_args,
    ]
    # A BUILDKIT_SIDECAR_* variable in the caller's environment would change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDKIT_SIDECAR_")}
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=asyncio.subprocess.STDOUT, env=env
        )
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        running = SidecarProcess(
            process=process,
            public_url=f"http://127.0.0.1:{public_port}",
            admin_url=f"http://127.0.0.1:{admin_port}",
            log_path=log_path,
            session=session,
        )
        try:
            await running.wait_ready()
            yield running
        finally:
            if isinstance(daemon, InstrumentedBuildkitd):
                daemon.complete_all()
            code = await running.stop()
            if code != 0:
                print(f"bench: buildkit-sidecar exited with {code}:\n{running.log_tail()}", file=sys.stderr)
