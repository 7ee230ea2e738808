"""structlog configuration, done once in ``main()``: JSON lines on stdout.

One event per state change (build started/completed, drain began/ended,
buildkitd lost/regained), never per poll. The ``build_completed`` line carries
``arch``, ``ref``, ``started_at``, ``duration_seconds`` and ``result``: it
doubles as a trace record for the autoscaler's simulator.
"""

from __future__ import annotations

import io
import logging
import sys

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class AiohttpRecords(logging.Handler):
    """aiohttp's own stdlib log records, as one JSON line each, without their text.

    aiohttp logs a request it cannot parse with the parser's message and a
    traceback; the message quotes the raw request line or header, which can be
    an ``Authorization: Bearer`` line carrying the drain token. Only the
    logger, the error's type and the client's address (``record.args``) are kept.
    """

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        structlog.get_logger(record.name).log(
            record.levelno,
            "http_server_error",
            error=None if error is None else type(error).__name__,
            remote=record.args[0] if isinstance(record.args, tuple) and record.args else None,
        )


def processors() -> list[structlog.typing.Processor]:
    """The production chain: context, level, ISO UTC time, structured tracebacks, one JSON object a line.

    Non-ASCII text (a path, a ConfigMap's message, a build's error) is written as
    is, not as ``\\u`` escapes: the lines stay readable and greppable, and JSON
    lines are UTF-8 by definition.
    """
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.dict_tracebacks,
        structlog.processors.JSONRenderer(ensure_ascii=False),
    ]


def _utf8_stdout() -> None:
    """Standard output in UTF-8 whatever the locale (``PYTHONIOENCODING=ascii``, a Latin-1
    ``LANG``), and a file name that is not valid UTF-8 escaped: a log call never raises."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(encoding="utf-8", errors="backslashreplace")


def configure(level: str = "info") -> None:
    _utf8_stdout()
    structlog.configure(
        processors=processors(),
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    aiohttp_logger = logging.getLogger("aiohttp")
    aiohttp_logger.handlers[:] = [AiohttpRecords()]
    aiohttp_logger.setLevel(logging.WARNING)
    aiohttp_logger.propagate = False
