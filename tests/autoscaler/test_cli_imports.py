"""``buildkit-autoscaler`` loads only what the command needs: ``run`` never imports the chart code."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.looptime(False)
def test_the_command_line_imports_no_matplotlib_until_simulate_draws() -> None:
    probe = (
        "import sys, autoscaler.cli as cli; "
        "cli.build_parser().parse_args(['run', '--config-map', 'ns/name']); "
        "print('matplotlib' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert "False" == result.stdout.strip()
