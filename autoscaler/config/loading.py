"""Reading the configuration: YAML (duplicate keys refused) into a validated :class:`Config`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from autoscaler.config.errors import ConfigError, format_errors, yaml_type
from autoscaler.config.schema import CONFIGMAP_KEY, Config


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
        raise ConfigError([f"(root): must be a mapping, not {yaml_type(document)}"])
    try:
        return Config.model_validate(document, by_alias=True, by_name=False)
    except ValidationError as e:
        raise ConfigError(format_errors(e)) from e


def effective_yaml(config: Config) -> str:
    """The config with every default filled in, as camelCase YAML (loads back to ``config``)."""
    return yaml.safe_dump(tidy(config.model_dump(mode="json", by_alias=True)), sort_keys=False, allow_unicode=True)


def tidy(value: Any) -> Any:
    """Whole-number floats print as integers (``periodSeconds: 15``, not ``15.0``)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [tidy(v) for v in value]
    return value
