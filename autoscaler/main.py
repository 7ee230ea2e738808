"""``buildkit-autoscaler``: placeholder until the controller lands."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    sys.stderr.write("buildkit-autoscaler: not implemented yet\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
