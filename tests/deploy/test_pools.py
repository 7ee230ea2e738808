"""Every pool has what a pool needs, and the guide says where: the Role grants each pool's
Deployment by name exactly what the autoscaler does to it, and no other name (a pool
missing there is refused with 403 on every scale); the guide's "Adding a pool" overlay
gives a new pool its builders, Service, Role names and certificate names; and every file
under deploy/ that names a shipped pool is in the guide's list of places to change."""

from __future__ import annotations

import re

import yaml

from autoscaler.config import Config, load_config
from common.addresses import host_port
from tests.deploy import documented
from tests.deploy.manifests import (
    DEPLOY,
    ROOT,
    Obj,
    builders,
    container,
    find,
    flag,
    one,
    project_image,
    sidecar_settings,
    way_in,
)
from tests.deploy.rbac import code_permissions, grants_by_name

UNPINNABLE = {"create"}
"""Verbs Kubernetes cannot check against resourceNames: the name is not known before."""


def resource_name_errors(objs: list[Obj], config: Config) -> list[str]:
    """Where the rendered Role's names disagree with ``config``'s pools and the autoscaler's
    own flags, one line each: a name granted less (or more) than the code calls on it, and
    a name granted that no pool or flag names. Empty when they agree."""
    (role,) = find(objs, "Role")
    args = container(one(objs, "Deployment", "buildkit-autoscaler")["spec"]["template"]["spec"], "autoscaler")["args"]
    named = {
        ("", "configmaps"): {flag(args, "config-map")[0].split("/")[1]},
        ("apps", "deployments"): {p.deployment for p in config.pools},
        ("apps", "deployments/scale"): {p.deployment for p in config.pools},
        ("coordination.k8s.io", "leases"): {flag(args, "lease")[0].split("/")[1]},
    }
    needed: dict[tuple[str, str], set[str]] = {}
    for group, resource, verb in code_permissions():
        needed.setdefault((group, resource), set()).add(verb)
    grants = grants_by_name(role)
    errors = []
    for (group, resource), names in named.items():
        verbs = needed[group, resource]
        for name in sorted(names):
            granted = grants.get((group, resource, name), set())
            if granted != verbs - UNPINNABLE:
                errors.append(
                    f"{resource} {name}: granted {sorted(granted)}, the autoscaler calls {sorted(verbs - UNPINNABLE)}"
                )
        for (g, r, other), granted in sorted(grants.items(), key=str):
            if (g, r) != (group, resource) or other in names:
                continue
            if other is None and granted == verbs & UNPINNABLE:
                continue
            scope = other or "(any name)"
            errors.append(f"{resource} {scope}: granted {sorted(granted)}, but no pool or flag names it")
    return errors


def _with_pools(edit: str) -> Config:
    """deploy/config.yaml with ``edit`` applied: ``+amd64-spot`` appends a pool, ``-arm64`` drops one."""
    raw = yaml.safe_load((DEPLOY / "config.yaml").read_text(encoding="utf-8"))
    name = edit[1:]
    if edit.startswith("+"):
        raw["pools"].append(
            {
                **raw["pools"][0],
                "name": name,
                "arch": "amd64",
                "deployment": f"buildkitd-{name}",
                "selector": {"app.kubernetes.io/name": "buildkitd", "app.kubernetes.io/instance": f"buildkitd-{name}"},
            }
        )
    else:
        raw["pools"] = [p for p in raw["pools"] if p["name"] != name]
    return load_config(yaml.safe_dump(raw))


def test_the_role_grants_each_pool_of_deploy_config_yaml_by_name_and_no_other(
    shipped: list[Obj], config: Config
) -> None:
    assert ["buildkitd-amd64", "buildkitd-arm64"] == sorted(p.deployment for p in config.pools)
    assert [] == resource_name_errors(shipped, config)


def test_a_pool_the_role_does_not_name_is_reported_with_the_calls_it_would_be_refused(
    shipped: list[Obj],
) -> None:
    # the third pool, added to config.yaml and nowhere else: 403 on every scale
    assert [
        "deployments buildkitd-amd64-spot: granted [], the autoscaler calls ['get']",
        "deployments/scale buildkitd-amd64-spot: granted [], the autoscaler calls ['get', 'patch']",
    ] == resource_name_errors(shipped, _with_pools("+amd64-spot"))
    # and a name no pool uses any more is reported too: nothing else is granted
    assert [
        "deployments buildkitd-arm64: granted ['get'], but no pool or flag names it",
        "deployments/scale buildkitd-arm64: granted ['get', 'patch'], but no pool or flag names it",
    ] == resource_name_errors(shipped, _with_pools("-arm64"))


