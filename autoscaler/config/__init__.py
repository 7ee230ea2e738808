"""The autoscaler's configuration: the ``config.yaml`` key of its ConfigMap.

* :mod:`.schema`: the frozen pydantic models, their ranges and the reasons for the defaults;
* :mod:`.loading`: YAML (or a ConfigMap manifest) into a validated :class:`Config`;
* :mod:`.errors`: :class:`ConfigError`, every problem as ``field.path: reason``;
* :mod:`.reference_table`: every key as a row of the configuration table (docs/configuration.md).

Pure: no network library is imported here (the layering check in ``make test`` enforces it).
"""

from autoscaler.config.errors import ConfigError
from autoscaler.config.loading import effective_yaml, load_config, load_configmap_data
from autoscaler.config.reference_table import FieldReference, reference
from autoscaler.config.schema import (
    CONFIGMAP_KEY,
    Config,
    PodAnnotations,
    Pool,
    PrometheusSource,
    ScaleDownRules,
    ScaleUpRules,
    ScalingPolicy,
    ScalingRules,
    SidecarsSource,
)

__all__ = [
    "CONFIGMAP_KEY",
    "Config",
    "ConfigError",
    "FieldReference",
    "PodAnnotations",
    "Pool",
    "PrometheusSource",
    "ScaleDownRules",
    "ScaleUpRules",
    "ScalingPolicy",
    "ScalingRules",
    "SidecarsSource",
    "effective_yaml",
    "load_config",
    "load_configmap_data",
    "reference",
]
