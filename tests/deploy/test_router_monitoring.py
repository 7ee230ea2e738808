"""The monitoring component watches the routers: its PodMonitor scrapes every router's
HAProxy exporter where haproxy.cfg serves it; the router alerts (no builder to send
builds to, a queue) fire when ``promtool test rules`` says they should and not otherwise;
and a real HAProxy running the shipped config exposes exactly the series and labels
those alerts read, and answers its health URI as the readiness probe expects.

Needs Debian's ``prometheus`` (``promtool``) and ``haproxy``: .ci/install-system-deps
installs them. Nothing is skipped when one is missing: the test fails and says what to
install.
"""

from __future__ import annotations

import http.client
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from autoscaler.config import Config
from tests.deploy.haproxy import CONFIG, haproxy, lines, sections, value
from tests.deploy.manifests import Obj, container, env, find, one, selects, way_in
from tests.deploy.test_monitoring import alert_rules, free_port, promtool, rules_file

ROUTER_ALERTS = ("BuildkitRouterNoActiveServers", "BuildkitRouterQueue")
"""What issue 11 asks for: no builder to send builds to, and a non-empty queue."""

LABELS = {
    "job": "buildkit-router",
    "namespace": "buildkit",
    "pod": "buildkit-router-amd64-7c9f8d-x2x4q",
    "router": "buildkit-router-amd64",
}
"""A router's series as its PodMonitor labels them."""


def _series(metric: str, proxy: str) -> str:
    labels = ",".join(f'{k}="{v}"' for k, v in {**LABELS, "proxy": proxy}.items())
    return f"{metric}{{{labels}}}"


def _render(template: str, labels: dict[str, str]) -> str:
    """An annotation as Prometheus renders it; the router alerts use ``$labels`` only."""
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], template)
    assert "{{" not in text, text
    return text


def _get(address: str, path: str) -> tuple[int, str]:
    """GET ``path`` from ``host:port``: the status and the body."""
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def _minutes(duration: str) -> int:
    match = re.fullmatch(r"(\d+)([mh])", duration)
    assert match, duration
    return int(match[1]) * (60 if match[2] == "h" else 1)


def test_the_router_podmonitor_scrapes_every_routers_exporter_where_haproxy_serves_it(
    composed: list[Obj], config: Config
) -> None:
    monitor = one(composed, "PodMonitor", "buildkit-router")
    selector = monitor["spec"]["selector"]["matchLabels"]
    routers = [way_in(composed, pool)[1] for pool in config.pools]
    assert all(selects(selector, r["spec"]["template"]) for r in routers)
    assert [] == [
        d["metadata"]["name"]
        for d in find(composed, "Deployment")
        if d not in routers and selects(selector, d["spec"]["template"])
    ]
    metrics = sections(CONFIG.read_text(encoding="utf-8"))["frontend metrics"]
    (exporter,) = [w for w in lines(metrics, "http-request") if "prometheus-exporter" in w]
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        for router in routers:
            ports = {p["name"] for p in container(router["spec"]["template"]["spec"], "haproxy")["ports"]}
            assert endpoint["port"] in ports
        assert ["path", endpoint["path"]] == exporter[exporter.index("{") + 1 : exporter.index("}")]
        # empty server slots (most of the 64 per tier) are left out: ~9,400 series otherwise
        assert {"no-maint": [""]} == endpoint["params"]
        relabeled = {r["targetLabel"]: r for r in endpoint["relabelings"]}
        assert "buildkit-router" == relabeled["job"]["replacement"]
        assert ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"] == relabeled["router"]["sourceLabels"]
        assert all(r["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"] for r in routers)


def test_the_router_alerts_fire_when_promtool_says_they_should(composed: list[Obj], tmp_path: Path) -> None:
    rules = {r["alert"]: r for r in alert_rules(composed)}
    assert set(ROUTER_ALERTS) <= set(rules)
    no_servers, queue = (rules[name] for name in ROUTER_ALERTS)
    assert "critical" == no_servers["labels"]["severity"], "every new build of the arch is refused"
    # the builders leave tier_any at minute 1 (tier_idle is empty all along: every builder
    # busy is normal, and no alert); a queue forms at minute 1 in tier_free only
    steps = 2 + max(_minutes(no_servers["for"]), _minutes(queue["for"]))
    series = {
        _series("haproxy_backend_active_servers", "tier_any"): "2 " + f"0x{steps}",
        _series("haproxy_backend_active_servers", "tier_idle"): f"0x{steps + 1}",
        _series("haproxy_backend_current_queue", "tier_free"): "0 " + f"3x{steps}",
        _series("haproxy_backend_current_queue", "tier_any"): f"0x{steps + 1}",
    }

    def expected(rule: Obj, **extra: str) -> list[Obj]:
        labels = {**LABELS, **extra}
        labels.pop("job")
        return [
            {
                "exp_labels": {**labels, **rule["labels"]},
                "exp_annotations": {k: _render(v, labels) for k, v in rule["annotations"].items()},
            }
        ]

    checks = []
    for rule, extra in ((no_servers, {}), (queue, {"proxy": "tier_free"})):
        fires_at = 1 + _minutes(rule["for"])
        checks += [
            {"eval_time": "0m", "alertname": rule["alert"], "exp_alerts": []},
            {"eval_time": f"{fires_at - 1}m", "alertname": rule["alert"], "exp_alerts": []},  # pending
            {"eval_time": f"{fires_at}m", "alertname": rule["alert"], "exp_alerts": expected(rule, **extra)},
        ]
    tests = {
        "rule_files": [str(rules_file(composed, tmp_path))],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "alert_rule_test": checks,
            }
        ],
    }
    (tmp_path / "router-tests.yaml").write_text(yaml.safe_dump(tests, width=1000), encoding="utf-8")
    done = subprocess.run(
        [promtool(), "test", "rules", str(tmp_path / "router-tests.yaml")], capture_output=True, text=True, check=False
    )
    assert 0 == done.returncode, done.stdout + done.stderr


