"""Bad invocations of both programs, each run as a real child process of its console script.

Every one must exit with its documented code (docs/sidecar.md and docs/autoscaler.md,
"Exit status"), print no traceback, name the offending value on standard error, and do
so within seconds. Where a server is needed it is a real one on loopback: an aiohttp
app answering 404, the sidecar's own public app, an HTTPS server with an untrusted
certificate, and the fake Kubernetes API (fakes/kubernetes.py) refusing with 401 or 403.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from aiohttp import web

from common.version import package_version
from fakes.kubernetes import FakeCluster
from sidecar.main import Sidecar, http_runner
from sidecar.settings import Settings

pytestmark = [pytest.mark.looptime(False), pytest.mark.subprocess]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPTS = {"sidecar": "buildkit-sidecar", "autoscaler": "buildkit-autoscaler"}
MODULES = {"sidecar": "sidecar.main", "autoscaler": "autoscaler.cli"}

CHILD_SECONDS = 60.0
"""The ceiling before a child is killed and the case fails: far above any case."""

ANSWER_SECONDS = 20.0
"""Every bad invocation is answered within this (imports on a loaded 2-core machine take
seconds): an unreachable API server used to take 31 s and then blame RBAC."""

NS = "buildkit"
CONFIG_MAP = f"{NS}/buildkit-autoscaler"


def command(program: str) -> list[str]:
    """The installed console script (what the image runs), or the module if not installed."""
    script = BIN / SCRIPTS[program]
    return [str(script)] if script.exists() else [sys.executable, "-m", MODULES[program]]


@dataclass(frozen=True)
class Bad:
    """One bad invocation: ``args`` are formatted with the :class:`World`'s values."""

    id: str
    program: str
    args: tuple[str, ...]
    code: int
    names: tuple[str, ...]
    """Each must appear on standard error (formatted like ``args``): the value at fault, and the fix."""
    env: tuple[tuple[str, str], ...] = ()
    cluster: str = ""
    """The fake API server: "" empty, "forbidden" (no list on configmaps), "configured" (a valid ConfigMap)."""


S, A = "sidecar", "autoscaler"
ONCE = ("run", "--once", "--config-map", CONFIG_MAP)
SIMULATE = ("simulate", "--config", "{tmp}/absent.yaml", "--trace", "bursty-ci-day", "--out", "{tmp}/simulation")

