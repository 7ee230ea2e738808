"""The build router as shipped (deploy/base/router/): HAProxy loads the shipped config with
each router Deployment's own environment; the name buildx dials leads through the arch's
routers to that arch's Ready builders; the tiers and the agent's questions are the router
contract's; no router timeout ends a build that the builders would let finish, and none
makes a new build wait past buildx's connection deadline; a rollout, a config change or
an eviction keeps a router up and cuts no build; and the NetworkPolicies let the routers,
and only them, reach buildkitd and the agent.

Needs Debian's ``haproxy`` (2.6): .ci/install-system-deps installs it. Nothing is skipped
when it is missing: the test fails and says what to install.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from autoscaler.config import Config
from common.addresses import host_port
from tests.deploy.haproxy import CONFIG, haproxy, lines, seconds, sections, server_template, value
from tests.deploy.manifests import (
    DEPLOY,
    Obj,
    builders,
    container,
    env,
    find,
    one,
    quantity_bytes,
    selects,
    sidecar_settings,
    way_in,
)

TIERS = ("idle", "free", "any")
"""The router contract's tiers, in the order the frontend tries them: a builder with no
build, else one with a free build slot, else any builder that is up."""

BUILDX_CONNECT_DEADLINE = 20.0
"""What buildx gives one connection (gRPC's minConnectTimeout, covering the TLS handshake
and the server's preface; issue 11): a connection held longer is a failed build."""

ROUTER_POD = {"app.kubernetes.io/name": "buildkit-router"}
"""The label every router pod carries (NetworkPolicies, PodMonitor and PDBs select it)."""

CONFIG_TEXT = CONFIG.read_text(encoding="utf-8")
CFG = sections(CONFIG_TEXT)


def _routers(objs: list[Obj], config: Config) -> list[tuple[Any, Obj, Obj, Obj]]:
    """Each pool with its way in: (pool, LoadBalancer Service, router Deployment, headless Service)."""
    return [(pool, *way_in(objs, pool)) for pool in config.pools]


def _is_router_owned(obj: Obj) -> bool:
    """A router's Deployment or PodDisruptionBudget (what running without the routers removes)."""
    if obj["kind"] == "Deployment":
        return selects(ROUTER_POD, obj["spec"]["template"])
    if obj["kind"] == "PodDisruptionBudget":
        return obj["spec"]["selector"]["matchLabels"].items() >= ROUTER_POD.items()
    return False


def _haproxy_container(router: Obj) -> Obj:
    return container(router["spec"]["template"]["spec"], "haproxy")


def _ports(template: Obj) -> dict[str, int]:
    spec = template["spec"]
    return {
        p["name"]: p["containerPort"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]
        for p in c.get("ports", [])
    }


def _tier_servers() -> dict[str, Any]:
    found = {}
    for tier in TIERS:
        (line,) = lines(CFG[f"backend tier_{tier}"], "server-template")
        found[tier] = server_template(line)
    return found


def _drain_deadline(objs: list[Obj], config: Config) -> float:
    """The builders' drain deadline (--drain-timeout-seconds): the longest build we wait for."""
    return max(sidecar_settings(d["spec"]["template"]["spec"]).drain_timeout_seconds for _, d in builders(objs, config))


def _prestop(router: Obj) -> tuple[float, float]:
    """The router's preStop hook: (the wait before the soft-stop, the wait after it)."""
    command = _haproxy_container(router)["lifecycle"]["preStop"]["exec"]["command"]
    assert ["/bin/sh", "-c"] == command[:2], command
    match = re.fullmatch(r"sleep (\d+); kill -USR1 1; sleep (\d+)", command[2])
    assert match, f"the hook must wait, send SIGUSR1 to HAProxy's master (PID 1), then wait: {command}"
    return float(match[1]), float(match[2])


def test_haproxy_loads_the_shipped_config_with_each_router_deployments_environment(
    shipped: list[Obj], config: Config, tmp_path: Path
) -> None:
    used = set(re.findall(r"\$\{(\w+)\}", CONFIG_TEXT))
    assert {"ROUTER_BACKENDS", "ROUTER_LISTEN", "ROUTER_METRICS_LISTEN", "ROUTER_AGENT_INTERVAL"} <= used
    for pool, _, router, _ in _routers(shipped, config):
        spec = router["spec"]["template"]["spec"]
        haproxy_container = _haproxy_container(router)
        # the file HAProxy is told to read is the generated ConfigMap's copy of the shipped file
        command = haproxy_container["command"]
        assert "haproxy" == command[0]
        path = PurePosixPath(command[command.index("-f") + 1])
        (mount,) = [m for m in haproxy_container["volumeMounts"] if m["mountPath"] == str(path.parent)]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        configmap = one(shipped, "ConfigMap", volume["configMap"]["name"])
        assert CONFIG_TEXT == configmap["data"][path.name]
        # every variable the config uses is set, and nothing else
        variables = env(haproxy_container)
        assert used == set(variables), pool.name
        (tmp_path / pool.name).mkdir()
        copy = tmp_path / pool.name / path.name
        copy.write_text(configmap["data"][path.name], encoding="utf-8")
        done = subprocess.run(
            [haproxy(), "-c", "-f", str(copy)],
            env={"PATH": os.environ.get("PATH", ""), **variables},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        output = done.stdout + done.stderr
        assert 0 == done.returncode, f"{pool.name}: {output}"
        assert not re.search(r"\[(WARNING|ALERT)\]", output), f"{pool.name}: {output}"


def test_the_name_buildx_dials_leads_through_the_arch_routers_to_its_ready_builders_only(
    shipped: list[Obj], config: Config
) -> None:
    ways = _routers(shipped, config)
    # one router per pool, and no router of no pool
    assert sorted(r["metadata"]["name"] for _, _, r, _ in ways) == sorted(
        d["metadata"]["name"] for d in find(shipped, "Deployment") if _is_router_owned(d)
    )
    assert len(ways) == len({r["metadata"]["name"] for _, _, r, _ in ways})
    builder_templates = [d["spec"]["template"] for _, d in builders(shipped, config)]
    for pool, service, router, backends in ways:
        template = router["spec"]["template"]
        variables = env(_haproxy_container(router))
        router_ports = _ports(template)
        # the LoadBalancer Service keeps the pool's name and selects its routers, no builder
        assert "LoadBalancer" == service["spec"]["type"]
        assert "Local" == service["spec"]["externalTrafficPolicy"], "the routers see the client's address"
        assert selects(service["spec"]["selector"], template)
        assert not any(selects(service["spec"]["selector"], t) for t in builder_templates)
        (port,) = service["spec"]["ports"]
        assert host_port(variables["ROUTER_LISTEN"])[1] == router_ports[port["targetPort"]]
        assert host_port(variables["ROUTER_METRICS_LISTEN"])[1] == router_ports["metrics"]
        # the router resolves the headless Service over this pool's Ready builders, which
        # serve buildkitd and the agent on the ports its servers use
        assert "None" == backends["spec"]["clusterIP"]
        assert backends["spec"]["publishNotReadyAddresses"] is False, "only Ready builders in DNS"
        assert dict(pool.selector) == backends["spec"]["selector"]
        builder_ports = _ports(one(shipped, "Deployment", pool.deployment)["spec"]["template"])
        for server in _tier_servers().values():
            assert "${ROUTER_BACKENDS}" == server.address
            assert builder_ports["buildkitd"] == server.port
            assert builder_ports["agent"] == int(str(server.params["agent-port"]))


def test_the_frontend_tries_the_idle_then_the_free_tier_then_any_and_each_tier_asks_the_agent_its_name() -> None:
    assert "tcp" == value(CFG["defaults"], "mode"), "TLS passes through: HAProxy never terminates it"
    frontend = CFG["frontend builds"]
    assert [["bind", "${ROUTER_LISTEN}"]] == lines(frontend, "bind"), "no ssl/crt: mTLS stays end to end"
    assert [
        ["use_backend", "tier_idle", "if", "{", "nbsrv(tier_idle)", "gt", "0", "}"],
        ["use_backend", "tier_free", "if", "{", "nbsrv(tier_free)", "gt", "0", "}"],
        ["default_backend", "tier_any"],
    ] == [w for w in frontend if w[0] in ("use_backend", "default_backend")]
    assert [] == lines(frontend, "mode")
    servers = _tier_servers()
    resolvers = {name.split()[1]: section for name, section in CFG.items() if name.startswith("resolvers ")}
    for tier, server in servers.items():
        backend = CFG[f"backend tier_{tier}"]
        assert [["balance", "leastconn"]] == lines(backend, "balance")
        assert [] == lines(backend, "mode")
        assert f"{tier}\\n" == server.params["agent-send"], "the tier's name and a newline"
        assert server.params["agent-check"] is True
        assert server.params["check"] is True, "TCP to buildkitd: an unreachable agent changes nothing"
        assert "9092" == server.params["agent-port"]
        assert "${ROUTER_AGENT_INTERVAL}" == server.params["agent-inter"], "set by each router Deployment"
        # the agent's percentages scale the initial weight: at 1, all below 100 % would be 0
        assert "100" == server.params["weight"]
        # never queue (no maxconn), never cut a session when a builder drains or goes down
        assert "maxconn" not in server.params
        assert "on-marked-down" not in server.params
        # addresses from DNS only, and HAProxy starts even when DNS does not answer yet
        assert "none" == server.params["init-addr"]
        assert ["parse-resolv-conf"] in resolvers[str(server.params["resolvers"])]
    # the three tiers are the same builders: the lines differ in the agent's question only
    unasked = [replace(s, params={**s.params, "agent-send": ""}) for s in servers.values()]
    assert all(u == unasked[0] for u in unasked), unasked


def test_no_router_timeout_ends_a_build_that_the_builders_would_let_finish(shipped: list[Obj], config: Config) -> None:
    deadline = _drain_deadline(shipped, config)
    defaults = CFG["defaults"]
    # an established connection is a tunnel: silent longer than the longest build before it is cut
    for timeout in ("timeout tunnel", "timeout client", "timeout server"):
        assert seconds(value(defaults, timeout)) > deadline, timeout
    # the soft-stop gives a build that began just before it the whole drain deadline...
    hard_stop_after = seconds(value(CFG["global"], "hard-stop-after"))
    assert hard_stop_after > deadline
    for _, _, router, _ in _routers(shipped, config):
        grace = router["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        before, after = _prestop(router)
        # ...the hook outlasts it, so the kubelet's SIGTERM (a hard stop) never comes first...
        assert after >= hard_stop_after
        # ...and HAProxy's own hard stop comes before the kubelet's kill
        assert before + hard_stop_after < grace
        assert before > 0, "the load balancer's deregistration: HAProxy keeps accepting meanwhile"


def test_a_new_build_never_waits_in_the_router_past_buildx_connection_deadline() -> None:
    defaults = CFG["defaults"]
    # a queue, if one ever forms, answers before buildx gives up (unset, it is `timeout connect`)
    assert seconds(value(defaults, "timeout queue")) < BUILDX_CONNECT_DEADLINE
    # every connection attempt to builders, retries included, fits in buildx's deadline
    attempts = 1 + int(value(defaults, "retries"))
    assert attempts * seconds(value(defaults, "timeout connect")) < BUILDX_CONNECT_DEADLINE
    assert [["option", "redispatch", "1"]] == lines(defaults, "option redispatch"), "each retry on another builder"
    assert [["option", "abortonclose"]] == lines(defaults, "option abortonclose"), "a client that gave up leaves"
    # and no queue by design: no server, default-server or backend maxconn
    for name, section in CFG.items():
        if name.startswith(("backend ", "defaults")):
            assert [] == lines(section, "maxconn"), name
            assert [] == [w for w in lines(section, "default-server") if "maxconn" in w], name
    assert all("maxconn" not in s.params for s in _tier_servers().values())


def test_a_router_rollout_config_change_or_eviction_keeps_a_router_up_and_cuts_no_build(
    shipped: list[Obj], config: Config
) -> None:
    for _, _, router, _ in _routers(shipped, config):
        name = router["metadata"]["name"]
        assert router["spec"]["replicas"] >= 2, "one replica lost leaves another serving"
        rolling = router["spec"]["strategy"]["rollingUpdate"]
        assert 0 == rolling["maxUnavailable"]
        assert rolling["maxSurge"] >= 1
        # a config change is a new ConfigMap name (kustomize's hash), hence a rollout, not a reload
        (volume,) = [v for v in router["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
        configmap = volume["configMap"]["name"]
        assert re.fullmatch(r"buildkit-router-[a-z0-9]{10}", configmap), configmap
        # an eviction or node drain never takes the last router of the arch
        (pdb,) = [
            p
            for p in find(shipped, "PodDisruptionBudget")
            if selects(p["spec"]["selector"]["matchLabels"], router["spec"]["template"])
        ]
        assert 1 == pdb["spec"]["minAvailable"] < router["spec"]["replicas"], name
        assert not any(
            selects(pdb["spec"]["selector"]["matchLabels"], d["spec"]["template"]) for _, d in builders(shipped, config)
        )


def test_the_router_runs_unprivileged_and_is_probed_on_haproxys_health_uri(shipped: list[Obj], config: Config) -> None:
    metrics = CFG["frontend metrics"]
    monitor_uri = value(metrics, "monitor-uri")
    # not Ready while it could place no build: the Service sends it none, a rollout waits
    assert [["monitor", "fail", "if", "{", "nbsrv(tier_any)", "lt", "1", "}"]] == lines(metrics, "monitor")
    assert [["http-request", "use-service", "prometheus-exporter", "if", "{", "path", "/metrics", "}"]] == lines(
        metrics, "http-request"
    )
    for _, _, router, _ in _routers(shipped, config):
        spec = router["spec"]["template"]["spec"]
        haproxy_container = _haproxy_container(router)
        readiness = haproxy_container["readinessProbe"]["httpGet"]
        assert monitor_uri == readiness["path"]
        assert (
            host_port(env(haproxy_container)["ROUTER_METRICS_LISTEN"])[1]
            == _ports(router["spec"]["template"])[readiness["port"]]
        )
        # restarting HAProxy would cut every build through it
        assert "livenessProbe" not in haproxy_container
        context = {**spec["securityContext"], **haproxy_container["securityContext"]}
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] != 0
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert ["ALL"] == context["capabilities"]["drop"]
        assert spec["automountServiceAccountToken"] is False
        # memory for maxconn connections' buffers (two of tune.bufsize, 16 kB, each) within the limit
        connections = int(value(CFG["global"], "maxconn"))
        assert connections * 2 * 16384 < quantity_bytes(haproxy_container["resources"]["limits"]["memory"]) / 2
        assert haproxy_container["image"].startswith("haproxy:")
        assert re.fullmatch(r"haproxy:\d+\.\d+\.\d+", haproxy_container["image"]), "a patch release, pinned"


def _admitting(policies: list[Obj], labels: dict[str, str], port: str) -> list[list[Obj] | None]:
    """The peers of each ingress rule that admits ``port`` to pods labelled ``labels``;
    None for a rule with no ``from`` (anywhere)."""
    return [
        rule.get("from")
        for p in policies
        if p["spec"]["podSelector"].get("matchLabels", {"-": "-"}).items() <= labels.items()
        for rule in p["spec"].get("ingress", [])
        if any(q["port"] == port for q in rule.get("ports", []))
    ]


def test_network_policies_let_the_routers_and_only_them_reach_buildkitd_and_the_agent(
    shipped: list[Obj], config: Config
) -> None:
    policies = find(shipped, "NetworkPolicy")
    router_templates = [r["spec"]["template"] for _, _, r, _ in _routers(shipped, config)]
    for _, deployment in builders(shipped, config):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        for port in ("buildkitd", "agent"):
            rules = _admitting(policies, labels, port)
            assert rules, f"nothing admits {port} to {deployment['metadata']['name']}"
            for peers in rules:
                assert peers, f"{port} admitted from anywhere: a build could bypass the routers"
                for peer in peers:
                    assert set(peer) == {"podSelector"}, f"{port}: {peer} (same namespace, pods only)"
                    selector = peer["podSelector"]["matchLabels"]
                    assert all(selects(selector, t) for t in router_templates), peer
                    assert not selects(selector, deployment["spec"]["template"])
    for template in router_templates:
        labels = template["metadata"]["labels"]
        # clients from wherever the load balancer lets them in, as buildkitd's port before the routers
        assert [None] == _admitting(policies, labels, "buildkitd")
        assert [[{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]] == _admitting(
            policies, labels, "metrics"
        )


def test_every_builder_a_pool_can_have_gets_a_slot_in_each_tier(shipped: list[Obj], config: Config) -> None:
    (slots,) = {server.count for server in _tier_servers().values()}
    for pool, deployment in builders(shipped, config):
        surge = str(deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"])
        assert surge.endswith("%"), surge
        # a rollout at maxReplicas runs the surge's new builders beside the old ones
        most = pool.max_replicas + math.ceil(pool.max_replicas * int(surge[:-1]) / 100)
        assert most <= slots, f"{pool.name}: up to {most} builders, {slots} slots"


def _agent_intervals(objs: list[Obj], config: Config) -> dict[str, float]:
    """Per pool, its router's ``agent-inter`` (the Deployment's ``ROUTER_AGENT_INTERVAL``), in seconds."""
    return {
        pool.name: seconds(env(_haproxy_container(router))["ROUTER_AGENT_INTERVAL"])
        for pool, _, router, _ in _routers(objs, config)
    }


def test_every_router_asks_the_agents_every_second(shipped: list[Obj], config: Config) -> None:
    """1 s: what the drain was measured with (BENCHMARKS.md) and the simulator's default."""
    intervals = _agent_intervals(shipped, config)
    assert {pool.name for pool in config.pools} == set(intervals)
    assert {1.0} == set(intervals.values())


def test_a_builders_shortest_drain_outlasts_the_agent_interval(shipped: list[Obj], config: Config) -> None:
    """A draining builder answers ``drain`` at once, but a router polls it every agent interval:
    a build can still arrive that long after the drain began, and must not be cut off."""
    intervals = _agent_intervals(shipped, config)
    for pool, deployment in builders(shipped, config):
        settings = sidecar_settings(deployment["spec"]["template"]["spec"])
        assert settings.drain_min_seconds >= intervals[pool.name] + 1.0, pool.name


def test_the_guides_overlay_without_the_router_sends_builds_straight_to_the_builders(
    renders: dict[str, list[Obj]], config: Config
) -> None:
    shipped, without = renders["deploy"], renders["without-router"]
    routers = {(o["kind"], o["metadata"]["name"]) for o in shipped if _is_router_owned(o)}
    assert {kind for kind, _ in routers} == {"Deployment", "PodDisruptionBudget"}
    ids = {(o["kind"], o["metadata"]["name"]) for o in without}
    assert {(o["kind"], o["metadata"]["name"]) for o in shipped} - routers == ids, "the routers go, nothing else"
    policies = find(without, "NetworkPolicy")
    for pool, deployment in builders(without, config):
        template = deployment["spec"]["template"]
        # the name buildx dials now selects this pool's builders only, on buildkitd's port
        service = one(without, "Service", pool.deployment)
        assert "LoadBalancer" == service["spec"]["type"]
        assert dict(pool.selector) == service["spec"]["selector"]
        (port,) = service["spec"]["ports"]
        assert _ports(template)[port["targetPort"]] == _ports(template)["buildkitd"]
        # open to clients again, as before the routers
        assert None in _admitting(policies, template["metadata"]["labels"], "buildkitd")
        # the drain covers the load balancer's deregistration again; no other argument moved
        shipped_args = container(one(shipped, "Deployment", pool.deployment)["spec"]["template"]["spec"], "sidecar")[
            "args"
        ]
        args = container(template["spec"], "sidecar")["args"]
        changed = [(a, b) for a, b in zip(shipped_args, args, strict=True) if a != b]
        assert all(a.startswith("--drain-min-seconds=") for pair in changed for a in pair), changed
        assert sidecar_settings(template["spec"]).drain_min_seconds >= 30


def test_the_buildx_script_dials_each_arch_through_its_routers(shipped: list[Obj], config: Config) -> None:
    script = (DEPLOY / "buildx" / "create-builder.sh").read_text(encoding="utf-8")
    for pool, service, router, _ in _routers(shipped, config):
        (port,) = service["spec"]["ports"]
        endpoint = f"tcp://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{port['port']}"
        assert endpoint in script, pool.name
        assert selects(service["spec"]["selector"], router["spec"]["template"])
