"""The pure Tracker: events, duplicates, reordering, tombstones and racing snapshots.

No I/O and no loop: every call gets ``now`` from the test.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.tracking import Change, Result, Tracker

T0 = datetime(2026, 11, 28, 5, 4, 41, tzinfo=UTC)
TOMBSTONE_SECONDS = 60.0


def tracker() -> Tracker:
    return Tracker(tombstone_seconds=TOMBSTONE_SECONDS)


def complete(
    t: Tracker,
    ref: str,
    *,
    now: float,
    code: int = 0,
    message: str = "",
    started_at: datetime | None = T0,
    completed_at: datetime | None = T0 + timedelta(seconds=3),
) -> Change:
    return t.completed(
        ref=ref,
        error_code=code,
        error_message=message,
        started_at=started_at,
        completed_at=completed_at,
        now=now,
    )


# -- events ------------------------------------------------------------------------


def test_started_build_is_active_once_even_if_started_twice() -> None:
    t = tracker()
    first = t.started(ref="a", started_at=T0, now=1.0)
    again = t.started(ref="a", started_at=T0, now=2.0)
    assert ["a"] == [b.ref for b in first.started]
    assert T0 == first.started[0].started_at
    assert 1.0 == first.started[0].seen_at
    assert Change() == again
    assert ["a"] == list(t.active)
    assert 1 == len(t)


def test_started_with_empty_ref_is_ignored() -> None:
    t = tracker()
    assert Change() == t.started(ref="", started_at=T0, now=1.0)
    assert Change() == complete(t, "", now=1.0)
    assert 0 == len(t)
    assert 0 == t.tombstone_count()


def test_complete_removes_the_build_and_reports_result_and_duration() -> None:
    t = tracker()
    t.started(ref="a", started_at=T0, now=1.0)
    change = complete(t, "a", now=4.0, code=2, message="exit code: 3")
    [done] = change.completed
    assert ("a", Result.FAILED, "exit code: 3") == (done.ref, done.result, done.error)
    assert 3.0 == done.duration_seconds
    assert (T0, T0 + timedelta(seconds=3)) == (done.started_at, done.completed_at)
    assert () == change.started
    assert 0 == len(t)
    assert 1 == t.tombstone_count()


def test_duplicate_complete_is_reported_once() -> None:
    t = tracker()
    t.started(ref="a", started_at=T0, now=1.0)
    assert 1 == len(complete(t, "a", now=2.0).completed)
    assert Change() == complete(t, "a", now=5.0)  # the Generation 1 twin, 3 s later
    assert 0 == len(t)


def test_complete_without_created_at_takes_the_start_the_tracker_saw() -> None:
    t = tracker()
    t.started(ref="a", started_at=T0, now=1.0)
    [done] = complete(t, "a", now=2.0, started_at=None).completed
    assert T0 == done.started_at
    assert 3.0 == done.duration_seconds


def test_duration_is_unknown_without_both_timestamps() -> None:
    t = tracker()
    t.started(ref="a", started_at=None, now=1.0)
    [done] = complete(t, "a", now=2.0, started_at=None).completed
    assert done.duration_seconds is None
    [other] = complete(t, "b", now=2.0, completed_at=None).completed
    assert other.duration_seconds is None


def test_duration_is_never_negative_when_clocks_disagree() -> None:
    t = tracker()
    [done] = complete(t, "a", now=1.0, completed_at=T0 - timedelta(seconds=1)).completed
    assert 0.0 == done.duration_seconds


@pytest.mark.parametrize(
    ("code", "result"),
    [(0, Result.SUCCESS), (1, Result.CANCELED), (2, Result.FAILED), (4, Result.FAILED), (14, Result.FAILED)],
)
def test_result_follows_the_grpc_code_of_the_record_error(code: int, result: Result) -> None:
    assert result == Result.from_grpc_code(code)


def test_complete_before_started_is_reported_as_started_and_completed_and_never_active() -> None:
    t = tracker()
    change = complete(t, "fast", now=1.0)
    assert [("fast", T0, 1.0)] == [(b.ref, b.started_at, b.seen_at) for b in change.started]
    assert ["fast"] == [d.ref for d in change.completed]
    assert 0 == len(t)
    assert Change() == t.started(ref="fast", started_at=T0, now=1.1)  # the late STARTED
    assert 0 == len(t)


def test_late_started_is_ignored_until_its_tombstone_expires() -> None:
    t = tracker()
    complete(t, "fast", now=10.0)
    assert Change() == t.started(ref="fast", started_at=T0, now=10.0 + TOMBSTONE_SECONDS - 0.001)
    assert 0 == len(t)
    # Past the tombstone's life the ref is forgotten: the documented limit of the window.
    assert ["fast"] == [b.ref for b in t.started(ref="fast", started_at=T0, now=10.0 + TOMBSTONE_SECONDS).started]


def test_tombstones_expire_oldest_first() -> None:
    t = tracker()
    complete(t, "a", now=0.0)
    complete(t, "b", now=30.0)
    assert 2 == t.tombstone_count()
    t.started(ref="c", started_at=T0, now=TOMBSTONE_SECONDS)  # any call expires what is due
    assert 1 == t.tombstone_count()
    t.started(ref="d", started_at=T0, now=30.0 + TOMBSTONE_SECONDS)
    assert 0 == t.tombstone_count()


def test_deleted_active_build_is_reported_vanished_and_not_re_added() -> None:
    t = tracker()
    t.started(ref="a", started_at=T0, now=1.0)
    change = t.deleted(ref="a", now=2.0)
    assert ["a"] == [b.ref for b in change.vanished]
    assert 0 == len(t)
    assert Change() == t.started(ref="a", started_at=T0, now=3.0)
    assert Change() == complete(t, "a", now=3.0)  # it was already accounted for


def test_deleted_unknown_ref_changes_nothing() -> None:
    t = tracker()
    assert Change() == t.deleted(ref="stored-long-ago", now=1.0)
    assert 0 == t.tombstone_count()


def test_empty_change_is_false_and_any_content_is_true() -> None:
    t = tracker()
    assert not Change()
    assert t.started(ref="a", started_at=None, now=0.0)


# -- snapshots ---------------------------------------------------------------------


def test_snapshot_drops_builds_known_before_it_began_and_missing_from_it() -> None:
    t = tracker()
    t.started(ref="a", started_at=T0, now=1.0)
    t.started(ref="b", started_at=T0, now=1.0)
    token = t.begin_snapshot()
    change = t.apply_snapshot(token, {"b": T0}, now=2.0)
    assert ["a"] == [b.ref for b in change.vanished]
    assert () == change.started
    assert ["b"] == list(t.active)
    assert Change() == complete(t, "a", now=3.0)  # its late COMPLETE is not counted twice


def test_snapshot_drops_the_last_build_learned_before_it_began_if_missing_from_it() -> None:
    t = tracker()
    t.started(ref="a", started_at=T0, now=1.0)
    t.started(ref="last", started_at=T0, now=1.0)
    token = t.begin_snapshot()
    change = t.apply_snapshot(token, {"a": T0}, now=2.0)
    assert ["last"] == [b.ref for b in change.vanished]
    assert ["a"] == list(t.active)


def test_snapshot_keeps_builds_learned_after_it_began() -> None:
    t = tracker()
    token = t.begin_snapshot()
    t.started(ref="new", started_at=T0, now=1.0)  # started while the snapshot was in flight
    change = t.apply_snapshot(token, {}, now=2.0)
    assert Change() == change
    assert ["new"] == list(t.active)


def test_snapshot_keeps_a_build_learned_after_it_began_when_a_complete_came_in_between() -> None:
    t = tracker()
    t.started(ref="a", started_at=T0, now=1.0)
    t.started(ref="b", started_at=T0, now=1.0)
    token = t.begin_snapshot()
    complete(t, "a", now=2.0)  # while the snapshot is in flight: a ends, then c starts
    t.started(ref="c", started_at=T0, now=3.0)
    change = t.apply_snapshot(token, {"b": T0}, now=4.0)  # taken before c started
    assert Change() == change
    assert ["b", "c"] == list(t.active)


def test_snapshot_adds_running_builds_it_did_not_know() -> None:
    t = tracker()
    token = t.begin_snapshot()
    change = t.apply_snapshot(token, {"a": T0, "b": None}, now=1.0)
    assert ["a", "b"] == [b.ref for b in change.started]
    assert {"a": T0, "b": None} == {ref: b.started_at for ref, b in t.active.items()}


def test_snapshot_never_re_adds_a_build_completed_after_it_began() -> None:
    t = tracker()
    t.started(ref="a", started_at=T0, now=1.0)
    token = t.begin_snapshot()
    complete(t, "a", now=2.0)  # overtakes the snapshot, which still lists it
    change = t.apply_snapshot(token, {"a": T0}, now=3.0)
    assert Change() == change
    assert 0 == len(t)


def test_snapshot_never_re_adds_a_build_whose_complete_overtook_everything() -> None:
    t = tracker()
    token = t.begin_snapshot()
    complete(t, "fast", now=1.0)
    assert Change() == t.apply_snapshot(token, {"fast": T0}, now=2.0)
    assert 0 == len(t)


# -- property: any interleaving --------------------------------------------------------

Op = tuple[str, str] | tuple[str, int, frozenset[str]]


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[str], list[Op], list[float]]:
    """Builds, and what reaches the tracker about them in any order.

    Each build gets one COMPLETE or more (the Generation 1 twin), and zero or
    more STARTED (a STARTED can be lost, or delivered twice by a reconnect). A
    snapshot is two operations, its beginning and its application; what it
    lists is any subset of the builds (a snapshot can be stale or early).
    """
    refs = [f"build{i:020d}" for i in range(draw(st.integers(min_value=1, max_value=5)))]
    ops: list[Op] = []
    for ref in refs:
        ops += [("started", ref)] * draw(st.integers(min_value=0, max_value=2))
        ops += [("complete", ref)] * draw(st.integers(min_value=1, max_value=3))
    for number in range(draw(st.integers(min_value=0, max_value=3))):
        listed = frozenset(draw(st.sets(st.sampled_from(refs))))
        ops += [("snapshot", number, listed)] * 2  # first occurrence begins it, second applies it
    order = draw(st.permutations(ops))
    # Time moves forward, but stays inside the tombstones' life (the window the
    # tracker promises to cover): at most 31 operations of 5 s < 1000 s.
    steps = draw(st.lists(st.floats(min_value=0, max_value=5), min_size=len(order), max_size=len(order)))
    return refs, order, steps


@settings(max_examples=400, deadline=None)
@given(deliveries())
def test_no_build_stays_or_becomes_active_after_its_complete_whatever_the_order(
    case: tuple[list[str], list[Op], list[float]],
) -> None:
    refs, order, steps = case
    t = Tracker(tombstone_seconds=1000.0)
    tokens = {}
    active_at_begin: dict[int, set[str]] = {}
    completed_delivered: set[str] = set()
    reported: dict[str, Counter[str]] = {"started": Counter(), "completed": Counter(), "vanished": Counter()}
    now = 0.0
    for op, step in zip(order, steps, strict=True):
        now += step
        if op[0] == "started":
            change = t.started(ref=op[1], started_at=T0, now=now)
        elif op[0] == "complete":
            change = complete(t, op[1], now=now)
            completed_delivered.add(op[1])
        elif op[1] not in tokens:
            tokens[op[1]] = t.begin_snapshot()
            active_at_begin[op[1]] = set(t.active)
            change = Change()
        else:
            change = t.apply_snapshot(tokens[op[1]], dict.fromkeys(op[2], T0), now=now)
            # A snapshot removes only builds active when it began, and not listed in it.
            assert set() == {b.ref for b in change.vanished} - (active_at_begin[op[1]] - op[2])
        reported["started"].update(b.ref for b in change.started)
        reported["completed"].update(d.ref for d in change.completed)
        reported["vanished"].update(b.ref for b in change.vanished)

        # No ref is active after its COMPLETE was applied, ever again.
        assert set() == completed_delivered & set(t.active)
        # Once every build's COMPLETE was delivered, nothing is active.
        if completed_delivered == set(refs):
            assert 0 == len(t)
        # What was reported adds up to what is active (the metrics agree with the gauge).
        ended = reported["completed"] + reported["vanished"]
        assert len(t) == reported["started"].total() - ended.total()
        # Each build starts at most once and ends at most once, and ends only if it started.
        assert all(1 >= n for n in reported["started"].values())
        assert all(1 >= n for n in ended.values())
        assert set() == set(ended) - set(reported["started"])

    # Every build ended exactly once: completed, or (a snapshot overtook its COMPLETE) vanished.
    assert dict.fromkeys(refs, 1) == dict(reported["completed"] + reported["vanished"])
    assert 0 == len(t)
