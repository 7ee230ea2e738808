"""The autoscaler's configuration: the ``config.yaml`` key of its ConfigMap.

Kubernetes-style camelCase YAML, validated by frozen pydantic models. A key
nobody knows is an error, never silently ignored: an SRE who types
``scaleDwon`` must hear about it, not run on defaults. Every field has a
range; durations are seconds and may be fractional.

Errors come out as ``field.path: reason`` strings with the camelCase path an
SRE sees in the file, e.g. ``pools[1].scaleDown.policies[0].value: must be ≥ 1``;
YAML syntax errors carry line and column. :func:`load_config` raises a
:class:`ConfigError` holding all of them.

Scaling behaviour means what HorizontalPodAutoscaler's ``behavior`` means, and
each of ``stabilizationWindowSeconds``, ``policies`` and ``selectPolicy``
defaults independently to HPA's built-in value, as HPA defaults them.

Decisions taken where the issue is silent:

* ``source`` is a mapping with a ``type`` (``sidecars`` or ``prometheus``);
  the bare string ``source: sidecars`` is accepted as a shorthand.
* The two disruption annotations are switched per pool under
  ``podAnnotations`` (``karpenterDoNotDisrupt``, ``clusterAutoscalerSafeToEvict``).
* ``selector`` is a matchLabels map; an empty map is refused (it would select
  every pod in the namespace): omit it to use the Deployment's own selector.
* Defaults: ``minReplicas`` 1 (HPA's), ``targetBuildsPerReplica`` 2, ``spareReplicas`` 1;
  ``maxReplicas`` has none (as in HPA: no ceiling can be guessed for someone's budget).
* ``arch`` defaults to the pool's name only when the name is an architecture name.
* At least one pool; HPA's limit of 10 policies per direction.
* Duplicate keys in the YAML are an error (PyYAML would keep the last one).
* ``behindRouter`` (default false) refuses ``minReplicas: 0``: the router has nothing to hold
  a build in while a first builder starts (a connection held past buildx's ~20 s deadline is a
  failed build anyway), so a routed pool at zero would fail every build that finds it there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from common.arch import MAX_LENGTH as _ARCH_MAX_LENGTH
from common.arch import PATTERN as _ARCH
from common.arch import PROBLEM as _ARCH_PROBLEM

CONFIGMAP_KEY = "config.yaml"
"""The ConfigMap's data key that holds the configuration."""

_PROBLEMS = "config_problems"
"""Error type of the cross-field checks; its ctx carries (sub-path, reason) pairs."""

# --- field types --------------------------------------------------------------------------------

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")


def _dns_label(value: str) -> str:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise PydanticCustomError(
            "dns_label",
            "must be a DNS label: at most 63 lower-case letters, digits and '-', starting and ending alphanumeric",
        )
    return value


def _dns_subdomain(value: str) -> str:
    if len(value) > 253 or not all(_DNS_LABEL.match(part) for part in value.split(".")):
        raise PydanticCustomError(
            "dns_subdomain",
            "must be a DNS subdomain: at most 253 characters, dot-separated lower-case alphanumeric labels",
        )
    return value


def _arch(value: str) -> str:
    if len(value) > _ARCH_MAX_LENGTH or not _ARCH.match(value):
        raise PydanticCustomError("arch", _ARCH_PROBLEM)
    return value


def _label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not all(_DNS_LABEL.match(p) for p in prefix.split("."))):
        return f"label key {key!r} has an invalid prefix (must be a DNS subdomain)"
    if len(name) > 63 or not _LABEL_NAME.match(name):
        return f"label key {key!r} is not a valid label name"
    return None


