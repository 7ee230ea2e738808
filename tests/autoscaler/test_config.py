"""The autoscaler's ConfigMap schema: defaults, every error with its field path, and check-config."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoscaler.cli import main
from autoscaler.config import (
    Config,
    ConfigError,
    PrometheusSource,
    ScalingPolicy,
    SidecarsSource,
    effective_yaml,
    load_config,
    load_configmap_data,
    reference,
)

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "config.yaml"

POOL: dict[str, Any] = {"name": "amd64", "namespace": "buildkit", "deployment": "buildkitd-amd64", "maxReplicas": 10}


def _config(**top: Any) -> dict[str, Any]:
    return {"pools": [copy.deepcopy(POOL), {**POOL, "name": "arm64", "deployment": "buildkitd-arm64"}], **top}


def _with_pool(index: int, **fields: Any) -> dict[str, Any]:
    config = _config()
    config["pools"][index].update(fields)
    return config


def _errors(document: Any) -> list[str]:
    text = document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False)
    with pytest.raises(ConfigError) as caught:
        load_config(text)
    assert list(caught.value.errors) == str(caught.value).splitlines()
    return list(caught.value.errors)


# --- defaults --------------------------------------------------------------------------------------


def test_minimal_pool_gets_every_default() -> None:
    config = load_config(yaml.safe_dump({"pools": [POOL]}))

    assert 5.0 == config.poll_interval_seconds
    assert SidecarsSource() == config.source
    pool = config.pools[0]
    assert "amd64" == pool.arch
    assert pool.selector is None
    assert 9090 == pool.sidecar_port
    assert (1, 10, 2, 1, 0.0) == (
        pool.min_replicas,
        pool.max_replicas,
        pool.target_builds_per_replica,
        pool.spare_replicas,
        pool.tolerance,
    )
    assert (True, True) == (
        pool.pod_annotations.karpenter_do_not_disrupt,
        pool.pod_annotations.cluster_autoscaler_safe_to_evict,
    )


def test_behaviour_defaults_are_hpas_builtin_ones() -> None:
    pool = load_config(yaml.safe_dump({"pools": [POOL]})).pools[0]

    assert 0.0 == pool.scale_up.stabilization_window_seconds
    assert (
        ScalingPolicy(type="Percent", value=100, period_seconds=15),
        ScalingPolicy(type="Pods", value=4, period_seconds=15),
    ) == pool.scale_up.policies
    assert "Max" == pool.scale_up.select_policy
    assert 300.0 == pool.scale_down.stabilization_window_seconds
    assert (ScalingPolicy(type="Percent", value=100, period_seconds=15),) == pool.scale_down.policies
    assert "Max" == pool.scale_down.select_policy


def test_each_behaviour_field_defaults_independently_as_in_hpa() -> None:
    config = _with_pool(0, scaleDown={"stabilizationWindowSeconds": 60}, scaleUp={"selectPolicy": "Min"})
    pool = load_config(yaml.safe_dump(config)).pools[0]

    assert 60.0 == pool.scale_down.stabilization_window_seconds
    assert (ScalingPolicy(type="Percent", value=100, period_seconds=15),) == pool.scale_down.policies
    assert "Min" == pool.scale_up.select_policy
    assert 2 == len(pool.scale_up.policies)


def test_explicit_arch_overrides_the_name() -> None:
    config = load_config(yaml.safe_dump(_with_pool(0, name="builders-x86", arch="amd64")))

    assert ("builders-x86", "amd64") == (config.pools[0].name, config.pools[0].arch)


def test_durations_may_be_fractional() -> None:
    config = _with_pool(
        0,
        scaleDown={
            "stabilizationWindowSeconds": 90.5,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 7.5}],
        },
    )
    config["pollIntervalSeconds"] = 2.5
    loaded = load_config(yaml.safe_dump(config))

    assert 2.5 == loaded.poll_interval_seconds
    assert 90.5 == loaded.pools[0].scale_down.stabilization_window_seconds
    assert 7.5 == loaded.pools[0].scale_down.policies[0].period_seconds


def test_source_shorthand_and_prometheus_mapping() -> None:
    assert SidecarsSource() == load_config(yaml.safe_dump(_config(source="sidecars"))).source
    source = load_config(
        yaml.safe_dump(_config(source={"type": "prometheus", "url": "http://prometheus.monitoring:9090"}))
    ).source

    assert isinstance(source, PrometheusSource)
    assert "http://prometheus.monitoring:9090" == source.url
    assert "$namespace" in source.query


def test_selector_is_a_match_labels_map() -> None:
    selector = {"app.kubernetes.io/name": "buildkitd", "app.kubernetes.io/instance": "buildkitd-amd64"}

    assert selector == load_config(yaml.safe_dump(_with_pool(0, selector=selector))).pools[0].selector


# --- errors: one line per problem, with its camelCase field path ---------------------------------------

DNS_LABEL = "must be a DNS label: at most 63 lower-case letters, digits and '-', starting and ending alphanumeric"

ERROR_CASES: list[tuple[dict[str, Any], str]] = [
    (_config(pollIntervalSeconds=0), "pollIntervalSeconds: must be > 0"),
    (_config(pollIntervalSeconds="5"), "pollIntervalSeconds: must be a number, not a string"),
    (_config(pollIntervalSeconds=float("nan")), "pollIntervalSeconds: must be a finite number"),
    (_config(statusTimeoutSeconds=61), "statusTimeoutSeconds: must be ≤ 60"),
    (_config(statusConcurrency=0), "statusConcurrency: must be ≥ 1"),
    (_config(statusConcurrency=True), "statusConcurrency: must be an integer, not a boolean"),
    (_config(source={"type": "prometheus"}), "source.url: required"),
    (
        _config(source={"type": "prometheus", "url": "ftp://x"}),
        "source.url: must be an http:// or https:// URL with a host",
    ),
    (_config(source={"type": "prometheus", "url": "http://p:9090", "query": " "}), "source.query: must not be empty"),
    (_config(source="kafka"), "source: unknown type 'kafka' (expected 'sidecars', 'prometheus')"),
    (_config(source={}), "source: needs a 'type'"),
    ({"pools": []}, "pools: must have at least 1 item"),
    ({"pools": {"amd64": POOL}}, "pools: must be a list, not a mapping"),
    ({}, "pools: required"),
    ({"pools": ["amd64"]}, "pools[0]: must be a mapping, not a string"),
    (
        _with_pool(1, name="ARM64", arch="arm64"),
        f"pools[1].name: {DNS_LABEL}",
    ),
    (_with_pool(0, arch="x86-64"), "pools[0].arch: must be a Go architecture name such as amd64 or arm64"),
    (
        _with_pool(0, namespace="Build_Kit"),
        f"pools[0].namespace: {DNS_LABEL}",
    ),
    (
        _with_pool(0, deployment="buildkitd/amd64"),
        "pools[0].deployment: must be a DNS subdomain: at most 253 characters, "
        "dot-separated lower-case alphanumeric labels",
    ),
    (_with_pool(0, namespace=None), "pools[0].namespace: must be a string, not null"),
    (_with_pool(0, selector={}), "pools[0].selector: must not be empty (omit it to use the Deployment's own selector)"),
    (_with_pool(0, selector={"app name": "x"}), "pools[0].selector: label key 'app name' is not a valid label name"),
    (
        _with_pool(0, selector={"-bad.prefix/name": "x"}),
        "pools[0].selector: label key '-bad.prefix/name' has an invalid prefix (must be a DNS subdomain)",
    ),
    (
        _with_pool(0, selector={"tier": "a b"}),
        "pools[0].selector: label value 'a b' of 'tier' is not a valid label value",
    ),
    (_with_pool(0, selector={"enabled": True}), "pools[0].selector[enabled]: must be a string, not a boolean"),
    (_with_pool(0, sidecarPort=70000), "pools[0].sidecarPort: must be ≤ 65535"),
    (_with_pool(0, minReplicas=-1), "pools[0].minReplicas: must be ≥ 0"),
    (_with_pool(0, maxReplicas=0), "pools[0].maxReplicas: must be ≥ 1"),
    (_with_pool(0, maxReplicas=1001), "pools[0].maxReplicas: must be ≤ 1000"),
    (_with_pool(1, minReplicas=5, maxReplicas=3), "pools[1].minReplicas: must be ≤ maxReplicas (3)"),
    (
        _with_pool(0, minReplicas=0, spareReplicas=0),
        "pools[0].spareReplicas: must be ≥ 1 when minReplicas is 0 "
        "(a pool at zero never sees a build, so never scales up)",
    ),
    (
        _with_pool(0, minReplicas=0, behindRouter=True),
        "pools[0].minReplicas: must be ≥ 1 when behindRouter is true "
        "(the router rejects every build at once while no builder is up)",
    ),
    (_with_pool(0, behindRouter="yes"), "pools[0].behindRouter: must be true or false, not a string"),
    (_with_pool(0, targetBuildsPerReplica=2.5), "pools[0].targetBuildsPerReplica: must be an integer, not a number"),
    (_with_pool(0, targetBuildsPerReplica=0), "pools[0].targetBuildsPerReplica: must be ≥ 1"),
    (_with_pool(0, spareReplicas=101), "pools[0].spareReplicas: must be ≤ 100"),
    (_with_pool(0, tolerance=1), "pools[0].tolerance: must be < 1"),
    (_with_pool(0, tolerance=-0.1), "pools[0].tolerance: must be ≥ 0"),
    (
        _with_pool(0, scaleUp={"stabilizationWindowSeconds": 3601}),
        "pools[0].scaleUp.stabilizationWindowSeconds: must be ≤ 3600",
    ),
    (
        _with_pool(0, scaleUp={"selectPolicy": "max"}),
        "pools[0].scaleUp.selectPolicy: must be 'Max', 'Min' or 'Disabled', not 'max'",
    ),
    (_with_pool(0, scaleUp={"policies": []}), "pools[0].scaleUp.policies: must have at least 1 item"),
    (
        _with_pool(0, scaleUp={"policies": [{"type": "Pods", "value": 1, "periodSeconds": 1}] * 11}),
        "pools[0].scaleUp.policies: must have at most 10 items",
    ),
    (
        _with_pool(1, scaleDown={"policies": [{"type": "Pods", "value": 0, "periodSeconds": 60}]}),
        "pools[1].scaleDown.policies[0].value: must be ≥ 1",
    ),
    (
        _with_pool(0, scaleDown={"policies": [{"type": "Pod", "value": 1, "periodSeconds": 60}]}),
        "pools[0].scaleDown.policies[0].type: must be 'Pods' or 'Percent', not 'Pod'",
    ),
    (
        _with_pool(0, scaleDown={"policies": [{"type": "Pods", "value": 1, "periodSeconds": 0}]}),
        "pools[0].scaleDown.policies[0].periodSeconds: must be > 0",
    ),
    (
        _with_pool(0, scaleDown={"policies": [{"type": "Pods", "value": 1, "periodSeconds": 1801}]}),
        "pools[0].scaleDown.policies[0].periodSeconds: must be ≤ 1800",
    ),
    (
        _with_pool(0, scaleDown={"policies": [{"type": "Percent", "value": 50}]}),
        "pools[0].scaleDown.policies[0].periodSeconds: required",
    ),
    (
        _with_pool(0, podAnnotations={"karpenterDoNotDisrupt": "yes"}),
        "pools[0].podAnnotations.karpenterDoNotDisrupt: must be true or false, not a string",
    ),
    (
        {"pools": [POOL, {**POOL, "deployment": "other"}]},
        "pools[1].name: 'amd64' is already the name of pools[0]",
    ),
    (
        {"pools": [POOL, {**POOL, "name": "amd64-spot", "arch": "amd64"}]},
        "pools[1].deployment: buildkit/buildkitd-amd64 is already managed by pools[0]",
    ),
]


@pytest.mark.parametrize(("document", "expected"), ERROR_CASES, ids=[e for _, e in ERROR_CASES])
def test_invalid_value_is_reported_with_its_field_path(document: dict[str, Any], expected: str) -> None:
    assert [expected] == _errors(document)


TYPO_CASES: list[tuple[dict[str, Any], str]] = [
    (_config(pollIntervalSecond=5), "pollIntervalSecond: unknown key (did you mean pollIntervalSeconds?)"),
    (_with_pool(1, minReplica=1), "pools[1].minReplica: unknown key (did you mean minReplicas?)"),
    (_with_pool(0, min_replicas=1), "pools[0].min_replicas: unknown key (did you mean minReplicas?)"),
    (_with_pool(0, scaleDwon={}), "pools[0].scaleDwon: unknown key (did you mean scaleDown?)"),
    (
        _with_pool(0, scaleDown={"stabilisationWindowSeconds": 60}),
        "pools[0].scaleDown.stabilisationWindowSeconds: unknown key (did you mean stabilizationWindowSeconds?)",
    ),
    (
        _with_pool(0, scaleUp={"policies": [{"type": "Pods", "value": 1, "period": 15, "periodSeconds": 15}]}),
        "pools[0].scaleUp.policies[0].period: unknown key (did you mean periodSeconds?)",
    ),
    (
        _with_pool(0, podAnnotations={"doNotDisrupt": False}),
        "pools[0].podAnnotations.doNotDisrupt: unknown key (did you mean karpenterDoNotDisrupt?)",
    ),
    (
        _config(source={"type": "prometheus", "url": "http://p:9090", "timeout": 3}),
        "source.timeout: unknown key (known: type, url, query)",
    ),
]


@pytest.mark.parametrize(("document", "expected"), TYPO_CASES, ids=[e for _, e in TYPO_CASES])
def test_unknown_key_is_an_error_with_a_suggestion(document: dict[str, Any], expected: str) -> None:
    assert [expected] == _errors(document)


def test_pool_whose_name_is_not_an_arch_must_set_arch() -> None:
    assert [
        "pools[1].arch: required when the pool's name is not an architecture name (such as amd64 or arm64)"
    ] == _errors(_with_pool(1, name="arm64-spot"))


def test_every_error_in_a_file_is_reported_at_once() -> None:
    config = _config(pollIntervalSeconds=-1)
    config["pools"][0].update(minReplicas=20, maxReplicas=10)  # cross-field, in a pool that is otherwise valid
    config["pools"][1].update(maxReplicas="many", sidecarPort=0, scaleDwon={})

    assert [
        "pollIntervalSeconds: must be > 0",
        "pools[0].minReplicas: must be ≤ maxReplicas (10)",
        "pools[1].sidecarPort: must be ≥ 1",
        "pools[1].maxReplicas: must be an integer, not a string",
        "pools[1].scaleDwon: unknown key (did you mean scaleDown?)",
    ] == _errors(config)


def test_yaml_syntax_error_gives_line_and_column() -> None:
    text = "pollIntervalSeconds: 5\npools:\n  - name: amd64\n   namespace: buildkit\n"

    assert [
        "line 4, column 4: expected <block end>, but found '<block mapping start>'"
        " (while parsing a block collection at line 3)"
    ] == _errors(text)


def test_duplicate_key_is_an_error_not_last_one_wins() -> None:
    text = "pools:\n  - name: amd64\n    maxReplicas: 10\n    maxReplicas: 100\n"

    assert ["line 4, column 5: duplicate key 'maxReplicas' (first at line 3)"] == _errors(text)


def test_document_that_is_not_a_mapping_is_refused() -> None:
    assert ["(root): must be a mapping, not a list"] == _errors("- pools\n")


def test_empty_document_reports_the_missing_pools() -> None:
    assert ["pools: required"] == _errors("")


# --- ConfigMap manifests ------------------------------------------------------------------------------


def _configmap(data: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "buildkit-autoscaler"}, "data": data}
    )


def test_configmap_manifest_and_bare_file_give_the_same_config() -> None:
    bare = SHIPPED.read_text()

    assert load_config(bare) == load_config(_configmap({"config.yaml": bare}))


def test_configmap_data_from_the_api_loads_like_the_manifest() -> None:
    bare = SHIPPED.read_text()

    assert load_config(bare) == load_configmap_data({"config.yaml": bare})
    with pytest.raises(ConfigError, match=r"data\[config.yaml\]: required"):
        load_configmap_data(None)


def test_configmap_without_the_config_key_is_refused() -> None:
    assert ["data[config.yaml]: required (the ConfigMap holds the config under this key)"] == _errors(
        _configmap({"config.yml": "pools: []"})
    )


def test_configmap_with_a_non_string_config_is_refused() -> None:
    assert ["data[config.yaml]: must be a string (a YAML document)"] == _errors(_configmap({"config.yaml": 5}))


def test_yaml_error_inside_a_configmap_points_into_its_config() -> None:
    assert ["data[config.yaml]: line 2, column 1: duplicate key 'a' (first at line 1)"] == _errors(
        _configmap({"config.yaml": "a: 1\na: 2\n"})
    )


def test_field_errors_inside_a_configmap_use_the_config_paths() -> None:
    assert ["pools: must have at least 1 item"] == _errors(_configmap({"config.yaml": "pools: []\n"}))


# --- the effective config -------------------------------------------------------------------------------


def test_effective_yaml_is_camel_case_with_defaults_and_loads_back_to_the_same_config() -> None:
    config = load_config(yaml.safe_dump({"pools": [POOL]}))
    text = effective_yaml(config)
    printed = yaml.safe_load(text)

    assert config == load_config(text)
    assert {
        "type": "Percent",
        "value": 100,
        "periodSeconds": 15,
    } == printed["pools"][0]["scaleDown"]["policies"][0]
    assert 300 == printed["pools"][0]["scaleDown"]["stabilizationWindowSeconds"]
    assert "min_replicas" not in text
    assert 1 == printed["pools"][0]["minReplicas"]


def test_models_are_frozen() -> None:
    config = load_config(yaml.safe_dump({"pools": [POOL]}))

    with pytest.raises(ValueError, match="frozen"):
        config.pools[0].max_replicas = 3  # type: ignore[misc]


# --- the shipped config and check-config ------------------------------------------------------------------


def test_shipped_config_has_both_arch_pools_with_builder_friendly_values() -> None:
    config = load_config(SHIPPED.read_text())

    assert [("amd64", "buildkit", "buildkitd-amd64"), ("arm64", "buildkit", "buildkitd-arm64")] == [
        (p.arch, p.namespace, p.deployment) for p in config.pools
    ]
    for pool in config.pools:
        assert pool.selector is not None
        assert pool.arch in pool.selector["app.kubernetes.io/instance"]
        assert 2 <= pool.target_builds_per_replica <= 4
        assert 2 == pool.spare_replicas  # measured behind the router: docs/simulator.md, "The shipped config"
        assert pool.scale_down.stabilization_window_seconds < 300  # the drain makes scale-down safe


def test_check_config_prints_the_effective_shipped_config_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check-config", str(SHIPPED)])
    out, err = capsys.readouterr()

    assert (0, "") == (code, err)
    assert load_config(SHIPPED.read_text()) == load_config(out)
    assert "spareReplicas: 2" in out


def test_check_config_lists_every_error_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "config.yaml"
    broken.write_text(
        "pools:\n"
        "  - name: amd64\n"
        "    namespace: buildkit\n"
        "    deployment: buildkitd-amd64\n"
        "    maxReplicas: 4\n"
        "    minReplicas: 5\n"
        "    scaleDown:\n"
        "      policies: [{type: Pods, value: 0, periodSeconds: 60}]\n"
        "    scaleDwon: {}\n"
    )
    code = main(["check-config", str(broken)])
    out, err = capsys.readouterr()

    assert (1, "") == (code, out)
    assert [
        f"{broken}: pools[0].scaleDown.policies[0].value: must be ≥ 1",
        f"{broken}: pools[0].scaleDwon: unknown key (did you mean scaleDown?)",
        f"{broken}: invalid (2 errors)",
    ] == err.splitlines()


def test_check_config_on_a_missing_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check-config", str(tmp_path / "absent.yaml")])
    _, err = capsys.readouterr()

    assert 1 == code
    assert "absent.yaml: cannot read" in err


def test_check_config_reads_a_configmap_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "configmap.yaml"
    manifest.write_text(_configmap({"config.yaml": SHIPPED.read_text()}))

    assert 0 == main(["check-config", str(manifest)])
    assert load_config(SHIPPED.read_text()) == load_config(capsys.readouterr().out)


def test_no_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert 2 == main([])
    assert "check-config" in capsys.readouterr().err


def test_config_models_accept_field_names_in_python() -> None:
    config = Config(pools=(load_config(yaml.safe_dump({"pools": [POOL]})).pools[0],))

    assert "amd64" == config.pool("amd64").name


# --- the reference table ------------------------------------------------------------------------------------


def _leaf_paths(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, dict) and not prefix.endswith("selector"):
        return set().union(*(_leaf_paths(v, f"{prefix}.{k}" if prefix else k) for k, v in value.items()))
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return {prefix} | set().union(*(_leaf_paths(v, f"{prefix}[]") for v in value))
    return {prefix}


def test_reference_lists_every_key_of_the_effective_config() -> None:
    printed = yaml.safe_load(effective_yaml(load_config(SHIPPED.read_text())))
    paths = [row.path for row in reference()]

    assert len(set(paths)) == len(paths)
    assert _leaf_paths(printed) <= set(paths)


def test_every_key_is_documented_and_every_number_has_a_range() -> None:
    for row in reference():
        assert row.doc, row.path
        if row.type in ("integer", "number", "seconds"):
            assert row.range, row.path
        if row.type == "seconds":
            assert row.path.endswith("Seconds"), row.path


def test_reference_gives_defaults_as_yaml() -> None:
    rows = {row.path: row for row in reference()}

    assert ("5", "(0, 300]") == (rows["pollIntervalSeconds"].default, rows["pollIntervalSeconds"].range)
    assert "(required)" == rows["pools[].maxReplicas"].default
    assert "(required with prometheus)" == rows["source.url"].default
    assert "[{type: Percent, value: 100, periodSeconds: 15}]" == rows["pools[].scaleDown.policies"].default
