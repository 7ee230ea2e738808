"""The router's HAProxy configuration (deploy/base/router/haproxy.cfg) read the way the
deploy tests need it: sections of keyword lines whose words are split as HAProxy splits
them (quotes removed, comments dropped; an escape such as ``\\n`` is kept as written),
a ``server-template`` line's parameters, and HAProxy's time format in seconds. Whether
HAProxy itself accepts the file is ``haproxy -c`` (tests/deploy/test_router.py)."""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass

import pytest

from tests.deploy.manifests import DEPLOY

CONFIG = DEPLOY / "base" / "router" / "haproxy.cfg"

SECTIONS = ("global", "defaults", "frontend", "backend", "listen", "resolvers")

FLAGS = frozenset({"check", "agent-check", "backup", "disabled", "no-check", "ssl"})
"""Server parameters that take no value; every other parameter takes one."""


def haproxy() -> str:
    """Debian's haproxy, which lands in /usr/sbin (often not on a normal user's PATH)."""
    path = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail("haproxy is not installed: install Debian's haproxy package (.ci/install-system-deps does)")
    return path


def sections(text: str) -> dict[str, list[list[str]]]:
    """Each section (``"global"``, ``"backend tier_any"``...) with its lines, as lists of words."""
    found: dict[str, list[list[str]]] = {}
    current: list[list[str]] | None = None
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if not line[0].isspace() and words[0] in SECTIONS:
            name = " ".join(words)
            assert name not in found, f"{name} appears twice"
            current = found[name] = []
        else:
            assert current is not None, f"a line before any section: {line!r}"
            current.append(words)
    return found


def lines(section: list[list[str]], keyword: str) -> list[list[str]]:
    """The section's lines that start with ``keyword`` (which may be two words: ``timeout tunnel``)."""
    key = keyword.split()
    return [w for w in section if w[: len(key)] == key]


def value(section: list[list[str]], keyword: str) -> str:
    """The one argument of the section's one ``keyword`` line."""
    found = lines(section, keyword)
    assert 1 == len(found), f"expected one {keyword!r} line, found {found}"
    (argument,) = found[0][len(keyword.split()) :]
    return argument


_TIME = re.compile(r"(\d+)(us|ms|s|m|h|d)?")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def seconds(text: str) -> float:
    """An HAProxy time (``3400s``, ``1h``, ``500ms``; a bare number is milliseconds) in seconds."""
    match = _TIME.fullmatch(text)
    assert match, f"not an HAProxy time: {text!r}"
    return int(match[1]) * _UNITS[match[2] or "ms"]


@dataclass(frozen=True)
class ServerTemplate:
    prefix: str
    count: int
    address: str
    port: int
    params: dict[str, str | bool]


def server_template(words: list[str]) -> ServerTemplate:
    """``server-template <prefix> <count> <fqdn>:<port> [param [value]]...``"""
    assert "server-template" == words[0], words
    prefix, count, address, *rest = words[1:]
    host, _, port = address.rpartition(":")
    params: dict[str, str | bool] = {}
    while rest:
        key, *rest = rest
        assert key not in params, f"{key} given twice"
        if key in FLAGS:
            params[key] = True
        else:
            params[key], *rest = rest
    return ServerTemplate(prefix, int(count), host, int(port), params)
