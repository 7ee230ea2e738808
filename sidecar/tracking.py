"""Which builds are running: a pure state machine fed with BuildKit's history events.

No I/O and no clock of its own: every call takes ``now`` (the event loop's
monotonic time) so tests drive it directly and the follower in
:mod:`sidecar.following` feeds it from the wire.

Three facts about buildkitd shape it (``shared/buildkit-control-api.md``):

* COMPLETE arrives twice for the same build (the record is finalised a moment
  later with a new ``Generation``), so events are applied idempotently.
* Each event is handed to each subscriber from a goroutine of its own, so a fast
  build's COMPLETE can overtake its STARTED. A completed ref leaves a
  *tombstone*, kept for ``tombstone_seconds``, and a STARTED for a tombstoned
  ref is ignored.
* A snapshot (``ActiveOnly, EarlyExit``) races the live stream. It may remove a
  build only if that build was already known when the snapshot began (a newer
  one is simply not in it yet), and it never re-adds a tombstoned ref.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime


class Result(enum.StrEnum):
    """How a build ended, from ``BuildHistoryRecord.error.code``."""

    SUCCESS = "success"
    FAILED = "failed"
    CANCELED = "canceled"

    @classmethod
    def from_grpc_code(cls, code: int) -> Result:
        # google.rpc.Code: 0 OK, 1 CANCELLED; buildkitd reports failures as 2 UNKNOWN.
        if code == 0:
            return cls.SUCCESS
        if code == 1:
            return cls.CANCELED
        return cls.FAILED


@dataclass(frozen=True, slots=True)
class ActiveBuild:
    """A build that is running now."""

    ref: str
    started_at: datetime | None
    """buildkitd's ``CreatedAt`` (UTC); None if the record carried none."""
    seen_at: float
    """Loop time when the sidecar first learned of it."""
    seq: int
    """Order in which the tracker learned of it, for racing snapshots."""


@dataclass(frozen=True, slots=True)
class CompletedBuild:
    """A build the tracker saw end, reported once per ref."""

    ref: str
    result: Result
    started_at: datetime | None
    completed_at: datetime | None
    duration_seconds: float | None
    """From buildkitd's own timestamps when both are present."""
    error: str


@dataclass(frozen=True, slots=True)
class Change:
    """What one event or snapshot did, for metrics and logs."""

    started: tuple[ActiveBuild, ...] = ()
    completed: tuple[CompletedBuild, ...] = ()
    vanished: tuple[ActiveBuild, ...] = ()
    """Builds a snapshot found gone without their COMPLETE (a missed event)."""

    def __bool__(self) -> bool:
        return bool(self.started or self.completed or self.vanished)


@dataclass(frozen=True, slots=True)
class SnapshotToken:
    """Marks when a snapshot began, so builds learned after it are left alone."""

    seq: int


class Tracker:
    """The set of active builds, fed with events and snapshots."""

    def __init__(self, *, tombstone_seconds: float) -> None:
        self.tombstone_seconds = tombstone_seconds
        self._active: dict[str, ActiveBuild] = {}
        # ref -> expiry; insertion order equals expiry order (constant TTL),
        # so expiring is popping from the front.
        self._tombstones: OrderedDict[str, float] = OrderedDict()
        self._seq = 0

    @property
    def active(self) -> dict[str, ActiveBuild]:
        """The running builds by ref (a read-only view by convention)."""
        return self._active

    def __len__(self) -> int:
        return len(self._active)

    def tombstone_count(self) -> int:
        return len(self._tombstones)

    def started(self, *, ref: str, started_at: datetime | None, now: float) -> Change:
        """A STARTED event (live, or a snapshot's entry)."""
        self._expire(now)
        if not ref or ref in self._active or ref in self._tombstones:
            return Change()
        self._seq += 1
        build = ActiveBuild(ref=ref, started_at=started_at, seen_at=now, seq=self._seq)
        self._active[ref] = build
        return Change(started=(build,))

    def completed(
        self,
        *,
        ref: str,
        error_code: int,
        error_message: str,
        started_at: datetime | None,
        completed_at: datetime | None,
        now: float,
    ) -> Change:
        """A COMPLETE event. The first one for a ref counts; duplicates are ignored.

        A COMPLETE for a ref never seen started (it overtook its STARTED) still
        reports the build, so counters and the trace log miss nothing.
        """
        self._expire(now)
        if not ref or ref in self._tombstones:
            return Change()
        self._bury(ref, now)
        self._seq += 1
        known = self._active.pop(ref, None)
        if started_at is None and known is not None:
            started_at = known.started_at
        duration = None
        if started_at is not None and completed_at is not None:
            duration = max(0.0, (completed_at - started_at).total_seconds())
        done = CompletedBuild(
            ref=ref,
            result=Result.from_grpc_code(error_code),
            started_at=started_at,
            completed_at=completed_at,
            duration_seconds=duration,
            error=error_message,
        )
        if known is None:
            ghost = ActiveBuild(ref=ref, started_at=started_at, seen_at=now, seq=self._seq)
            return Change(started=(ghost,), completed=(done,))
        return Change(completed=(done,))

    def deleted(self, *, ref: str, now: float) -> Change:
        """A DELETED event: a stored record was removed. If the ref is still
        active (it should not be), it is treated as gone."""
        self._expire(now)
        build = self._active.pop(ref, None)
        if build is None:
            return Change()
        self._bury(ref, now)
        return Change(vanished=(build,))

    def begin_snapshot(self) -> SnapshotToken:
        """Call just before sending the snapshot request."""
        return SnapshotToken(seq=self._seq)

    def apply_snapshot(
        self,
        token: SnapshotToken,
        running: dict[str, datetime | None],
        *,
        now: float,
    ) -> Change:
        """Reconcile with a snapshot of the running builds (ref -> CreatedAt).

        Builds known before the snapshot began and missing from it ended without
        our seeing their COMPLETE: they are dropped (and tombstoned). Builds in
        it that we did not know are added unless tombstoned: a ref that
        completed after the snapshot began is never re-added.
        """
        self._expire(now)
        vanished = []
        for ref, build in list(self._active.items()):
            if build.seq <= token.seq and ref not in running:
                del self._active[ref]
                self._bury(ref, now)
                vanished.append(build)
        started: list[ActiveBuild] = []
        for ref, started_at in running.items():
            change = self.started(ref=ref, started_at=started_at, now=now)
            started.extend(change.started)
        return Change(started=tuple(started), vanished=tuple(vanished))

    def _bury(self, ref: str, now: float) -> None:
        self._tombstones[ref] = now + self.tombstone_seconds
        self._tombstones.move_to_end(ref)

    def _expire(self, now: float) -> None:
        tombstones = self._tombstones
        while tombstones:
            ref, expiry = next(iter(tombstones.items()))
            if expiry > now:
                break
            del tombstones[ref]
