"""The pure scaling decision, by worked examples: HPA's behaviour semantics, applied to active
builds (its properties over random inputs are in test_policy_properties.py)."""

from __future__ import annotations

import pytest

from autoscaler.config import Pool
from autoscaler.policy import (
    DRAINING_COST,
    UNKNOWN_LOAD_COST,
    Direction,
    History,
    Limit,
    Observation,
    PodView,
    PoolStepper,
    Recommendation,
    ScaleEvent,
    decide,
    deletion_cost,
    pod_view,
)
from autoscaler.policy.replicaset import Candidate, victims
from tests.autoscaler.decision_inputs import pool_with as _pool


def _pods(*builds: int | None, terminating: int = 0, draining: int = 0) -> tuple[PodView, ...]:
    """Pods with these loads; the first ``terminating``, then ``draining`` ones are leaving."""
    return tuple(
        PodView(
            name=f"builder-{i}",
            active_builds=b,
            terminating=i < terminating,
            draining=terminating <= i < terminating + draining,
        )
        for i, b in enumerate(builds)
    )


def _observe(current: int, *builds: int | None, **leaving: int) -> Observation:
    return Observation(current_replicas=current, pods=_pods(*builds, **leaving))


def _empty(pool: Pool) -> History:
    return History.empty(pool)


# --- the need ---------------------------------------------------------------------------------------


def test_need_is_active_builds_per_target_plus_spare_with_a_readable_reason() -> None:
    decision = decide(_observe(2, 2, 2), _pool(), _empty(_pool()), now=100.0)

    assert 3 == decision.desired_replicas
    assert "4 active builds, 2 per replica, +1 spare → 3; scale 2 → 3" == decision.reason
    assert (Direction.UP, (), 4, 0) == (
        decision.direction,
        decision.limits,
        decision.active_builds,
        decision.unknown_pods,
    )


def test_need_rounds_up_partial_replicas() -> None:
    assert 4 == decide(_observe(4, 3, 2, 0, 0), _pool(), _empty(_pool()), now=0).recommended_replicas


def test_builds_on_terminating_and_draining_pods_count_as_demand() -> None:
    # 3 builds on a terminating pod, 3 on a serving one: ceil(6 / 2) + 1 = 4.
    decision = decide(_observe(2, 3, 3, 0, terminating=1), _pool(), _empty(_pool()), now=0)

    assert 4 == decision.recommended_replicas
    assert decision.reason.startswith("6 active builds (3 on draining or terminating pods), 2 per replica")


def test_a_draining_pod_not_being_deleted_is_not_capacity_and_gets_replaced() -> None:
    # It still counts in the Deployment's replicas but takes no new builds.
    decision = decide(_observe(3, 0, 2, 0, draining=1), _pool(), _empty(_pool()), now=0)

    assert 3 == decision.recommended_replicas  # ceil(2 / 2) + 1 spare + 1 draining
    assert "2 active builds, 2 per replica, +1 spare, +1 draining → 3; hold at 3" == decision.reason


def test_terminating_pods_are_not_replaced() -> None:
    leaving = PodView(name="builder-old", active_builds=2, terminating=True, draining=True)
    observation = Observation(current_replicas=2, pods=(leaving, *_pods(0, 0)))
    decision = decide(observation, _pool(), _empty(_pool()), now=0)

    assert 2 == decision.recommended_replicas  # ceil(2 / 2) + 1: the terminating pod left the replica count


def test_pod_view_counts_a_pod_not_started_as_no_builds_and_not_ready_and_keeps_what_it_is_told() -> None:
    assert PodView(name="p", active_builds=0, ready=False, terminating=True) == pod_view(
        name="p", started=False, active_builds=None, terminating=True
    )
    assert PodView(name="p", active_builds=0, ready=False) == pod_view(name="p", started=False, active_builds=3)
    # started: what the sidecar said; ready, not leaving unless told
    assert PodView(name="p", active_builds=None) == pod_view(name="p", started=True, active_builds=None)
    assert PodView(name="p", active_builds=2, ready=False, terminating=True, draining=True) == pod_view(
        name="p", started=True, active_builds=2, ready=False, terminating=True, draining=True
    )


