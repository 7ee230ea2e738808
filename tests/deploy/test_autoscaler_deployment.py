"""The autoscaler's manifests fit its code: the Role grants exactly the Kubernetes calls the
code makes (derived from the code), the ConfigMap is deploy/config.yaml and passes the
autoscaler's validation, and it runs two replicas with an identity and a disruption budget."""

from __future__ import annotations

import ast
import inspect
import re

from kubernetes_asyncio import client as kube_client

from autoscaler.config import Config, load_config
from common.addresses import host_port
from tests.deploy.manifests import DEPLOY, ROOT, SCRIPTS, Obj, container, find, flag, one


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
        path, http = _endpoint(owners[0], method)
        if not path.startswith(("/api/", "/apis/")):
            # A non-resource URL (GET /version, the start-up probe): every client may
            # read it through the cluster's own system:public-info-viewer, not our Role.
            assert ("/version/", "GET") == (path, http)
            continue
        group, resource, verb = _permission(path, http)
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
