"""The autoscaler's manifests fit its code: the Role grants exactly the Kubernetes calls the
code makes (derived from the code; the names it grants them on are test_pools.py's), the
ConfigMap is deploy/config.yaml and passes the autoscaler's validation, and it runs two
replicas with an identity and a disruption budget."""

from __future__ import annotations

from autoscaler.config import Config, load_config
from common.addresses import host_port
from tests.deploy.manifests import DEPLOY, SCRIPTS, Obj, container, find, flag, one
from tests.deploy.rbac import code_permissions, role_permissions


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
    config_ns = flag(args, "config-map")[0].split("/")[0]
    lease_ns = flag(args, "lease")[0].split("/")[0]
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
    pdb = one(shipped, "PodDisruptionBudget", "buildkit-autoscaler")
    assert 1 == pdb["spec"]["minAvailable"]
    assert (
        pdb["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
