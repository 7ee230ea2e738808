"""The drain: hold the pod's termination until the builder is idle.

A drain marks the builder *draining* (readiness fails at once, so the load
balancer stops sending new builds), then releases when one of these holds:

* ``idle``: no active builds for ``drain_quiet_seconds`` **and** the drain has
  lasted ``drain_min_seconds`` (the load balancer's deregistration time, during
  which builds still arrive: those are waited for too);
* ``buildkitd_gone``: buildkitd exited on its own (its stream ended with OK and
  it refuses connections) or has refused connections for
  ``drain_gone_seconds`` since it was lost: it can run nothing any more. The
  last refusal may be up to a reconnect backoff old (buildkitd restarted in
  the meantime, unseen), so before releasing on it the drain has the follower
  try once more at once, and releases only if that attempt is refused too;
* ``timeout``: ``drain_timeout_seconds`` passed; the reply lists what still runs.

A merely slow buildkitd (timeouts) is not gone: the drain waits for it until
the deadline. Every caller shares one drain; once finished, its result is
answered at once until an operator cancels it (``DELETE /drain``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from dataclasses import dataclass, field

import structlog

from sidecar.metrics import Metrics
from sidecar.settings import Settings
from sidecar.state import BuilderState, Loss

log = structlog.get_logger("sidecar.draining")


class Reason(enum.StrEnum):
    IDLE = "idle"
    BUILDKITD_GONE = "buildkitd_gone"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class DrainResult:
    reason: Reason
    waited_seconds: float
    active_builds: list[dict[str, object]] | None = field(default=None)

    @property
    def drained(self) -> bool:
        return self.reason in (Reason.IDLE, Reason.BUILDKITD_GONE)

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "drained": self.drained,
            "reason": self.reason.value,
            "waited_seconds": round(self.waited_seconds, 3),
        }
        if not self.drained:
            body["active_builds"] = self.active_builds
        return body


class Drainer:
    """One shared drain at a time."""

    def __init__(self, *, settings: Settings, state: BuilderState, metrics: Metrics) -> None:
        self._settings = settings
        self._state = state
        self._metrics = metrics
        self._task: asyncio.Task[DrainResult] | None = None
        self._cancel_requested = False
        self._recheck_after: int | None = None
        """The failed attempt this drain asked the follower to look past (None: not asked)."""

    @property
    def active(self) -> bool:
        """A drain is running or has finished and not been cancelled."""
        return self._task is not None

    def begin(self) -> asyncio.Task[DrainResult]:
        """Start the drain, or return the one already running or finished."""
        if self._task is None:
            self._cancel_requested = False
            self._task = asyncio.create_task(self._drain(), name="drain")
        return self._task

    async def drain(self) -> DrainResult:
        """Join the drain and wait for its result (a caller leaving does not stop it)."""
        return await asyncio.shield(self.begin())

    async def cancel(self) -> bool:
        """Undo the drain: the builder takes builds again. False if none was active."""
        task = self._task
        if task is None:
            return False
        self._cancel_requested = True
        self._state.notify()
        await asyncio.shield(task)
        self._task = None
        # The drain may have finished long ago (idle, timeout): undo its marks here.
        if self._state.draining:
            self._state.draining = False
            self._state.drain_started_unix = None
            self._state.notify()
            log.info("drain_cancelled", arch=self._state.arch)
        return True

    async def close(self) -> None:
        """Stop a running drain at shutdown (no result is sent to anybody)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _drain(self) -> DrainResult:
        state = self._state
        settings = self._settings
        loop = asyncio.get_running_loop()
        start = loop.time()
        self._recheck_after = None
        state.draining = True
        state.drain_started_unix = time.time()
        state.notify()
        log.info(
            "drain_started",
            arch=state.arch,
            active=state.active_count(),
            quiet_seconds=settings.drain_quiet_seconds,
            min_seconds=settings.drain_min_seconds,
            timeout_seconds=settings.drain_timeout_seconds,
        )
        while True:
            now = loop.time()
            reason, wake_at = self._verdict(start=start, now=now)
            if reason is not None:
                break
            await state.wait_changed(max(0.0, wake_at - now))
        waited = loop.time() - start
        result = DrainResult(
            reason=reason,
            waited_seconds=waited,
            active_builds=None
            if reason is not Reason.TIMEOUT
            else state.describe_builds(now=loop.time(), now_unix=time.time()),
        )
        self._metrics.drain_duration.labels(arch=self._metrics.arch, reason=reason.value).observe(waited)
        if reason is not Reason.CANCELLED:
            log_method = log.info if result.drained else log.warning
            log_method(
                "drain_finished",
                arch=state.arch,
                reason=reason.value,
                drained=result.drained,
                waited_seconds=round(waited, 3),
                active=state.active_count(),
                active_refs=[b["ref"] for b in result.active_builds or []] or None,
            )
        return result

    def _verdict(self, *, start: float, now: float) -> tuple[Reason | None, float]:
        """Whether the drain may end now, and if not, when to look again."""
        s = self._settings
        state = self._state
        conn = state.connection
        if self._cancel_requested:
            return Reason.CANCELLED, now
        wake_at = start + s.drain_timeout_seconds
        if conn.loss is Loss.CLEAN_EXIT:
            return Reason.BUILDKITD_GONE, now
        if conn.loss is Loss.REFUSED and conn.refused_since is not None:
            gone_at = conn.refused_since + s.drain_gone_seconds
            if now >= gone_at:
                asked = self._recheck_after
                if asked is not None and conn.attempt > asked:
                    return Reason.BUILDKITD_GONE, now  # refused again, on a fresh attempt: really gone
                if asked is None:
                    self._recheck_after = conn.attempt
                    state.request_recheck()
                # Wait for the attempt's outcome (a state change) or the deadline.
            else:
                wake_at = min(wake_at, gone_at)
        else:
            self._recheck_after = None
        if state.idle_since is not None:
            release_at = max(state.idle_since + s.drain_quiet_seconds, start + s.drain_min_seconds)
            if now >= release_at:
                return Reason.IDLE, now
            wake_at = min(wake_at, release_at)
        if now >= start + s.drain_timeout_seconds:
            return Reason.TIMEOUT, now
        return None, wake_at
