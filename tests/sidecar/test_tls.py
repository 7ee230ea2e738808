"""TCP with mTLS, as buildkitd serves it with --tlscert/--tlskey/--tlscacert."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import trustme
from prometheus_client import CollectorRegistry

from fakes.buildkitd import FakeBuildkitd
from sidecar.main import Sidecar
from sidecar.settings import Settings
from sidecar.state import Loss


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_daemon(ca: trustme.CA) -> AsyncIterator[FakeBuildkitd]:
    server_cert = ca.issue_cert("buildkitd.builders.svc", "127.0.0.1")
    credentials = grpc.ssl_server_credentials(
        [(server_cert.private_key_pem.bytes(), server_cert.cert_chain_pems[0].bytes())],
        root_certificates=ca.cert_pem.bytes(),
        require_client_auth=True,
    )
    daemon = FakeBuildkitd()
    await daemon.start("127.0.0.1:0", tls=credentials)
    yield daemon
    await daemon.kill()


async def _follow(settings: Settings) -> tuple[Sidecar, asyncio.Task[None]]:
    sidecar = Sidecar(settings=settings, registry=CollectorRegistry())
    task = asyncio.create_task(sidecar.follower.run(stop=sidecar.stop), name="tls-follower")
    return sidecar, task


async def _stop(sidecar: Sidecar, task: asyncio.Task[None]) -> None:
    sidecar.stop.set()
    await task


def _write(tmp_path: Path, name: str, blob: trustme.Blob) -> Path:
    path = tmp_path / name
    blob.write_to_path(str(path))
    return path


async def test_mtls_client_certificate_lets_the_sidecar_follow_builds(
    tls_daemon: FakeBuildkitd, ca: trustme.CA, tmp_path: Path
) -> None:
    client = ca.issue_cert("buildkit-sidecar")
    settings = Settings(
        buildkit_addr=tls_daemon.address,
        tls_ca_cert=_write(tmp_path, "ca.pem", ca.cert_pem),
        tls_cert=_write(tmp_path, "tls.crt", client.cert_chain_pems[0]),
        tls_key=_write(tmp_path, "tls.key", client.private_key_pem),
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:1",
    )
    sidecar, task = await _follow(settings)
    try:
        ref = tls_daemon.start_build()

        async def seen() -> None:
            while sidecar.state.active_count() != 1:
                await sidecar.state.wait_changed(0.05)

        await asyncio.wait_for(seen(), 30)
        assert [ref] == [b.ref for b in sidecar.state.active_builds() or []]
        assert "amd64" == sidecar.state.arch
    finally:
        await _stop(sidecar, task)


async def test_without_a_client_certificate_the_sidecar_stays_down_and_never_reports_zero(
    tls_daemon: FakeBuildkitd, ca: trustme.CA, tmp_path: Path
) -> None:
    settings = Settings(
        buildkit_addr=tls_daemon.address,
        tls_ca_cert=_write(tmp_path, "ca.pem", ca.cert_pem),
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:1",
        reconnect_initial_seconds=0.1,
        reconnect_max_seconds=0.5,
    )
    sidecar, task = await _follow(settings)
    try:
        failures = "buildkit_sidecar_connect_failures_total"

        async def failed_twice() -> None:
            while (sidecar.metrics.registry.get_sample_value(failures, {"arch": "unknown", "loss": "error"}) or 0) < 2:
                await sidecar.state.wait_changed(0.1)

        await asyncio.wait_for(failed_twice(), 60)
        assert sidecar.state.active_count() is None
        assert Loss.ERROR == sidecar.state.connection.loss
        assert (False, "buildkitd unreachable") == (sidecar.state.ready()[0], sidecar.state.ready()[1][:21])
    finally:
        await _stop(sidecar, task)
