"""The README and its docs/ pages are the truth: every tunable and every metric is in them.

"The docs" below is README.md plus every docs/*.md. A table generated from the code
is checked against the code wherever it lives; a test, a file or a link the docs
name must exist, so moving a section or renaming a test cannot leave them stale.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path

from prometheus_client import CollectorRegistry

from sidecar.metrics import Metrics
from sidecar.settings import OPTIONS, describe
from sidecar.state import BuilderState
from sidecar.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]
README_PATH = ROOT / "README.md"
DOCS_PAGES = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README_PATH, *DOCS_PAGES]
TEXTS = {page: page.read_text() for page in PAGES}
README = TEXTS[README_PATH]
LINES = [line for text in TEXTS.values() for line in text.splitlines()]


def _row(first_cell: str) -> str:
    rows = [line for line in LINES if line.startswith(f"| `{first_cell}` |")]
    assert 1 == len(rows), f"README.md and docs/ need exactly one table row for {first_cell}, found {len(rows)}"
    return rows[0]


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


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
    documented = {line.split("`")[1] for line in LINES if line.startswith("| `buildkit_sidecar_")}
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
    documented = {line.split("`")[1] for line in LINES if line.startswith("| `buildkit_autoscaler_")}
    assert names == documented


def test_every_test_the_readme_names_exists() -> None:
    missing = []
    for page, text in TEXTS.items():
        for path, test in re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?", text):
            file = ROOT / path
            if not file.exists():
                missing.append(f"{_name(page)}: {path}")
            elif test and f"def {test}(" not in file.read_text():
                missing.append(f"{_name(page)}: {path}::{test}")
        # `::name` right after a file refers to that file
        for test in re.findall(r"`::(\w+)`", text):
            if not any(f"def {test}(" in p.read_text() for p in (ROOT / "tests").rglob("test_*.py")):
                missing.append(f"{_name(page)}: ::{test}")
    assert [] == missing


FENCED = r"^ *```.*?^ *```"  # a fenced code block, also indented in a list item


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code: what renders as Markdown."""
    text = re.sub(FENCED, "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def _links(text: str) -> list[str]:
    """Every relative link target, `path`, `path#anchor` or `#anchor` (web addresses left out)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", _prose(text))
    return [t for t in targets if "://" not in t and not t.startswith("mailto:")]


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6} +(.+?) *$", re.sub(FENCED, "", page.read_text(), flags=re.M | re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_relative_link_points_to_an_existing_file_and_heading() -> None:
    broken = []
    for page, text in TEXTS.items():
        for target in _links(text):
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{_name(page)}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{_name(page)}: {target} (no such heading)")
    assert [] == broken


def test_every_file_the_docs_name_exists() -> None:
    """A path in backticks (`deploy/config.yaml`, `autoscaler/policy/`) is a promise that it is there."""
    tops = "common|sidecar|autoscaler|fakes|proto|deploy|bench|docs|tests"
    missing = [
        f"{_name(page)}: {path}"
        for page, text in TEXTS.items()
        for path in re.findall(rf"`((?:{tops})/[\w./-]*)", text)
        if not (ROOT / path).exists()
    ]
    assert [] == missing


def test_the_readme_links_every_docs_page_and_the_references_the_guide_requires() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in _links(README)}
    assert [] == [_name(page) for page in DOCS_PAGES if page.resolve() not in linked]
    # The install and the two commands in the README itself; the rest may be a link away.
    for required in ("make demo", "make test", "pip install", "kubectl apply -k deploy"):
        assert required in README
    for target in (
        "docs/configuration.md",
        "docs/sidecar.md#flags-and-environment-variables",
        "docs/sidecar.md#endpoints",
        "docs/sidecar.md#metrics",
        "docs/autoscaler.md#metrics",
        "docs/deployment.md",
        "docs/deployment.md#troubleshooting",
    ):
        assert target in _links(README)


def test_the_smallest_config_the_readme_shows_is_valid() -> None:
    from autoscaler.config import load_config

    section = README.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)^ *```", section, re.MULTILINE | re.DOTALL)
    assert 1 == len(blocks)
    load_config(textwrap.dedent(blocks[0]))


def _map_rows() -> list[tuple[list[str], str]]:
    """The README's "What lives where" table: (the paths of the first cell, the rest of the row)."""
    section = README.split("### What lives where", 1)[1].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            first, rest = line[2:].split(" | ", 1)
            rows.append((re.findall(r"`([^`]+)`", first), rest))
    return rows


def _mapped(module: str, paths: list[str], rest: str) -> bool:
    """Named in the first cell, or under a folder there and named (or its subfolder named) in the row."""
    if module in paths:
        return True
    for folder in (p for p in paths if p.endswith("/") and module.startswith(p)):
        parts = module[len(folder) :].split("/")
        if f"`{parts[-1]}`" in rest or (len(parts) > 1 and f"`{parts[0]}/`" in rest):
            return True
    return False


def test_the_architecture_map_covers_every_module_and_names_only_what_exists() -> None:
    rows = _map_rows()
    modules = sorted(
        p.relative_to(ROOT).as_posix()
        for top in ("sidecar", "autoscaler", "common", "fakes")
        for p in (ROOT / top).rglob("*.py")
        if p.name != "__init__.py" and "_pb2" not in p.name
    )
    assert [] == [m for m in modules if not any(_mapped(m, paths, rest) for paths, rest in rows)]
    missing = [p for paths, _ in rows for p in paths if not (ROOT / p).exists()]
    for paths, rest in rows:
        folders = [p for p in paths if p.endswith("/")]
        for name in re.findall(r"`([\w/]+\.py|[\w/]+/)`", rest):
            # a name may sit deeper (`sidecars.py` in controller/sources/) or be spelled from the root
            found = (ROOT / name).exists() or any(
                p.as_posix().endswith("/" + name.rstrip("/")) for f in folders for p in (ROOT / f).rglob("*")
            )
            if folders and not found:
                missing.append(f"{folders[0]} {name}")
    assert [] == missing


def test_every_simulate_flag_has_a_row_with_its_default_and_range() -> None:
    import argparse

    from autoscaler.simulator import commands
    from autoscaler.simulator.model import FleetModel

    commands_parser = argparse.ArgumentParser()
    commands.add_simulate(commands_parser.add_subparsers())
    simulate = next(a for a in commands_parser._actions if isinstance(a, argparse._SubParsersAction)).choices[
        "simulate"
    ]
    model = FleetModel()
    from_model = {"routers": model.routers, "agent_interval": model.agent_interval_seconds,
                  "client_deadline_seconds": model.client_deadline_seconds,
                  "router_queue_seconds": model.router_queue_seconds}  # fmt: skip
    ranges = {"_positive": "> 0", "_non_negative": "≥ 0", "_positive_int": "≥ 1"}
    page = TEXTS[ROOT / "docs" / "simulator.md"].splitlines()
    documented = set()
    for action in simulate._actions:
        flag = max(action.option_strings, key=len, default="")
        if flag in ("", "--help"):
            continue
        rows = [line for line in page if re.match(rf"\| `{flag}( [A-Z0-9]+)?` \|", line)]
        assert 1 == len(rows), f"docs/simulator.md needs one flag table row for {flag}, found {len(rows)}"
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        documented.add(flag)
        default = from_model.get(action.dest, action.default)
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            assert f"`{default:g}`" == cells[1], flag
        elif isinstance(default, str):
            assert f"`{default}`" == cells[1], flag
        type_name = getattr(action.type, "__name__", "")
        if type_name in ranges:
            assert ranges[type_name] == cells[3], flag
        if action.choices:
            assert ", ".join(f"`{c}`" for c in action.choices) == cells[3], flag
    table = {m.group(1) for line in page if (m := re.match(r"\| `(--[\w-]+)[ `]", line))}
    assert documented == table
