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
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import annotated_types
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

CONFIGMAP_KEY = "config.yaml"
"""The ConfigMap's data key that holds the configuration."""

_PROBLEMS = "config_problems"
"""Error type of the cross-field checks; its ctx carries (sub-path, reason) pairs."""


class ConfigError(ValueError):
    """The configuration is invalid; :attr:`errors` lists every ``path: reason``."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: tuple[str, ...] = tuple(errors)
        super().__init__("\n".join(self.errors))


# --- field types --------------------------------------------------------------------------------

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_ARCH = re.compile(r"^[a-z0-9_]+$")


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
    if len(value) > 32 or not _ARCH.match(value):
        raise PydanticCustomError("arch", "must be a Go architecture name such as amd64 or arm64")
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

    arch: Arch
    """Architecture the pods must report in ``/status`` (Go spelling). Defaults to ``name`` when
    the name is one (``amd64``); a pool named otherwise (``amd64-spot``) must set it."""

    namespace: DnsLabel
    """Namespace of the builder Deployment and its pods."""

    deployment: DnsSubdomain
    """The builder Deployment whose ``scale`` subresource is patched."""

    selector: Selector | None = None
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


# --- loading ------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable: let PyYAML report it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _yaml_error(error: yaml.YAMLError, *, where: str = "") -> str:
    prefix = f"{where}: " if where else ""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        text = f"{prefix}line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
        if error.context:
            text += f" ({error.context}"
            if error.context_mark is not None:
                text += f" at line {error.context_mark.line + 1}"
            text += ")"
        return text
    return f"{prefix}invalid YAML: {error}"


def _parse_yaml(text: str, *, where: str = "") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise ConfigError([_yaml_error(e, where=where)]) from e


def load_config(text: str) -> Config:
    """Parse and validate a bare ``config.yaml`` or a ConfigMap manifest holding one.

    A document with ``kind: ConfigMap`` is a manifest: its ``data["config.yaml"]`` is
    parsed. Raises :class:`ConfigError` with every problem found.
    """
    document = _parse_yaml(text)
    if isinstance(document, Mapping) and document.get("kind") == "ConfigMap":
        return load_configmap_data(document.get("data"))
    return _validate(document)


def load_configmap_data(data: Mapping[str, Any] | None) -> Config:
    """Parse and validate a ConfigMap's ``data`` (as the API returns it) holding ``config.yaml``."""
    if not isinstance(data, Mapping) or CONFIGMAP_KEY not in data:
        raise ConfigError([f"data[{CONFIGMAP_KEY}]: required (the ConfigMap holds the config under this key)"])
    embedded = data[CONFIGMAP_KEY]
    if not isinstance(embedded, str):
        raise ConfigError([f"data[{CONFIGMAP_KEY}]: must be a string (a YAML document)"])
    return _validate(_parse_yaml(embedded, where=f"data[{CONFIGMAP_KEY}]"))


def _validate(document: Any) -> Config:
    if document is None:
        document = {}
    if not isinstance(document, Mapping):
        raise ConfigError([f"(root): must be a mapping, not {_yaml_type(document)}"])
    try:
        return Config.model_validate(document, by_alias=True, by_name=False)
    except ValidationError as e:
        raise ConfigError(format_errors(e)) from e


def effective_yaml(config: Config) -> str:
    """The config with every default filled in, as camelCase YAML (loads back to ``config``)."""
    return yaml.safe_dump(_tidy(config.model_dump(mode="json", by_alias=True)), sort_keys=False, allow_unicode=True)


