"""CPU architecture names, as Go spells them (``amd64``, ``arm64``, ``386``...).

BuildKit reports platforms with Go's names; pools, traces, ``/status`` and the
sidecar's ``--arch`` all use them. One pattern decides what a valid name is, so
what the sidecar learns from ``ListWorkers`` is always a name the other parts accept.
"""

from __future__ import annotations

import re

PATTERN = re.compile(r"^[a-z0-9]+$")
"""Go's ``GOARCH`` values are lower-case letters and digits, no underscore (``386``, ``mips64le``);
so ``x86_64``, the commonest slip, is refused with the hint to write ``amd64``."""

MAX_LENGTH = 32

PROBLEM = "must be a Go architecture name such as amd64 or arm64"

# Aliases for uname-style spellings from a daemon built or configured by hand.
_GO_NAMES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm", "i386": "386", "i686": "386"}


def go_arch(name: str) -> str:
    """Normalise an architecture name to Go's spelling (``x86_64`` → ``amd64``)."""
    lowered = name.strip().lower()
    return _GO_NAMES.get(lowered, lowered)


def arch_problem(value: str) -> str | None:
    """Why ``value`` is not an architecture name, or None if it is one."""
    if len(value) > MAX_LENGTH or not PATTERN.match(value):
        return PROBLEM
    return None
