"""Addresses on the command line: listeners (``host:port``) and buildkitd's control API."""

from __future__ import annotations

from urllib.parse import urlsplit


def host_port(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` too) and check the port; an empty host is ``0.0.0.0``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be host:port with a port from 1 to 65535")
    return host.strip("[]") or "0.0.0.0", int(port)


def buildkit_address_problem(value: str) -> str | None:
    """Why ``value`` is not a buildkitd address (``unix:///path``, ``tcp://host:port``), or None.

    The reason ends with the likely fix when the value is a bare path or ``host:port``.
    """
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:  # a port that is not a number, or out of range
        port = None
    if parts.scheme == "unix" and parts.path:
        return None
    if parts.scheme == "tcp" and parts.hostname and port:
        return None
    reason = "must be unix:///path/to.sock or tcp://host:port"
    if "://" not in value and value.startswith("/"):
        return f"{reason} (a socket path: unix://{value})"
    if "://" not in value and value.rpartition(":")[2].isdigit():
        return f"{reason} (a TCP address: tcp://{value})"
    return reason
