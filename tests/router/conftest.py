"""The router tests' fixture: a :class:`~tests.router.fleet.Fleet`, closed whatever the test did."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.router.fleet import Fleet


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    """Start with ``await fleet.start(n)``."""
    async with aiohttp.ClientSession() as http:
        fleet = Fleet(tmp_path, http)
        try:
            yield fleet
        finally:
            await fleet.close()
