"""How many builders a pool needs: a pure decision, no I/O, an injected clock.

:func:`decide` turns one observation of a pool (its Deployment's replicas and
what each builder pod reports) into a :class:`Decision`. :class:`History` holds
the timestamped recommendations and scale events the stabilization windows and
rate limits look back on; it is immutable and updated by pure methods.

The steps, in order (HPA's, so an SRE who knows HPA's ``behavior`` knows these):

1. **Need.** ``ceil(demand ÷ targetBuildsPerReplica) + spareReplicas``, plus one
   replica per *parked* pod (draining but not being deleted: it still counts in
   the Deployment's replicas but takes no new builds, so it is not capacity).
   Demand is every known active build, including those on terminating and
   draining pods (they are still running: scaling down further before they
   finish would cascade), plus ``targetBuildsPerReplica`` for every *ready*
   pod whose load is unknown (it counts as busy: its sidecar passed its
   readiness probe, so it was serving builds, but this cycle could not read
   it). An unknown pod that is not ready (starting: buildkitd not up yet)
   adds no demand: counting a starting pod as a full replica of demand would
   make every scale-up call for more replicas, which start unknown in turn (a
   runaway measured with the Prometheus source, where new pods have no sample
   until the next scrape). Every unknown pod still blocks scale-down (step 7). This is
   :attr:`Decision.recommended_replicas`, before everything below.
2. **Out of range.** If the current replicas lie outside [min, max], go straight
   to the nearest bound (HPA does the same, bypassing windows and policies).
3. **Tolerance.** No change while ``|needed − current| ≤ tolerance × current``
   (HPA's ``|1 − needed/current| ≤ tolerance``, without float noise). The result
   is the *recommendation*, the sample the history records.
4. **Stabilization.** Scale up to at most the lowest recommendation within
   the scale-up window, scale down to at least the highest within the
   scale-down window (both including this cycle's); otherwise hold.
5. **Rate limits**, exactly as HPA computes them: per policy, the replicas at
   the period's start are the current ones minus the net change of the scale
   events within the period; Pods adds or removes ``value``, Percent multiplies
   by ``1 ± value/100`` (rounded up when growing, truncated when shrinking);
   ``selectPolicy`` Max takes the policy allowing the largest change, Min the
   smallest, Disabled forbids the direction.
6. **Clamp** to [minReplicas, maxReplicas] (part of step 5 in HPA).
7. **Unknown load holds the line.** While any pod's load is unknown, the
   decision never goes below the current replicas (the view is partial). The
   [min, max] clamp still wins: a lowered ``maxReplicas`` is an SRE's explicit
   order.

Decisions taken where the issue is silent:

* Scale events are what the caller reports through :meth:`History.scaled`
  (HPA also only counts its own scales); a replica count changed by someone
  else simply becomes the new current.
* From zero replicas a Percent scale-up policy allows one replica (HPA's
  formula would allow none, forever; HPA never meets it, as its
  ``minReplicas`` is at least 1, whereas a pool here may have min 0 and spares).
* :meth:`History.start` seeds the history with the replicas found at start-up,
  so a restarted (or newly elected) autoscaler waits a full scale-down window
  before scaling down, as HPA does after a controller restart. Unlike HPA's
  seed, it does not delay a scale-up.
* ``ready`` on a pod matters only for unknown load (step 1): a starting pod
  is capacity about to arrive, not demand.
* A pod that cannot have builds yet (Pending, no IP) should be reported with
  ``active_builds=0``, not None; None means "its sidecar could not tell us".
"""

from __future__ import annotations

import math

from autoscaler.config import Pool, ScalingRules
from autoscaler.policy.history import History, ScaleEvent
from autoscaler.policy.views import Decision, Direction, Limit, Observation


def replicas_for(demand: int, *, target: int, spare: int) -> int:
    """Step 1's need without parked pods: ``ceil(demand ÷ targetBuildsPerReplica) + spareReplicas``."""
    return math.ceil(demand / target) + spare


