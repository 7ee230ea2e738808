"""The sidecar's settings: one frozen dataclass, built in one place.

Every tunable is a field with a unit in its name, a default with the reason
for it, a range, a command-line flag and an environment variable. The flag
table in docs/sidecar.md is checked against :data:`OPTIONS` by the test suite,
so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.addresses import buildkit_address_problem, host_port
from common.arch import arch_problem

ENV_PREFIX = "BUILDKIT_SIDECAR_"
DISABLED = "none"
"""The value of a listener flag that turns that listener off (``--agent-listen`` only)."""


class SettingsError(ValueError):
    """A setting is invalid; the message names the flag, the variable and the reason."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the ``run`` command can be told. Durations are seconds (fractions allowed)."""

    buildkit_addr: str = "unix:///run/buildkit/buildkitd.sock"
    """buildkitd's control API: ``unix:///path`` or ``tcp://host:port``. The
    default is buildkitd's own default socket, shared through an emptyDir."""

    tls_ca_cert: Path | None = None
    """CA bundle that signed buildkitd's server certificate (TCP only)."""

    tls_cert: Path | None = None
    """Client certificate for mTLS (TCP only; needs ``--tls-key``)."""

    tls_key: Path | None = None
    """Client key for mTLS (TCP only; needs ``--tls-cert``)."""

    tls_server_name: str | None = None
    """Name to verify buildkitd's certificate against, when it differs from the host."""

    arch: str | None = None
    """Override the architecture learned from ListWorkers (the manifests set it,
    so the label is right even before buildkitd first answers)."""

    listen: str = "0.0.0.0:9090"
    """Public listener: /healthz, /readyz, /metrics, /status (and token /drain)."""

    admin_listen: str = "127.0.0.1:9091"
    """Loopback listener for /drain: reachable only from inside the pod, where
    the preStop ``exec`` hook runs."""

    agent_listen: str = "0.0.0.0:9092"
    """HAProxy agent-check listener: each router probe gets this builder's state
    and load in one line (``none`` disables it). Every address: the routers run
    in other pods."""

    build_slots: int = 2
    """Builds this builder takes before the agent calls it full (its load tiers
    compare the active builds with it). Set it to the pool's
    ``targetBuildsPerReplica`` (2 shipped), so the router and the autoscaler agree
    on what full means."""

    resync_interval_seconds: float = 30.0
    """One-shot snapshot that repairs any missed event. 30 s bounds a phantom
    build's life while costing one tiny RPC per half minute."""

    rpc_timeout_seconds: float = 10.0
    """Deadline of Info, ListWorkers and snapshot calls. A local daemon answers in
    milliseconds; 10 s tolerates a daemon busy with a heavy build."""

    reconnect_initial_seconds: float = 0.5
    """First reconnect delay; doubles (with full jitter) on each failure."""

    reconnect_max_seconds: float = 10.0
    """Reconnect delay cap: a restarted daemon is seen again within 10 s."""

    drain_quiet_seconds: float = 5.0
    """A drain releases only after the builder has been idle this long, so a
    client's follow-up build (buildx often runs several) is not cut off."""

    drain_min_seconds: float = 0.0
    """Shortest drain: set it to the load balancer's deregistration time, during
    which new builds can still arrive after readiness fails."""

    drain_timeout_seconds: float = 3300.0
    """Drain deadline: 55 min, kept below the pod's terminationGracePeriodSeconds
    (3600 in the shipped manifests) so the hook answers before the kubelet kills."""

    drain_gone_seconds: float = 30.0
    """After buildkitd was lost uncleanly, how long its socket must stay missing
    (or refuse connections) before a drain gives up waiting for it."""

    drain_token_file: Path | None = None
    """If set, /drain is also served on the public listener and requires
    ``Authorization: Bearer <token>`` (the file's content, trimmed)."""

    log_level: str = "info"
    """Lowest log level written (debug, info, warning, error)."""


@dataclass(frozen=True)
class Option:
    """How one settings field is spelled on the command line, with its range."""

    field: str
    flag: str
    unit: str
    range: str
    parse: Callable[[str], Any]
    check: Callable[[Any], str | None] = lambda _v: None
    expects: str = "a number"
    """What a value that ``parse`` refuses should have been, for the error message."""

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.field.upper()


