"""deploy/ and the Dockerfile: the manifests render with ``kubectl kustomize``, every
object validates against the Kubernetes schema offline, and the pieces fit the code
they deploy (flags, ports, the RBAC the autoscaler's calls need, its config). The
alert rules pass ``promtool``, and a real Prometheus scraping a real sidecar (against
the fake buildkitd) evaluates every alert and dashboard expression.

Needs ``kubectl`` (1.27+, kustomize v5) and Debian's ``prometheus`` (``promtool``,
``prometheus``): .ci/run installs the latter. Nothing is skipped when one is missing:
the test fails and says what to install.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import kubernetes_validate
import pytest
import yaml
from kubernetes_asyncio import client as kube_client
from prometheus_client import CollectorRegistry

from autoscaler.config import Config, load_config
from autoscaler.controller.metrics import Metrics as AutoscalerMetrics
from common.addresses import host_port
from fakes.buildkitd import FakeBuildkitd
from fakes.kubernetes import FakeCluster
from sidecar.main import parser as sidecar_parser
from sidecar.metrics import Metrics as SidecarMetrics
from sidecar.settings import Settings, from_sources
from sidecar.state import BuilderState
from sidecar.tracking import Tracker

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BUILDER_TEMPLATE = DEPLOY / "base" / "builders" / "template" / "deployment.yaml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]

K8S_VERSIONS = ("1.29.0", "1.37.0")
"""The oldest Kubernetes the manifests support (native sidecar containers are on by
default from 1.29) and the newest kubernetes-validate knows: strict schemas, so a
misspelt or misplaced field fails too."""

CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
}
"""Custom resources kubernetes-validate has no schema for: checked structurally below."""

Obj = dict[str, Any]


def _tool(name: str, install: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: {install}")
    return path


def kubectl() -> str:
    return _tool("kubectl", "the manifests render with kubectl 1.27+ (kustomize v5); Debian's 1.20 is too old")


def kustomize(directory: Path) -> list[Obj]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert 0 == done.returncode, f"kubectl kustomize {directory}:\n{done.stderr}"
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


def _own_overlay(tmp: Path, *, components: list[str]) -> Path:
    """An overlay outside deploy/ (as a user's GitOps repository has), adding components."""
    tmp.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(DEPLOY, tmp)
    text = yaml.safe_dump(
        {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [rel],
            "components": [f"{rel}/components/{c}" for c in components],
        }
    )
    (tmp / "kustomization.yaml").write_text(text, encoding="utf-8")
    return tmp


VARIANTS = ("deploy", "base", "with-dry-run")
"""What is rendered: deploy/ as shipped (what `kubectl apply -k deploy` applies), the
base alone, and an overlay of one's own adding the dry-run component."""


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Obj]]:
    overlay = _own_overlay(tmp_path_factory.mktemp("overlay"), components=["dry-run"])
    return {"deploy": kustomize(DEPLOY), "base": kustomize(DEPLOY / "base"), "with-dry-run": kustomize(overlay)}


@pytest.fixture(scope="module")
def shipped(renders: dict[str, list[Obj]]) -> list[Obj]:
    return renders["deploy"]


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config((DEPLOY / "config.yaml").read_text(encoding="utf-8"))


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = find(objs, kind, name)
    assert 1 == len(found), f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(pod_spec: Obj, name: str) -> Obj:
    for c in [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name!r}")


def builders(objs: list[Obj], config: Config) -> Iterator[tuple[Any, Obj]]:
    """Each pool with its builder Deployment."""
    for pool in config.pools:
        deployment = one(objs, "Deployment", pool.deployment)
        assert pool.namespace == deployment["metadata"]["namespace"]
        yield pool, deployment


def sidecar_settings(pod_spec: Obj) -> Settings:
    """The sidecar's settings exactly as the sidecar itself parses its container's args and env."""
    sidecar = container(pod_spec, "sidecar")
    assert sidecar["command"][0] in SCRIPTS, sidecar["command"]
    args = sidecar_parser().parse_args(sidecar["args"])
    assert "run" == args.command
    environ = {e["name"]: e["value"] for e in sidecar.get("env", []) if "value" in e}
    return from_sources(args, environ)


def flag(args: list[str], name: str) -> list[str]:
    """Every value of ``--name=value`` in ``args``."""
    return [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]


def quantity_bytes(text: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?|k)?", str(text))
    assert match, f"not a quantity: {text!r}"
    return float(match[1]) * units.get(match[2] or "", 1)


# -- rendering and schema -------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_object_validates_against_the_kubernetes_schema(
    renders: dict[str, list[Obj]], variant: str, version: str
) -> None:
    objs = renders[variant]
    assert objs, f"{variant} rendered nothing"
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{variant}: {obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}): {e.message}")
        assert "buildkit" == obj["metadata"].get("namespace", "buildkit") or obj["kind"] == "Namespace"


