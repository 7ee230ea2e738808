"""The simulator's text outputs: the terminal table, ``report.json``, the comparison and
``comparison.json`` (charts: :mod:`.chart`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from autoscaler.simulator.outcome import BASELINES, Outcome, Report

FIELDS: tuple[tuple[str, str], ...] = (
    ("builder_seconds", "builder-seconds (cost)"),
    ("starting_builder_seconds", "  starting"),
    ("idle_builder_seconds", "  ready, idle"),
    ("busy_builder_seconds", "  ready, busy"),
    ("draining_builder_seconds", "  draining"),
    ("lower_bound_builder_seconds", "lower bound"),
    ("efficiency", "efficiency"),
    ("slowdown_p50", "slowdown p50"),
    ("slowdown_p95", "slowdown p95"),
    ("slowdown_max", "slowdown max"),
    ("waited_builds", "builds that waited"),
    ("wait_p95_seconds", "wait p95 (s)"),
    ("wait_max_seconds", "wait max (s)"),
    ("overloaded_builder_seconds", "overloaded builder-seconds"),
    ("scale_events", "scale events"),
    ("peak_replicas", "peak replicas"),
    ("interrupted_builds", "interrupted builds"),
    ("failed_builds", "failed builds"),
)
"""``report.json``'s metric keys, in table order, with their table labels."""


def cell(key: str, value: float | int | None) -> str:
    """One value as the table prints it."""
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if key.endswith("builder_seconds") or key == "builder_seconds":
        return f"{value:,.0f}"
    if key.endswith("_seconds"):
        return f"{value:,.1f}"
    return f"{value:.3f}"


def _render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        first = row[0].ljust(widths[0])
        rest = [value.rjust(width) for value, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def table(report: Report) -> str:
    """Each pool, the total, and the three baselines' totals, metric by metric."""
    columns: list[tuple[str, Outcome]] = [(name, run.metrics) for name, run in report.run.pools.items()]
    columns.append(("total", report.run.total))
    columns += [(name, report.baseline(name).total) for name in BASELINES]
    rows = [[label, *(cell(key, m.as_dict()[key]) for _, m in columns)] for key, label in FIELDS]
    return _render(["metric", *(name for name, _ in columns)], rows)


def difference(a: float | int | None, b: float | int | None) -> float | int | None:
    """B − A of one metric: an int for counts, None when either side has no value."""
    if a is None or b is None:
        return None
    return b - a


def _change(key: str, a: float | int | None, b: float | int | None) -> str:
    delta = difference(a, b)
    if delta is None or a is None:
        return "–"
    text = cell(key, delta)
    if delta > 0:
        text = "+" + text
    if a and key in ("builder_seconds", "overloaded_builder_seconds"):
        text += f" ({delta / a:+.1%})"
    return text


def comparison(a: Report, b: Report, *, names: tuple[str, str]) -> str:
    """The same trace under two configs: the totals and each pool's, with B − A."""
    scopes: list[tuple[str, Outcome, Outcome]] = [("total", a.run.total, b.run.total)]
    for name, pool_run in a.run.pools.items():
        other = b.run.pools.get(name)
        if other is not None:
            scopes.append((f"pool {name}", pool_run.metrics, other.metrics))
    parts = []
    for scope, ma, mb in scopes:
        da, db = ma.as_dict(), mb.as_dict()
        rows = [
            [label, cell(key, da[key]), cell(key, db[key]), _change(key, da[key], db[key])] for key, label in FIELDS
        ]
        parts.append(_render([scope, names[0], names[1], "change (B − A)"], rows))
    only = sorted(set(b.run.pools) - set(a.run.pools))
    if only:
        parts.append(f"pools only in {names[1]}: {', '.join(only)}\n")
    return "\n".join(parts)


def _differences(a: dict[str, float | int | None], b: dict[str, float | int | None]) -> dict[str, float | int | None]:
    return {key: difference(a[key], b[key]) for key in a}


def comparison_dict(a: Report, b: Report) -> dict[str, object]:
    """``comparison.json``: ``{"a": report A, "b": report B, "b_minus_a": D}``, where D has
    report.json's metrics layout (pools in both A and B, the total, the baselines; the routing,
    the same for both, is in A's and B's) and each metric is B's value minus A's (None where
    either is None)."""
    pools = {
        name: _differences(pool_run.metrics.as_dict(), b.run.pools[name].metrics.as_dict())
        for name, pool_run in a.run.pools.items()
        if name in b.run.pools
    }
    baselines = {
        name: _differences(a.baseline(name).total.as_dict(), b.baseline(name).total.as_dict()) for name in BASELINES
    }
    return {
        "a": a.as_dict(),
        "b": b.as_dict(),
        "b_minus_a": {
            "pools": pools,
            "total": _differences(a.run.total.as_dict(), b.run.total.as_dict()),
            "baselines": baselines,
        },
    }


def write_comparison_json(a: Report, b: Report, path: Path) -> None:
    """``comparison.json`` (:func:`comparison_dict`)."""
    path.write_text(json.dumps(comparison_dict(a, b), indent=2) + "\n", encoding="utf-8")


def write_json(report: Report, path: Path) -> None:
    """``report.json``: ``{"routing": name, "pools": {name: M}, "total": M, "baselines": {"static_peak": M,
    "hpa_default": M, "hpa_default_random": M}}``."""
    path.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
