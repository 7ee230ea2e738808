"""The guide's mTLS path without cert-manager (docs/deployment.md, "Without cert-manager"),
run as written: its openssl steps make a CA, buildkitd's server certificate and a buildx
client certificate; its kubectl command makes the Secret the builder pods mount, with the
keys buildkitd's TLS flags read; and a TLS server set up as buildkitd sets itself up
(client certificates required and verified against ``--tlscacert``; its pair from
``--tlscert``/``--tlskey``), reading the Secret at the paths the pods mount it, accepts
the buildx files of "buildx client setup" under every ``servername`` the guide uses, and
refuses a client without a certificate or with one from another CA.

Needs ``openssl`` (1.1.1+) and ``kubectl`` (the Secret is made with ``--dry-run=client``:
nothing reaches a cluster). Nothing is skipped when one is missing: the test fails and
says what to install.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
import trustme
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from autoscaler.config import Config
from tests.deploy import documented
from tests.deploy.manifests import DEPLOY, Obj, builders, container, find, flag, sidecar_settings, tool

WITHOUT_CERT_MANAGER = "### Without cert-manager"
TLS_FLAGS = ("tlscacert", "tlscert", "tlskey")


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory the guide's openssl steps ran in (its three openssl blocks, in order)."""
    tool("openssl", "install Debian's openssl package (apt-get install openssl)")
    steps = [b for b in documented.blocks(documented.section(WITHOUT_CERT_MANAGER), "sh") if "openssl " in b]
    assert 3 == len(steps), "the guide's openssl steps: the CA, buildkitd's certificate, buildx's certificate"
    directory = tmp_path_factory.mktemp("issued")
    done = subprocess.run(
        ["sh", "-eu", "-c", "\n".join(steps)], cwd=directory, capture_output=True, text=True, timeout=60, check=False
    )
    assert 0 == done.returncode, f"the guide's openssl steps failed:\n{done.stderr}"
    return directory


@pytest.fixture(scope="module")
def secret(issued: Path) -> Obj:
    """The Secret the guide's kubectl command makes, from the files the openssl steps wrote."""
    kubectl = tool("kubectl", "the manifests render with kubectl 1.27+ (kustomize v5)")
    (argv,) = [
        a
        for b in documented.blocks(documented.section(WITHOUT_CERT_MANAGER), "sh")
        for a in documented.commands(b)
        if a[0] == "kubectl" and "secret" in a
    ]
    # Never a real cluster: the guide pipes a client-side dry run into `kubectl apply`.
    assert "--dry-run=client" in argv, argv
    assert ["-o", "yaml"] == argv[argv.index("-o") : argv.index("-o") + 2], argv
    done = subprocess.run([kubectl, *argv[1:]], cwd=issued, capture_output=True, text=True, timeout=60, check=False)
    assert 0 == done.returncode, done.stderr
    made: Obj = yaml.safe_load(done.stdout)
    return made