def test_the_guides_new_pool_gets_its_builders_service_role_names_and_certificate_names(
    renders: dict[str, list[Obj]], config: Config
) -> None:
    objs = renders["with-pool"]
    configmap = one(objs, "ConfigMap", "buildkit-autoscaler")
    extended = load_config(configmap["data"]["config.yaml"])
    added = {p.name for p in extended.pools} - {p.name for p in config.pools}
    assert {"amd64-spot"} == added, "the guide's overlay replaces the ConfigMap with a config holding the new pool"
    assert [] == resource_name_errors(objs, extended)

    (certificate,) = find(objs, "Certificate", "buildkitd-tls")
    deployments = {}
    routers_of: dict[str, str] = {}
    for pool, deployment in builders(objs, extended):
        deployments[pool.name] = deployment
        template = deployment["spec"]["template"]
        spec = template["spec"]
        assert pool.selector is not None
        assert dict(pool.selector) == deployment["spec"]["selector"]["matchLabels"]
        assert pool.selector.items() <= template["metadata"]["labels"].items()
        settings = sidecar_settings(spec)
        assert pool.arch == settings.arch
        assert pool.sidecar_port == host_port(settings.listen)[1]
        assert pool.arch == spec["nodeSelector"]["kubernetes.io/arch"]
        assert [pool.arch] == [t["value"] for t in spec["tolerations"] if t["key"] == "kubernetes.io/arch"]
        # its own way in: a LoadBalancer Service under its name, its own router, which
        # resolves a headless Service over this pool's builders only
        service, router, backends = way_in(objs, pool)
        assert dict(pool.selector) == backends["spec"]["selector"]
        assert "LoadBalancer" == service["spec"]["type"]
        routers_of[pool.name] = router["metadata"]["name"]
        name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
        assert {name, f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"} <= set(
            certificate["spec"]["dnsNames"]
        )
    # each pool's selector picks its own builders only
    for pool in extended.pools:
        assert pool.selector is not None
        picked = [
            n
            for n, d in deployments.items()
            if pool.selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert [pool.name] == picked
    assert len(extended.pools) == len(set(routers_of.values())), routers_of
    # one image for the project's containers, the new pool's included
    images = {
        c["image"]
        for d in find(objs, "Deployment")
        for c in [
            *d["spec"]["template"]["spec"].get("initContainers", []),
            *d["spec"]["template"]["spec"]["containers"],
        ]
        if project_image(c["image"])
    }
    assert {"registry.internal/platform/buildkit-fleet:0.1.0"} == images

    # the guide's buildx builder for it verifies a name the certificate carries
    (create,) = [
        argv
        for block in documented.blocks(documented.section("## Adding a pool"), "sh")
        for argv in documented.commands(block)
        if argv[:3] == ["docker", "buildx", "create"]
    ]
    servername = documented.driver_opts(create)["servername"]
    assert servername.startswith("buildkitd-amd64-spot.")
    assert servername in certificate["spec"]["dnsNames"]


def test_the_guide_names_every_file_under_deploy_that_names_a_pool(config: Config) -> None:
    """A file that spells a shipped pool's Deployment or builder folder is a place a new pool
    changes; the guide's "Adding a pool" must name it (or a folder holding it), with the
    pool's name as ``<arch>`` where it is part of the path."""
    named = set(re.findall(r"`([^`]+)`", documented.section("## Adding a pool")))
    missing = set()
    for pool in config.pools:
        spellings = (pool.deployment, f"builders/{pool.name}")
        for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix != ".md"):
            if not any(s in path.read_text(encoding="utf-8") for s in spellings):
                continue
            relative = path.relative_to(ROOT).as_posix().replace(f"/{pool.name}/", "/<arch>/")
            parts = relative.split("/")
            candidates = {relative} | {"/".join(parts[:i]) + "/" for i in range(2, len(parts))}
            if not candidates & named:
                missing.add(relative)
    assert set() == missing