def test_unknown_load_counts_as_a_full_replica_of_builds() -> None:
    decision = decide(_observe(2, 1, None), _pool(), _empty(_pool()), now=0)

    assert (3, 1, 1) == (decision.recommended_replicas, decision.active_builds, decision.unknown_pods)
    assert decision.reason.startswith(
        "1 active build + 1 ready pod of unknown load counted as 2 builds each, 2 per replica"
    )


def test_unknown_load_blocks_scale_down() -> None:
    decision = decide(_observe(6, 0, 0, 0, 0, 0, None), _pool(), _empty(_pool()), now=0)

    assert 6 == decision.desired_replicas
    assert 2 == decision.recommended_replicas
    assert (Limit.UNKNOWN_LOAD,) == decision.limits
    assert decision.reason.endswith("hold at 6 (no scale-down while 1 pod of unknown load)")


def test_unknown_load_does_not_block_scale_up() -> None:
    assert 6 == decide(_observe(2, 8, None), _pool(), _empty(_pool()), now=0).desired_replicas  # ceil(10 / 2) + 1


def test_negative_builds_are_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="builder-0"):
        decide(_observe(1, -1), _pool(), _empty(_pool()), now=0)
    with pytest.raises(ValueError, match=r"^current_replicas must be ≥ 0, not -1$"):
        decide(_observe(-1), _pool(), _empty(_pool()), now=0)


def test_a_starting_pod_of_unknown_load_adds_no_demand_but_still_blocks_scale_down() -> None:
    # 6 builds need 4 replicas; two new pods are not ready yet and cannot be read
    pods = (
        *_pods(3, 3),
        PodView(name="new-1", active_builds=None, ready=False),
        PodView(name="new-2", active_builds=None, ready=False),
    )
    decision = decide(Observation(current_replicas=4, pods=pods), _pool(), _empty(_pool()), now=0)
    assert (4, 4) == (decision.recommended_replicas, decision.desired_replicas)
    assert (
        "6 active builds (2 starting pods of unknown load not counted), 2 per replica, +1 spare → 4; hold at 4"
    ) == decision.reason
    one_of_each = (
        *_pods(3),
        PodView(name="old", active_builds=None),
        PodView(name="new", active_builds=None, ready=False),
    )
    assert decide(Observation(current_replicas=4, pods=one_of_each), _pool(), _empty(_pool()), now=0).reason.startswith(
        "3 active builds + 1 ready pod of unknown load counted as 2 builds each (1 starting pod of unknown load not"
    )
    idle = (*_pods(0, 0), PodView(name="new-1", active_builds=None, ready=False))
    held = decide(Observation(current_replicas=5, pods=idle), _pool(), _empty(_pool()), now=10_000)
    assert 5 == held.desired_replicas


def test_repeated_scale_ups_with_starting_pods_converge_instead_of_running_away() -> None:
    pool = _pool()
    history = _empty(pool)
    current = 2
    for cycle in range(20):
        # the two original pods hold 3 builds each; every pod added since is still starting
        pods = (*_pods(3, 3), *(PodView(name=f"new-{i}", active_builds=None, ready=False) for i in range(current - 2)))
        decision = decide(Observation(current_replicas=current, pods=pods), pool, history, now=cycle * 5.0)
        history = history.record(cycle * 5.0, decision.recommendation)
        if decision.desired_replicas != current:
            history = history.scaled(cycle * 5.0, current, decision.desired_replicas)
            current = decision.desired_replicas
    assert 4 == current


# --- range --------------------------------------------------------------------------------------------


def test_demand_above_max_is_capped_but_still_reported() -> None:
    decision = decide(_observe(20, *[4] * 20), _pool(), _empty(_pool()), now=0)

    assert (20, 41) == (decision.desired_replicas, decision.recommended_replicas)
    assert (Limit.MAX_REPLICAS,) == decision.limits
    assert decision.reason.endswith("hold at 20 (capped at maxReplicas 20)")


def test_need_below_min_is_raised_to_min() -> None:
    pool = _pool(min_replicas=3)
    decision = decide(_observe(5, 0, 0, 0, 0, 0), pool, _empty(pool), now=0)

    assert (3, 1) == (decision.desired_replicas, decision.recommended_replicas)
    assert (Limit.MIN_REPLICAS,) == decision.limits


def test_current_above_max_goes_straight_to_max_ignoring_windows_and_policies() -> None:
    pool = _pool(max_replicas=4, scale_down={"stabilization_window_seconds": 300, "select_policy": "Disabled"})
    decision = decide(_observe(9, *[2] * 9), pool, _empty(pool), now=0)

    assert (4, Direction.DOWN) == (decision.desired_replicas, decision.direction)
    assert "current above maxReplicas 4" in decision.reason