def _tidy(value: Any) -> Any:
    """Whole-number floats print as integers (``periodSeconds: 15``, not ``15.0``)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    return value


# --- reference (for the README's configuration table) -------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldReference:
    """One key of ``config.yaml``: where it is, its type, default, range and why."""

    path: str
    """camelCase path; ``[]`` marks list items, e.g. ``pools[].scaleDown.policies[].value``."""
    type: str
    default: str
    """As YAML; ``(required)`` when there is none."""
    range: str
    """Interval notation, e.g. ``(0, 1800]``; empty for non-numbers."""
    doc: str


def reference() -> list[FieldReference]:
    """Every key of the configuration, in document order (nested keys after their parent)."""
    rows: list[FieldReference] = []
    _describe(Config, "", rows)
    return rows


def _describe(model: type[BaseModel], prefix: str, rows: list[FieldReference], *, skip: tuple[str, ...] = ()) -> None:
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        path = _join(prefix, info.alias or name)
        annotation = _strip(info.annotation)
        members = [m for m in get_args(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _describe(annotation, path, rows)
            continue
        if _is_union(annotation) and members:  # the source: one ``type`` row, then each variant's keys
            tags = [_tag(m) for m in members]
            default = _default_text(model, name, info)
            rows.append(
                FieldReference(
                    path=f"{path}.type",
                    type="one of " + ", ".join(str(t) for t in tags),
                    default=default.strip("{}").removeprefix("type: "),
                    range="",
                    doc=" ".join((info.description or "").split()),
                )
            )
            for member in members:
                _describe(member, path, rows, skip=("type",))
            continue
        rows.append(
            FieldReference(
                path=path,
                type=_type_name(annotation, seconds=name.endswith("_seconds")),
                default=_default_text(model, name, info),
                range=_range_text(info),
                doc=" ".join((info.description or "").split()),
            )
        )
        if get_origin(annotation) is tuple and members:
            _describe(members[0], f"{path}[]", rows)


def _type_name(annotation: Any, *, seconds: bool) -> str:
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(annotation))
    if get_origin(annotation) is tuple:
        return "list"
    if get_origin(annotation) is dict:
        return "map of string to string"
    names = {bool: "boolean", int: "integer", float: "seconds" if seconds else "number", str: "string"}
    return names.get(annotation, str(annotation))


def _default_text(model: type[BaseModel], name: str, info: FieldInfo) -> str:
    if model is Pool and name == "arch":
        return "the pool's name"
    if model is Pool and name == "selector":
        return "the Deployment's selector"
    if info.is_required():
        tag = _tag(model)
        return f"(required with {tag})" if tag else "(required)"
    value = info.get_default(call_default_factory=True)
    dumped = TypeAdapter(Any).dump_python(value, mode="json", by_alias=True)
    text = yaml.safe_dump(_tidy(dumped), default_flow_style=True, width=1000, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def _range_text(info: FieldInfo) -> str:
    low, high = "(-∞", "∞)"
    for bound in info.metadata:
        if isinstance(bound, annotated_types.Ge):
            low = f"[{_num(bound.ge)}"
        elif isinstance(bound, annotated_types.Gt):
            low = f"({_num(bound.gt)}"
        elif isinstance(bound, annotated_types.Le):
            high = f"{_num(bound.le)}]"
        elif isinstance(bound, annotated_types.Lt):
            high = f"{_num(bound.lt)})"
    if (low, high) == ("(-∞", "∞)"):
        return ""
    return f"{low}, {high}"


# --- error formatting -----------------------------------------------------------------------------


def format_errors(error: ValidationError) -> list[str]:
    """pydantic's errors as ``camelCase.path[i]: reason`` lines, in document order."""
    lines: list[str] = []
    for detail in error.errors(include_url=False):
        if _echo_of_item_errors(detail):
            continue
        path, parent = _walk(detail["loc"])
        if detail["type"] == _PROBLEMS:
            for sub, reason in detail.get("ctx", {}).get("problems", ()):
                lines.append(f"{_join(path, sub) or '(root)'}: {reason}")
            continue
        lines.append(f"{path or '(root)'}: {_reason(detail, parent)}")
    return lines


def _echo_of_item_errors(detail: ErrorDetails) -> bool:
    """pydantic adds "at least N items" to a tuple whose items failed: the item errors say it all."""
    got = detail.get("input")
    min_length = (detail.get("ctx") or {}).get("min_length", 0)
    return detail["type"] == "too_short" and isinstance(got, list | tuple) and len(got) >= min_length


