"""The fleet's real programs: the sidecar and autoscaler subprocesses, their arguments, config, logs and kubeconfigs.

Per pod slot, a fake buildkitd (a real gRPC server) and a real ``buildkit-sidecar`` in front
of it, both on the slot's own loopback address. Sidecars are started once and reused across
pod lives (``DELETE /drain`` resets a finished drain), so the CPU goes to the run, not to
interpreter start-ups. Beside them, the real ``buildkit-autoscaler run`` processes, each
with its own identity (``POD_NAME``) and bearer token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp

from fakes.builder_pods import AGENT_PORT, SERVER_NAME, Certificates
from fakes.builder_pods import SLOTS as BUILD_SLOTS
from fakes.router import CLIENT_PORT
from tests.e2e.cluster import Cluster
from tests.e2e.fleet import CONFIG_MAP, NS, STARTUP_SECONDS, PoolSpec, Slot, Timing, now


def _command(script: str, module: str) -> list[str]:
    path = Path(sys.executable).with_name(script)
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


SIDECAR = _command("buildkit-sidecar", "sidecar.main")
AUTOSCALER = _command("buildkit-autoscaler", "autoscaler.cli")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def autoscaler_config(
    *, pools: tuple[PoolSpec, ...], timing: Timing, ports: dict[str, tuple[int, int]]
) -> dict[str, Any]:
    """The ConfigMap's ``config.yaml`` the autoscalers run on: every pool, on compressed time."""
    t = timing
    return {
        "pollIntervalSeconds": t.poll_interval_seconds,
        "statusTimeoutSeconds": t.status_timeout_seconds,
        "source": "sidecars",
        "pools": [
            {
                "name": pool.arch,
                "namespace": NS,
                "deployment": pool.deployment,
                "selector": dict(pool.labels),
                "sidecarPort": ports[pool.arch][0],
                "minReplicas": pool.min_replicas,
                "maxReplicas": pool.max_replicas,
                "targetBuildsPerReplica": pool.target_builds_per_replica,
                "spareReplicas": pool.spare_replicas,
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "policies": [{"type": "Pods", "value": 4, "periodSeconds": t.scale_up_period_seconds}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": t.scale_down_window_seconds,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": t.scale_down_period_seconds}],
                },
            }
            for pool in pools
        ],
    }


