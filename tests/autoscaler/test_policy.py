"""The pure scaling decision: HPA's behaviour semantics, applied to active builds."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.config import Pool
from autoscaler.policy import (
    Decision,
    Direction,
    History,
    Limit,
    Observation,
    PodView,
    Recommendation,
    ScaleEvent,
    decide,
)


def _pool(**overrides: Any) -> Pool:
    fields: dict[str, Any] = {
        "name": "amd64",
        "namespace": "buildkit",
        "deployment": "buildkitd-amd64",
        "min_replicas": 1,
        "max_replicas": 20,
        "target_builds_per_replica": 2,
        "spare_replicas": 1,
        "scale_down": {"stabilization_window_seconds": 0},
    }
    fields.update(overrides)
    return Pool.model_validate(fields, by_name=True)


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


# --- properties ---------------------------------------------------------------------------------------------

POLICY = st.tuples(st.sampled_from(["Pods", "Percent"]), st.integers(1, 100), st.sampled_from([15.0, 30.0, 60.0]))


@st.composite
def pools(draw: st.DrawFn, *, select: list[str] | None = None, windows: list[float] | None = None) -> Pool:
    min_replicas = draw(st.integers(0, 5))
    max_replicas = draw(st.integers(max(min_replicas, 1), 25))
    spare = draw(st.integers(0 if min_replicas else 1, 3))
    selects = select or ["Max", "Min", "Disabled"]

    def rules(window: float) -> dict[str, Any]:
        policies = draw(st.lists(POLICY, min_size=1, max_size=2))
        return {
            "stabilization_window_seconds": window,
            "select_policy": draw(st.sampled_from(selects)),
            "policies": [{"type": t, "value": v, "period_seconds": p} for t, v, p in policies],
        }

    return _pool(
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        target_builds_per_replica=draw(st.integers(1, 4)),
        spare_replicas=spare,
        tolerance=draw(st.sampled_from([0.0, 0.1, 0.3])),
        scale_up=rules(draw(st.sampled_from([0.0, 0.0, 30.0]))),
        scale_down=rules(draw(st.sampled_from(windows or [0.0, 60.0, 120.0, 300.0]))),
    )


POD = st.builds(
    PodView,
    name=st.just("p"),
    active_builds=st.one_of(st.none(), st.integers(0, 12)),
    terminating=st.booleans(),
    draining=st.booleans(),
)
KNOWN_POD = st.builds(PodView, name=st.just("p"), active_builds=st.integers(0, 12), terminating=st.booleans())


@st.composite
def histories(draw: st.DrawFn, pool: Pool, now: float) -> History:
    recommendations = draw(
        st.lists(st.tuples(st.floats(now - 400, now), st.integers(0, 40), st.booleans()), max_size=8)
    )
    events = draw(st.lists(st.tuples(st.floats(now - 100, now), st.integers(0, 30), st.integers(0, 30)), max_size=4))
    return History(
        keep_seconds=pool.history_seconds,
        recommendations=tuple(Recommendation(at, n, up) for at, n, up in sorted(recommendations)),
        scale_events=tuple(ScaleEvent(at, a, b) for at, a, b in sorted(events)),
    )


@given(data=st.data(), pool=pools(), current=st.integers(0, 40), pods=st.lists(POD, max_size=12))
def test_property_desired_is_always_within_min_and_max(
    data: st.DataObject, pool: Pool, current: int, pods: list[PodView]
) -> None:
    history = data.draw(histories(pool, now=1000.0))
    decision = decide(Observation(current_replicas=current, pods=tuple(pods)), pool, history, now=1000.0)

    assert pool.min_replicas <= decision.desired_replicas <= pool.max_replicas


@given(
    data=st.data(),
    pool=pools(),
    pods=st.lists(KNOWN_POD, min_size=1, max_size=10),
    extra=st.integers(1, 20),
)
def test_property_more_active_builds_never_give_fewer_replicas(
    data: st.DataObject, pool: Pool, pods: list[PodView], extra: int
) -> None:
    current = data.draw(st.integers(0, 30))
    history = data.draw(histories(pool, now=1000.0))
    index = data.draw(st.integers(0, len(pods) - 1))
    busier = list(pods)
    busier[index] = replace(pods[index], active_builds=(pods[index].active_builds or 0) + extra)

    before = decide(Observation(current_replicas=current, pods=tuple(pods)), pool, history, now=1000.0)
    after = decide(Observation(current_replicas=current, pods=tuple(busier)), pool, history, now=1000.0)

    assert before.desired_replicas <= after.desired_replicas
    assert before.recommended_replicas <= after.recommended_replicas


@given(data=st.data(), pool=pools(), pods=st.lists(POD, max_size=10), unknown=st.integers(1, 3))
def test_property_unknown_load_never_scales_down(
    data: st.DataObject, pool: Pool, pods: list[PodView], unknown: int
) -> None:
    current = data.draw(st.integers(pool.min_replicas, pool.max_replicas))
    history = data.draw(histories(pool, now=1000.0))
    view = (*pods, *(PodView(name=f"u{i}", active_builds=None) for i in range(unknown)))
    decision = decide(Observation(current_replicas=current, pods=view), pool, history, now=1000.0)

    assert decision.desired_replicas >= current
    assert Direction.DOWN != decision.direction


@dataclass
class Run:
    """A simulated pool: each decision's desired replicas become the next current."""

    pool: Pool
    history: History
    replicas: int
    trajectory: list[tuple[float, int]]
    decisions: list[tuple[float, Decision]]

    @classmethod
    def begin(cls, pool: Pool, replicas: int) -> Run:
        return cls(pool, History.start(pool, now=0.0, current_replicas=replicas), replicas, [(-math.inf, replicas)], [])

    def step(self, now: float, builds: list[int]) -> Decision:
        pods = tuple(PodView(name=f"p{i}", active_builds=b) for i, b in enumerate(builds))
        decision = decide(Observation(current_replicas=self.replicas, pods=pods), self.pool, self.history, now)
        self.history = self.history.record(now, decision.recommendation)
        if decision.desired_replicas != self.replicas:
            self.history = self.history.scaled(now, self.replicas, decision.desired_replicas)
            self.replicas = decision.desired_replicas
            self.trajectory.append((now, self.replicas))
        self.decisions.append((now, decision))
        return decision

    def replicas_at(self, when: float) -> int:
        """Replicas in effect at ``when``, after any scale made at that very instant."""
        return [n for at, n in self.trajectory if at <= when][-1]


