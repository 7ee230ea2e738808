"""Read the sidecars' ``/status`` (contract version 1) from every builder pod.

Each pod is asked concurrently, at most ``concurrency`` at a time, each with
its own timeout. Whatever goes wrong (refused, timeout, a 5xx, a body that is
not the contract) becomes a :class:`Unreadable` with the reason: the decision
treats such a pod as busy with unknown load and never scales down on it.

The parser accepts only what it knows: ``version`` 1 (a different version is
refused loudly: the sidecar and the autoscaler were upgraded out of step),
fields of the right types, and ignores fields it does not know, as the
contract asks of readers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = structlog.get_logger("autoscaler.status")

SUPPORTED_VERSION = 1
MAX_STATUS_BYTES = 1024 * 1024
"""A sidecar with a thousand running builds answers ~100 KiB; more is not a sidecar."""


class _Build(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    ref: str
    started_at: str | None = None
    age_seconds: float | None = Field(default=None, ge=0)


class _Status(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)
    version: int
    arch: str | None
    buildkit_up: bool
    draining: bool
    active_count: int | None = Field(ge=0)
    active_builds: list[_Build] | None = None


@dataclass(frozen=True, slots=True)
class SidecarStatus:
    """What one sidecar said."""

    arch: str | None
    buildkit_up: bool
    draining: bool
    active_count: int | None
    """None while the sidecar cannot read its buildkitd: unknown, never 0."""


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Why a pod's status could not be read."""

    reason: str
    version_mismatch: bool = False


class StatusError(ValueError):
    """A body that is not a version-1 ``/status``."""

    def __init__(self, message: str, *, version_mismatch: bool = False) -> None:
        super().__init__(message)
        self.version_mismatch = version_mismatch


def json_object(body: bytes) -> dict[str, Any]:
    """Decode a JSON object, or raise ValueError saying why not (deep nesting included)."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from e
    except RecursionError as e:  # deep nesting ([[[[...) within the size limit
        raise ValueError("not JSON: nested too deeply") from e
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    return raw


def parse_status(body: bytes) -> SidecarStatus:
    """Parse and check a ``/status`` body; raise :class:`StatusError` saying what is wrong."""
    if len(body) > MAX_STATUS_BYTES:
        raise StatusError(f"body of {len(body)} bytes exceeds {MAX_STATUS_BYTES}")
    try:
        raw = json_object(body)
    except ValueError as e:
        raise StatusError(str(e)) from e
    version = raw.get("version")
    if version != SUPPORTED_VERSION:
        raise StatusError(
            f"/status version {version!r} is not supported (this autoscaler reads version {SUPPORTED_VERSION})",
            version_mismatch=True,
        )
    try:
        status = _Status.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(body)'}: {err['msg']}" for err in e.errors()[:5]
        )
        raise StatusError(f"not a /status body: {problems}") from e
    active = status.active_count if status.buildkit_up else None
    if active is not None and status.active_builds is not None and len(status.active_builds) != active:
        raise StatusError("active_count disagrees with active_builds")
    return SidecarStatus(
        arch=status.arch, buildkit_up=status.buildkit_up, draining=status.draining, active_count=active
    )


async def read_bounded(content: aiohttp.StreamReader, *, limit: int) -> bytes:
    """The whole body, or its first ``limit + 1`` bytes if it is longer (the caller
    refuses those). ``StreamReader.read(n)`` alone returns only what has arrived
    so far, which cuts a body that comes in several pieces."""
    body = bytearray()
    while len(body) <= limit:
        chunk = await content.read(limit + 1 - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


async def fetch_one(session: aiohttp.ClientSession, *, url: str, timeout_seconds: float) -> SidecarStatus | Unreadable:
    """GET one ``/status``; never raises for anything the network or the sidecar does."""
    try:
        async with (
            asyncio.timeout(timeout_seconds),
            session.get(url, allow_redirects=False) as response,
        ):
            if response.status != 200:
                return Unreadable(f"HTTP {response.status}")
            body = await read_bounded(response.content, limit=MAX_STATUS_BYTES)
        return parse_status(body)
    except StatusError as e:
        return Unreadable(str(e), version_mismatch=e.version_mismatch)
    except TimeoutError:
        return Unreadable(f"no answer within {timeout_seconds:g} s")
    except aiohttp.ClientError as e:
        return Unreadable(f"{type(e).__name__}: {e}")


async def fetch_all(
    session: aiohttp.ClientSession,
    urls: Mapping[str, str] | Iterable[tuple[str, str]],
    *,
    timeout_seconds: float,
    concurrency: int,
) -> dict[str, SidecarStatus | Unreadable]:
    """Fetch every pod's status (pod name -> URL), ``concurrency`` at a time."""
    pairs = list(urls.items()) if isinstance(urls, Mapping) else list(urls)
    limit = asyncio.Semaphore(concurrency)

    async def bounded(name: str, url: str) -> tuple[str, SidecarStatus | Unreadable]:
        async with limit:
            return name, await fetch_one(session, url=url, timeout_seconds=timeout_seconds)

    results = await asyncio.gather(*(bounded(name, url) for name, url in pairs))
    for name, result in results:
        if isinstance(result, Unreadable) and result.version_mismatch:
            log.error("sidecar_status_version_unsupported", pod=name, reason=result.reason)
    return dict(results)