def test_a_router_replica_that_stops_answering_scrapes_is_alerted_after_5_minutes(
    composed: list[Obj], tmp_path: Path
) -> None:
    rule = {r["alert"]: r for r in alert_rules(composed)}["BuildkitRouterDown"]
    up = "up{" + ",".join(f'{k}="{v}"' for k, v in LABELS.items()) + "}"
    labels = {k: v for k, v in LABELS.items() if k != "job"}
    fired = [
        {
            "exp_labels": {**labels, **rule["labels"]},
            "exp_annotations": {k: _render(v, labels) for k, v in rule["annotations"].items()},
        }
    ]
    tests = {
        "rule_files": [str(rules_file(composed, tmp_path))],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": up, "values": "1 0x10"}],  # scrapes fail from minute 1
                "alert_rule_test": [
                    {"eval_time": "0m", "alertname": "BuildkitRouterDown", "exp_alerts": []},
                    {"eval_time": "5m", "alertname": "BuildkitRouterDown", "exp_alerts": []},  # pending
                    {"eval_time": "6m", "alertname": "BuildkitRouterDown", "exp_alerts": fired},
                ],
            }
        ],
    }
    (tmp_path / "router-down.yaml").write_text(yaml.safe_dump(tests, width=1000), encoding="utf-8")
    done = subprocess.run(
        [promtool(), "test", "rules", str(tmp_path / "router-down.yaml")], capture_output=True, text=True, check=False
    )
    assert 0 == done.returncode, done.stdout + done.stderr


@pytest.fixture
def router(composed: list[Obj], config: Config, tmp_path: Path) -> Iterator[str]:
    """Debian's HAProxy running the shipped config with the amd64 router's environment, its
    two listeners moved to loopback and its resolver pointed at a nameserver that does not
    answer: a router that sees no builder. Yields the exporter's ``host:port``."""
    pool = next(p for p in config.pools if p.arch == "amd64")
    variables = env(container(way_in(composed, pool)[1]["spec"]["template"]["spec"], "haproxy"))
    text = CONFIG.read_text(encoding="utf-8")
    assert 1 == text.count("    parse-resolv-conf\n")
    (tmp_path / "haproxy.cfg").write_text(
        text.replace("    parse-resolv-conf\n", f"    nameserver nowhere 127.0.0.1:{free_port()}\n"), encoding="utf-8"
    )
    metrics = f"127.0.0.1:{free_port()}"
    variables |= {"ROUTER_LISTEN": f"127.0.0.1:{free_port()}", "ROUTER_METRICS_LISTEN": metrics}
    log = tmp_path / "haproxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [haproxy(), "-W", "-db", "-f", str(tmp_path / "haproxy.cfg")], env=variables, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text(errors="replace")
            try:
                if 200 == _get(metrics, "/stats")[0]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        yield metrics
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_real_haproxy_running_the_shipped_config_exposes_what_the_router_alerts_read(
    router: str, composed: list[Obj]
) -> None:
    status, exposition = _get(router, "/metrics?no-maint=")
    assert 200 == status
    samples: dict[str, dict[str, float]] = {}
    for name, proxy, number in re.findall(r'^(haproxy_backend_\w+)\{proxy="(\w+)"\} (\S+)$', exposition, re.M):
        samples.setdefault(name, {})[proxy] = float(number)
    rules = {r["alert"]: r["expr"] for r in alert_rules(composed)}
    for alert in ROUTER_ALERTS:
        (metric,) = set(re.findall(r"\bhaproxy_\w+", rules[alert]))
        assert {"tier_idle", "tier_free", "tier_any"} <= set(samples[metric]), (alert, metric)
        # the alert's own label matchers, beyond job (which the PodMonitor sets), hold here
        for label, wanted in re.findall(r'(\w+)="([^"]*)"', rules[alert]):
            if label != "job":
                assert label == "proxy"
                assert wanted in samples[metric]
    # no builder resolved: no active server, no queue, and every server slot in maintenance,
    # which no-maint leaves out of the exposition
    assert 0 == samples["haproxy_backend_active_servers"]["tier_any"]
    assert 0 == samples["haproxy_backend_current_queue"]["tier_any"]
    assert not re.search(r"^haproxy_server_", exposition, re.M)
    # ...so the readiness probe's URI says 503: not Ready before it can place a build
    monitor_uri = value(sections(CONFIG.read_text(encoding="utf-8"))["frontend metrics"], "monitor-uri")
    assert 503 == _get(router, monitor_uri)[0]