def test_current_below_min_goes_straight_to_min() -> None:
    pool = _pool(min_replicas=2)

    assert 2 == decide(_observe(0), pool, _empty(pool), now=0).desired_replicas


# --- tolerance ---------------------------------------------------------------------------------------


def test_no_change_within_tolerance() -> None:
    pool = _pool(tolerance=0.1)
    decision = decide(_observe(10, *[2] * 8, 0, 0), pool, _empty(pool), now=0)  # need 9: |9 - 10| ≤ 1

    assert (10, 9, 10) == (decision.desired_replicas, decision.recommended_replicas, decision.recommendation)
    assert (Limit.TOLERANCE,) == decision.limits


def test_change_beyond_tolerance_is_made() -> None:
    pool = _pool(tolerance=0.1)

    assert 8 == decide(_observe(10, *[2] * 7, 0, 0, 0), pool, _empty(pool), now=0).desired_replicas


# --- stabilization ------------------------------------------------------------------------------------


def _history(pool: Pool, *recommendations: tuple[float, int], events: tuple[ScaleEvent, ...] = ()) -> History:
    return History(
        keep_seconds=pool.history_seconds,
        recommendations=tuple(Recommendation(at, replicas) for at, replicas in recommendations),
        scale_events=events,
    )


def test_scale_down_takes_the_highest_recommendation_within_its_window() -> None:
    pool = _pool(scale_down={"stabilization_window_seconds": 120})
    history = _history(pool, (0.0, 8), (60.0, 6), (100.0, 4))
    decision = decide(_observe(8, *[0] * 8), pool, history, now=150.0)  # (0, 8) is out of the window

    assert 6 == decision.desired_replicas
    assert (Limit.SCALE_DOWN_WINDOW,) == decision.limits
    assert "scale-down window 120 s: highest recent recommendation 6" in decision.reason


def test_scale_down_happens_once_the_window_has_passed() -> None:
    pool = _pool(scale_down={"stabilization_window_seconds": 120})
    history = _history(pool, (0.0, 8))

    assert 8 == decide(_observe(8, *[0] * 8), pool, history, now=120.0 - 0.001).desired_replicas
    assert 1 == decide(_observe(8, *[0] * 8), pool, history, now=120.0).desired_replicas


def test_scale_up_takes_the_lowest_recommendation_within_its_window() -> None:
    pool = _pool(scale_up={"stabilization_window_seconds": 60})
    history = _history(pool, (0.0, 2), (30.0, 5))
    decision = decide(_observe(3, *[8] * 3), pool, history, now=70.0)  # (0, 2) is out of the window

    assert 5 == decision.desired_replicas
    assert (Limit.SCALE_UP_WINDOW,) == decision.limits


def test_scale_up_happens_once_the_window_has_passed() -> None:
    pool = _pool(scale_up={"stabilization_window_seconds": 60})
    history = _history(pool, (10.0, 2))

    assert 3 == decide(_observe(3, *[8] * 3), pool, history, now=70.0 - 0.001).desired_replicas
    assert 7 == decide(_observe(3, *[8] * 3), pool, history, now=70.0).desired_replicas  # 3 + 4 per 15 s


def test_restart_seed_holds_scale_down_for_a_window_but_not_scale_up() -> None:
    pool = _pool(scale_down={"stabilization_window_seconds": 300}, scale_up={"stabilization_window_seconds": 60})
    history = History.start(pool, now=1000.0, current_replicas=6)

    assert 6 == decide(_observe(6, *[0] * 6), pool, history, now=1010.0).desired_replicas
    assert 12 == decide(_observe(6, *[4] * 6), pool, history, now=1010.0).desired_replicas  # +100 % per 15 s
    assert 1 == decide(_observe(6, *[0] * 6), pool, history, now=1300.0).desired_replicas


# --- rate limits, exactly as HPA computes them ----------------------------------------------------------


def _down(*policies: tuple[str, int, float], select: str = "Max") -> Pool:
    return _pool(
        min_replicas=0,
        scale_down={
            "stabilization_window_seconds": 0,
            "select_policy": select,
            "policies": [{"type": t, "value": v, "period_seconds": p} for t, v, p in policies],
        },
    )


