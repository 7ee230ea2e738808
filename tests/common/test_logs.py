"""The JSON log lines keep non-ASCII text as is, whatever the locale of the process."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import structlog

from common import logs

TEXT = "café ✓ 构建"


def test_the_production_chain_writes_non_ascii_as_is() -> None:
    out = io.StringIO()
    logger = structlog.wrap_logger(structlog.WriteLogger(out), processors=logs.processors())
    logger.info("config_refused", errors=[f"pools[0].name: {TEXT}"])
    line = out.getvalue()
    assert TEXT in line
    assert "\\u" not in line
    assert [f"pools[0].name: {TEXT}"] == json.loads(line)["errors"]


def test_a_non_utf8_locale_still_gets_utf8_lines_and_no_error() -> None:
    program = (
        "import structlog\n"
        "from common import logs\n"
        "logs.configure()\n"
        f"structlog.get_logger().info('started', path={TEXT!r}, raw='\\udcff')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        env={"PYTHONIOENCODING": "ascii", "PATH": ""},
        timeout=60,
        check=False,
    )
    assert (0, b"") == (done.returncode, done.stderr)
    line = json.loads(done.stdout.decode("utf-8"))
    # the undecodable byte's surrogate is escaped, and the escape is valid JSON for it
    assert (TEXT, "\udcff") == (line["path"], line["raw"])