def _spread(total: int, replicas: int) -> list[int]:
    """``total`` builds over ``replicas`` pods (at least one pod, so no build is lost)."""
    pods = max(replicas, 1)
    return [total // pods + (1 if i < total % pods else 0) for i in range(pods)]


# Loads that fall often, so that scale-downs (and their limits) are common.
FALLING_LOADS = st.lists(
    st.tuples(st.floats(1, 40), st.one_of(st.just(0), st.integers(0, 8), st.integers(0, 60))), min_size=5, max_size=60
)


@settings(deadline=None, max_examples=300)
@given(pool=pools(select=["Max", "Min"], windows=[0.0, 0.0, 30.0, 120.0]), data=st.data(), loads=FALLING_LOADS)
def test_property_never_scales_down_faster_than_the_policy_allows(
    pool: Pool, data: st.DataObject, loads: list[tuple[float, int]]
) -> None:
    run = Run.begin(pool, data.draw(st.integers((pool.min_replicas + pool.max_replicas) // 2, pool.max_replicas)))
    now = 0.0
    for gap, total in loads:
        now += gap
        before = run.replicas
        decision = run.step(now, _spread(total, before))
        if decision.desired_replicas >= before:
            continue
        # Each policy's floor, from the replicas in effect when its period began (not from HPA's
        # event arithmetic: this is the same rule, stated as a time series).
        floors = []
        for policy in pool.scale_down.policies:
            start = run.replicas_at(now - policy.period_seconds)
            if policy.type == "Pods":
                floors.append(start - policy.value)
            else:
                floors.append(math.trunc(start * (1 - policy.value / 100)))
        floor = min(floors) if pool.scale_down.select_policy == "Max" else max(floors)
        assert decision.desired_replicas >= min(floor, before)


@settings(deadline=None)
@given(pool=pools(), data=st.data(), total=st.integers(0, 60), poll=st.sampled_from([5.0, 15.0]))
def test_property_constant_load_settles_without_flapping(
    pool: Pool, data: st.DataObject, total: int, poll: float
) -> None:
    run = Run.begin(pool, data.draw(st.integers(pool.min_replicas, pool.max_replicas)))
    # Long enough for the slowest drawn policy (1 pod per 60 s over 25 replicas) after a 300 s window.
    steps = int(3000 / poll)
    for i in range(1, steps + 1):
        run.step(i * poll, _spread(total, 1))  # the same builds every cycle, whatever the replicas

    changes = [b - a for (_, a), (_, b) in zip(run.trajectory, run.trajectory[1:], strict=False)]
    assert all(c > 0 for c in changes) or all(c < 0 for c in changes), f"flapped: {run.trajectory[:10]}"
    settled = [d.desired_replicas for at, d in run.decisions if at > 2400]
    assert [run.replicas] * len(settled) == settled


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
