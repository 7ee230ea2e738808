"""Timestamps on the wire: RFC 3339 in UTC with a ``Z``, in the three precisions used.

* :func:`rfc3339`: logs, ``/status``, traces (``2026-03-02T09:15:00.123456Z``; microseconds
  only when non-zero, as :meth:`datetime.isoformat` writes them);
* :func:`kubernetes_time`: Kubernetes ``Time`` (whole seconds: Events' timestamps);
* :func:`kubernetes_micro_time`: Kubernetes ``MicroTime`` (always microseconds: Leases).
"""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(value: datetime) -> str:
    """``2026-03-02T09:15:00.123456Z``: UTC with a ``Z``, as the sidecar logs it."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def kubernetes_time(value: datetime) -> str:
    """Kubernetes ``Time``: RFC 3339, whole seconds, UTC."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kubernetes_micro_time(value: datetime) -> str:
    """Kubernetes ``MicroTime``: RFC 3339 with microseconds, UTC."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str) -> datetime | None:
    """An aware datetime for RFC 3339 text (``Z`` or an offset required), else None."""
    if "T" not in text and " " not in text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else None
