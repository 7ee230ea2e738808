"""The sidecar's apps served on a real socket exactly as sidecar/main.py serves them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from sidecar.main import http_runner


@contextlib.asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[int]:
    """``app`` served as sidecar/main.py serves it (same runner options), on a free port."""
    runner = http_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        assert runner.addresses
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()
