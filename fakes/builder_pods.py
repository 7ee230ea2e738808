"""Builders and clients for the router's tests: fake buildkitds behind real sidecars, and buildx-like clients.

Each builder has its own loopback address (``127.0.<block>.<10+i>``), as a pod has its own IP: the
fake buildkitd serves mTLS on buildkitd's port there, and a real ``buildkit-sidecar`` process
follows it over mTLS and answers HAProxy's agent checks on the agent port. A client build is
a ``Solve`` over its own TLS connection (as ``buildx build`` opens one per node), sent to the
router or, to play load the router did not place, straight to a builder; a bake is several
``Solve`` calls over one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import grpc
import grpc.aio
import trustme

from fakes.buildkitd import BUILD_SECONDS, FakeBuildkitd, Solved
from sidecar.protocol import control_pb2, control_pb2_grpc

SERVER_NAME = "buildkitd"
"""The name in buildkitd's server certificate, which clients verify (as buildx's ``servername``)."""
CLIENT_NAME = "buildx"
AGENT_PORT = 9092
SLOTS = 2
"""``--build-slots``, as shipped: the pools' ``targetBuildsPerReplica``."""
_SIDECAR = Path(sys.executable).with_name("buildkit-sidecar")
SIDECAR = [str(_SIDECAR)] if _SIDECAR.exists() else [sys.executable, "-m", "sidecar.main"]


class Certificates:
    """One CA; buildkitd's server certificate; client certificates for buildx and the sidecar."""

    def __init__(self, workdir: Path) -> None:
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert(SERVER_NAME)
        self.client = self.ca.issue_cert(CLIENT_NAME, common_name=CLIENT_NAME)
        self.sidecar = self.ca.issue_cert("sidecar", common_name="sidecar")
        self.files: dict[str, Path] = {}
        for name, blob in [
            ("ca.pem", self.ca.cert_pem),
            ("sidecar.pem", self.sidecar.cert_chain_pems[0]),
            ("sidecar-key.pem", self.sidecar.private_key_pem),
        ]:
            self.files[name] = workdir / name
            blob.write_to_path(str(self.files[name]))

    def daemon_credentials(self) -> grpc.ServerCredentials:
        """buildkitd's ``--tlscert/--tlskey/--tlscacert``: mTLS, a client certificate required."""
        return grpc.ssl_server_credentials(
            [(self.server.private_key_pem.bytes(), self.server.cert_chain_pems[0].bytes())],
            root_certificates=self.ca.cert_pem.bytes(),
            require_client_auth=True,
        )

    def client_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.cert_pem.bytes(),
            private_key=self.client.private_key_pem.bytes(),
            certificate_chain=self.client.cert_chain_pems[0].bytes(),
        )


class Builder:
    """One builder pod: a fake buildkitd on ``<ip>:1234`` and its sidecar process."""

    def __init__(
        self, index: int, *, workdir: Path, certificates: Certificates, build_port: int, block: int = 1
    ) -> None:
        self.index = index
        self.ip = f"127.0.{block}.{10 + index}"
        """``127.0.<block>.<10 + index>``: tests and benchmarks use different blocks, so they can run at once."""
        self.name = f"builder-{index}"
        self.build_port = build_port
        self.daemon = FakeBuildkitd(platforms=("linux/amd64",))
        self.certificates = certificates
        self.log = workdir / f"sidecar-{index}.log"
        self.process: asyncio.subprocess.Process | None = None
        self.admin = f"http://{self.ip}:9091"
        self.public = f"http://{self.ip}:9090"

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.build_port}"

    async def start(self, http: aiohttp.ClientSession) -> None:
        await self.daemon.start(self.address, tls=self.certificates.daemon_credentials())
        files = self.certificates.files
        args = [
            "run",
            "--buildkit-addr", f"tcp://{self.address}",
            "--tls-ca-cert", str(files["ca.pem"]),
            "--tls-cert", str(files["sidecar.pem"]),
            "--tls-key", str(files["sidecar-key.pem"]),
            "--tls-server-name", SERVER_NAME,
            "--arch", "amd64",
            "--listen", f"{self.ip}:9090",
            "--admin-listen", f"{self.ip}:9091",
            "--agent-listen", f"{self.ip}:{AGENT_PORT}",
            "--build-slots", str(SLOTS),
            "--drain-quiet-seconds", "0",
            "--drain-min-seconds", "0",
            "--reconnect-initial-seconds", "0.05",
            "--reconnect-max-seconds", "0.3",
            "--rpc-timeout-seconds", "2",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDKIT_SIDECAR_")}
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *SIDECAR, *args, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env
            )
        await self.until_ready(http)

    async def until_ready(self, http: aiohttp.ClientSession, *, within: float = 30.0) -> None:
        """Until the sidecar is ready (it follows buildkitd and knows its builds)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            if self.process is not None and self.process.returncode is not None:
                raise AssertionError(f"sidecar exited {self.process.returncode}: {self.log.read_text()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(self.public + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name}'s sidecar never became ready: {self.log.read_text()}")

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            await self.process.wait()
        await self.daemon.kill()

    @property
    def connections(self) -> set[str]:
        """The client connections its builds arrived over (one peer address each)."""
        return {solved.peer for solved in self.daemon.solves}


class Client:
    """buildx, for the tests: each build over its own mTLS connection (``grpc.use_local_subchannel_pool``:
    gRPC would otherwise share one connection between channels to the same address)."""

    def __init__(self, certificates: Certificates) -> None:
        self.credentials = certificates.client_credentials()
        self.options: Sequence[tuple[str, object]] = (
            ("grpc.ssl_target_name_override", SERVER_NAME),
            ("grpc.use_local_subchannel_pool", 1),
        )

    def channel(self, address: str) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(address, self.credentials, options=self.options)

    async def build(self, address: str, seconds: float, *, ref: str = "") -> None:
        """``buildx build``: one connection, one build of ``seconds`` (named ``ref`` if given,
        as buildx names its builds); raises if it fails."""
        async with self.channel(address) as channel:
            await solve(channel, seconds, ref=ref)

    async def bake(self, address: str, seconds: float, builds: int) -> None:
        """``buildx bake``: ``builds`` builds multiplexed over one connection."""
        async with self.channel(address) as channel:
            await asyncio.gather(*(solve(channel, seconds) for _ in range(builds)))


async def solve(channel: grpc.aio.Channel, seconds: float, *, ref: str = "") -> None:
    stub = control_pb2_grpc.ControlStub(channel)
    request = control_pb2.SolveRequest(Ref=ref, FrontendAttrs={BUILD_SECONDS: str(seconds)})
    await stub.Solve(request, timeout=seconds + 30)


def solves(builders: Sequence[Builder]) -> list[tuple[Builder, Solved]]:
    """Every build every builder took, in arrival order."""
    return sorted(((b, s) for b in builders for s in b.daemon.solves), key=lambda pair: pair[1].at)