CASES = [
    # -- buildkit-sidecar export-trace ------------------------------------------------------
    Bad("export-addr-without-scheme", S, ("export-trace", "--buildkit-addr", "/path/without/scheme.sock"), 2,
        ("--buildkit-addr='/path/without/scheme.sock'", "unix:///path/without/scheme.sock")),
    Bad("export-addr-host-without-port", S, ("export-trace", "--buildkit-addr", "tcp://buildkitd"), 2,
        ("--buildkit-addr='tcp://buildkitd'", "tcp://host:port")),
    Bad("export-out-in-missing-dir", S, ("export-trace", "--out", "{tmp}/missing-dir/x.csv"), 2,
        ("--out='{tmp}/missing-dir/x.csv'", "no such directory '{tmp}/missing-dir'")),
    Bad("export-out-is-a-directory", S, ("export-trace", "--out", "{tmp}"), 2, ("--out='{tmp}'", "is a directory")),
    Bad("export-socket-missing", S, ("export-trace", "--buildkit-addr", "unix://{tmp}/none.sock"), 2,
        ("unix://{tmp}/none.sock", "is buildkitd running")),
    Bad("export-tcp-refused", S, ("export-trace", "--buildkit-addr", "tcp://127.0.0.1:{refused}"), 2,
        ("tcp://127.0.0.1:{refused}", "is buildkitd running")),
    Bad("export-ca-file-missing", S,
        ("export-trace", "--buildkit-addr", "tcp://127.0.0.1:{refused}", "--tls-ca-cert", "{tmp}/ca.pem"), 2,
        ("--tls-ca-cert='{tmp}/ca.pem'", "no such file")),
    Bad("export-timeout-negative", S, ("export-trace", "--timeout-seconds", "-1"), 2, ("'-1'", "> 0")),
    Bad("export-arch-malformed", S, ("export-trace", "--arch", "arm/64"), 2, ("--arch='arm/64'",)),
    # -- buildkit-sidecar drain ---------------------------------------------------------------
    Bad("drain-connection-refused", S, ("drain", "--admin-url", "http://127.0.0.1:{refused}"), 2,
        ("connection refused at http://127.0.0.1:{refused}/drain", "--admin-listen")),
    Bad("drain-url-without-scheme", S, ("drain", "--admin-url", "127.0.0.1:{refused}"), 2,
        ("--admin-url='127.0.0.1:{refused}'", "did you mean http://127.0.0.1:{refused}?")),
    Bad("drain-url-unix-scheme", S, ("drain", "--admin-url", "unix:///run/sidecar.sock"), 2,
        ("--admin-url='unix:///run/sidecar.sock'", "http://HOST:PORT")),
    Bad("drain-url-port-out-of-range", S, ("drain", "--admin-url", "http://127.0.0.1:99999"), 2,
        ("--admin-url='http://127.0.0.1:99999'", "1 to 65535")),
    Bad("drain-empty-404", S, ("drain", "--admin-url", "{http404}"), 2,
        ("{http404}/drain answered HTTP 404 (empty body)", "not a sidecar's drain endpoint")),
    Bad("drain-public-port-not-found", S, ("drain", "--admin-url", "{public}"), 2,
        ("{public}/drain answered HTTP 404 (Not Found)", "--admin-listen")),
    Bad("drain-public-port-without-token", S, ("drain", "--admin-url", "{guarded}"), 2,
        ("{guarded}/drain answered HTTP 401", "--token-file")),
    Bad("drain-public-port-wrong-token", S, ("drain", "--admin-url", "{guarded}", "--token-file", "{tmp}/wrong"), 2,
        ("--token-file='{tmp}/wrong'", "was refused")),
    Bad("drain-token-file-missing", S, ("drain", "--token-file", "{tmp}/absent"), 2,
        ("--token-file='{tmp}/absent'", "No such file")),
    Bad("drain-token-file-empty", S, ("drain", "--token-file", "{tmp}/empty"), 2,
        ("--token-file='{tmp}/empty'", "empty")),
    Bad("drain-timeout-not-a-number", S, ("drain", "--timeout-seconds", "soon"), 2, ("'soon'", "number of seconds")),
    # -- buildkit-sidecar run -----------------------------------------------------------------
    Bad("run-addr-host-port-without-scheme", S, ("--buildkit-addr", "buildkitd:1234"), 2,
        ("--buildkit-addr='buildkitd:1234'", "tcp://buildkitd:1234")),
    Bad("run-port-in-use", S,
        ("run", "--buildkit-addr", "unix://{tmp}/none.sock", "--listen", "127.0.0.1:{busy}",
         "--admin-listen", "127.0.0.1:{refused}"), 2,
        ("--listen='127.0.0.1:{busy}'", "address already in use")),
    Bad("run-token-file-missing", S, ("run", "--drain-token-file", "{tmp}/absent"), 2,
        ("--drain-token-file='{tmp}/absent'", "no such file")),
    Bad("run-bad-variable", S, (), 2, ("BUILDKIT_SIDECAR_LISTEN='everywhere'", "host:port"),
        env=(("BUILDKIT_SIDECAR_LISTEN", "everywhere"),)),
    Bad("sidecar-unknown-command", S, ("undrain",), 2, ("'undrain'", "drain")),
    # -- buildkit-autoscaler run: flags and files ----------------------------------------------
    Bad("run-config-map-without-namespace", A, ("run", "--once", "--config-map", "autoscaler"), 2,
        ("--config-map must be NAMESPACE/NAME, got 'autoscaler'",)),
    Bad("run-kubeconfig-not-found", A, (*ONCE, "--kubeconfig", "{tmp}/nope"), 2,
        ("--kubeconfig='{tmp}/nope'", "file not found")),
    Bad("run-kubeconfig-is-a-directory", A, (*ONCE, "--kubeconfig", "{tmp}"), 2,
        ("--kubeconfig='{tmp}'", "is a directory")),
    Bad("run-kubeconfig-not-yaml", A, (*ONCE, "--kubeconfig", "{tmp}/not-yaml"), 2,
        ("--kubeconfig='{tmp}/not-yaml'", "not YAML")),
    Bad("run-kubeconfig-without-current-context", A, (*ONCE, "--kubeconfig", "{tmp}/no-context"), 2,
        ("--kubeconfig='{tmp}/no-context'", "current-context")),
    Bad("run-outside-a-cluster", A, ONCE, 2, ("no in-cluster config", "use --kubeconfig PATH")),
    # -- buildkit-autoscaler run: the API server ---------------------------------------------------
    Bad("run-api-connection-refused", A, (*ONCE, "--kubeconfig", "{tmp}/refused"), 2,
        ("connection refused at http://127.0.0.1:{refused}",)),
    Bad("run-api-tls-untrusted", A, (*ONCE, "--kubeconfig", "{tmp}/untrusted"), 2,
        ("TLS certificate of {tls} not trusted",)),
    Bad("run-api-plain-http-on-https", A, (*ONCE, "--kubeconfig", "{tmp}/http-as-https"), 2,
        ("TLS handshake with {http404_as_https} failed",)),
    Bad("run-not-an-api-server", A, (*ONCE, "--kubeconfig", "{tmp}/not-kubernetes"), 2,
        ("{http404} answered GET /version with HTTP 404", "Kubernetes API server")),
    Bad("run-api-unauthorized", A, (*ONCE, "--kubeconfig", "{tmp}/unauthorized"), 2,
        ("unauthorized at {k8s}", "credentials")),
    Bad("run-configmaps-forbidden", A, (*ONCE, "--kubeconfig", "{tmp}/kubeconfig"), 2,
        (f"forbidden: list configmaps in {NS}", "cannot list resource", "rbac.yaml"), cluster="forbidden"),
    Bad("run-metrics-port-in-use", A,
        ("run", "--dry-run", "--config-map", CONFIG_MAP, "--kubeconfig", "{tmp}/kubeconfig",
         "--listen", "127.0.0.1:{busy}"), 2,
        ("--listen='127.0.0.1:{busy}'", "address already in use"), cluster="configured"),
    # -- buildkit-autoscaler: the other commands ---------------------------------------------------
    Bad("check-config-file-not-found", A, ("check-config", "{tmp}/absent.yaml"), 1,
        ("{tmp}/absent.yaml: cannot read: no such file",)),
    Bad("autoscaler-unknown-command", A, ("scale",), 2, ("'scale'", "check-config")),
    # -- buildkit-autoscaler simulate: the router's flags (refused before any file is read) --------
    Bad("simulate-routers-zero", A, (*SIMULATE, "--routers", "0"), 2, ("argument --routers: must be ≥ 1, not 0",)),
    Bad("simulate-agent-interval-zero", A, (*SIMULATE, "--agent-interval", "0"), 2,
        ("argument --agent-interval: must be a number > 0, not 0",)),
    Bad("simulate-queue-negative", A, (*SIMULATE, "--router-queue-seconds", "-1"), 2,
        ("argument --router-queue-seconds: must be a number ≥ 0, not -1",)),
    Bad("simulate-router-flag-with-random", A, (*SIMULATE, "--routing", "random", "--routers", "3"), 2,
        ("--routers describes the router: only with --routing router, not with --routing random",)),
]  # fmt: skip


