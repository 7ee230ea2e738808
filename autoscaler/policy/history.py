"""What one pool's decisions look back on: timestamped recommendations and scale events (immutable)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from autoscaler.config import Pool


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A timestamped recommendation (the stabilization windows look back on these)."""

    at: float
    replicas: int
    bounds_scale_up: bool = True
    """False for the start-up seed: it holds scale-down for a window but never delays scale-up."""


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    """A scale the controller made (the rate-limit policies count these)."""

    at: float
    from_replicas: int
    to_replicas: int

    @property
    def change(self) -> int:
        return self.to_replicas - self.from_replicas


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    """What one pool's decisions look back on, pruned to ``keep_seconds``.

    Typical use, once per cycle::

        decision = decide(observation, pool, history, now)
        history = history.record(now, decision.recommendation)
        if scaled_successfully:
            history = history.scaled(now, decision.current_replicas, decision.desired_replicas)
    """

    keep_seconds: float
    """Entries older than this are dropped: the longest window or period of the pool."""

    recommendations: tuple[Recommendation, ...] = ()
    scale_events: tuple[ScaleEvent, ...] = ()

    @classmethod
    def empty(cls, pool: Pool) -> History:
        """No past at all: the first decision can scale down at once."""
        return cls(keep_seconds=pool.history_seconds)

    @classmethod
    def start(cls, pool: Pool, *, now: float, current_replicas: int) -> History:
        """A new controller's history: the replicas found count as a recommendation made now,
        so scale-down waits one full window (scale-up does not)."""
        seed = Recommendation(at=now, replicas=current_replicas, bounds_scale_up=False)
        return cls(keep_seconds=pool.history_seconds, recommendations=(seed,))

    def record(self, now: float, recommendation: int) -> History:
        """Add this cycle's recommendation (:attr:`Decision.recommendation`)."""
        return replace(self, recommendations=(*self.recommendations, Recommendation(now, recommendation))).pruned(now)

    def scaled(self, now: float, from_replicas: int, to_replicas: int) -> History:
        """Add a scale the controller made (after the API accepted it)."""
        if from_replicas == to_replicas:
            return self.pruned(now)
        event = ScaleEvent(now, from_replicas, to_replicas)
        return replace(self, scale_events=(*self.scale_events, event)).pruned(now)

    def reconfigured(self, pool: Pool) -> History:
        """Adopt a reloaded pool's retention (a longer window only sees what was kept)."""
        return replace(self, keep_seconds=pool.history_seconds)

    def pruned(self, now: float) -> History:
        """Drop what no window or period can reach any more."""
        cutoff = now - self.keep_seconds
        return replace(
            self,
            recommendations=tuple(r for r in self.recommendations if r.at > cutoff),
            scale_events=tuple(e for e in self.scale_events if e.at > cutoff),
        )