def _selector(value: dict[str, str]) -> dict[str, str]:
    if not value:
        raise PydanticCustomError("empty_selector", "must not be empty (omit it to use the Deployment's own selector)")
    for key, label in value.items():
        problem = _label_key_problem(key)
        if problem is None and label and (len(label) > 63 or not _LABEL_NAME.match(label)):
            problem = f"label value {label!r} of {key!r} is not a valid label value"
        if problem is not None:
            raise PydanticCustomError("label", problem)
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PydanticCustomError("http_url", "must be an http:// or https:// URL with a host")
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "must not be empty")
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
DnsSubdomain = Annotated[str, AfterValidator(_dns_subdomain)]
Arch = Annotated[str, AfterValidator(_arch)]
Selector = Annotated[dict[str, str], AfterValidator(_selector)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
NonBlank = Annotated[str, AfterValidator(_non_blank)]


class _Model(BaseModel):
    """Frozen, strict (YAML already has types: ``"5"`` is not a number), unknown keys refused.

    Python code may construct models by field name (``min_replicas=``);
    :func:`load_config` accepts only the camelCase aliases.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        use_attribute_docstrings=True,
    )


def _problems(problems: Sequence[tuple[str, str]]) -> PydanticCustomError:
    """One error that :func:`format_errors` expands into a line per (sub-path, reason)."""
    return PydanticCustomError(
        _PROBLEMS, "{summary}", {"summary": "; ".join(r for _, r in problems), "problems": problems}
    )


# --- scaling behaviour (HPA's ``behavior``) -------------------------------------------------------


class ScalingPolicy(_Model):
    """One rate limit: at most ``value`` Pods, or ``value`` Percent of the replicas at the
    period's start, per ``periodSeconds``."""

    type: Literal["Pods", "Percent"]
    """``Pods``: an absolute number of replicas; ``Percent``: relative to the period's start."""

    value: int = Field(ge=1, le=1000)
    """Replicas (Pods) or percent (Percent) allowed per period; HPA requires > 0."""

    period_seconds: float = Field(gt=0, le=1800)
    """The sliding period the change is counted over; HPA's range (0, 1800]."""


class ScalingRules(_Model):
    """One direction of HPA's ``behavior``. Subclasses carry HPA's per-direction defaults."""

    stabilization_window_seconds: float = Field(ge=0, le=3600)
    """Recommendations within this window are considered (HPA's range [0, 3600])."""

    policies: tuple[ScalingPolicy, ...] = Field(min_length=1, max_length=10, strict=False)
    """Rate limits; ``selectPolicy`` says which one wins."""

    select_policy: Literal["Max", "Min", "Disabled"] = "Max"
    """``Max``: the policy allowing the largest change; ``Min``: the smallest; ``Disabled``: no
    scaling in this direction at all."""


class ScaleUpRules(ScalingRules):
    """Scale-up behaviour; defaults are HPA's: no window, double or +4 pods per 15 s, whichever is more."""

    stabilization_window_seconds: float = Field(default=0.0, ge=0, le=3600)
    """0 s: react to a surge at once (HPA's default): a queued build costs a developer's time."""

    policies: tuple[ScalingPolicy, ...] = Field(
        default=(
            ScalingPolicy(type="Percent", value=100, period_seconds=15),
            ScalingPolicy(type="Pods", value=4, period_seconds=15),
        ),
        min_length=1,
        max_length=10,
        strict=False,
    )
    """HPA's default: +100 % or +4 pods per 15 s, whichever is more."""


class ScaleDownRules(ScalingRules):
    """Scale-down behaviour; defaults are HPA's: a 300 s window, then any amount per 15 s."""

    stabilization_window_seconds: float = Field(default=300.0, ge=0, le=3600)
    """300 s (HPA's default): scale down only after demand stayed low for five minutes."""

    policies: tuple[ScalingPolicy, ...] = Field(
        default=(ScalingPolicy(type="Percent", value=100, period_seconds=15),),
        min_length=1,
        max_length=10,
        strict=False,
    )
    """HPA's default: up to 100 % per 15 s (the window is what slows scale-down)."""


# --- pools and the whole config -------------------------------------------------------------------


class PodAnnotations(_Model):
    """Annotations the autoscaler keeps on busy builders (and removes from idle ones), so node
    autoscalers do not evict a pod in the middle of a build."""

    karpenter_do_not_disrupt: bool = True
    """Maintain ``karpenter.sh/do-not-disrupt: "true"`` on busy pods. On by default: harmless
    without Karpenter, and Karpenter's consolidation would otherwise kill builds."""

    cluster_autoscaler_safe_to_evict: bool = True
    """Maintain ``cluster-autoscaler.kubernetes.io/safe-to-evict: "false"`` on busy pods. On by
    default for the same reason, for the Cluster Autoscaler."""


class Pool(_Model):
    """One architecture's builder Deployment and how to size it."""

    name: DnsLabel
    """The pool's name: metric label, log field, Event text. Unique."""

    arch: Arch = Field(
        json_schema_extra={
            "default_text": "the pool's name",
            "when_missing": "required when the pool's name is not an architecture name (such as amd64 or arm64)",
        }
    )
    """Architecture the pods must report in ``/status`` (Go spelling). Defaults to ``name`` when
    the name is one (``amd64``); a pool named otherwise (``amd64-spot``) must set it."""

    namespace: DnsLabel
    """Namespace of the builder Deployment and its pods."""

    deployment: DnsSubdomain
    """The builder Deployment whose ``scale`` subresource is patched."""

    selector: Selector | None = Field(default=None, json_schema_extra={"default_text": "the Deployment's selector"})
    """matchLabels of the builder pods; None: the Deployment's own ``spec.selector``."""

    sidecar_port: int = Field(default=9090, ge=1, le=65535)
    """Port of the sidecar's public listener (``/status``): the sidecar's default."""

    min_replicas: int = Field(default=1, ge=0, le=1000)
    """Fewest replicas, whatever the load. 1 by default, as HPA's: one warm builder."""

    max_replicas: int = Field(ge=1, le=1000)
    """Most replicas, whatever the load: the cost ceiling. Required, as in HPA: no ceiling
    can be guessed for someone else's budget."""

    target_builds_per_replica: int = Field(default=2, ge=1, le=1000)
    """Active builds one builder should carry: ceil(active ÷ this) builders are needed. 2 by
    default: one build can saturate a node's CPUs by itself, two keep build times close to an
    idle builder's at half the fleet of one build per builder."""

    spare_replicas: int = Field(default=1, ge=0, le=100)
    """Idle builders kept warm on top of the need, so the next build starts at once. 1 by
    default: a pool must see builds to scale up, which needs a running builder."""

    tolerance: float = Field(default=0.0, ge=0, lt=1)
    """No change while |needed − current| ≤ tolerance × current. 0 by default: build counts
    are exact, not noisy samples like CPU."""

    scale_up: ScaleUpRules = Field(default_factory=ScaleUpRules)
    """HPA ``behavior.scaleUp``."""

    scale_down: ScaleDownRules = Field(default_factory=ScaleDownRules)
    """HPA ``behavior.scaleDown``."""

    pod_annotations: PodAnnotations = Field(default_factory=PodAnnotations)
    """Which disruption annotations to maintain on busy pods."""

    behind_router: bool = False
    """Builds reach this pool through the router (``deploy/base/router``). The router rejects a
    build at once while no builder is up, so such a pool must keep one: ``minReplicas`` ≥ 1.
    False by default: a pool behind a plain Service can wait at zero for its first builder."""

    @model_validator(mode="before")
    @classmethod
    def _arch_defaults_to_name(cls, data: Any) -> Any:
        name = data.get("name") if isinstance(data, Mapping) else None
        if isinstance(data, Mapping) and "arch" not in data and isinstance(name, str) and _ARCH.match(name):
            return {**data, "arch": name}
        return data

    @model_validator(mode="after")
    def _cross_field(self) -> Pool:
        problems: list[tuple[str, str]] = []
        if self.min_replicas > self.max_replicas:
            problems.append(("minReplicas", f"must be ≤ maxReplicas ({self.max_replicas})"))
        if self.behind_router and self.min_replicas < 1:
            problems.append(
                (
                    "minReplicas",
                    "must be ≥ 1 when behindRouter is true (the router rejects every build at once "
                    "while no builder is up)",
                )
            )
        if self.min_replicas + self.spare_replicas < 1:
            problems.append(
                (
                    "spareReplicas",
                    "must be ≥ 1 when minReplicas is 0 (a pool at zero never sees a build, so never scales up)",
                )
            )
        if problems:
            raise _problems(problems)
        return self

    @property
    def history_seconds(self) -> float:
        """How far back the decision looks: the longest stabilization window or policy period."""
        return max(
            self.scale_up.stabilization_window_seconds,
            self.scale_down.stabilization_window_seconds,
            *(p.period_seconds for p in self.scale_up.policies),
            *(p.period_seconds for p in self.scale_down.policies),
        )


class SidecarsSource(_Model):
    """Read every builder pod's ``/status`` (the default)."""

    type: Literal["sidecars"] = "sidecars"
    """``sidecars``: GET each builder pod's ``/status``."""


class PrometheusSource(_Model):
    """Read active builds from Prometheus instead of the sidecars.

    The contract (read by :mod:`autoscaler.prometheus`): the query returns one sample per
    builder pod with a ``pod`` label and the pod's active builds as value; ``$namespace`` and
    ``$arch`` are replaced by the pool's. A pod without a sample has unknown load.
    """

    type: Literal["prometheus"]
    """``prometheus``: run ``query`` against ``url``."""

    url: HttpUrl
    """(prometheus) Prometheus' base URL, e.g. ``http://prometheus-operated.monitoring:9090``."""

    query: NonBlank = 'max by (pod) (buildkit_sidecar_active_builds{namespace="$namespace", arch="$arch"})'
    """(prometheus) PromQL giving active builds per builder pod, labelled ``pod``; ``$namespace``
    and ``$arch`` are replaced by the pool's."""


Source = Annotated[SidecarsSource | PrometheusSource, Field(discriminator="type")]


class Config(_Model):
    """The whole ``config.yaml``."""

    poll_interval_seconds: float = Field(default=5.0, gt=0, le=300)
    """One observe-decide-act cycle per pool this often. 5 s: a surge is met within seconds,
    at the cost of one ``/status`` GET per pod per cycle."""

    status_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    """Deadline of one ``/status`` GET. A sidecar answers from memory in milliseconds; 2 s
    tolerates a loaded node and still leaves most of the 5 s cycle."""

    status_concurrency: int = Field(default=64, ge=1, le=1024)
    """At most this many ``/status`` GETs in flight: 1,000 pods at ~10 ms each take well under
    a second at 64, without opening a thousand sockets at once."""

    source: Source = Field(default_factory=SidecarsSource)
    """Where active builds come from: ``sidecars`` (each pod's ``/status``) or ``prometheus``
    (with ``url`` and ``query``). ``source: sidecars`` is short for ``source: {type: sidecars}``."""

    pools: tuple[Pool, ...] = Field(min_length=1, strict=False)
    """One entry per builder Deployment (usually one per architecture)."""

    @model_validator(mode="before")
    @classmethod
    def _source_shorthand(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("source"), str):
            return {**data, "source": {"type": data["source"]}}
        return data

    @model_validator(mode="after")
    def _unique(self) -> Config:
        problems: list[tuple[str, str]] = []
        names: dict[str, int] = {}
        targets: dict[tuple[str, str], int] = {}
        for i, pool in enumerate(self.pools):
            if pool.name in names:
                problems.append((f"pools[{i}].name", f"{pool.name!r} is already the name of pools[{names[pool.name]}]"))
            names.setdefault(pool.name, i)
            target = (pool.namespace, pool.deployment)
            if target in targets:
                problems.append(
                    (
                        f"pools[{i}].deployment",
                        f"{pool.namespace}/{pool.deployment} is already managed by pools[{targets[target]}]",
                    )
                )
            targets.setdefault(target, i)
        if problems:
            raise _problems(problems)
        return self

    def pool(self, name: str) -> Pool:
        """The pool called ``name`` (KeyError if none)."""
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)