def _certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _usages(certificate: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_the_guides_secret_is_the_one_the_builders_mount_with_the_keys_buildkitd_reads(
    secret: Obj, shipped: list[Obj], config: Config
) -> None:
    made = {k: v for k, v in secret.items()}
    made["metadata"] = {k: v for k, v in secret["metadata"].items() if v is not None}
    kubernetes_validate.validate(made, "1.29.0", strict=True)
    for pool, deployment in builders(shipped, config):
        assert pool.namespace == secret["metadata"]["namespace"]
        spec = deployment["spec"]["template"]["spec"]
        buildkitd = container(spec, "buildkitd")
        files = {name: PurePosixPath(flag(buildkitd["args"], name)[0]) for name in TLS_FLAGS}
        (directory,) = {f.parent for f in files.values()}
        (mount,) = [m for m in buildkitd["volumeMounts"] if PurePosixPath(m["mountPath"]) == directory]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert secret["metadata"]["name"] == volume["secret"]["secretName"]
        assert "items" not in volume["secret"], "every key is a file named after it"
        assert {"ca.crt", "tls.crt", "tls.key"} == {f.name for f in files.values()} == set(secret["data"])
        # The sidecar needs no certificate: it reaches buildkitd on the pod's unix socket
        # (and TLS flags there would be refused at start-up).
        settings = sidecar_settings(spec)
        assert settings.buildkit_addr.startswith("unix://")
        assert (None, None, None) == (settings.tls_ca_cert, settings.tls_cert, settings.tls_key)


def test_the_guides_certificates_carry_the_names_and_usages_cert_manager_gives_them(
    issued: Path, composed: list[Obj], config: Config
) -> None:
    ca = _certificate(issued / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    server = _certificate(issued / "buildkitd.crt")
    client = _certificate(issued / "certs" / "tls.crt")
    for leaf in (server, client):
        leaf.verify_directly_issued_by(ca)
        assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert {ExtendedKeyUsageOID.SERVER_AUTH} == _usages(server)
    assert {ExtendedKeyUsageOID.CLIENT_AUTH} == _usages(client)
    names = set(
        server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    )
    # the same names either way: the cert-manager component's Certificate...
    (certificate,) = find(composed, "Certificate", "buildkitd-tls")
    assert set(certificate["spec"]["dnsNames"]) == names
    # ...which are every pool's Service, short and qualified
    for pool in config.pools:
        service = pool.deployment
        assert {service, f"{service}.{pool.namespace}.svc", f"{service}.{pool.namespace}.svc.cluster.local"} <= names


@contextmanager
def _tls_server(context: ssl.SSLContext) -> Iterator[int]:
    """A loopback TLS listener answering each client it accepts with ``ok``; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stopping = threading.Event()

    def serve() -> None:
        while True:
            conn, _ = listener.accept()
            if stopping.is_set():
                conn.close()
                return
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                conn.close()  # the client was refused: what the negative cases expect

    thread = threading.Thread(target=serve, name="tls-server", daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stopping.set()
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # wakes accept()
        thread.join(timeout=10)
        listener.close()


def _answer(port: int, context: ssl.SSLContext, servername: str) -> bytes:
    """What the server says to a client with ``context``, or b"" when it refused the client."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=servername) as tls,
    ):
        try:
            return tls.recv(2)
        except (ssl.SSLError, ConnectionResetError):
            return b""  # TLS 1.3: the server's refusal arrives after the client's handshake


def _buildx_client(opts: dict[str, str]) -> ssl.SSLContext:
    """TLS as buildx's remote driver sets it up from its ``cacert``, ``cert`` and ``key``."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=opts["cacert"])
    context.load_cert_chain(opts["cert"], opts["key"])
    return context


def test_a_server_set_up_like_buildkitd_accepts_the_guides_buildx_client_and_refuses_others(
    issued: Path, secret: Obj, shipped: list[Obj], config: Config, tmp_path: Path
) -> None:
    # The Secret as a builder pod sees it: each key a file under the volume's mountPath.
    _, deployment = next(builders(shipped, config))
    spec = deployment["spec"]["template"]["spec"]
    buildkitd = container(spec, "buildkitd")
    (mount,) = [m for m in buildkitd["volumeMounts"] if m["name"] == "tls"]
    root = tmp_path / "pod"
    for key, value in secret["data"].items():
        path = root / PurePosixPath(mount["mountPath"]).relative_to("/") / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(value))
    files = {name: root / PurePosixPath(flag(buildkitd["args"], name)[0]).relative_to("/") for name in TLS_FLAGS}
    # buildkitd: its pair, client certificates required and verified against --tlscacert, TLS 1.2+.
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    server.load_cert_chain(files["tlscert"], files["tlskey"])
    server.load_verify_locations(files["tlscacert"])
    server.verify_mode = ssl.CERT_REQUIRED

    creates = [
        argv
        for b in documented.blocks(documented.section("## buildx client setup"), "sh")
        for argv in documented.commands(b)
        if argv[:3] == ["docker", "buildx", "create"]
    ]
    assert len(config.pools) == len(creates), "one buildx node per pool"
    with _tls_server(server) as port:
        for argv in creates:
            opts = {k: v.replace("$PWD", str(issued)) for k, v in documented.driver_opts(argv).items()}
            platform = argv[argv.index("--platform") + 1]
            (node_pool,) = [p for p in config.pools if platform == f"linux/{p.arch}"]
            assert opts["servername"].split(".")[0] == node_pool.deployment
            assert b"ok" == _answer(port, _buildx_client(opts), opts["servername"])

        opts = {k: v.replace("$PWD", str(issued)) for k, v in documented.driver_opts(creates[0]).items()}
        # no client certificate
        anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=opts["cacert"])
        assert b"" == _answer(port, anonymous, opts["servername"])
        # a client certificate from another CA
        stranger = _buildx_client(opts)
        with trustme.CA().issue_cert("buildx-client").private_key_and_cert_chain_pem.tempfile() as pem:
            stranger.load_cert_chain(pem)
        assert b"" == _answer(port, stranger, opts["servername"])
        # a name the server certificate does not carry: the client refuses the server
        with pytest.raises(ssl.SSLCertVerificationError):
            _answer(port, _buildx_client(opts), "buildkitd.example.com")

    # deploy/buildx/create-builder.sh reads the same three files from $CERTS (the guide's certs/)
    script = (DEPLOY / "buildx" / "create-builder.sh").read_text(encoding="utf-8")
    for cacert, cert, key in re.findall(r"cacert=\$CERTS/([\w.]+),cert=\$CERTS/([\w.]+),key=\$CERTS/([\w.]+)", script):
        assert (issued / "certs" / cacert).is_file()
        assert (issued / "certs" / cert).is_file()
        assert (issued / "certs" / key).is_file()
    assert len(config.pools) == script.count("cacert=$CERTS/")
