"""The sidecar's ledger of builds: each history event applied to the tracker, counted and logged.

One ``build_started`` / ``build_completed`` / ``build_vanished`` line per change, never per
poll; the ``build_completed`` line doubles as a trace record for the simulator.
"""

from __future__ import annotations

from datetime import datetime

import structlog

from common.timestamps import rfc3339
from sidecar import buildkit
from sidecar.metrics import Metrics
from sidecar.protocol import control_pb2
from sidecar.state import BuilderState
from sidecar.tracking import Change

log = structlog.get_logger("sidecar.following")


class Ledger:
    """Applies history events to the builder's tracker, and says what each one changed."""

    def __init__(self, *, state: BuilderState, metrics: Metrics) -> None:
        self._state = state
        self._metrics = metrics

    def apply(self, event: control_pb2.BuildHistoryEvent, *, now: float) -> Change:
        """Apply one history event to the tracker, then count and log it."""
        record = buildkit.record_of(event.record)
        tracker = self._state.tracker
        if event.type == control_pb2.STARTED:
            change = tracker.started(ref=record.ref, started_at=record.created_at, now=now)
        elif event.type == control_pb2.COMPLETE:
            change = tracker.completed(
                ref=record.ref,
                error_code=record.error_code,
                error_message=record.error_message,
                started_at=record.created_at,
                completed_at=record.completed_at,
                now=now,
            )
        elif event.type == control_pb2.DELETED:
            change = tracker.deleted(ref=record.ref, now=now)
        else:  # a newer daemon's event type: nothing to do with it
            log.debug("history_event_unknown_type", type=int(event.type))
            return Change()
        if change:
            self.changed(change, source="stream", now=now)
        return change

    def changed(self, change: Change, *, source: str, now: float) -> None:
        """Count a change in the metrics and log each build that started, completed or vanished."""
        state = self._state
        self._metrics.record(change)
        state.refresh(now=now)
        arch = state.arch
        for build in change.started:
            if not any(done.ref == build.ref for done in change.completed):
                log.info(
                    "build_started",
                    arch=arch,
                    ref=build.ref,
                    started_at=_iso(build.started_at),
                    active=len(state.tracker),
                    source=source,
                )
        for done in change.completed:
            log.info(
                "build_completed",
                arch=arch,
                ref=done.ref,
                started_at=_iso(done.started_at),
                completed_at=_iso(done.completed_at),
                duration_seconds=done.duration_seconds,
                result=done.result.value,
                error=done.error or None,
                active=len(state.tracker),
            )
        for build in change.vanished:
            log.warning("build_vanished", arch=arch, ref=build.ref, active=len(state.tracker), source=source)


def _iso(value: object) -> str | None:
    if isinstance(value, datetime):
        return rfc3339(value)
    return None
