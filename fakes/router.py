"""The real HAProxy (Debian's package) running the config file ``deploy/`` ships, on loopback.

Only the addresses change: the ``resolvers`` section's ``parse-resolv-conf`` line, replaced
by the test's DNS server (``loopback_config``), and the listen addresses and the headless
Service's name, which the shipped Deployment passes through the environment
(``ROUTER_LISTEN``, ``ROUTER_METRICS_LISTEN``, ``ROUTER_BACKENDS``). Every other line (tiers,
timeouts, agent checks, server templates) is the shipped one. Started in master-worker mode
with a master CLI socket (a command-line flag, not config), through which the test reads
``show stat`` as an SRE would.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "base" / "router" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
CLIENT_PORT = 1234
"""buildkitd's port: the router's client port and every builder's, as shipped."""


def _replace_once(pattern: str, replacement: str, text: str) -> str:
    out, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if count != 1:
        raise AssertionError(f"the shipped {CONFIG.name} should have one line matching {pattern!r}, has {count}")
    return out


def loopback_config(text: str, *, dns_port: int) -> str:
    """The shipped config with its resolver pointed at the test's DNS server on loopback."""
    return _replace_once(r"^(\s*)parse-resolv-conf\s*$", rf"\g<1>nameserver test 127.0.0.1:{dns_port}", text)


def shipped_env(headless: str, *, arch: str = "amd64") -> dict[str, str]:
    """The environment the shipped router Deployment of ``arch`` gives HAProxy (``deploy/``
    rendered by ``kubectl kustomize``), the headless Service's name (``ROUTER_BACKENDS``)
    replaced by ``headless``."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is needed to render deploy/ (README: the deployment tests)")
    command = [kubectl, "kustomize", str(ROOT / "deploy")]
    rendered = subprocess.run(command, check=True, capture_output=True, text=True)  # noqa: S603 - our own files
    for doc in yaml.safe_load_all(rendered.stdout):
        if doc and doc["kind"] == "Deployment" and doc["metadata"]["name"] == f"buildkit-router-{arch}":
            [container] = [c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == "haproxy"]
            env = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
            if "ROUTER_BACKENDS" not in env:
                raise RuntimeError(f"buildkit-router-{arch} sets no ROUTER_BACKENDS")
            return {**env, "ROUTER_BACKENDS": headless}
    raise RuntimeError(f"deploy/ renders no Deployment buildkit-router-{arch}")


class Router:
    """One HAProxy master and its worker(s): started, inspected, reloaded, soft-stopped."""

    def __init__(self, workdir: Path, *, env: dict[str, str], dns_port: int, listen: str, metrics: str) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.listen = listen
        self.metrics = metrics
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(loopback_config(CONFIG.read_text(), dns_port=dns_port))
        self.master_socket = workdir / "master.sock"
        self.log = workdir / "haproxy.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if k in ("PATH", "LANG")},
            **env,
            "ROUTER_LISTEN": listen,
            "ROUTER_METRICS_LISTEN": metrics,
        }
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                HAPROXY, "-W", "-db", "-S", str(self.master_socket), "-f", str(self.config),
                stdout=out, stderr=asyncio.subprocess.STDOUT, env=self.env,
            )  # fmt: skip
        for _ in range(100):
            if self.process.returncode is not None:
                raise AssertionError(f"haproxy exited {self.process.returncode}: {self.log.read_text()}")
            with contextlib.suppress(OSError):
                if await self.stat():
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"haproxy never answered on its master socket: {self.log.read_text()}")

    async def command(self, line: str) -> str:
        """One master-CLI command (``@1 show stat`` runs in the current worker)."""
        reader, writer = await asyncio.open_unix_connection(str(self.master_socket))
        try:
            writer.write(line.encode() + b"\n")
            writer.write_eof()  # the master CLI answers, then closes once the client has said all
            await writer.drain()
            return (await asyncio.wait_for(reader.read(), 10)).decode()
        finally:
            writer.close()

    async def stat(self) -> list[dict[str, str]]:
        """``show stat`` of the current worker: one row per frontend, backend and server."""
        text = await self.command("@1 show stat")
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines or not lines[0].startswith("# "):
            return []
        return list(csv.DictReader([lines[0][2:], *lines[1:]]))

    async def servers(self, backend: str) -> dict[str, dict[str, str]]:
        """The servers of ``backend`` that have an address, by address (``127.0.1.10``)."""
        return {
            row["addr"].rpartition(":")[0]: row
            for row in await self.stat()
            if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND") and row.get("addr")
        }

    def reload(self) -> None:
        """What a config change does to a running master: a new worker; the old one soft-stops."""
        assert self.process is not None
        self.process.send_signal(signal.SIGUSR2)

    def soft_stop(self) -> None:
        """What the router's preStop does: stop listening, exit once the last session ends."""
        assert self.process is not None
        self.process.send_signal(signal.SIGUSR1)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