def _seconds(low: float, high: float, *, low_open: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not math.isfinite(value):
            return "must be a finite number"
        if value < low or (low_open and value == low) or value > high:
            left = "(" if low_open else "["
            return f"must be in {left}{low:g}, {high:g}]"
        return None

    return check


def _hostport(value: str) -> str | None:
    try:
        host_port(value)
    except ValueError as e:
        return str(e)
    return None


def _listener_or_none(value: str) -> str | None:
    if value == DISABLED:
        return None
    problem = _hostport(value)
    return None if problem is None else f"{problem}, or {DISABLED}"


def _count(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be in [{low}, {high}]"

    return check


def _level(value: str) -> str | None:
    return None if value in ("debug", "info", "warning", "error") else "must be debug, info, warning or error"


def _arch(value: str | None) -> str | None:
    return None if value is None else arch_problem(value)


DAY = 86400.0
OPTIONS: tuple[Option, ...] = (
    Option("buildkit_addr", "--buildkit-addr", "URL", "unix:// or tcp://", str, buildkit_address_problem),
    Option("tls_ca_cert", "--tls-ca-cert", "path", "readable file", Path),
    Option("tls_cert", "--tls-cert", "path", "readable file", Path),
    Option("tls_key", "--tls-key", "path", "readable file", Path),
    Option("tls_server_name", "--tls-server-name", "DNS name", "any", str),
    Option("arch", "--arch", "Go arch", "amd64, arm64, …", str, _arch),
    Option("listen", "--listen", "host:port", "port 1–65535", str, _hostport),
    Option("admin_listen", "--admin-listen", "host:port", "port 1–65535", str, _hostport),
    Option("agent_listen", "--agent-listen", "host:port", "port 1–65535, or none", str, _listener_or_none),
    Option("build_slots", "--build-slots", "builds", "1–1000", int, _count(1, 1000), "a whole number"),
    Option("resync_interval_seconds", "--resync-interval-seconds", "s", "1–3600", float, _seconds(1, 3600)),
    Option("rpc_timeout_seconds", "--rpc-timeout-seconds", "s", "0.1–300", float, _seconds(0.1, 300)),
    Option("reconnect_initial_seconds", "--reconnect-initial-seconds", "s", "0.01–60", float, _seconds(0.01, 60)),
    Option("reconnect_max_seconds", "--reconnect-max-seconds", "s", "0.1–600", float, _seconds(0.1, 600)),
    Option("drain_quiet_seconds", "--drain-quiet-seconds", "s", "0–3600", float, _seconds(0, 3600)),
    Option("drain_min_seconds", "--drain-min-seconds", "s", "0–3600", float, _seconds(0, 3600)),
    Option("drain_timeout_seconds", "--drain-timeout-seconds", "s", "1–86400", float, _seconds(1, DAY)),
    Option("drain_gone_seconds", "--drain-gone-seconds", "s", "0–3600", float, _seconds(0, 3600)),
    Option("drain_token_file", "--drain-token-file", "path", "readable file, non-empty", Path),
    Option("log_level", "--log-level", "level", "debug, info, warning, error", str, _level),
)


def field_doc(name: str) -> str:
    """The first sentence of a field's docstring, for --help and the docs."""
    tree = ast.parse(inspect.getsource(Settings))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, doc in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == name
            and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant)
        ):
            return " ".join(str(doc.value.value).split())
    return ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option as a flag; defaults come later, from the environment or the dataclass."""
    defaults = Settings()
    for opt in OPTIONS:
        default = getattr(defaults, opt.field)
        parser.add_argument(
            opt.flag,
            dest=opt.field,
            default=None,
            metavar=opt.unit.upper().replace(" ", "_"),
            help=f"{field_doc(opt.field)} [env {opt.env}; default {default}; range {opt.range}]",
        )


def from_sources(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build settings from flags, then environment variables, then defaults.

    Raises :class:`SettingsError` naming the flag, the variable and the reason.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    errors: list[str] = []
    for opt in OPTIONS:
        raw = getattr(args, opt.field, None) if args is not None else None
        source = opt.flag
        if raw is None and environ.get(opt.env, "") != "":
            # an empty variable is unset: manifests often template one in empty
            raw, source = environ[opt.env], opt.env
        if raw is None:
            continue
        try:
            value = opt.parse(raw)
        except ValueError:
            errors.append(f"{source}={raw!r}: must be {opt.expects}")
            continue
        problem = opt.check(value)
        if problem:
            errors.append(f"{source}={raw!r}: {problem}")
            continue
        values[opt.field] = value
    settings = Settings(**values)
    errors.extend(_cross_checks(settings))
    if errors:
        raise SettingsError("; ".join(errors))
    return settings


def _cross_checks(s: Settings) -> list[str]:
    errors = []
    if (s.tls_cert is None) != (s.tls_key is None):
        errors.append("--tls-cert and --tls-key go together")
    if s.buildkit_addr.startswith("unix:") and (s.tls_ca_cert or s.tls_cert):
        errors.append("TLS applies to tcp:// addresses only; buildkitd never serves TLS on its unix socket")
    if s.reconnect_initial_seconds > s.reconnect_max_seconds:
        errors.append("--reconnect-initial-seconds must not exceed --reconnect-max-seconds")
    if s.drain_min_seconds > s.drain_timeout_seconds:
        errors.append("--drain-min-seconds must not exceed --drain-timeout-seconds")
    if s.listen == s.admin_listen:
        errors.append("--listen and --admin-listen must differ")
    if s.agent_listen in (s.listen, s.admin_listen):
        errors.append("--agent-listen must differ from --listen and --admin-listen")
    for name in ("tls_ca_cert", "tls_cert", "tls_key", "drain_token_file"):
        path: Path | None = getattr(s, name)
        if path is not None and not path.is_file():
            flag = next(o.flag for o in OPTIONS if o.field == name)
            errors.append(f"{flag}={str(path)!r}: no such file")
    return errors


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy with some fields changed (tests and benchmarks use this)."""
    return dataclasses.replace(settings, **changes)


def describe(options: Sequence[Option] = OPTIONS) -> list[dict[str, str]]:
    """Rows for the flag table in docs/sidecar.md."""
    defaults = Settings()
    return [
        {
            "flag": o.flag,
            "env": o.env,
            "default": str(getattr(defaults, o.field)),
            "unit": o.unit,
            "range": o.range,
            "doc": field_doc(o.field),
        }
        for o in options
    ]
