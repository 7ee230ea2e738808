"""What docs/deployment.md tells a user to type, read out of its Markdown so the deploy
tests run the guide itself: a section's fenced blocks, the overlay files it shows (a
block whose paragraph opens with the file's path in backticks), and its shell commands.

A guide edit that breaks these shapes fails the tests that use them, naming the section:
that is the point, the guide cannot drift from what the tests prove.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

from tests.deploy.manifests import ROOT

GUIDE = ROOT / "docs" / "deployment.md"

_FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.MULTILINE | re.DOTALL)


def section(heading: str, *, page: Path = GUIDE) -> str:
    """The text under ``heading`` (``## Name`` or ``### Name``) up to the next heading of
    the same or a higher level; fenced blocks are not mistaken for headings."""
    text = page.read_text(encoding="utf-8")
    level, _, title = heading.partition(" ")
    lines = text.splitlines(keepends=True)
    fenced = False
    start: int | None = None
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or not line.startswith("#"):
            continue
        hashes, _, rest = line.rstrip("\n").partition(" ")
        if start is None and hashes == level and rest == title:
            start = i + 1
        elif start is not None and set(hashes) == {"#"} and len(hashes) <= len(level):
            return "".join(lines[start:i])
    assert start is not None, f"{page.name} has no heading {heading!r}"
    return "".join(lines[start:])


def blocks(text: str, language: str) -> list[str]:
    """Every fenced block of ``language``, dedented (blocks inside list items are indented)."""
    return [textwrap.dedent(body) for _, lang, body in _FENCE.findall(text) if lang == language]


def files(text: str, *, prefix: str) -> dict[str, str]:
    """The files a section shows: each fenced block whose preceding paragraph opens with a
    path in backticks under ``prefix`` (`` `fleet/kustomization.yaml`: ``), by path."""
    found: dict[str, str] = {}
    for match in _FENCE.finditer(text):
        paragraph = text[: match.start()].rstrip().rsplit("\n\n", 1)[-1].lstrip()
        path = re.match(rf"`({re.escape(prefix)}[^`]+)`", paragraph)
        if path:
            assert path[1] not in found, f"{path[1]} is shown twice in one section"
            found[path[1]] = textwrap.dedent(match[3])
    return found


def commands(block: str) -> list[list[str]]:
    """The block's commands as argv lists: continuation lines joined, comments dropped, and
    a pipeline cut at its first ``|`` (the command that makes the input is what is checked)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    argvs = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if "|" in words:
            words = words[: words.index("|")]
        if words:
            argvs.append(words)
    return argvs


def driver_opts(argv: list[str]) -> dict[str, str]:
    """A ``docker buildx create`` command's ``--driver-opt`` pairs (``cacert=...,cert=...``)."""
    assert argv[:3] == ["docker", "buildx", "create"], argv
    opts: dict[str, str] = {}
    for i, word in enumerate(argv):
        if word == "--driver-opt":
            for pair in argv[i + 1].split(","):
                key, _, value = pair.partition("=")
                opts[key] = value
    return opts
