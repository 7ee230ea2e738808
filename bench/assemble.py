"""BENCHMARKS.md from the fragments in ``bench/results/``, under one verdict over every target.

``python -m bench.assemble [--results bench/results] [--out BENCHMARKS.md] [--exit-zero]``.
Each part of the file is a fragment written by the run that measured it (:data:`PARTS` names
the command), with its own commit, date, machine and command beside it. The verdict at the
top counts every row with a target in every fragment: a row whose result is not a pass
(missed, or never judged because nothing was measured) is a miss, and so is a part with no
fragment at all. The exit status is 1 when anything is missed (the file is written all the
same), unless ``--exit-zero``: ``make soak`` and ``make e2e`` answer for their own part only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.report import RESULTS_PATH, Fragment, Row, Section

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / RESULTS_PATH
OUT = ROOT / "BENCHMARKS.md"


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    command: str
    """What writes its fragment."""


PARTS = (
    Part("sidecar", "make bench"),
    Part("autoscaler", "make bench"),
    Part("simulator", "make bench"),
    Part("router", "make bench"),
    Part("e2e", "make e2e"),
    Part("soak", "make soak"),
)
"""Every part BENCHMARKS.md must have, in order: a missing one is a missed target."""


@dataclass(frozen=True, slots=True)
class Miss:
    part: str
    where: str
    """The section (numbered as in the file), or what is missing."""
    row: Row | None
    """None: the part has no fragment."""

    def __str__(self) -> str:
        if self.row is None:
            return f"{self.part}: {self.where}"
        got = self.row.value if self.row.result is not None else f"{self.row.value or 'nothing'}, not judged"
        return f"{self.where}: {self.row.measure} {self.row.target} (measured {got})".replace("  ", " ")


@dataclass(frozen=True, slots=True)
class Verdict:
    targets: int
    misses: tuple[Miss, ...]

    @property
    def ok(self) -> bool:
        return not self.misses

    @property
    def headline(self) -> str:
        if self.ok:
            return f"all {self.targets} targets met"
        return f"{len(self.misses)} of {self.targets} targets missed"


def ordered(fragments: Mapping[str, Fragment], parts: Sequence[Part] = PARTS) -> list[tuple[str, Fragment | None]]:
    """The expected parts in order (None where a fragment is missing), then any others by name."""
    known = [p.name for p in parts]
    extra = sorted(set(fragments) - set(known))
    return [(name, fragments.get(name)) for name in [*known, *extra]]


def numbered(fragments: Mapping[str, Fragment], parts: Sequence[Part] = PARTS) -> list[tuple[str, int, Section]]:
    """Every section with its number in the file (one sequence across the parts)."""
    found: list[tuple[str, int, Section]] = []
    for name, fragment in ordered(fragments, parts):
        for section in fragment.sections if fragment is not None else ():
            found.append((name, len(found) + 1, section))
    return found


def judge(fragments: Mapping[str, Fragment], parts: Sequence[Part] = PARTS) -> Verdict:
    """One verdict over every target row of every fragment; a missing part counts as one missed target."""
    targets = 0
    misses: list[Miss] = []
    commands = {p.name: p.command for p in parts}
    for name, fragment in ordered(fragments, parts):
        if fragment is None:
            targets += 1
            misses.append(Miss(name, f"no results (run `{commands[name]}`)", None))
    for name, number, section in numbered(fragments, parts):
        for row in section.rows:
            if row.is_target:
                targets += 1
                if row.missed:
                    misses.append(Miss(name, f"{number}. {section.title}", row))
    return Verdict(targets=targets, misses=tuple(misses))


def load(results: Path) -> dict[str, Fragment]:
    fragments: dict[str, Fragment] = {}
    for path in sorted(results.glob("*.json")):
        fragment = Fragment.from_json(path.read_text(encoding="utf-8"))
        if fragment.part != path.stem:
            raise ValueError(f"{path} holds part {fragment.part!r}: the file must be named after its part")
        fragments[fragment.part] = fragment
    return fragments


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: Sequence[Row]) -> list[str]:
    lines = ["| measure | value | target | result |", "|---|---:|---|---|"]
    for row in rows:
        result = row.result if row.result is not None else ("**not measured**" if row.is_target else "")
        lines.append(f"| {row.measure} | {row.value} | {row.target} | {result} |")
    return lines


def _met(fragment: Fragment) -> str:
    targets = fragment.targets
    met = sum(not row.missed for row in targets)
    return f"{met} of {len(targets)}"


def _header(fragment: Fragment) -> list[str]:
    m = fragment.measured
    lines = [
        f"Measured at commit **{m.commit}** on {m.date}; machine: {m.machine}; command: `{m.command}`. "
        f"Targets met: {_met(fragment)}.",
    ]
    if m.note:
        lines += ["", f"> {m.note}"]
    if m.details:
        lines += ["", *(f"- {d}" for d in m.details)]
    return lines


def _part(fragment: Fragment, sections: Sequence[tuple[int, Section]]) -> list[str]:
    lines = [f"## {fragment.title}", "", *_header(fragment)]
    if fragment.intro:
        lines += ["", fragment.intro]
    for number, section in sections:
        lines += ["", f"### {number}. {section.title}"]
        if section.method:
            lines += ["", section.method]
        if section.rows:
            lines += ["", *_table(section.rows)]
        if section.notes:
            lines += ["", *(f"- {note}" for note in section.notes)]
        if section.after:
            lines += ["", section.after]
    return lines


def render_fragment(fragment: Fragment) -> str:
    """One fragment alone, its sections numbered from 1 (what a run prints)."""
    return "\n".join(_part(fragment, list(enumerate(fragment.sections, start=1)))) + "\n"


def render(fragments: Mapping[str, Fragment], parts: Sequence[Part] = PARTS) -> str:
    """The whole of BENCHMARKS.md."""
    verdict = judge(fragments, parts)
    sections = numbered(fragments, parts)
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m bench.assemble` from the fragments in `bench/results/`; do not edit by hand. "
        "Each part is written by the run that measured it (`make bench`: sidecar, autoscaler and simulator; "
        "`make e2e`: end-to-end; `make soak`: the long end-to-end run), which then reassembles this file; "
        "each part's header names the commit, date, machine and command of its run. The verdict counts every "
        "row with a target in every part: a result that is not a pass, a value never measured and a part "
        "without results are all misses.",
        "",
        f"**Verdict: {verdict.headline}.**" + (" Missed:" if verdict.misses else ""),
    ]
    if verdict.misses:
        lines += ["", *(f"- {_cell(str(miss))}" for miss in verdict.misses)]
    lines += [
        "",
        "| part | sections | measured at commit | on | written by | targets met |",
        "|---|---|---|---|---|---|",
    ]
    commands = {p.name: p.command for p in parts}
    for name, fragment in ordered(fragments, parts):
        if fragment is None:
            lines.append(f"| {name} | – | **no results** | – | `{commands.get(name, '?')}` | 0 of 1 |")
            continue
        mine = [n for part, n, _ in sections if part == name]
        span = "–" if not mine else (f"{mine[0]}" if len(mine) == 1 else f"{mine[0]}–{mine[-1]}")
        lines.append(
            f"| [{fragment.title}](#{_anchor(fragment.title)}) | {span} | {_cell(fragment.measured.commit)} | "
            f"{fragment.measured.date} | `{commands.get(name, fragment.measured.command)}` | {_met(fragment)} |"
        )
    for name, fragment in ordered(fragments, parts):
        if fragment is not None:
            lines += ["", *_part(fragment, [(n, section) for part, n, section in sections if part == name])]
    return "\n".join(lines) + "\n"


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.assemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the fragments (default bench/results)")
    parser.add_argument("--out", type=Path, default=OUT, help="the file to write (default BENCHMARKS.md)")
    parser.add_argument(
        "--exit-zero", action="store_true", help="exit 0 even when targets are missed (errors still fail)"
    )
    args = parser.parse_args(argv)
    fragments = load(args.results)
    args.out.write_text(render(fragments), encoding="utf-8")
    verdict = judge(fragments)
    print(f"bench.assemble: wrote {args.out}: {verdict.headline}")
    for miss in verdict.misses:
        print(f"  missed: {miss}")
    return 0 if verdict.ok or args.exit_zero else 1


if __name__ == "__main__":
    sys.exit(main())
