"""The README's tables are the truth: every tunable and every metric is in them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from sidecar.metrics import Metrics
from sidecar.settings import OPTIONS, describe
from sidecar.state import BuilderState
from sidecar.tracking import Tracker

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _row(first_cell: str) -> str:
    rows = [line for line in README.splitlines() if line.startswith(f"| `{first_cell}` |")]
    assert 1 == len(rows), f"README needs exactly one table row for {first_cell}"
    return rows[0]


def test_every_sidecar_option_has_a_readme_row_with_env_default_unit_and_range() -> None:
    for option in describe():
        cells = [c.strip() for c in _row(option["flag"]).strip("|").split("|")]
        default = "(unset)" if option["default"] == "None" else f"`{option['default']}`"
        assert [f"`{option['flag']}`", f"`{option['env']}`", default, option["unit"], option["range"]] == cells[:5]
        assert option["doc"].replace("``", "`") == cells[5]
    assert len(OPTIONS) == len(describe())


async def test_every_exposed_metric_family_has_a_readme_row() -> None:
    state = BuilderState(tracker=Tracker(tombstone_seconds=60), arch="amd64", now=asyncio.get_running_loop().time())
    registry = CollectorRegistry()
    Metrics(registry=registry, state=state)
    names = set()
    for family in registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        names.add(family.name + suffix)
    for name in sorted(names):
        _row(name)
    documented = {line.split("`")[1] for line in README.splitlines() if line.startswith("| `buildkit_sidecar_")}
    assert names == documented


def _cell(text: str) -> str:
    return text.replace("``", "`").replace("|", "\\|")


def test_every_autoscaler_config_key_has_a_readme_row_with_type_default_range_and_meaning() -> None:
    from autoscaler.config import reference

    for field in reference():
        cells = [f"`{field.path}`", _cell(field.type), _cell(field.default), _cell(field.range), _cell(field.doc)]
        expected = "| " + " | ".join(cells) + " |"
        assert expected == _row(field.path)


def test_every_autoscaler_metric_has_a_readme_row() -> None:
    from autoscaler.controller.metrics import Metrics as AutoscalerMetrics

    registry = CollectorRegistry()
    AutoscalerMetrics(registry=registry)
    names = {f.name + ("_total" if f.type == "counter" else "") for f in registry.collect()}
    documented = {line.split("`")[1] for line in README.splitlines() if line.startswith("| `buildkit_autoscaler_")}
    assert names == documented


def test_every_test_the_readme_names_exists() -> None:
    import re

    root = Path(__file__).resolve().parents[1]
    named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?", README)
    last_file = None
    missing = []
    for path, test in named:
        last_file = root / path
        if not last_file.exists():
            missing.append(path)
        elif test and f"def {test}(" not in last_file.read_text():
            missing.append(f"{path}::{test}")
    # `::name` right after a file refers to that file
    for test in re.findall(r"`::(\w+)`", README):
        if not any(f"def {test}(" in p.read_text() for p in (root / "tests").rglob("test_*.py")):
            missing.append(f"::{test}")
    assert [] == missing