def _up(*policies: tuple[str, int, float], select: str = "Max") -> Pool:
    return _pool(
        max_replicas=100,
        scale_up={
            "select_policy": select,
            "policies": [{"type": t, "value": v, "period_seconds": p} for t, v, p in policies],
        },
    )


@pytest.mark.parametrize(
    ("pool", "expected"),
    [
        (_down(("Pods", 1, 60)), 9),
        (_down(("Percent", 25, 60)), 7),  # int(10 × 0.75) = 7: truncated, as Go's int32()
        (_down(("Percent", 25, 60), ("Pods", 1, 60)), 7),  # Max: the largest change
        (_down(("Percent", 25, 60), ("Pods", 1, 60), select="Min"), 9),  # Min: the smallest change
        (_down(("Pods", 1, 60), select="Disabled"), 10),
    ],
    ids=["pods", "percent", "max", "min", "disabled"],
)
def test_scale_down_policy_limits_one_step(pool: Pool, expected: int) -> None:
    decision = decide(_observe(10, *[0] * 10), pool, _empty(pool), now=0)

    assert expected == decision.desired_replicas
    assert (Limit.SCALE_DOWN_POLICY,) == decision.limits


def test_scale_down_policy_counts_the_scales_within_its_period() -> None:
    pool = _down(("Pods", 2, 60))
    history = _history(pool, events=(ScaleEvent(100.0, 10, 9),))

    assert 8 == decide(_observe(9, *[0] * 9), pool, history, now=159.0).desired_replicas  # started at 10: 10 - 2
    assert 7 == decide(_observe(9, *[0] * 9), pool, history, now=160.0).desired_replicas  # event left the period


def test_percent_shrink_truncates_as_hpas_float64_arithmetic_does() -> None:
    # int(13 × (1 - 31/100)) = int(8.97) = 8
    assert 8 == decide(_observe(13, *[0] * 13), _down(("Percent", 31, 60)), _empty(_pool()), now=0).desired_replicas


def test_disabled_scale_down_says_so() -> None:
    decision = decide(_observe(10, *[0] * 10), _down(("Pods", 1, 60), select="Disabled"), _empty(_pool()), now=0)

    assert "hold at 10 (scale-down disabled)" in decision.reason


@pytest.mark.parametrize(
    ("pool", "expected"),
    [
        (_up(("Percent", 100, 15), ("Pods", 4, 15)), 6),  # HPA's default: max(2 × 2, 2 + 4)
        (_up(("Percent", 100, 15), ("Pods", 4, 15), select="Min"), 4),
        (_up(("Pods", 1, 15), select="Disabled"), 2),
    ],
    ids=["max", "min", "disabled"],
)
def test_scale_up_policy_limits_one_step(pool: Pool, expected: int) -> None:
    decision = decide(_observe(2, 20, 20), pool, _empty(pool), now=0)

    assert expected == decision.desired_replicas
    assert Limit.SCALE_UP_POLICY == decision.limits[0]


def test_scale_up_policy_starts_the_period_from_before_recent_scale_ups() -> None:
    pool = _up(("Percent", 100, 15), ("Pods", 4, 15))
    history = _history(pool, events=(ScaleEvent(0.0, 2, 6),))

    assert 6 == decide(_observe(6, *[10] * 6), pool, history, now=5.0).desired_replicas  # period started at 2
    assert 12 == decide(_observe(6, *[10] * 6), pool, history, now=15.0).desired_replicas


def test_percent_growth_rounds_as_hpas_float64_arithmetic_does() -> None:
    # HPA computes ceil(25 × (1 + 12/100)) in float64: 28.000000000000004 → 29, not 28.
    assert 29 == decide(_observe(25, *[10] * 25), _up(("Percent", 12, 60)), _empty(_pool()), now=0).desired_replicas


def test_percent_scale_up_from_zero_allows_one_replica() -> None:
    pool = _pool(min_replicas=0, scale_up={"policies": [{"type": "Percent", "value": 100, "period_seconds": 15}]})

    assert 1 == decide(_observe(0), pool, _empty(pool), now=0).desired_replicas
    # 8 builds still running on a pod being deleted need 5 replicas: from zero, one
    assert 1 == decide(_observe(0, 8, terminating=1), pool, _empty(pool), now=0).desired_replicas