class Processes:
    """Starts, signals and stops the fleet's subprocesses; owns the slots and the ports they listen on."""

    def __init__(
        self,
        *,
        workdir: Path,
        pools: tuple[PoolSpec, ...],
        timing: Timing,
        cluster: Cluster,
        http: aiohttp.ClientSession,
        certificates: Certificates | None = None,
    ) -> None:
        self.workdir = workdir
        self.certificates = certificates
        """Set when the fleet runs behind the router: the daemons serve mTLS on buildkitd's port."""
        self.pools = pools
        self.timing = timing
        self.cluster = cluster
        self.http = http
        self.slots: dict[str, list[Slot]] = {}
        self.ports: dict[str, tuple[int, int]] = {}
        """Per pool: the sidecars' public and admin ports (the same on every pod address of the pool)."""
        self.autoscalers: dict[str, asyncio.subprocess.Process] = {}
        self.autoscaler_ports: dict[str, int] = {}

    # -- sidecars -------------------------------------------------------------------------------

    async def start_sidecars(self) -> None:
        """A fake buildkitd (stopped until a pod life starts) and a running sidecar on every slot."""
        for pool in self.pools:
            # One public and one admin port per pool, on every pod address: the autoscaler
            # reads http://<podIP>:<sidecarPort>/status with one port per pool.
            self.ports[pool.arch] = (free_port(pool.ip(0)), free_port(pool.ip(0)))
            slots = [Slot(pool, i, logs=self.workdir) for i in range(pool.slots)]
            self.slots[pool.arch] = slots
            for slot in slots:
                if self.certificates is not None:  # the router dials every builder on buildkitd's port
                    await slot.daemon.start(f"{slot.ip}:{CLIENT_PORT}", tls=self.certificates.daemon_credentials())
                else:
                    await slot.daemon.start(f"{slot.ip}:0")
                await slot.daemon.kill()  # the port is known now; the daemon runs during pod lives
                public_port, admin_port = self.ports[pool.arch]
                slot.public = f"http://{slot.ip}:{public_port}"
                slot.admin = f"http://{slot.ip}:{admin_port}"
                await self.spawn_sidecar(slot)
        for slots in self.slots.values():
            for slot in slots:
                await self.until_http(slot.public + "/healthz", within=STARTUP_SECONDS, slot=slot)

    def _routed_args(self, slot: Slot) -> list[str]:
        """Behind the router: buildkitd over mTLS, and the agent on the pod's own address.
        Otherwise no agent (every sidecar's default, 0.0.0.0:9092, would collide)."""
        if self.certificates is None:
            return ["--agent-listen", "none"]
        files = self.certificates.files
        return [
            "--tls-ca-cert", str(files["ca.pem"]),
            "--tls-cert", str(files["sidecar.pem"]),
            "--tls-key", str(files["sidecar-key.pem"]),
            "--tls-server-name", SERVER_NAME,
            "--agent-listen", f"{slot.ip}:{AGENT_PORT}",
            "--build-slots", str(BUILD_SLOTS),
        ]  # fmt: skip

    def sidecar_args(self, slot: Slot) -> list[str]:
        t = self.timing
        public_port, admin_port = self.ports[slot.pool.arch]
        return [
            "--buildkit-addr",
            slot.daemon.address,
            "--arch",
            slot.pool.arch,
            "--listen",
            f"{slot.ip}:{public_port}",
            "--admin-listen",
            f"{slot.ip}:{admin_port}",
            *self._routed_args(slot),
            "--drain-quiet-seconds",
            str(t.drain_quiet_seconds),
            "--drain-min-seconds",
            str(t.drain_min_seconds),
            "--drain-timeout-seconds",
            str(t.drain_timeout_seconds),
            "--drain-gone-seconds",
            "2",
            "--resync-interval-seconds",
            str(t.resync_interval_seconds),
            "--reconnect-initial-seconds",
            "0.05",
            "--reconnect-max-seconds",
            "0.3",
            "--rpc-timeout-seconds",
            "2",
            "--log-level",
            "info",
        ]

    async def spawn_sidecar(self, slot: Slot) -> None:
        """(Re)start the slot's sidecar process, appending to its log."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDKIT_SIDECAR_")}
        with slot.log.open("ab") as out:
            slot.process = await asyncio.create_subprocess_exec(
                *SIDECAR, *self.sidecar_args(slot), stdout=out, stderr=asyncio.subprocess.STDOUT, env=env
            )
        slot.unreachable = False

    def stop_sidecar(self, slot: Slot) -> None:
        """Freeze the sidecar process: connections hang (SIGSTOP)."""
        assert slot.process is not None
        slot.process.send_signal(signal.SIGSTOP)
        slot.unreachable = True

    def resume_sidecar(self, slot: Slot) -> None:
        assert slot.process is not None
        slot.process.send_signal(signal.SIGCONT)
        slot.unreachable = False

    async def until_http(self, url: str, *, within: float, slot: Slot | None = None) -> None:
        """Wait for ``url`` to answer 200; fail at once if the slot's sidecar exited meanwhile."""
        deadline = now() + within
        while True:
            if slot is not None and slot.process is not None and slot.process.returncode is not None:
                raise AssertionError(f"sidecar exited {slot.process.returncode}: {slot.log.read_text()}")
            try:
                async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if now() > deadline:
                raise AssertionError(f"{url} never answered 200")
            await asyncio.sleep(0.1)

    # -- autoscalers ----------------------------------------------------------------------------

    def kubeconfig(self, identity: str) -> Path:
        path = self.workdir / f"kubeconfig-{identity}"
        path.write_text(self.cluster.kubeconfig(identity))
        return path

    async def start_autoscaler(self, identity: str) -> None:
        """Start (or restart, on the same port) the autoscaler called ``identity``, appending to its log."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDKIT_AUTOSCALER_")}
        env["POD_NAME"] = identity
        port = self.autoscaler_ports.setdefault(identity, free_port())
        with self._autoscaler_log_path(identity).open("ab") as out:
            self.autoscalers[identity] = await asyncio.create_subprocess_exec(
                *AUTOSCALER,
                "run",
                "--kubeconfig",
                str(self.kubeconfig(identity)),
                "--config-map",
                f"{NS}/{CONFIG_MAP}",
                "--listen",
                f"127.0.0.1:{port}",
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
            )

    def autoscaler_log(self, identity: str) -> str:
        return self._autoscaler_log_path(identity).read_text(errors="replace")

    async def autoscaler_cycles(self, identity: str) -> int | None:
        """The cycles the autoscaler reports on /healthz, or None when it does not answer."""
        try:
            async with self.http.get(
                f"http://127.0.0.1:{self.autoscaler_ports[identity]}/healthz", timeout=aiohttp.ClientTimeout(total=3)
            ) as response:
                cycles: int = (await response.json())["cycles"]
                return cycles
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
            return None

    def _autoscaler_log_path(self, identity: str) -> Path:
        return self.workdir / f"autoscaler-{identity}.log"

    # -- the end of a run -----------------------------------------------------------------------

    async def stop_autoscalers(self) -> None:
        """SIGTERM, as at a rollout; SIGKILL what has not exited within 10 s."""
        for process in self.autoscalers.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.autoscalers.values():
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()

    async def kill_slots(self) -> None:
        """Kill every sidecar (resumed first if frozen) and every fake buildkitd."""
        for slots in self.slots.values():
            for slot in slots:
                if slot.process is not None and slot.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        slot.process.send_signal(signal.SIGCONT)
                    slot.process.kill()
                    await slot.process.wait()
                await slot.daemon.kill()
