"""pydantic's validation errors as ``camelCase.path[i]: reason`` lines an SRE can act on.

The path is the one in the YAML file (aliases, list indexes, no discriminator tags);
the reason is short and says what is expected (``must be ≥ 1``, ``unknown key (did you
mean scaleDown?)``). A field may carry its own text for a missing value in its
``json_schema_extra["when_missing"]`` (see :class:`autoscaler.config.schema.Pool`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from autoscaler.config.schema import _PROBLEMS, Config
from autoscaler.config.walking import is_union, join, number_text, strip, union_tag


class ConfigError(ValueError):
    """The configuration is invalid; :attr:`errors` lists every ``path: reason``."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: tuple[str, ...] = tuple(errors)
        super().__init__("\n".join(self.errors))


def format_errors(error: ValidationError) -> list[str]:
    """pydantic's errors as ``camelCase.path[i]: reason`` lines, in document order."""
    lines: list[str] = []
    for detail in error.errors(include_url=False):
        if _echo_of_item_errors(detail):
            continue
        path, parent = _walk(detail["loc"])
        if detail["type"] == _PROBLEMS:
            for sub, reason in detail.get("ctx", {}).get("problems", ()):
                lines.append(f"{join(path, sub) or '(root)'}: {reason}")
            continue
        lines.append(f"{path or '(root)'}: {_reason(detail, parent)}")
    return lines


def _echo_of_item_errors(detail: ErrorDetails) -> bool:
    """pydantic adds "at least N items" to a tuple whose items failed: the item errors say it all."""
    got = detail.get("input")
    min_length = (detail.get("ctx") or {}).get("min_length", 0)
    return detail["type"] == "too_short" and isinstance(got, list | tuple) and len(got) >= min_length


def _walk(loc: tuple[int | str, ...]) -> tuple[str, type[BaseModel] | None]:
    """Render a pydantic ``loc`` as a camelCase path; also return the model holding its last key.

    Discriminated-union tags (pydantic puts ``prometheus`` into ``source.prometheus.url``)
    are not part of the document, so they are dropped.
    """
    path = ""
    current: Any = Config
    parent: type[BaseModel] | None = None
    for segment in loc:
        current = strip(current)
        if isinstance(segment, int) and get_origin(current) in (tuple, list):
            path += f"[{segment}]"
            args = get_args(current)
            current = args[0] if args else None
            continue
        key = str(segment)
        if is_union(current):
            tagged = [m for m in get_args(current) if union_tag(m) == key]
            if tagged:
                current = tagged[0]
                continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            parent = current
            field = next((f for n, f in current.model_fields.items() if (f.alias or n) == key), None)
            path = join(path, key)
            current = field.annotation if field is not None else None
            continue
        parent = None
        if get_origin(current) is dict:
            path += f"[{key}]"
            current = get_args(current)[1]
        else:
            path = join(path, key)
            current = None
    return path, parent


def _known_keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def yaml_type(value: Any) -> str:
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
        return _field_text(parent, str(detail["loc"][-1]), "when_missing") or "required"
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
        return f"must be {sign} {number_text(ctx[key])}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("int_type", "int_from_float", "int_parsing"):
        return f"must be an integer, not {yaml_type(got)}" if kind == "int_type" else "must be an integer"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, not {yaml_type(got)}"
    if kind == "bool_type":
        return f"must be true or false, not {yaml_type(got)}"
    if kind == "string_type":
        return f"must be a string, not {yaml_type(got)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping, not {yaml_type(got)}"
    if kind in ("tuple_type", "list_type"):
        return f"must be a list, not {yaml_type(got)}"
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


def _field_text(model: type[BaseModel] | None, key: str, what: str) -> str | None:
    """A field's own wording (``json_schema_extra[what]``) for the key ``key`` of ``model``."""
    if model is None:
        return None
    info = next((f for n, f in model.model_fields.items() if (f.alias or n) == key), None)
    extra = info.json_schema_extra if info is not None else None
    text = extra.get(what) if isinstance(extra, dict) else None
    return text if isinstance(text, str) else None