def test_the_variants_render_what_they_promise(renders: dict[str, list[Obj]]) -> None:
    kinds = {v: {o["kind"] for o in objs} for v, objs in renders.items()}
    # The base needs neither cert-manager nor the Prometheus Operator.
    assert not {kind for _, kind in CUSTOM_KINDS} & kinds["base"]
    assert {kind for _, kind in CUSTOM_KINDS} <= kinds["deploy"]
    # Only deploy/ can generate the ConfigMap from deploy/config.yaml.
    assert [] == find(renders["base"], "ConfigMap", "buildkit-autoscaler")
    autoscaler = container(
        one(renders["with-dry-run"], "Deployment", "buildkit-autoscaler")["spec"]["template"]["spec"], "autoscaler"
    )
    assert "--dry-run" in autoscaler["args"]
    shipped_autoscaler = one(renders["deploy"], "Deployment", "buildkit-autoscaler")
    assert "--dry-run" not in container(shipped_autoscaler["spec"]["template"]["spec"], "autoscaler")["args"]
    names = [(o["kind"], o["metadata"]["name"]) for o in renders["deploy"]]
    assert sorted(set(names)) == sorted(names), "duplicate objects"


def test_custom_resources_have_the_structure_their_operators_expect(shipped: list[Obj], config: Config) -> None:
    builder_pods = [d["spec"]["template"] for _, d in builders(shipped, config)]

    (pod_monitor,) = find(shipped, "PodMonitor")
    labels = pod_monitor["spec"]["selector"]["matchLabels"]
    for template in builder_pods:
        assert labels.items() <= template["metadata"]["labels"].items()
        ports = {p["name"] for c in template["spec"]["initContainers"] for p in c.get("ports", [])}
        for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in ports
            assert "/metrics" == endpoint["path"]
    assert ["buildkitd"] == [
        r["replacement"]
        for e in pod_monitor["spec"]["podMetricsEndpoints"]
        for r in e["relabelings"]
        if r["targetLabel"] == "job"
    ]

    (service_monitor,) = find(shipped, "ServiceMonitor")
    selected = [
        s
        for s in find(shipped, "Service")
        if service_monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"].get("labels", {}).items()
    ]
    assert ["buildkit-autoscaler-metrics"] == [s["metadata"]["name"] for s in selected]
    service_ports = {p["name"] for p in selected[0]["spec"]["ports"]}
    assert {e["port"] for e in service_monitor["spec"]["endpoints"]} <= service_ports

    (rule,) = find(shipped, "PrometheusRule")
    groups = rule["spec"]["groups"]
    assert groups
    assert all(g["name"] and g["rules"] for g in groups)
    for r in (r for g in groups for r in g["rules"]):
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", r["alert"])
        assert isinstance(r["expr"], str)
        assert r["expr"].strip()
        assert re.fullmatch(r"\d+[smh]", r.get("for", "0s"))
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"]
        assert r["annotations"]["description"]

    issuers = {i["metadata"]["name"] for i in find(shipped, "Issuer")}
    for cert in find(shipped, "Certificate"):
        assert cert["spec"]["issuerRef"]["name"] in issuers
        assert cert["spec"]["secretName"]
    ca_issuer = one(shipped, "Issuer", "buildkit-ca")
    assert one(shipped, "Certificate", "buildkit-ca")["spec"]["isCA"] is True
    assert ca_issuer["spec"]["ca"]["secretName"] == one(shipped, "Certificate", "buildkit-ca")["spec"]["secretName"]


# -- the builders -------------------------------------------------------------


def test_no_builder_deployment_sets_replicas(renders: dict[str, list[Obj]], config: Config) -> None:
    for objs in renders.values():
        for _, deployment in builders(objs, config):
            assert "replicas" not in deployment["spec"], deployment["metadata"]["name"]


def _documented_margin() -> int:
    """The margin the builder template's header comment states."""
    text = BUILDER_TEMPLATE.read_text(encoding="utf-8")
    match = re.search(r"terminationGracePeriodSeconds\s+(\d+)\s+= deadline \+ (\d+) s margin", text)
    assert match, "deployment.yaml must document the grace period as `= deadline + N s margin`"
    return int(match[2])


def test_drain_deadline_is_below_the_grace_period_by_the_documented_margin(shipped: list[Obj], config: Config) -> None:
    margin = _documented_margin()
    assert margin >= 120, "buildkitd needs time to stop after the deadline, and the kubelet some more"
    for _, deployment in builders(shipped, config):
        spec = deployment["spec"]["template"]["spec"]
        settings = sidecar_settings(spec)
        grace = spec["terminationGracePeriodSeconds"]
        assert settings.drain_timeout_seconds < grace
        assert margin == grace - settings.drain_timeout_seconds
        assert settings.drain_min_seconds > 0, "--drain-min-seconds: the load balancer's deregistration time"
        assert settings.drain_min_seconds < settings.drain_timeout_seconds
        sidecar_args = container(spec, "sidecar")["args"]
        assert flag(sidecar_args, "drain-min-seconds")
        assert flag(sidecar_args, "drain-timeout-seconds")