def test_percent_scale_up_from_a_period_that_started_above_the_current_replicas_allows_none() -> None:
    # We scaled 0 → 3, then someone else scaled to 0: the period started at 0 - 3 = -3 replicas,
    # and HPA's ceil(-3 × 2) leaves no room until that scale leaves the period.
    pool = _pool(min_replicas=0, scale_up={"policies": [{"type": "Percent", "value": 100, "period_seconds": 15}]})
    history = _history(pool, events=(ScaleEvent(0.0, 0, 3),))

    assert 0 == decide(_observe(0, 8, terminating=1), pool, history, now=10.0).desired_replicas
    assert 1 == decide(_observe(0, 8, terminating=1), pool, history, now=15.0).desired_replicas


# --- what held the decision back, named only when it did ---------------------------------------------


def test_a_hold_names_no_limit_and_no_direction() -> None:
    at_min = decide(_observe(1, 0), _pool(), _empty(_pool()), now=0)  # need 1 = minReplicas 1 = current
    assert (Direction.NONE, ()) == (at_min.direction, at_min.limits)
    assert "0 active builds, 2 per replica, +1 spare → 1; hold at 1" == at_min.reason
    unknown = decide(_observe(3, 1, None, 0), _pool(), _empty(_pool()), now=0)  # 1 + 2 builds need 3
    assert (3, Direction.NONE, ()) == (unknown.desired_replicas, unknown.direction, unknown.limits)


def test_a_scale_down_the_policy_allows_in_full_names_no_limit() -> None:
    decision = decide(_observe(10, *[2] * 8, 0, 0), _down(("Pods", 1, 60)), _empty(_pool()), now=0)  # need 9

    assert (9, ()) == (decision.desired_replicas, decision.limits)


def test_min_replicas_is_named_when_it_binds_before_the_policy_does() -> None:
    pool = _pool(min_replicas=3, scale_down={"policies": [{"type": "Pods", "value": 2, "period_seconds": 60}]})
    decision = decide(_observe(5, *[0] * 5), pool, _empty(pool), now=0)  # need 1; the policy also allows 3

    assert (3, (Limit.MIN_REPLICAS,)) == (decision.desired_replicas, decision.limits)


def test_max_replicas_is_named_when_it_binds_before_the_policy_does() -> None:
    decision = decide(_observe(10, *[4] * 10), _pool(), _empty(_pool()), now=0)  # need 21; the policy allows 20

    assert (20, (Limit.MAX_REPLICAS,)) == (decision.desired_replicas, decision.limits)
    assert decision.reason.endswith("scale 10 → 20 (capped at maxReplicas 20)")


def test_a_need_of_exactly_max_replicas_held_back_by_the_policy_names_only_the_policy() -> None:
    decision = decide(_observe(5, *[8] * 5), _pool(max_replicas=21), _empty(_pool()), now=0)  # need 21

    assert (10, (Limit.SCALE_UP_POLICY,)) == (decision.desired_replicas, decision.limits)


def test_every_limit_that_held_is_named_in_order() -> None:
    decision = decide(_observe(2, 20, 20), _pool(), _empty(_pool()), now=0)  # need 21, max 20

    assert (6, (Limit.SCALE_UP_POLICY, Limit.MAX_REPLICAS)) == (decision.desired_replicas, decision.limits)
    assert decision.reason.endswith("scale 2 → 6 (scale-up policy allows at most 6 now; capped at maxReplicas 20)")


# --- history ------------------------------------------------------------------------------------------


def test_history_updates_return_new_values_and_prune_what_no_window_reaches() -> None:
    pool = _pool(scale_down={"stabilization_window_seconds": 100})  # longest look-back: 100 s
    first = History.empty(pool).record(0.0, 5).scaled(0.0, 3, 5)
    later = first.record(50.0, 4).record(101.0, 2)

    assert (Recommendation(0.0, 5),) == first.recommendations
    assert (Recommendation(50.0, 4), Recommendation(101.0, 2)) == later.recommendations
    assert () == later.scale_events
    assert 100.0 == later.keep_seconds


def test_history_drops_an_entry_exactly_keep_seconds_old_which_no_window_includes() -> None:
    pool = _pool(scale_down={"stabilization_window_seconds": 100})
    history = History.empty(pool).record(0.0, 5).scaled(0.0, 3, 5).record(100.0, 2)

    assert ((Recommendation(100.0, 2),), ()) == (history.recommendations, history.scale_events)