def _join(path: str, sub: str) -> str:
    if not path:
        return sub
    return f"{path}{sub}" if sub.startswith("[") else f"{path}.{sub}"


def _strip(annotation: Any) -> Any:
    """Drop Annotated and a None alternative: what remains is the type that is walked into."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if _is_union(annotation):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _walk(loc: tuple[int | str, ...]) -> tuple[str, type[BaseModel] | None]:
    """Render a pydantic ``loc`` as a camelCase path; also return the model holding its last key.

    Discriminated-union tags (pydantic puts ``prometheus`` into ``source.prometheus.url``)
    are not part of the document, so they are dropped.
    """
    path = ""
    current: Any = Config
    parent: type[BaseModel] | None = None
    for segment in loc:
        current = _strip(current)
        if isinstance(segment, int) and get_origin(current) in (tuple, list):
            path += f"[{segment}]"
            args = get_args(current)
            current = args[0] if args else None
            continue
        key = str(segment)
        if _is_union(current):
            tagged = [m for m in get_args(current) if _tag(m) == key]
            if tagged:
                current = tagged[0]
                continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            parent = current
            field = next((f for n, f in current.model_fields.items() if (f.alias or n) == key), None)
            path = _join(path, key)
            current = field.annotation if field is not None else None
            continue
        parent = None
        if get_origin(current) is dict:
            path += f"[{key}]"
            current = get_args(current)[1]
        else:
            path = _join(path, key)
            current = None
    return path, parent


def _tag(member: Any) -> str | None:
    if isinstance(member, type) and issubclass(member, BaseModel) and "type" in member.model_fields:
        default = member.model_fields["type"].default
        if isinstance(default, str):
            return default
        args = get_args(member.model_fields["type"].annotation)
        return args[0] if len(args) == 1 and isinstance(args[0], str) else None
    return None


def _known_keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _yaml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    if value is None:
        return "null"
    return type(value).__name__


def _reason(detail: ErrorDetails, parent: type[BaseModel] | None) -> str:
    kind = detail["type"]
    ctx: dict[str, Any] = dict(detail.get("ctx") or {})
    got = detail.get("input")
    if kind == "missing":
        if parent is Pool and detail["loc"][-1] == "arch":
            return "required when the pool's name is not an architecture name (such as amd64 or arm64)"
        return "required"
    if kind == "extra_forbidden":
        key = str(detail["loc"][-1])
        reason = "unknown key"
        if parent is not None:
            close = difflib.get_close_matches(key, _known_keys(parent), n=1)
            if close:
                reason += f" (did you mean {close[0]}?)"
            else:
                reason += f" (known: {', '.join(_known_keys(parent))})"
        return reason
    bounds = {
        "greater_than_equal": ("≥", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("≤", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        sign, key = bounds[kind]
        return f"must be {sign} {_num(ctx[key])}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("int_type", "int_from_float", "int_parsing"):
        return f"must be an integer, not {_yaml_type(got)}" if kind == "int_type" else "must be an integer"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, not {_yaml_type(got)}"
    if kind == "bool_type":
        return f"must be true or false, not {_yaml_type(got)}"
    if kind == "string_type":
        return f"must be a string, not {_yaml_type(got)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping, not {_yaml_type(got)}"
    if kind in ("tuple_type", "list_type"):
        return f"must be a list, not {_yaml_type(got)}"
    if kind == "literal_error":
        return f"must be {ctx['expected']}, not {got!r}"
    if kind == "union_tag_invalid":
        return f"unknown type {ctx['tag']!r} (expected {ctx['expected_tags']})"
    if kind == "union_tag_not_found":
        return f"needs a {ctx['discriminator']}"
    if kind == "too_short":
        n = ctx["min_length"]
        return f"must have at least {n} item{'s' if n != 1 else ''}"
    if kind == "too_long":
        n = ctx["max_length"]
        return f"must have at most {n} item{'s' if n != 1 else ''}"
    message = detail["msg"]
    return message[:1].lower() + message[1:]
