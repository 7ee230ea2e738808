"""What the sidecar knows about its builder, shared by the follower, the drain
and the HTTP endpoints, with a change signal so waiters wake the moment it moves.

Only :mod:`sidecar.following` writes the connection fields; only
:mod:`sidecar.draining` writes ``draining``. Everything runs on one event loop,
so no locks are needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from dataclasses import dataclass

from common.timestamps import rfc3339
from sidecar.tracking import ActiveBuild, Tracker


class Loss(enum.Enum):
    """Why buildkitd cannot be read right now."""

    NONE = "none"
    """Connected."""
    CLEAN_EXIT = "clean_exit"
    """Its history stream ended with OK (its own graceful exit) and it no longer answers."""
    REFUSED = "refused"
    """Its socket is missing or refuses connections: it is not running."""
    SLOW = "slow"
    """It does not answer in time: maybe busy, maybe hung; not proof that it is gone."""
    ERROR = "error"
    """Any other failure (TLS, protocol): not proof that it is gone either."""


@dataclass(frozen=True, slots=True)
class Connection:
    """The follower's view of buildkitd."""

    up: bool = False
    """The history stream is open and a snapshot has reconciled the active set."""
    accepting: bool = True
    """buildkitd still accepts new connections (false once it began its own shutdown)."""
    loss: Loss = Loss.ERROR
    lost_at: float | None = None
    """Loop time when it was lost (or the follower started); None while up."""
    refused_since: float | None = None
    """Loop time since which every attempt was refused; None otherwise."""
    attempt: int = 0
    """Which failed attempt found this loss (the follower counts them; 0 while up or before the
    first). Between attempts (the reconnect backoff) buildkitd may have come back unseen: a
    decision wanting a fresh look asks :meth:`BuilderState.request_recheck` and waits for a
    higher number."""
    detail: str = "not connected yet"


class BuilderState:
    """Shared state with a change signal."""

    def __init__(self, *, tracker: Tracker, arch: str | None, now: float) -> None:
        self.tracker = tracker
        self.arch = arch
        self.arch_overridden = arch is not None
        self.buildkit_version: str | None = None
        self.connection = Connection(lost_at=now)
        self.draining = False
        self.drain_started_unix: float | None = None
        self.idle_since: float | None = None
        self.last_sync_unix: float | None = None
        self.heartbeat = now
        self._changed = asyncio.Event()
        self.recheck_wanted = asyncio.Event()
        """Set by :meth:`request_recheck`; the follower's backoff pause ends when it is."""

    # -- reading ---------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.connection.up

    def active_builds(self) -> list[ActiveBuild] | None:
        """Running builds, oldest first; None while unknown (never an empty list)."""
        if not self.connection.up:
            return None
        return sorted(self.tracker.active.values(), key=lambda b: b.seq)

    def describe_builds(self, *, now: float, now_unix: float) -> list[dict[str, object]] | None:
        """Running builds as JSON objects (``ref``, ``started_at``, ``age_seconds``); None while unknown."""
        builds = self.active_builds()
        if builds is None:
            return None
        out: list[dict[str, object]] = []
        for build in builds:
            if build.started_at is not None:
                started = build.started_at.timestamp()
                age = now_unix - started
                started_at: str | None = rfc3339(build.started_at)
            else:
                age = now - build.seen_at
                started_at = None
            out.append({"ref": build.ref, "started_at": started_at, "age_seconds": round(max(0.0, age), 3)})
        return out

    def active_count(self) -> int | None:
        return len(self.tracker) if self.connection.up else None

    def ready(self) -> tuple[bool, str]:
        """Readiness and why: new builds should come here only if this is true."""
        if self.draining:
            return False, "draining"
        if not self.connection.up:
            return False, f"buildkitd unreachable: {self.connection.detail}"
        if not self.connection.accepting:
            return False, "buildkitd is shutting down and refuses new connections"
        return True, "ok"

    # -- writing ---------------------------------------------------------

    def set_connection(self, connection: Connection, *, now: float) -> None:
        self.connection = connection
        self.refresh(now=now)

    def refresh(self, *, now: float) -> None:
        """Recompute derived fields after any change, then wake the waiters."""
        idle = self.connection.up and len(self.tracker) == 0
        if not idle:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = now
        self.notify()

    def request_recheck(self) -> None:
        """Ask the follower to try buildkitd now instead of at the end of its backoff: a
        decision about to rest on a loss seen a while ago wants a fresh attempt first."""
        self.recheck_wanted.set()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, at_most_seconds: float | None) -> None:
        """Sleep until the next change, or at most ``at_most_seconds``."""
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), at_most_seconds)
