"""The supervisor standard both programs share: a root task that dies says which it was."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from common.supervision import root_task


async def test_a_root_task_that_dies_is_named_in_the_log_and_stops_its_group() -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    async def forever() -> None:
        await asyncio.Event().wait()

    async def supervise() -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(root_task("follower", forever()))
            tasks.create_task(root_task("controller", broken()))

    with capture_logs() as logs, pytest.raises(ExceptionGroup) as caught:
        await supervise()
    assert [RuntimeError] == [type(e) for e in caught.value.exceptions]
    died = [e for e in logs if e["event"] == "task_died"]
    assert [("controller", "RuntimeError('boom')")] == [(e["task"], e["error"]) for e in died]


async def test_a_cancelled_root_task_is_not_reported_as_dead() -> None:
    task = asyncio.create_task(root_task("elector", asyncio.Event().wait()))
    await asyncio.sleep(0)
    with capture_logs() as logs:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [] == [e for e in logs if e["event"] == "task_died"]
