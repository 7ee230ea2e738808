"""`make mutate`'s verdict: the score per module, and every surviving mutant accounted for.

Reads ``mutmut results --all true`` (after ``mutmut run``) and the equivalent mutants
listed in docs/mutation.md (list items naming them in backticks). Prints the score
table and, with ``--write``, puts it at the top of docs/mutation.md with the date and
the command. Exits non-zero if a mutant that no test kills is not on the list, or if
the list names a mutant that is now killed or gone (a stale explanation would hide the
next real survivor).

    python -m tests.mutation_report [--write] [--mutmut .venv/bin/mutmut] [--doc docs/mutation.md]
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

BY_TESTS = frozenset({"killed", "timeout"})
"""A test failed, or hung (a mutant that makes a loop spin is caught: the run is bounded)."""
BY_MYPY = "caught by type check"
"""``mypy --strict`` (part of ``make test``) refused the mutant: it could never be merged."""
KILLED = BY_TESTS | {BY_MYPY}

COMMAND = "make mutate"
BEGIN, END = "<!-- score: written by tests/mutation_report.py --write -->", "<!-- /score -->"

_RESULT = re.compile(r"^\s+(?P<name>[\w.]+__mutmut_\d+): (?P<status>.+)$")
_NAME = re.compile(r"`([\w.]+__mutmut_\d+)`")
_MODULE = re.compile(r"^(.*)\.x[_ǁ]")


def read_results(mutmut: str) -> dict[str, str]:
    """Mutant name -> status, from mutmut's own listing."""
    out = subprocess.run([mutmut, "results", "--all", "true"], check=True, capture_output=True, text=True).stdout
    results = {m["name"]: m["status"] for m in map(_RESULT.match, out.splitlines()) if m}
    if not results:
        raise SystemExit("no mutation results: run `mutmut run` first (or `make mutate`)")
    return results


def read_equivalent(doc: Path) -> set[str]:
    """The mutant names on list items of ``doc`` (none if there is no such file yet)."""
    text = doc.read_text() if doc.exists() else ""
    return {name for line in text.splitlines() if line.startswith("- ") for name in _NAME.findall(line)}


def module_of(name: str) -> str:
    """``autoscaler.policy.decide.x_decide__mutmut_3`` -> ``autoscaler.policy.decide``
    (a method's mutant: ``...stepper.xǁPoolStepperǁstep__mutmut_1``)."""
    m = _MODULE.match(name)
    return m[1] if m else name


def verdict(status: str, *, listed: bool) -> str:
    if status in BY_TESTS:
        return "tests"
    if status == BY_MYPY:
        return "mypy"
    return "equivalent" if listed else "unexplained"


def table(results: dict[str, str], equivalent: set[str]) -> list[str]:
    """The score per module: killed (by tests or mypy) out of the mutants that are not equivalent."""
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    for name, status in results.items():
        by_module[module_of(name)][verdict(status, listed=name in equivalent)] += 1
    rows = [
        "| module | mutants | killed by tests | by mypy | equivalent | unexplained | score |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    total: Counter[str] = Counter()
    for module, counts in sorted(by_module.items()):
        total.update(counts)
        rows.append(_row(f"`{module}`", counts))
    rows.append(_row("**all**", total))
    return rows


def _row(label: str, c: Counter[str]) -> str:
    n = sum(c.values())
    killed, real = c["tests"] + c["mypy"], n - c["equivalent"]
    score = f"{killed}/{real} = {100 * killed / real:.1f} %" if real else "n/a"
    return f"| {label} | {n} | {c['tests']} | {c['mypy']} | {c['equivalent']} | {c['unexplained']} | {score} |"


def write_score(doc: Path, rows: list[str]) -> None:
    """Replace the score block at the top of ``doc`` (between BEGIN and END)."""
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc}: no score block ({BEGIN} ... {END}) to replace")
    today = datetime.datetime.now(tz=datetime.UTC).date().isoformat()
    block = [BEGIN, f"Score on {today}, `{COMMAND}` (killed / mutants not equivalent):", "", *rows, END]
    head, rest = text.split(BEGIN, 1)
    doc.write_text(head + "\n".join(block) + rest.split(END, 1)[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mutmut", default=str(Path(sys.executable).parent / "mutmut"))
    parser.add_argument("--doc", type=Path, default=Path("docs/mutation.md"))
    parser.add_argument("--write", action="store_true", help="put the table at the top of --doc")
    args = parser.parse_args()

    results = read_results(args.mutmut)
    equivalent = read_equivalent(args.doc)
    rows = table(results, equivalent)
    print("\n".join(rows))
    if args.write:
        write_score(args.doc, rows)

    unexplained = sorted(n for n, s in results.items() if s not in KILLED and n not in equivalent)
    stale = sorted(n for n in equivalent if results.get(n) is None or results[n] in KILLED)
    for name in unexplained:
        print(f"UNEXPLAINED {results[name]}: {name}  (mutmut show {name})")
    for name in stale:
        print(f"STALE in {args.doc}: {name} is {results.get(name, 'gone')}")
    return 1 if unexplained or stale else 0


if __name__ == "__main__":
    sys.exit(main())
