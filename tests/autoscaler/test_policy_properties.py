"""Properties of the scaling decision over random pools, loads and histories (hypothesis):
replicas stay within [min, max], more builds never give fewer replicas, unknown load
never scales down, scale-down never goes faster than its policies allow, and a
constant load settles without flapping."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.config import Pool
from autoscaler.policy import (
    Decision,
    Direction,
    History,
    Observation,
    PodView,
    Recommendation,
    ScaleEvent,
    decide,
)
from tests.autoscaler.decision_inputs import pool_with as _pool

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