@dataclass
class World:
    """What the cases' arguments refer to, formatted in with :meth:`format`."""

    values: dict[str, str]

    def format(self, text: str) -> str:
        return text.format(**self.values)


def _kubeconfig(path: Path, server: str, *, user: dict[str, Any] | None = None) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": user or {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": NS}}],
                "current-context": "x",
            }
        )
    )


async def _serve(app: web.Application, *, tls: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    runner = http_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    return runner, runner.addresses[0][1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def world(tmp_path: Path, k8s: FakeCluster) -> AsyncIterator[World]:
    """Loopback servers and files for every case (each costs milliseconds)."""
    (tmp_path / "wrong").write_text("not-the-token\n")
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "token").write_text("the-token\n")
    (tmp_path / "not-yaml").write_text("clusters: [\n")
    (tmp_path / "no-context").write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    runners: list[web.AppRunner] = []
    sidecars: list[Sidecar] = []

    async def nothing_here(_request: web.Request) -> web.Response:
        return web.Response(status=404)

    not_found = web.Application()
    not_found.router.add_route("*", "/{tail:.*}", nothing_here)
    runner, http404_port = await _serve(not_found)
    runners.append(runner)

    ports = []
    for settings in (Settings(), Settings(drain_token_file=tmp_path / "token")):
        sidecar = Sidecar(settings=settings)  # the real public listener, without and with a token
        sidecars.append(sidecar)
        runner, port = await _serve(sidecar.public_app)
        runners.append(runner)
        ports.append(port)
    public_port, guarded_port = ports

    ca = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    runner, tls_port = await _serve(not_found, tls=tls)
    runners.append(runner)

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    values = {
        "tmp": str(tmp_path),
        "refused": str(_free_port()),
        "busy": str(busy.getsockname()[1]),
        "http404": f"http://127.0.0.1:{http404_port}",
        "http404_as_https": f"https://127.0.0.1:{http404_port}",
        "public": f"http://127.0.0.1:{public_port}",
        "guarded": f"http://127.0.0.1:{guarded_port}",
        "tls": f"https://127.0.0.1:{tls_port}",
        "k8s": k8s.url.rstrip("/"),
    }
    _kubeconfig(tmp_path / "refused", f"http://127.0.0.1:{values['refused']}")
    _kubeconfig(tmp_path / "untrusted", values["tls"])
    _kubeconfig(tmp_path / "http-as-https", values["http404_as_https"])
    _kubeconfig(tmp_path / "not-kubernetes", values["http404"])
    _kubeconfig(tmp_path / "kubeconfig", values["k8s"])
    _kubeconfig(tmp_path / "unauthorized", values["k8s"] + "/unauthorized")
    assert k8s.handler is not None
    k8s.handler["get /unauthorized/version/"] << 401  # that server path only: the others answer as usual
    try:
        yield World(values)
    finally:
        busy.close()
        for sidecar in sidecars:
            await sidecar.drainer.close()
        for runner in runners:
            await runner.cleanup()


def _env(case: Bad) -> dict[str, str]:
    drop = ("BUILDKIT_SIDECAR_", "BUILDKIT_AUTOSCALER_", "KUBERNETES_SERVICE_", "KUBECONFIG")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(case.env)
    return env


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_a_bad_invocation_exits_with_its_code_naming_the_value_without_a_traceback(
    case: Bad, world: World, k8s: FakeCluster
) -> None:
    if case.cluster == "forbidden":
        k8s.forbid("list", "configmaps")
    if case.cluster == "configured":
        pools = [{"name": "amd64", "namespace": NS, "deployment": "buildkitd-amd64", "maxReplicas": 4}]
        k8s.put("configmaps", NS, {"metadata": {"name": "buildkit-autoscaler"},
                                   "data": {"config.yaml": yaml.safe_dump({"pools": pools})}})  # fmt: skip
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *command(case.program),
        *(world.format(a) for a in case.args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(case),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), CHILD_SECONDS)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    elapsed = time.monotonic() - started
    stdout, stderr = out.decode(), err.decode()
    shown = f"exit {process.returncode} after {elapsed:.1f} s\nstderr:\n{stderr}\nstdout:\n{stdout}"
    assert case.code == process.returncode, shown
    assert "Traceback" not in stderr + stdout, shown
    for name in case.names:
        assert world.format(name) in stderr, shown
    assert elapsed < ANSWER_SECONDS, shown