def decide(observation: Observation, pool: Pool, history: History, now: float) -> Decision:
    """Decide the pool's replicas from one observation (pure; ``now`` in seconds, any epoch)."""
    current = observation.current_replicas
    if current < 0:
        raise ValueError(f"current_replicas must be ≥ 0, not {current}")
    for pod in observation.pods:
        if pod.active_builds is not None and pod.active_builds < 0:
            raise ValueError(f"pod {pod.name}: active_builds must be ≥ 0, not {pod.active_builds}")

    target = pool.target_builds_per_replica
    known = [p.active_builds for p in observation.pods if p.active_builds is not None]
    active = sum(known)
    unknown = len(observation.pods) - len(known)
    unknown_busy = sum(1 for p in observation.pods if p.active_builds is None and p.ready and not p.terminating)
    leaving = sum(p.active_builds or 0 for p in observation.pods if p.terminating or p.draining)
    parked = sum(1 for p in observation.pods if p.parked)
    needed = replicas_for(active + unknown_busy * target, target=target, spare=pool.spare_replicas) + parked

    explain = _need_text(
        active=active,
        unknown=unknown,
        unknown_busy=unknown_busy,
        leaving=leaving,
        parked=parked,
        pool=pool,
        needed=needed,
    )
    notes: list[str] = []
    limits: list[Limit] = []

    def done(desired: int, recommendation: int) -> Decision:
        direction = Direction.UP if desired > current else Direction.DOWN if desired < current else Direction.NONE
        outcome = f"scale {current} → {desired}" if desired != current else f"hold at {current}"
        detail = f" ({'; '.join(notes)})" if notes else ""
        return Decision(
            current_replicas=current,
            desired_replicas=desired,
            recommended_replicas=needed,
            recommendation=recommendation,
            direction=direction,
            limits=tuple(limits),
            active_builds=active,
            unknown_pods=unknown,
            reason=f"{explain}; {outcome}{detail}",
        )

    # 2. Out of range: straight to the bound, as HPA does.
    if current > pool.max_replicas:
        limits.append(Limit.MAX_REPLICAS)
        notes.append(f"current above maxReplicas {pool.max_replicas}")
        return done(pool.max_replicas, needed)
    if current < pool.min_replicas:
        limits.append(Limit.MIN_REPLICAS)
        notes.append(f"current below minReplicas {pool.min_replicas}")
        return done(pool.min_replicas, needed)

    # 3. Tolerance.
    recommendation = needed
    if needed != current and current > 0 and abs(needed - current) <= pool.tolerance * current:
        recommendation = current
        limits.append(Limit.TOLERANCE)
        notes.append(f"within tolerance {pool.tolerance:g} of {current}")

    # 4. Stabilization.
    up_cutoff = now - pool.scale_up.stabilization_window_seconds
    down_cutoff = now - pool.scale_down.stabilization_window_seconds
    up_bound = min(
        [recommendation] + [r.replicas for r in history.recommendations if r.bounds_scale_up and r.at > up_cutoff]
    )
    down_bound = max([recommendation] + [r.replicas for r in history.recommendations if r.at > down_cutoff])
    stabilized = min(max(current, up_bound), down_bound)
    if recommendation > current and stabilized < recommendation:
        limits.append(Limit.SCALE_UP_WINDOW)
        notes.append(
            f"scale-up window {pool.scale_up.stabilization_window_seconds:g} s: lowest recent recommendation {up_bound}"
        )
    elif recommendation < current and stabilized > recommendation:
        limits.append(Limit.SCALE_DOWN_WINDOW)
        notes.append(
            f"scale-down window {pool.scale_down.stabilization_window_seconds:g} s: "
            f"highest recent recommendation {down_bound}"
        )

    # 5-6. Rate limits and the [min, max] clamp (HPA's convertDesiredReplicasWithBehaviorRate).
    desired = stabilized
    if stabilized > current:
        up_limit = max(_scale_up_limit(pool.scale_up, current, history.scale_events, now), current)
        allowed = min(pool.max_replicas, up_limit)
        if stabilized > allowed:
            desired = allowed
            if up_limit < pool.max_replicas:
                limits.append(Limit.SCALE_UP_POLICY)
                notes.append(_policy_note(pool.scale_up, "scale-up", f"at most {up_limit}"))
    elif stabilized < current:
        down_limit = min(_scale_down_limit(pool.scale_down, current, history.scale_events, now), current)
        allowed = max(pool.min_replicas, down_limit)
        if stabilized < allowed:
            desired = allowed
            if down_limit > pool.min_replicas:
                limits.append(Limit.SCALE_DOWN_POLICY)
                notes.append(_policy_note(pool.scale_down, "scale-down", f"no fewer than {down_limit}"))
    if needed > pool.max_replicas and desired < needed:
        limits.append(Limit.MAX_REPLICAS)
        notes.append(f"capped at maxReplicas {pool.max_replicas}")
    if needed < pool.min_replicas and desired == pool.min_replicas:
        limits.append(Limit.MIN_REPLICAS)
        notes.append(f"raised to minReplicas {pool.min_replicas}")

    # 7. Unknown load holds the line.
    if unknown and desired < current:
        desired = current
        limits.append(Limit.UNKNOWN_LOAD)
        notes.append(f"no scale-down while {_count(unknown, 'pod')} of unknown load")

    return done(desired, recommendation)


