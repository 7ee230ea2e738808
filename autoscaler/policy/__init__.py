"""The pure decision core: how many builders a pool needs, and which to remove first.

No I/O, no clock of its own, no network library (the layering check in ``make test``
enforces it). The live controller (:mod:`autoscaler.controller`) and the what-if
simulator (:mod:`autoscaler.simulator`) both sit on it and never import each other.

* :mod:`.views`: a pool's pods as a decision sees them, and the :class:`Decision`;
* :mod:`.history`: what the stabilization windows and rate limits look back on;
* :mod:`.decide`: :func:`decide`, HPA's algorithm on active builds; :func:`replicas_for`, its need;
* :mod:`.stepper`: :class:`PoolStepper`, one pool cycle after cycle; :func:`deletion_cost`;
* :mod:`.replicaset`: the ReplicaSet's victim order on a scale-down.
"""

from autoscaler.policy.decide import decide, replicas_for
from autoscaler.policy.history import History, Recommendation, ScaleEvent
from autoscaler.policy.stepper import DRAINING_COST, UNKNOWN_LOAD_COST, PoolStepper, deletion_cost
from autoscaler.policy.views import Decision, Direction, Limit, Observation, PodView, pod_view

__all__ = [
    "DRAINING_COST",
    "UNKNOWN_LOAD_COST",
    "Decision",
    "Direction",
    "History",
    "Limit",
    "Observation",
    "PodView",
    "PoolStepper",
    "Recommendation",
    "ScaleEvent",
    "decide",
    "deletion_cost",
    "pod_view",
    "replicas_for",
]