def test_at_least_25_bad_invocations_are_covered() -> None:
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("program", [S, A])
async def test_version_is_the_package_version(program: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *command(program), "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), CHILD_SECONDS)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert (0, b"") == (process.returncode, err)
    assert f"{SCRIPTS[program]} {pyproject['project']['version']}\n" == out.decode()
    assert pyproject["project"]["version"] == package_version()


async def test_the_sidecar_looks_its_version_up_only_when_asked() -> None:
    """Its parser built, the sidecar has not imported importlib.metadata (about 0.7 MiB of RSS)."""
    probe = "import sys, sidecar.main; sidecar.main.parser(); print('importlib.metadata' in sys.modules)"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", probe, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), CHILD_SECONDS)
    assert (0, b"False\n") == (process.returncode, out), err.decode()


@pytest.mark.parametrize(
    ("program", "commands"), [(S, ("run", "drain", "export-trace")), (A, ("check-config", "run", "simulate", "trace"))]
)
async def test_top_level_help_lists_every_command(program: str, commands: tuple[str, ...]) -> None:
    process = await asyncio.create_subprocess_exec(
        *command(program), "--help", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), CHILD_SECONDS)
    assert 0 == process.returncode
    listed = {line.split()[0] for line in out.decode().splitlines() if line.startswith("    ")}
    assert set(commands) <= listed, out.decode()
    assert "--version" in out.decode()