def test_a_scale_to_the_same_count_is_no_event() -> None:
    assert () == History.empty(_pool()).scaled(0.0, 3, 3).scale_events


def test_reconfigured_history_keeps_entries_for_the_new_longest_window() -> None:
    pool = _pool(scale_down={"stabilization_window_seconds": 600})

    assert 600.0 == History.empty(_pool()).reconfigured(pool).keep_seconds


# --- a pool cycle after cycle -----------------------------------------------------------------------------


def test_a_reloaded_pool_keeps_its_history_so_the_scale_down_window_does_not_start_again() -> None:
    pool = _pool(scale_down={"stabilization_window_seconds": 60})
    stepper = PoolStepper(pool)
    assert 5 == stepper.step(_observe(5, *[2] * 4, 0), now=0.0).desired_replicas  # seeded with 5, need 5
    assert 5 == stepper.step(_observe(5, *[0] * 5), now=30.0).desired_replicas  # need 1: the window holds

    reloaded = stepper.reconfigured(_pool(scale_down={"stabilization_window_seconds": 60}, max_replicas=30))
    # 60 s after the last 5: the window has passed. A history started afresh would hold until 130 s.
    assert 1 == reloaded.step(_observe(5, *[0] * 5), now=70.0).desired_replicas
    assert 30 == reloaded.pool.max_replicas


def test_the_stepper_counts_every_scale_it_made_within_a_policy_period() -> None:
    pool = _down(("Pods", 2, 60))  # at most 2 fewer per 60 s, whatever the steps
    stepper = PoolStepper(pool)
    stepper.start(now=-1000.0, current_replicas=5)  # an old seed: no window holds
    current = 5
    for now, builds_per_pod in [(0.0, 1), (10.0, 1), (20.0, 0)]:  # need 4 (5 builds), 3 (4 builds), then 1
        desired = stepper.step(_observe(current, *[builds_per_pod] * current), now=now).desired_replicas
        if desired != current:
            stepper.scaled(now=now, from_replicas=current, to_replicas=desired)
            current = desired
    # 5 → 4 → 3 within 20 s: the period's 2 are spent until the first scale leaves it, at 60 s
    assert 3 == current
    assert 2 == stepper.step(_observe(3, 0, 0, 0), now=60.0).desired_replicas


# --- which pods go first ------------------------------------------------------------------------------------


def test_deletion_cost_ranks_draining_then_idle_then_by_builds_and_unknown_load_last() -> None:
    costs = [
        deletion_cost(PodView(name="p", active_builds=builds, draining=draining))
        for builds, draining in [(2, True), (0, False), (1, False), (7, False), (None, False), (None, True)]
    ]

    assert [DRAINING_COST, 0, 1, 7, UNKNOWN_LOAD_COST, UNKNOWN_LOAD_COST] == costs
    assert DRAINING_COST < 0  # below an idle builder
    assert 10_000 < UNKNOWN_LOAD_COST  # above any load a builder can carry


def test_the_replicaset_deletes_unstarted_then_unready_then_cheapest_then_latest_ready_then_newest() -> None:
    def pod(name: str, *, running: bool = True, ready: bool = True, cost: int = 0, ready_since: float | None = 100.0,
            created_at: float = 0.0) -> tuple[str, Candidate]:  # fmt: skip
        since = ready_since if ready else None
        return name, Candidate(
            running=running, ready=ready, deletion_cost=cost, ready_since=since, created_at=created_at
        )

    pods = [
        pod("ready-longest"),
        pod("ready-later", ready_since=200.0),
        pod("ready-later-newer", ready_since=200.0, created_at=50.0),
        pod("costly-not-ready", ready=False, cost=9),
        pod("not-ready-newer", ready=False, cost=9, created_at=60.0),
        pod("cheap", cost=-1),
        pod("pending", running=False, ready=False, cost=5),
    ]
    expected = [
        "pending",
        "not-ready-newer",
        "costly-not-ready",
        "cheap",
        "ready-later-newer",
        "ready-later",
        "ready-longest",
    ]

    assert expected == [name for name, _ in victims(pods, len(pods), candidate=lambda p: p[1])]
    assert expected[:2] == [name for name, _ in victims(pods, 2, candidate=lambda p: p[1])]
    assert [] == victims(pods, 0, candidate=lambda p: p[1])
