"""One supervisor standard for both programs: root tasks that say who died and why.

Each program runs its loops as named root tasks in one :class:`asyncio.TaskGroup`.
When one raises, the group cancels the others and the program exits non-zero; wrapping
each root task in :func:`root_task` makes the log say *which* task died, with its
traceback, once.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import structlog

T = TypeVar("T")

log = structlog.get_logger("supervisor")


async def root_task(name: str, work: Awaitable[T]) -> T:
    """Await ``work``; if it raises (not a cancellation), log ``task_died`` naming ``name``, then re-raise."""
    try:
        return await work
    except Exception as e:
        log.error("task_died", task=name, error=repr(e), exc_info=e)
        raise
