"""Settings from flags, environment variables and defaults, with precise errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from common.addresses import host_port
from sidecar.main import parser
from sidecar.settings import OPTIONS, Option, Settings, SettingsError, from_sources

pytestmark = pytest.mark.looptime(False)

SECONDS = [o for o in OPTIONS if o.field.endswith("_seconds")]


def load(*flags: str, env: dict[str, str] | None = None) -> Settings:
    return from_sources(parser().parse_args(["run", *flags]), environ=env or {})


def bounds(option_range: str) -> tuple[float, float]:
    low, high = option_range.split("–")
    return float(low), float(high)


def test_defaults_without_flags_or_environment() -> None:
    assert Settings() == load()
    assert Settings() == from_sources(None, environ={})


def test_defaults_are_the_documented_ones() -> None:
    s = Settings()
    assert ("unix:///run/buildkit/buildkitd.sock", "0.0.0.0:9090", "127.0.0.1:9091") == (
        s.buildkit_addr,
        s.listen,
        s.admin_listen,
    )
    assert ("0.0.0.0:9092", 2) == (s.agent_listen, s.build_slots), "the router contract's agent port and slots"
    assert (30.0, 5.0, 0.0, 3300.0, 30.0) == (
        s.resync_interval_seconds,
        s.drain_quiet_seconds,
        s.drain_min_seconds,
        s.drain_timeout_seconds,
        s.drain_gone_seconds,
    )


def test_every_option_reads_its_flag_and_its_environment_variable(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("x")
    flags = [
        "--buildkit-addr=tcp://buildkitd:1234",
        "--arch=arm64",
        "--listen=0.0.0.0:8080",
        "--admin-listen=127.0.0.1:8081",
        "--agent-listen=0.0.0.0:8082",
        "--build-slots=3",
        "--resync-interval-seconds=12",
        "--rpc-timeout-seconds=3.5",
        "--reconnect-initial-seconds=0.25",
        "--reconnect-max-seconds=4",
        "--drain-quiet-seconds=7",
        "--drain-min-seconds=15",
        "--drain-timeout-seconds=600",
        "--drain-gone-seconds=45",
        f"--drain-token-file={token}",
        "--tls-server-name=buildkitd.example",
        "--log-level=debug",
    ]
    expected = Settings(
        buildkit_addr="tcp://buildkitd:1234",
        arch="arm64",
        listen="0.0.0.0:8080",
        admin_listen="127.0.0.1:8081",
        agent_listen="0.0.0.0:8082",
        build_slots=3,
        resync_interval_seconds=12,
        rpc_timeout_seconds=3.5,
        reconnect_initial_seconds=0.25,
        reconnect_max_seconds=4,
        drain_quiet_seconds=7,
        drain_min_seconds=15,
        drain_timeout_seconds=600,
        drain_gone_seconds=45,
        drain_token_file=token,
        tls_server_name="buildkitd.example",
        log_level="debug",
    )
    assert expected == load(*flags)
    by_flag = {o.flag: o for o in OPTIONS}
    env = {}
    for flag in flags:
        name, _, value = flag.partition("=")
        env[by_flag[name].env] = value
    assert expected == load(env=env)


def test_environment_variables_are_named_after_the_fields() -> None:
    assert "BUILDKIT_SIDECAR_DRAIN_TIMEOUT_SECONDS" == next(
        o.env for o in OPTIONS if o.flag == "--drain-timeout-seconds"
    )
    assert all(o.env == "BUILDKIT_SIDECAR_" + o.flag.removeprefix("--").replace("-", "_").upper() for o in OPTIONS)


def test_flag_wins_over_environment_variable() -> None:
    env = {"BUILDKIT_SIDECAR_DRAIN_QUIET_SECONDS": "9", "BUILDKIT_SIDECAR_DRAIN_MIN_SECONDS": "3"}
    settings = load("--drain-quiet-seconds", "1", env=env)
    assert (1.0, 3.0) == (settings.drain_quiet_seconds, settings.drain_min_seconds)


def test_bad_environment_value_is_ignored_when_the_flag_is_given() -> None:
    env = {"BUILDKIT_SIDECAR_DRAIN_QUIET_SECONDS": "soon"}
    assert 2.0 == load("--drain-quiet-seconds=2", env=env).drain_quiet_seconds


@pytest.mark.parametrize("opt", SECONDS, ids=lambda o: o.flag)
def test_every_duration_out_of_range_names_the_flag_and_the_range(opt: Option) -> None:
    low, high = bounds(opt.range)
    for bad in (low - 0.001, high + 1):
        with pytest.raises(SettingsError) as caught:
            load(f"{opt.flag}={bad}")
        assert f"{opt.flag}='{bad}': must be in [{low:g}, {high:g}]" in str(caught.value)


@pytest.mark.parametrize("opt", SECONDS, ids=lambda o: o.flag)
def test_every_duration_out_of_range_in_the_environment_names_the_variable(opt: Option) -> None:
    _, high = bounds(opt.range)
    with pytest.raises(SettingsError) as caught:
        load(env={opt.env: str(high * 2)})
    assert f"{opt.env}='{high * 2}': must be in [" in str(caught.value)


@pytest.mark.parametrize("opt", SECONDS, ids=lambda o: o.flag)
def test_every_duration_accepts_its_bounds(opt: Option) -> None:
    low, high = bounds(opt.range)
    extra = ["--reconnect-max-seconds=600"] if opt.field == "reconnect_initial_seconds" else []
    extra += ["--reconnect-initial-seconds=0.01"] if opt.field == "reconnect_max_seconds" else []
    extra += ["--drain-timeout-seconds=86400"] if opt.field == "drain_min_seconds" else []
    for good in (low, high):
        assert good == getattr(load(f"{opt.flag}={good}", *extra), opt.field)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("soon", "must be a number"),
        ("nan", "must be a finite number"),
        ("inf", "must be a finite number"),
        ("-inf", "must be a finite number"),
    ],
)
def test_duration_that_is_not_a_finite_number_is_refused(raw: str, reason: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load(env={"BUILDKIT_SIDECAR_DRAIN_TIMEOUT_SECONDS": raw})
    assert f"BUILDKIT_SIDECAR_DRAIN_TIMEOUT_SECONDS={raw!r}: {reason}" == str(caught.value)
    assert not math.isnan(Settings().drain_timeout_seconds)


@pytest.mark.parametrize(
    ("flag", "value", "reason"),
    [
        ("--buildkit-addr", "http://buildkitd:1234", "must be unix:///path/to.sock or tcp://host:port"),
        ("--buildkit-addr", "tcp://buildkitd", "must be unix:///path/to.sock or tcp://host:port"),
        ("--buildkit-addr", "unix://", "must be unix:///path/to.sock or tcp://host:port"),
        ("--listen", "9090", "must be host:port with a port from 1 to 65535"),
        ("--listen", "0.0.0.0:0", "must be host:port with a port from 1 to 65535"),
        ("--admin-listen", "127.0.0.1:70000", "must be host:port with a port from 1 to 65535"),
        ("--arch", "x86_64", "must be a Go architecture name such as amd64 or arm64"),
        ("--arch", "AMD64", "must be a Go architecture name such as amd64 or arm64"),
        ("--log-level", "verbose", "must be debug, info, warning or error"),
        ("--agent-listen", "9092", "must be host:port with a port from 1 to 65535, or none"),
        ("--agent-listen", "off", "must be host:port with a port from 1 to 65535, or none"),
        ("--build-slots", "0", "must be in [1, 1000]"),
        ("--build-slots", "1001", "must be in [1, 1000]"),
        ("--build-slots", "2.5", "must be a whole number"),
        ("--build-slots", "two", "must be a whole number"),
    ],
)
def test_bad_value_names_the_flag_and_the_reason(flag: str, value: str, reason: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load(f"{flag}={value}")
    assert f"{flag}={value!r}: {reason}" == str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        load("--drain-quiet-seconds=-1", "--log-level=loud", env={"BUILDKIT_SIDECAR_ARCH": "X"})
    message = str(caught.value)
    assert "--drain-quiet-seconds='-1'" in message
    assert "--log-level='loud'" in message
    assert "BUILDKIT_SIDECAR_ARCH='X'" in message


# -- cross checks ----------------------------------------------------------------------


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "x.pem"
    path.write_text("not really a certificate")
    return path


def test_tls_cert_without_key_is_refused(pem: Path) -> None:
    with pytest.raises(SettingsError, match="--tls-cert and --tls-key go together"):
        load("--buildkit-addr=tcp://buildkitd:1234", f"--tls-cert={pem}")


def test_tls_key_without_cert_is_refused(pem: Path) -> None:
    with pytest.raises(SettingsError, match="--tls-cert and --tls-key go together"):
        load("--buildkit-addr=tcp://buildkitd:1234", f"--tls-key={pem}")


def test_tls_with_unix_socket_is_refused(pem: Path) -> None:
    with pytest.raises(SettingsError, match="TLS applies to tcp:// addresses only"):
        load(f"--tls-ca-cert={pem}")
    with pytest.raises(SettingsError, match="TLS applies to tcp:// addresses only"):
        load(f"--tls-cert={pem}", f"--tls-key={pem}")


def test_mtls_over_tcp_is_accepted(pem: Path) -> None:
    settings = load(
        "--buildkit-addr=tcp://buildkitd:1234", f"--tls-ca-cert={pem}", f"--tls-cert={pem}", f"--tls-key={pem}"
    )
    assert (pem, pem, pem) == (settings.tls_ca_cert, settings.tls_cert, settings.tls_key)


def test_missing_tls_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    with pytest.raises(SettingsError) as caught:
        load("--buildkit-addr=tcp://buildkitd:1234", f"--tls-ca-cert={missing}")
    assert f"--tls-ca-cert={str(missing)!r}: no such file" == str(caught.value)


def test_missing_drain_token_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "token"
    with pytest.raises(SettingsError) as caught:
        load(env={"BUILDKIT_SIDECAR_DRAIN_TOKEN_FILE": str(missing)})
    assert f"--drain-token-file={str(missing)!r}: no such file" == str(caught.value)


def test_drain_min_longer_than_drain_timeout_is_refused() -> None:
    with pytest.raises(SettingsError) as caught:
        load("--drain-min-seconds=120", "--drain-timeout-seconds=60")
    assert "--drain-min-seconds must not exceed --drain-timeout-seconds" == str(caught.value)
    assert 60.0 == load("--drain-min-seconds=60", "--drain-timeout-seconds=60").drain_min_seconds


def test_reconnect_initial_above_max_is_refused() -> None:
    with pytest.raises(SettingsError, match="--reconnect-initial-seconds must not exceed --reconnect-max-seconds"):
        load("--reconnect-initial-seconds=5", "--reconnect-max-seconds=1")


def test_same_listen_and_admin_listen_is_refused() -> None:
    with pytest.raises(SettingsError, match="--listen and --admin-listen must differ"):
        load("--listen=127.0.0.1:9091")


@pytest.mark.parametrize("other", ["--listen=0.0.0.0:9092", "--admin-listen=0.0.0.0:9092"])
def test_agent_listen_on_another_listeners_address_is_refused(other: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load(other)
    assert "--agent-listen must differ from --listen and --admin-listen" == str(caught.value)


def test_agent_listen_none_turns_the_agent_off_and_slots_take_their_bounds() -> None:
    assert "none" == load("--agent-listen=none").agent_listen
    assert (1, 1000) == (
        load("--build-slots=1").build_slots,
        load(env={"BUILDKIT_SIDECAR_BUILD_SLOTS": "1000"}).build_slots,
    )


# -- host:port -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9091", ("127.0.0.1", 9091)),
        (":9090", ("0.0.0.0", 9090)),
        ("[::1]:9091", ("::1", 9091)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_host_port_splits_listen_addresses(value: str, expected: tuple[str, int]) -> None:
    assert expected == host_port(value)


def test_an_empty_environment_variable_counts_as_unset() -> None:
    # manifests often template a variable in empty; that must mean "the default"
    settings = load(env={"BUILDKIT_SIDECAR_ARCH": "", "BUILDKIT_SIDECAR_DRAIN_TIMEOUT_SECONDS": ""})
    assert (None, 3300.0) == (settings.arch, settings.drain_timeout_seconds)


def test_abbreviated_flags_are_refused() -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["run", "--drain-timeout", "10"])