def test_prestop_hook_waits_longer_than_the_drain_on_the_sidecars_admin_listener(
    shipped: list[Obj], config: Config
) -> None:
    for _, deployment in builders(shipped, config):
        spec = deployment["spec"]["template"]["spec"]
        settings = sidecar_settings(spec)
        command = container(spec, "buildkitd")["lifecycle"]["preStop"]["exec"]["command"]
        assert "wget" == command[0], "the buildkitd image has BusyBox wget, not curl"
        timeout = float(command[command.index("-T") + 1])
        assert settings.drain_timeout_seconds < timeout <= spec["terminationGracePeriodSeconds"]
        assert any(a.startswith("--post-data") for a in command), "a POST: /drain is not a cacheable read"
        (url,) = [a for a in command if a.startswith("http")]
        parts = urlsplit(url)
        admin_host, admin_port = host_port(settings.admin_listen)
        assert (admin_host, admin_port) == (parts.hostname, parts.port)
        assert "127.0.0.1" == admin_host, "the drain listener must stay on loopback"
        assert "/drain" == parts.path


def test_buildkitd_and_the_sidecar_share_the_socket_and_the_sidecar_runs_as_non_root(
    shipped: list[Obj], config: Config
) -> None:
    for _, deployment in builders(shipped, config):
        spec = deployment["spec"]["template"]["spec"]
        settings = sidecar_settings(spec)
        buildkitd = container(spec, "buildkitd")
        sidecar = container(spec, "sidecar")
        assert sidecar in [dict(c) for c in spec["initContainers"]]
        assert "Always" == sidecar["restartPolicy"], "a native sidecar: stopped after buildkitd"
        assert [settings.buildkit_addr] == [a for a in flag(buildkitd["args"], "addr") if a.startswith("unix://")]
        socket_dir = str(Path(urlsplit(settings.buildkit_addr).path).parent)
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = [{m["name"] for m in c["volumeMounts"] if m["mountPath"] == socket_dir} for c in (buildkitd, sidecar)]
        assert mounts[0] == mounts[1]
        assert len(mounts[0]) == 1
        assert "emptyDir" in volumes[mounts[0].pop()]
        (group,) = flag(buildkitd["args"], "group")
        assert int(group) in spec["securityContext"]["supplementalGroups"]
        security = sidecar["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] != 0
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert ["ALL"] == security["capabilities"]["drop"]


def test_probes_route_by_readyz_and_cannot_kill_a_builder_mid_build(shipped: list[Obj], config: Config) -> None:
    for _, deployment in builders(shipped, config):
        spec = deployment["spec"]["template"]["spec"]
        settings = sidecar_settings(spec)
        sidecar = container(spec, "sidecar")
        ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
        public_port = host_port(settings.listen)[1]
        readiness = sidecar["readinessProbe"]["httpGet"]
        assert ("/readyz", public_port) == (readiness["path"], ports[readiness["port"]])
        liveness = sidecar["livenessProbe"]
        assert ("/healthz", public_port) == (liveness["httpGet"]["path"], ports[liveness["httpGet"]["port"]])
        assert liveness["failureThreshold"] * liveness["periodSeconds"] >= 60
        # buildkitd has none: a liveness failure restarts it, killing its builds.
        assert "livenessProbe" not in container(spec, "buildkitd")


def test_each_pool_runs_on_its_arch_and_selects_its_own_builders(shipped: list[Obj], config: Config) -> None:
    assert len(config.pools) == len({p.arch for p in config.pools})
    for pool, deployment in builders(shipped, config):
        template = deployment["spec"]["template"]
        spec = template["spec"]
        assert {"kubernetes.io/arch": pool.arch} == spec["nodeSelector"]
        assert [{"key": "kubernetes.io/arch", "operator": "Equal", "value": pool.arch, "effect": "NoSchedule"}] == spec[
            "tolerations"
        ]
        settings = sidecar_settings(spec)
        assert pool.arch == settings.arch
        assert pool.sidecar_port == host_port(settings.listen)[1]
        assert pool.selector is not None
        assert dict(pool.selector) == deployment["spec"]["selector"]["matchLabels"]
        assert pool.selector.items() <= template["metadata"]["labels"].items()
        for other, other_deployment in builders(shipped, config):
            if other is not pool:
                assert not pool.selector.items() <= other_deployment["spec"]["template"]["metadata"]["labels"].items()
        # The load balancer's Service for this arch selects this pool's pods only.
        service = one(shipped, "Service", pool.deployment)
        assert dict(pool.selector) == service["spec"]["selector"]
        buildkitd_ports = {p["name"] for p in container(spec, "buildkitd")["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= buildkitd_ports


def test_state_volume_and_ephemeral_storage_leave_room_for_the_build_cache(shipped: list[Obj], config: Config) -> None:
    for _, deployment in builders(shipped, config):
        spec = deployment["spec"]["template"]["spec"]
        buildkitd = container(spec, "buildkitd")
        (state,) = [m for m in buildkitd["volumeMounts"] if m["mountPath"] == "/var/lib/buildkit"]
        volume = next(v for v in spec["volumes"] if v["name"] == state["name"])
        size = quantity_bytes(volume["emptyDir"]["sizeLimit"])
        (keep_mb,) = flag(buildkitd["args"], "oci-worker-gc-keepstorage")
        assert "--oci-worker-gc" in buildkitd["args"]
        # the collector keeps the cache well below the volume: room for running builds
        assert float(keep_mb) * 1e6 <= 0.7 * size
        resources = buildkitd["resources"]
        limit = quantity_bytes(resources["limits"]["ephemeral-storage"])
        assert quantity_bytes(resources["requests"]["ephemeral-storage"]) == limit, "request = limit: no eviction"
        assert size < limit, "the state volume counts against the container's ephemeral-storage limit"
        for c in [*spec["initContainers"], *spec["containers"]]:
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
            assert "memory" in c["resources"]["limits"], c["name"]


def test_buildkitd_serves_mtls_from_the_certificate_secret(shipped: list[Obj], config: Config) -> None:
    server_cert = one(shipped, "Certificate", "buildkitd-tls")
    for pool, deployment in builders(shipped, config):
        spec = deployment["spec"]["template"]["spec"]
        buildkitd = container(spec, "buildkitd")
        tcp = [a for a in flag(buildkitd["args"], "addr") if a.startswith("tcp://")]
        assert len(tcp) == 1
        assert urlsplit(tcp[0]).port in {p["containerPort"] for p in buildkitd["ports"]}
        files = {name: flag(buildkitd["args"], name) for name in ("tlscacert", "tlscert", "tlskey")}
        assert all(len(v) == 1 for v in files.values()), "mTLS needs --tlscacert (client certs) and a server pair"
        (mount,) = [m for m in buildkitd["volumeMounts"] if files["tlscert"][0].startswith(m["mountPath"] + "/")]
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert server_cert["spec"]["secretName"] == volume["secret"]["secretName"]
        # cert-manager's Secret keys
        assert {"ca.crt", "tls.crt", "tls.key"} == {Path(v[0]).name for v in files.values()}
        service = one(shipped, "Service", pool.deployment)
        assert (
            f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc" in server_cert["spec"]["dnsNames"]
        )
    assert ["client auth"] == one(shipped, "Certificate", "buildx-client")["spec"]["usages"]


def test_network_policies_admit_the_ports_in_use_and_deny_the_rest(shipped: list[Obj], config: Config) -> None:
    policies = find(shipped, "NetworkPolicy")
    assert any(
        p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in p["spec"]
        for p in policies
    )
    autoscaler = one(shipped, "Deployment", "buildkit-autoscaler")["spec"]["template"]
    for template in [d["spec"]["template"] for _, d in builders(shipped, config)] + [autoscaler]:
        labels = template["metadata"]["labels"]
        ports = {
            p["name"]
            for c in [*template["spec"].get("initContainers", []), *template["spec"]["containers"]]
            for p in c.get("ports", [])
        }
        admitted = {
            port["port"]
            for p in policies
            if p["spec"]["podSelector"].get("matchLabels", {"-": "-"}).items() <= labels.items()
            for rule in p["spec"].get("ingress", [])
            for port in rule.get("ports", [])
        }
        assert ports == admitted, template["metadata"]["labels"]


def test_the_buildx_example_points_one_node_per_arch_at_its_service(shipped: list[Obj], config: Config) -> None:
    script = (DEPLOY / "buildx" / "create-builder.sh").read_text(encoding="utf-8")
    done = subprocess.run(["sh", "-n", str(DEPLOY / "buildx" / "create-builder.sh")], capture_output=True, check=False)
    assert 0 == done.returncode, done.stderr
    server_names = one(shipped, "Certificate", "buildkitd-tls")["spec"]["dnsNames"]
    for pool in config.pools:
        service = one(shipped, "Service", pool.deployment)
        port = service["spec"]["ports"][0]["port"]
        assert f"tcp://{pool.deployment}.{pool.namespace}.svc:{port}" in script
        assert f"--platform linux/{pool.arch}" in script
        servername = re.search(rf"servername=({re.escape(pool.deployment)}[^\"]*)\"", script)
        assert servername
        assert servername[1] in server_names
    assert "--platform linux/amd64,linux/arm64" in script
    assert "cacert=" in script
    assert "cert=" in script
    assert "key=" in script
    assert "--cache-to type=registry" in script
    assert "mode=max" in script


# -- the autoscaler -----------------------------------------------------------


def _api_classes() -> dict[str, type]:
    """The kubernetes_asyncio API classes the autoscaler constructs (``client.XxxApi(...)``)."""
    names: set[str] = set()
    for path in (ROOT / "autoscaler").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr.endswith("Api")
                and node.func.attr != "ApiClient"
            ):
                names.add(node.func.attr)
    assert names, "no API classes found in autoscaler/"
    return {name: getattr(kube_client, name) for name in names}


def _endpoint(api: type, method: str) -> tuple[str, str]:
    """The (path, HTTP method) the generated client calls for ``method``."""
    source = inspect.getsource(getattr(api, method + "_with_http_info"))
    match = re.search(r"call_api\(\s*'([^']+)',\s*'([A-Z]+)'", source)
    assert match, f"{api.__name__}.{method}: no call_api found"
    return match[1], match[2]


def _permission(path: str, http: str) -> tuple[str, str, str]:
    """(apiGroup, resource[/subresource], verb) for one REST call."""
    parts = path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    resource, named, sub = rest[0], len(rest) > 1, rest[2:3]
    verb = {"GET": "get" if named else "list", "POST": "create", "PUT": "update", "PATCH": "patch"}.get(http)
    if http == "DELETE":
        verb = "delete" if named else "deletecollection"
    assert verb, f"{http} {path}"
    return group, "/".join([resource, *sub]), verb


def code_permissions() -> set[tuple[str, str, str]]:
    """What the autoscaler's code calls, derived from the code: every API method it names
    (mapped through the generated client to its REST path and verb), and ``watch`` for
    every list call it hands to a watch-backed cache (``WatchCache(list_call=...)``)."""
    classes = _api_classes()
    methods = {
        m for cls in classes.values() for m in vars(cls) if not m.startswith("_") and not m.endswith("_with_http_info")
    }
    used: set[str] = set()
    watched: set[str] = set()
    for path in (ROOT / "autoscaler").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in methods:
                used.add(node.attr)
            if isinstance(node, ast.keyword) and node.arg == "list_call" and isinstance(node.value, ast.Attribute):
                watched.add(node.value.attr)
    # The watch cache really does watch what it lists.
    watching = (ROOT / "autoscaler" / "controller" / "watching.py").read_text(encoding="utf-8")
    assert "watch.Watch()" in watching
    assert "stream(\n                self._list" in watching
    assert used, "no Kubernetes API calls found in autoscaler/"
    grants: set[tuple[str, str, str]] = set()
    for method in used:
        owners = [cls for cls in classes.values() if method in vars(cls)]
        assert 1 == len(owners), f"{method}: ambiguous between {owners}"
        group, resource, verb = _permission(*_endpoint(owners[0], method))
        grants.add((group, resource, verb))
        if method in watched:
            assert "list" == verb
            grants.add((group, resource, "watch"))
    return grants


def role_permissions(role: Obj) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_role_grants_what_the_autoscaler_calls_and_nothing_more(shipped: list[Obj], config: Config) -> None:
    derived = code_permissions()
    # a sanity floor, so a broken derivation cannot pass by finding nothing
    assert {("apps", "deployments/scale", "patch"), ("coordination.k8s.io", "leases", "update")} <= derived
    (role,) = find(shipped, "Role")
    assert derived == role_permissions(role)
    assert [] == find(shipped, "ClusterRole") + find(shipped, "ClusterRoleBinding")
    assert all("*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"] for rule in role["rules"])

    autoscaler = one(shipped, "Deployment", "buildkit-autoscaler")
    args = container(autoscaler["spec"]["template"]["spec"], "autoscaler")["args"]
    config_ns, config_name = flag(args, "config-map")[0].split("/")
    lease_ns, lease_name = flag(args, "lease")[0].split("/")
    expected_names = {
        ("", "configmaps"): {config_name},
        ("apps", "deployments"): {p.deployment for p in config.pools},
        ("apps", "deployments/scale"): {p.deployment for p in config.pools},
    }
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                names = set(rule.get("resourceNames", []))
                if (group, resource) in expected_names:
                    assert expected_names[group, resource] == names, (group, resource)
                elif (group, resource) == ("coordination.k8s.io", "leases"):
                    assert ({lease_name} == names) or (rule["verbs"] == ["create"] and not names)
    namespace = role["metadata"]["namespace"]
    assert {namespace} == {config_ns, lease_ns} | {p.namespace for p in config.pools}

    (binding,) = find(shipped, "RoleBinding")
    account = autoscaler["spec"]["template"]["spec"]["serviceAccountName"]
    assert {"kind": "Role", "name": role["metadata"]["name"], "apiGroup": "rbac.authorization.k8s.io"} == binding[
        "roleRef"
    ]
    assert [{"kind": "ServiceAccount", "name": account, "namespace": namespace}] == binding["subjects"]
    one(shipped, "ServiceAccount", account)


def test_the_configmap_is_deploy_config_yaml_and_passes_the_autoscalers_validation(shipped: list[Obj]) -> None:
    autoscaler = one(shipped, "Deployment", "buildkit-autoscaler")
    args = container(autoscaler["spec"]["template"]["spec"], "autoscaler")["args"]
    namespace, name = flag(args, "config-map")[0].split("/")
    configmap = one(shipped, "ConfigMap", name)
    assert namespace == configmap["metadata"]["namespace"]
    assert {"config.yaml"} == set(configmap["data"])
    assert (DEPLOY / "config.yaml").read_text(encoding="utf-8") == configmap["data"]["config.yaml"]
    load_config(configmap["data"]["config.yaml"])  # raises ConfigError with every error


def test_the_autoscaler_runs_two_replicas_with_an_identity_and_a_disruption_budget(shipped: list[Obj]) -> None:
    deployment = one(shipped, "Deployment", "buildkit-autoscaler")
    assert 2 == deployment["spec"]["replicas"]
    spec = deployment["spec"]["template"]["spec"]
    autoscaler = container(spec, "autoscaler")
    assert ["buildkit-autoscaler"] == autoscaler["command"]
    assert "buildkit-autoscaler" in SCRIPTS
    env = {e["name"]: e for e in autoscaler["env"]}
    assert {"fieldRef": {"fieldPath": "metadata.name"}} == env["POD_NAME"]["valueFrom"]
    port = host_port(flag(autoscaler["args"], "listen")[0])[1]
    assert [port] == [p["containerPort"] for p in autoscaler["ports"]]
    assert "/readyz" == autoscaler["readinessProbe"]["httpGet"]["path"]
    assert "/healthz" == autoscaler["livenessProbe"]["httpGet"]["path"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert autoscaler["securityContext"]["readOnlyRootFilesystem"] is True
    (pdb,) = find(shipped, "PodDisruptionBudget")
    assert 1 == pdb["spec"]["minAvailable"]
    assert (
        pdb["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )


# -- the image ----------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def test_the_dockerfile_runs_the_console_scripts_as_non_root_on_pyprojects_python(shipped: list[Obj]) -> None:
    steps = _dockerfile()
    args = {k: v for k, _, v in (a.partition("=") for i, a in steps if i == "ARG")}
    minimum = re.fullmatch(r">=\s*(\d+\.\d+)", PYPROJECT["project"]["requires-python"])
    assert minimum
    assert minimum[1] == args["PYTHON_VERSION"] == PYPROJECT["tool"]["mypy"]["python_version"]
    froms = [a for i, a in steps if i == "FROM"]
    assert len(froms) >= 2, "multi-stage: the build tools stay out of the runtime image"
    assert all(f.startswith("python:${PYTHON_VERSION}-") for f in froms)
    (entrypoint,) = [json.loads(a) for i, a in steps if i == "ENTRYPOINT"]
    named = {entrypoint[0]} | {
        w for i, a in steps if i == "RUN" for w in shlex.split(a) if w.startswith("/opt/venv/bin/buildkit-")
    }
    named = {Path(n).name for n in named}
    assert named <= set(SCRIPTS)
    assert set(SCRIPTS) <= named, "the image checks that both commands run"
    user = [a for i, a in steps if i == "USER"][-1]
    uid, _, gid = user.partition(":")
    assert int(uid) != 0
    assert int(gid) != 0
    # the manifests run the image with the same ids, and name only its console scripts
    for deployment in find(shipped, "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            if c["image"].startswith("moby/"):
                continue
            assert c["command"][0] in SCRIPTS, c["name"]
            context = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
            assert (int(uid), int(gid)) == (context["runAsUser"], context["runAsGroup"])
            assert context["readOnlyRootFilesystem"] is True


# -- alerts and dashboard -----------------------------------------------------


def promtool() -> str:
    return _tool("promtool", "install Debian's prometheus package (apt-get install prometheus), as .ci/run does")


def rules_file(shipped: list[Obj], directory: Path) -> Path:
    (rule,) = find(shipped, "PrometheusRule")
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
    return path


def alert_rules(shipped: list[Obj]) -> list[Obj]:
    (rule,) = find(shipped, "PrometheusRule")
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def dashboard(shipped: list[Obj]) -> Obj:
    (configmap,) = [
        c for c in find(shipped, "ConfigMap") if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    ((name, text),) = configmap["data"].items()
    assert name.endswith(".json")
    loaded: Obj = json.loads(text)
    return loaded


def dashboard_queries(board: Obj) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def test_alert_rules_pass_promtool(shipped: list[Obj], tmp_path: Path) -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(rules_file(shipped, tmp_path))], capture_output=True, text=True, check=False
    )
    assert 0 == done.returncode, done.stdout + done.stderr
    names = {r["alert"] for r in alert_rules(shipped)}
    # the alerts the issue asks for
    assert {
        "BuildkitdDown",
        "BuildkitDrainOverran",
        "BuildkitPoolAtMaxReplicas",
        "BuildkitAutoscalerNotLeading",
        "BuildkitAutoscalerConfigRejected",
    } <= names


def exposed_metric_names() -> set[str]:
    """Every sample name the sidecar and the autoscaler expose, from their own metric objects."""
    registry = CollectorRegistry()
    state = BuilderState(tracker=Tracker(tombstone_seconds=60), arch="amd64", now=0.0)
    SidecarMetrics(registry=registry, state=state)
    AutoscalerMetrics(registry=registry)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    return {family.name + s for family in registry.collect() for s in suffixes.get(family.type, [""])}


def test_alerts_and_dashboard_use_only_metrics_the_code_exposes(shipped: list[Obj]) -> None:
    exposed = exposed_metric_names()
    queries = [r["expr"] for r in alert_rules(shipped)] + dashboard_queries(dashboard(shipped))
    used = {m for q in queries for m in re.findall(r"\bbuildkit_[a-z_]+\b", q)}
    assert used, "no buildkit_* metric referenced"
    assert set() == used - exposed


def test_drain_alerts_fire_at_the_drain_deadline(shipped: list[Obj], config: Config) -> None:
    (deadline,) = {
        sidecar_settings(d["spec"]["template"]["spec"]).drain_timeout_seconds for _, d in builders(shipped, config)
    }
    rules = {r["alert"]: r["expr"] for r in alert_rules(shipped)}
    overran = re.search(r"> (\d+(?:\.\d+)?)\s*$", rules["BuildkitDrainOverran"])
    near = re.search(r"> (\d+(?:\.\d+)?)\s*$", rules["BuildkitDrainNearDeadline"])
    assert overran
    assert near
    assert deadline == float(overran[1])
    assert math.isclose(0.8 * deadline, float(near[1]))


def test_the_grafana_dashboard_is_well_formed(shipped: list[Obj]) -> None:
    board = dashboard(shipped)
    assert board["uid"]
    assert board["title"]
    assert {"datasource", "arch"} <= {v["name"] for v in board["templating"]["list"]}
    ids = [p["id"] for p in board["panels"]]
    assert sorted(set(ids)) == sorted(ids)
    for panel in board["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert all(t["expr"] and t["refId"] for t in panel["targets"])


# -- a real Prometheus --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


SIDECAR = Path(sys.executable).with_name("buildkit-sidecar")
SCRAPE_SECONDS = 0.5
SCRAPE_INTERVAL = "500ms"
WAIT_SECONDS = 30.0


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


async def _wait_http(url: str, *, within: float = WAIT_SECONDS, process: asyncio.subprocess.Process, log: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            assert process.returncode is None, f"exited {process.returncode}: {_log(log)}"
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert loop.time() < deadline, f"{url} not up within {within} s: {_log(log)}"
            await asyncio.sleep(0.1)


class Prom:
    """Prometheus' HTTP API; ``logs`` are the processes' logs, for failure messages."""

    def __init__(self, url: str, session: aiohttp.ClientSession, *, logs: list[Path]) -> None:
        self.url = url
        self.session = session
        self.logs = logs

    def tail(self, lines: int = 20) -> str:
        return "\n".join(f"--- {log.name}\n" + "\n".join(_log(log).splitlines()[-lines:]) for log in self.logs)

    async def query(self, expr: str) -> Obj:
        async with self.session.get(self.url + "/api/v1/query", params={"query": expr}) as response:
            body: Obj = await response.json()
        assert "success" == body["status"], f"{expr}: {body}"
        return body

    async def value(self, expr: str) -> float | None:
        result = (await self.query(expr))["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    async def until(self, expr: str, expected: float, *, within: float = WAIT_SECONDS) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (last := await self.value(expr)) != expected:
            assert loop.time() < deadline, f"{expr}: {last}, expected {expected}\n{self.tail()}"
            await asyncio.sleep(SCRAPE_SECONDS / 2)


AUTOSCALER = Path(sys.executable).with_name("buildkit-autoscaler")
POD = "buildkitd-amd64-0"


def _fake_cluster(k8s: FakeCluster, *, config: str, pool: Any) -> None:
    """The amd64 builder Deployment with one pod (the real sidecar, on 127.0.0.1), and the ConfigMap."""
    labels = dict(pool.selector)
    k8s.put(
        "deployments.apps",
        pool.namespace,
        {
            "metadata": {"name": pool.deployment, "labels": labels},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {}},
        },
    )
    k8s.put(
        "pods",
        pool.namespace,
        {
            "metadata": {"name": POD, "labels": labels},
            "spec": {"containers": [{"name": "buildkitd", "image": "moby/buildkit"}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
        },
    )
    k8s.put(
        "configmaps", pool.namespace, {"metadata": {"name": "buildkit-autoscaler"}, "data": {"config.yaml": config}}
    )


@pytest.fixture
async def stack(
    daemon: FakeBuildkitd, k8s: FakeCluster, shipped: list[Obj], config: Config, tmp_path: Path
) -> AsyncIterator[Prom]:
    """The real sidecar against the fake buildkitd; the real autoscaler against the fake
    API server, reading active builds from Prometheus (``source: prometheus``, the default
    query); and Debian's Prometheus scraping both every 0.5 s with the shipped alert rules.
    The scrape labels are the ones the Prometheus Operator's PodMonitor gives (namespace, pod)."""
    prometheus = _tool("prometheus", "install Debian's prometheus package (apt-get install prometheus)")
    for script in (SIDECAR, AUTOSCALER):
        assert script.exists(), f"{script}: the project is not installed in this interpreter's environment"
    public, admin, metrics, web = free_port(), free_port(), free_port(), free_port()
    pool = next(p for p in config.pools if p.arch == "amd64")

    # The shipped config, reduced to the amd64 pool, polling every second, reading Prometheus.
    shipped_config = yaml.safe_load((DEPLOY / "config.yaml").read_text(encoding="utf-8"))
    shipped_config["pollIntervalSeconds"] = 1
    shipped_config["source"] = {"type": "prometheus", "url": f"http://127.0.0.1:{web}"}
    shipped_config["pools"] = [{**p, "sidecarPort": public} for p in shipped_config["pools"] if p["name"] == "amd64"]
    _fake_cluster(k8s, config=yaml.safe_dump(shipped_config), pool=pool)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": k8s.url}}],
                "users": [{"name": "nobody", "user": {}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "nobody"}}],
                "current-context": "fake",
            }
        ),
        encoding="utf-8",
    )

    prometheus_config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(rules_file(shipped, tmp_path))],
        "scrape_configs": [
            {
                "job_name": "buildkitd",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{public}"], "labels": {"namespace": pool.namespace, "pod": POD}}
                ],
            },
            {"job_name": "buildkit-autoscaler", "static_configs": [{"targets": [f"127.0.0.1:{metrics}"]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDKIT_SIDECAR_", "BUILDKIT_AUTOSCALER_"))}
    processes: list[tuple[asyncio.subprocess.Process, Path]] = []

    async def start(name: str, argv: list[str]) -> asyncio.subprocess.Process:
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        processes.append((process, log))
        return process

    try:
        sidecar = await start(
            "sidecar",
            [str(SIDECAR), "run", f"--buildkit-addr={daemon.address}", f"--listen=127.0.0.1:{public}",
             f"--admin-listen=127.0.0.1:{admin}", "--arch=amd64", "--drain-quiet-seconds=0"],
        )  # fmt: skip
        server = await start(
            "prometheus",
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{web}", "--log.level=warn"],
        )  # fmt: skip
        autoscaler = await start(
            "autoscaler",
            [str(AUTOSCALER), "run", f"--kubeconfig={kubeconfig}",
             f"--config-map={pool.namespace}/buildkit-autoscaler", f"--lease={pool.namespace}/buildkit-autoscaler",
             f"--listen=127.0.0.1:{metrics}"],
        )  # fmt: skip
        await _wait_http(f"http://127.0.0.1:{public}/healthz", process=sidecar, log=tmp_path / "sidecar.log")
        await _wait_http(f"http://127.0.0.1:{web}/-/ready", process=server, log=tmp_path / "prometheus.log")
        await _wait_http(f"http://127.0.0.1:{metrics}/metrics", process=autoscaler, log=tmp_path / "autoscaler.log")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            yield Prom(f"http://127.0.0.1:{web}", session, logs=[log for _, log in processes])
    finally:
        for process, _ in reversed(processes):
            if process.returncode is None:
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _rules(prom: Prom) -> list[Obj]:
    async with prom.session.get(prom.url + "/api/v1/rules") as response:
        groups = (await response.json())["data"]["groups"]
    return [r for g in groups for r in g["rules"]]


@pytest.mark.looptime(False)
async def test_a_real_prometheus_follows_the_builds_and_the_autoscaler_scales_from_it(
    stack: Prom, daemon: FakeBuildkitd, k8s: FakeCluster, shipped: list[Obj]
) -> None:
    prom = stack
    active = 'buildkit_sidecar_active_builds{job="buildkitd", arch="amd64"}'
    await prom.until('sum(up{job=~"buildkitd|buildkit-autoscaler"})', 2)
    await prom.until(active, 0)
    await prom.until('buildkit_autoscaler_is_leader{job="buildkit-autoscaler"}', 1)

    # Builds start: the sidecar counts them, Prometheus scrapes it, the autoscaler
    # reads Prometheus and scales: 4 builds, 2 per replica, +1 spare -> 3.
    refs = [daemon.start_build() for _ in range(4)]
    await prom.until(active, 4)
    await prom.until('buildkit_autoscaler_active_builds{job="buildkit-autoscaler", pool="amd64"}', 4)
    await prom.until('buildkit_autoscaler_desired_replicas{job="buildkit-autoscaler", pool="amd64"}', 3)
    assert 3 == k8s.get("deployments.apps", "buildkit", "buildkitd-amd64")["spec"]["replicas"], prom.tail()
    for ref in refs:
        daemon.complete_build(ref)
    await prom.until(active, 0)
    await prom.until('sum(buildkit_sidecar_builds_completed_total{job="buildkitd"})', 4)
    await prom.until('buildkit_autoscaler_active_builds{job="buildkit-autoscaler", pool="amd64"}', 0)

    # Every alert and every dashboard query is valid PromQL over these series...
    for rule in alert_rules(shipped):
        await prom.query(rule["expr"])
    for expr in dashboard_queries(dashboard(shipped)):
        await prom.query(expr.replace("$__rate_interval", "1m").replace("$arch", ".*"))

    # ...and Prometheus evaluated every loaded rule without an error, with nothing
    # firing or pending on a healthy fleet with a leading autoscaler.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while True:
        rules = await _rules(prom)
        evaluated = rules and all(r.get("lastEvaluation", "").startswith("2") for r in rules)
        if evaluated and not any(r.get("alerts") for r in rules):
            break
        assert loop.time() < deadline, [(r["name"], r["health"], r.get("alerts")) for r in rules]
        await asyncio.sleep(SCRAPE_SECONDS)
    assert {r["alert"] for r in alert_rules(shipped)} == {r["name"] for r in rules}
    assert [] == [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
