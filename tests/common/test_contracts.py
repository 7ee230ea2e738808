"""The shared contracts: one rule each, the same answer from every part that applies it."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone

import pytest
import yaml

from autoscaler.config import ConfigError, load_config
from autoscaler.simulator.trace import TraceError, parse
from common import trace_format
from common.arch import arch_problem, go_arch
from common.timestamps import kubernetes_micro_time, kubernetes_time, parse_rfc3339, rfc3339
from sidecar.main import parser
from sidecar.settings import SettingsError, from_sources

POOL = {"name": "builders", "namespace": "buildkit", "deployment": "buildkitd", "maxReplicas": 4}


def _sidecar_accepts(arch: str) -> bool:
    try:
        from_sources(parser().parse_args(["run", f"--arch={arch}"]), environ={})
    except SettingsError:
        return False
    return True


def _config_accepts(arch: str) -> bool:
    try:
        load_config(yaml.safe_dump({"pools": [{**POOL, "arch": arch}]}))
    except ConfigError:
        return False
    return True


def _trace_accepts(arch: str) -> bool:
    try:
        parse(f"arch,start,duration_seconds\n{arch},0,60\n")
    except TraceError:
        return False
    return True


@pytest.mark.parametrize("reported", ["i386", "i686", "x86_64", "aarch64", "armhf", "amd64", "riscv64", "ppc64le"])
def test_every_arch_the_sidecar_learns_from_list_workers_is_accepted_by_every_part(reported: str) -> None:
    # buildkitd spells i386 workers "386" (Go's name); the sidecar's --arch used to refuse it.
    arch = go_arch(reported)
    assert None is arch_problem(arch)
    assert (True, True, True) == (_sidecar_accepts(arch), _config_accepts(arch), _trace_accepts(arch))


def test_the_sidecar_accepts_386_as_an_arch_override() -> None:
    assert _sidecar_accepts("386")


@pytest.mark.parametrize("name", ["x86_64", "AMD64", "arm 64", "", "a" * 33])
def test_a_non_go_arch_name_is_refused_by_every_part_alike(name: str) -> None:
    assert "must be a Go architecture name such as amd64 or arm64" == arch_problem(name)
    assert (False, False, False) == (_sidecar_accepts(name), _config_accepts(name), _trace_accepts(name))


def test_timestamps_are_utc_with_a_z_in_each_wire_precision() -> None:
    moment = datetime(2026, 3, 2, 10, 15, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert "2026-03-02T09:15:00.123456Z" == rfc3339(moment)
    assert "2026-03-02T09:15:00Z" == kubernetes_time(moment)
    assert "2026-03-02T09:15:00.123456Z" == kubernetes_micro_time(moment)
    assert "2026-03-02T09:15:00Z" == rfc3339(moment.replace(microsecond=0))
    assert moment == parse_rfc3339(rfc3339(moment))
    assert None is parse_rfc3339("2026-03-02T09:15:00")  # no zone: refused, never guessed
    assert None is parse_rfc3339("540")


def test_a_written_trace_reads_back_as_the_same_builds() -> None:
    started = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    out = io.StringIO()
    count = trace_format.write([("amd64", rfc3339(started), 60.0), ("386", rfc3339(started), 0.0004 + 1)], out)
    assert 2 == count
    assert "arch,start,duration_seconds\namd64,2026-03-02T09:00:00Z,60\n386,2026-03-02T09:00:00Z,1\n" == out.getvalue()
    trace = parse(out.getvalue())
    assert [("amd64", 0.0, 60.0), ("386", 0.0, 1.0)] == [
        (b.arch, b.start_seconds, b.duration_seconds) for b in trace.builds
    ]