def _change_within(events: tuple[ScaleEvent, ...], now: float, period_seconds: float) -> int:
    """Net replicas added (negative: removed) by the scale events within the period."""
    cutoff = now - period_seconds
    return sum(e.change for e in events if e.at > cutoff)


def _scale_up_limit(rules: ScalingRules, current: int, events: tuple[ScaleEvent, ...], now: float) -> int:
    """HPA's calculateScaleUpLimitWithScalingRules."""
    if rules.select_policy == "Disabled":
        return current
    proposals: list[int] = []
    for policy in rules.policies:
        start = current - _change_within(events, now, policy.period_seconds)
        if policy.type == "Pods":
            proposals.append(start + policy.value)
        else:
            # HPA: ceil(start × (1 + value/100)); from zero we allow one (see the module docstring).
            proposals.append(max(math.ceil(start * (1 + policy.value / 100)), 1 if start == 0 else 0))
    return max(proposals) if rules.select_policy == "Max" else min(proposals)


def _scale_down_limit(rules: ScalingRules, current: int, events: tuple[ScaleEvent, ...], now: float) -> int:
    """HPA's calculateScaleDownLimitWithBehaviors."""
    if rules.select_policy == "Disabled":
        return current
    proposals: list[int] = []
    for policy in rules.policies:
        start = current - _change_within(events, now, policy.period_seconds)
        if policy.type == "Pods":
            proposals.append(start - policy.value)
        else:
            proposals.append(int(start * (1 - policy.value / 100)))  # truncation, as Go's int32()
    return min(proposals) if rules.select_policy == "Max" else max(proposals)


def _policy_note(rules: ScalingRules, direction: str, bound: str) -> str:
    if rules.select_policy == "Disabled":
        return f"{direction} disabled"
    return f"{direction} policy allows {bound} now"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _need_text(
    *, active: int, unknown: int, unknown_busy: int, leaving: int, parked: int, pool: Pool, needed: int
) -> str:
    """``4 active builds, 2 per replica, +1 spare → 3`` and the qualifiers that apply."""
    text = _count(active, "active build")
    if leaving:
        text += f" ({leaving} on draining or terminating pods)"
    if unknown_busy:
        text += (
            f" + {_count(unknown_busy, 'ready pod')} of unknown load counted as "
            f"{pool.target_builds_per_replica} builds each"
        )
    if unknown > unknown_busy:
        text += f" ({_count(unknown - unknown_busy, 'starting pod')} of unknown load not counted)"
    text += f", {pool.target_builds_per_replica} per replica, +{pool.spare_replicas} spare"
    if parked:
        text += f", +{parked} draining"
    return f"{text} → {needed}"
