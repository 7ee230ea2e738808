"""Every key of ``config.yaml`` with its type, default, range and reason: docs/configuration.md's table.

Generated from the models themselves (:mod:`autoscaler.config.schema`), and checked
against the docs by a test, so the documentation cannot drift from the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from autoscaler.config.loading import tidy
from autoscaler.config.schema import Config
from autoscaler.config.walking import is_union, join, number_text, strip, union_tag


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
        path = join(prefix, info.alias or name)
        annotation = strip(info.annotation)
        members = [m for m in get_args(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _describe(annotation, path, rows)
            continue
        if is_union(annotation) and members:  # the source: one ``type`` row, then each variant's keys
            tags = [union_tag(m) for m in members]
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
    extra = info.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("default_text"), str):
        return str(extra["default_text"])
    if info.is_required():
        tag = union_tag(model)
        return f"(required with {tag})" if tag else "(required)"
    value = info.get_default(call_default_factory=True)
    dumped = TypeAdapter(Any).dump_python(value, mode="json", by_alias=True)
    text = yaml.safe_dump(tidy(dumped), default_flow_style=True, width=1000, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def _range_text(info: FieldInfo) -> str:
    low, high = "(-∞", "∞)"
    for bound in info.metadata:
        if isinstance(bound, annotated_types.Ge):
            low = f"[{number_text(bound.ge)}"
        elif isinstance(bound, annotated_types.Gt):
            low = f"({number_text(bound.gt)}"
        elif isinstance(bound, annotated_types.Le):
            high = f"{number_text(bound.le)}]"
        elif isinstance(bound, annotated_types.Lt):
            high = f"{number_text(bound.lt)})"
    if (low, high) == ("(-∞", "∞)"):
        return ""
    return f"{low}, {high}"
