"""The pure scaling decision, by worked examples: HPA's behaviour semantics, applied to active
builds (its properties over random inputs are in test_policy_properties.py)."""

from __future__ import annotations

import pytest

from autoscaler.config import Pool
from autoscaler.policy import (
    Direction,
    History,
    Limit,
    Observation,
    PodView,
    Recommendation,
    ScaleEvent,
    decide,
)
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


def test_a_starting_pod_of_unknown_load_adds_no_demand_but_still_blocks_scale_down() -> None:
    # 6 builds need 4 replicas; two new pods are not ready yet and cannot be read
    pods = (
        *_pods(3, 3),
        PodView(name="new-1", active_builds=None, ready=False),
        PodView(name="new-2", active_builds=None, ready=False),
    )
    decision = decide(Observation(current_replicas=4, pods=pods), _pool(), _empty(_pool()), now=0)
    assert (4, 4) == (decision.recommended_replicas, decision.desired_replicas)
    assert "2 starting pods of unknown load not counted" in decision.reason
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


# --- history ------------------------------------------------------------------------------------------


def test_history_updates_return_new_values_and_prune_what_no_window_reaches() -> None:
    pool = _pool(scale_down={"stabilization_window_seconds": 100})  # longest look-back: 100 s
    first = History.empty(pool).record(0.0, 5).scaled(0.0, 3, 5)
    later = first.record(50.0, 4).record(101.0, 2)

    assert (Recommendation(0.0, 5),) == first.recommendations
    assert (Recommendation(50.0, 4), Recommendation(101.0, 2)) == later.recommendations
    assert () == later.scale_events
    assert 100.0 == later.keep_seconds


def test_a_scale_to_the_same_count_is_no_event() -> None:
    assert () == History.empty(_pool()).scaled(0.0, 3, 3).scale_events


def test_reconfigured_history_keeps_entries_for_the_new_longest_window() -> None:
    pool = _pool(scale_down={"stabilization_window_seconds": 600})

    assert 600.0 == History.empty(_pool()).reconfigured(pool).keep_seconds
