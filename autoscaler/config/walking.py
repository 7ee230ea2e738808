"""Walking the pydantic models as the YAML document nests them.

Shared by the error translator (:mod:`autoscaler.config.errors`: a pydantic ``loc``
becomes the file's camelCase path) and the reference table (:mod:`autoscaler.config.reference_table`).
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel


def join(path: str, sub: str) -> str:
    """``pools`` + ``[1]`` → ``pools[1]``; ``pools[1]`` + ``name`` → ``pools[1].name``."""
    if not path:
        return sub
    return f"{path}{sub}" if sub.startswith("[") else f"{path}.{sub}"


def strip(annotation: Any) -> Any:
    """Drop Annotated and a None alternative: what remains is the type that is walked into."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if is_union(annotation):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def union_tag(member: Any) -> str | None:
    """The discriminator value (``type: prometheus``) of a tagged union's member, if it is one."""
    if isinstance(member, type) and issubclass(member, BaseModel) and "type" in member.model_fields:
        default = member.model_fields["type"].default
        if isinstance(default, str):
            return default
        args = get_args(member.model_fields["type"].annotation)
        return args[0] if len(args) == 1 and isinstance(args[0], str) else None
    return None


def number_text(value: Any) -> str:
    """``15.0`` → ``15``: bounds and defaults as an SRE writes them."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
