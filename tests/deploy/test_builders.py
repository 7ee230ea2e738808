"""The builder Deployments fit the sidecar and buildkitd they run: the drain deadline
within the grace period, the preStop hook on the admin listener, the shared socket,
probes that cannot kill a build, one pool per arch, room for the build cache, mTLS,
network policies, and the buildx example that points at them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from autoscaler.config import Config
from common.addresses import host_port
from tests.deploy.manifests import (
    BUILDER_TEMPLATE,
    DEPLOY,
    Obj,
    builders,
    container,
    find,
    flag,
    one,
    quantity_bytes,
    sidecar_settings,
    way_in,
)


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


def test_the_agents_build_slots_are_the_pools_target_builds_per_replica(shipped: list[Obj], config: Config) -> None:
    """The router's tiers and the autoscaler must agree on what a full builder is."""
    for pool, deployment in builders(shipped, config):
        spec = deployment["spec"]["template"]["spec"]
        settings = sidecar_settings(spec)
        assert pool.target_builds_per_replica == settings.build_slots, pool.name
        assert flag(container(spec, "sidecar")["args"], "build-slots"), "shipped explicitly, not by default"
        assert ("0.0.0.0", 9092) == host_port(settings.agent_listen), "every address: the routers run in other pods"


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
        # The headless Service through which this arch's router finds its builders
        # selects this pool's pods only (tests/deploy/test_router.py: the rest of the way in).
        _, _, backends = way_in(shipped, pool)
        assert dict(pool.selector) == backends["spec"]["selector"]
        ports = {p["name"] for c in [*spec["initContainers"], *spec["containers"]] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in backends["spec"]["ports"]} <= ports


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


def test_buildkitd_serves_mtls_from_the_certificate_secret(composed: list[Obj], config: Config) -> None:
    """With the cert-manager component on (tests/deploy/test_tls.py: the same Secret made by hand)."""
    server_cert = one(composed, "Certificate", "buildkitd-tls")
    for pool, deployment in builders(composed, config):
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
        service = one(composed, "Service", pool.deployment)
        assert (
            f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc" in server_cert["spec"]["dnsNames"]
        )
    assert ["client auth"] == one(composed, "Certificate", "buildx-client")["spec"]["usages"]


def test_network_policies_admit_the_ports_in_use_and_deny_the_rest(shipped: list[Obj], config: Config) -> None:
    policies = find(shipped, "NetworkPolicy")
    assert any(
        p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in p["spec"]
        for p in policies
    )
    # every pod of the fleet: builders, routers (tests/deploy/test_router.py: who may reach
    # buildkitd and the agent), the autoscaler
    templates = [d["spec"]["template"] for d in find(shipped, "Deployment")]
    assert len(config.pools) + 1 < len(templates)
    for template in templates:
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


def test_the_buildx_example_points_one_node_per_arch_at_its_service(
    shipped: list[Obj], composed: list[Obj], config: Config
) -> None:
    script = (DEPLOY / "buildx" / "create-builder.sh").read_text(encoding="utf-8")
    done = subprocess.run(["sh", "-n", str(DEPLOY / "buildx" / "create-builder.sh")], capture_output=True, check=False)
    assert 0 == done.returncode, done.stderr
    server_names = one(composed, "Certificate", "buildkitd-tls")["spec"]["dnsNames"]
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
