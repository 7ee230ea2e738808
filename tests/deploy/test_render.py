"""deploy/ renders with ``kubectl kustomize`` (as shipped: no CRD; the base alone; and
overlays of a user's own, outside deploy/, switching components on), every object
validates against the Kubernetes schemas offline and names its namespace, and the custom
resources have the structure their operators expect."""

from __future__ import annotations

import json
import re

import kubernetes_validate
import pytest

from autoscaler.config import Config
from tests.deploy.manifests import VARIANTS, Obj, builders, container, find, one

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


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_object_validates_against_the_kubernetes_schema(
    renders: dict[str, list[Obj]], variant: str, version: str
) -> None:
    objs = renders[variant]
    assert objs, f"{variant} rendered nothing"
    for obj in objs:
        # Every object names its namespace, the components' too: a user's overlay may set
        # none, and an object without one lands in whatever namespace kubectl's context has.
        if obj["kind"] != "Namespace":
            assert "buildkit" == obj["metadata"].get("namespace"), f"{variant}: {obj['kind']}/{obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{variant}: {obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}): {e.message}")


def test_the_variants_render_what_they_promise(renders: dict[str, list[Obj]]) -> None:
    kinds = {v: {o["kind"] for o in objs} for v, objs in renders.items()}
    custom = {kind for _, kind in CUSTOM_KINDS}
    # `kubectl apply -k deploy` needs neither cert-manager nor the Prometheus Operator...
    assert set() == custom & kinds["deploy"]
    assert set() == custom & kinds["base"]
    # ...and the guide's overlay switches both components on without touching deploy/:
    # it adds their objects to deploy/'s, and changes none of deploy/'s but the image.
    assert custom <= kinds["with-components"]
    ids = {v: {(o["kind"], o["metadata"]["name"]) for o in objs} for v, objs in renders.items()}
    assert ids["deploy"] <= ids["with-components"]
    extra = [one(renders["with-components"], *i) for i in ids["with-components"] - ids["deploy"] if i[0] not in custom]
    # besides custom resources, the components add the dashboard's ConfigMap only
    assert [("ConfigMap", "monitoring")] == [
        (o["kind"], o["metadata"]["labels"]["app.kubernetes.io/component"]) for o in extra
    ]
    image = re.compile(r"registry\.(example\.com|internal/platform)/buildkit-fleet")
    for kind, name in ids["deploy"]:
        as_shipped, composed = (
            json.dumps(one(renders[v], kind, name), sort_keys=True) for v in ("deploy", "with-components")
        )
        assert image.sub("IMAGE", as_shipped) == image.sub("IMAGE", composed), f"the overlay changed {kind}/{name}"
    # Only deploy/ can generate the ConfigMap from deploy/config.yaml.
    assert [] == find(renders["base"], "ConfigMap", "buildkit-autoscaler")
    autoscaler = container(
        one(renders["with-dry-run"], "Deployment", "buildkit-autoscaler")["spec"]["template"]["spec"], "autoscaler"
    )
    assert "--dry-run" in autoscaler["args"]
    for variant in ("deploy", "with-components", "with-pool"):
        shipped_autoscaler = one(renders[variant], "Deployment", "buildkit-autoscaler")
        assert "--dry-run" not in container(shipped_autoscaler["spec"]["template"]["spec"], "autoscaler")["args"]
    for variant, objs in renders.items():
        names = [(o["kind"], o["metadata"]["name"]) for o in objs]
        assert sorted(set(names)) == sorted(names), f"{variant}: duplicate objects"


def test_custom_resources_have_the_structure_their_operators_expect(composed: list[Obj], config: Config) -> None:
    builder_pods = [d["spec"]["template"] for _, d in builders(composed, config)]

    pod_monitor = one(composed, "PodMonitor", "buildkitd")
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

    (service_monitor,) = find(composed, "ServiceMonitor")
    selected = [
        s
        for s in find(composed, "Service")
        if service_monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"].get("labels", {}).items()
    ]
    assert ["buildkit-autoscaler-metrics"] == [s["metadata"]["name"] for s in selected]
    service_ports = {p["name"] for p in selected[0]["spec"]["ports"]}
    assert {e["port"] for e in service_monitor["spec"]["endpoints"]} <= service_ports

    (rule,) = find(composed, "PrometheusRule")
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

    issuers = {i["metadata"]["name"] for i in find(composed, "Issuer")}
    for cert in find(composed, "Certificate"):
        assert cert["spec"]["issuerRef"]["name"] in issuers
        assert cert["spec"]["secretName"]
    ca_issuer = one(composed, "Issuer", "buildkit-ca")
    assert one(composed, "Certificate", "buildkit-ca")["spec"]["isCA"] is True
    assert ca_issuer["spec"]["ca"]["secretName"] == one(composed, "Certificate", "buildkit-ca")["spec"]["secretName"]
