"""structlog configuration, done once in ``main()``: JSON lines on stdout.

One event per state change (build started/completed, drain began/ended,
buildkitd lost/regained), never per poll. The ``build_completed`` line carries
``arch``, ``ref``, ``started_at``, ``duration_seconds`` and ``result``: it
doubles as a trace record for the autoscaler's simulator.
"""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info") -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
