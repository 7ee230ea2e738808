"""Read active builds from Prometheus (``source: prometheus``) instead of every pod's ``/status``.

One instant query per pool per cycle: ``GET {url}/api/v1/query`` with the pool's
``query``, ``$namespace`` and ``$arch`` (or ``${namespace}``, ``${arch}``)
replaced by the pool's. The contract: a vector with one sample per builder pod,
labelled ``pod``, whose value is the pod's active builds. The answer comes out
in the shape :func:`autoscaler.status.fetch_all` returns (pod name ->
:class:`SidecarStatus` or :class:`Unreadable`), so the rest of the cycle does
not know which source it read.

Strict, as the sidecar reader is, because a misread is a killed build or a
starved queue:

* the body must be Prometheus' JSON with ``status: success`` and
  ``resultType: vector``, and every sample must carry a ``pod`` label; anything
  else (an HTTP error, a timeout, a ``sum`` that dropped the label) means the
  query failed, and every pod of the pool becomes :class:`Unreadable` with the
  reason: unknown load, counted busy, no scale-down;
* a value must be a finite number ≥ 0; ``NaN`` is what the sidecar exports
  while its buildkitd is unreachable, so it reads as unknown load, like the
  sidecar's ``buildkit_up: false``; a negative or infinite value, or two
  samples for one pod, make that pod :class:`Unreadable`;
* a pod the controller asks about that has no sample is :class:`Unreadable`
  (Prometheus has not scraped it, or lost it); samples of other pods are ignored.

Decisions taken where the contract is silent:

* A fractional value (an ``avg_over_time``) is rounded up: one build more is
  cheaper than a build without a builder.
* A sample's ``arch`` label, when the query keeps it, is passed on and checked
  against the pool's as the sidecar's ``arch`` is; the default query drops it
  (it already selects the pool's arch).
* Prometheus cannot say a pod is draining: pods read this way are never
  *parked* (see :mod:`autoscaler.policy`).
* The request carries ``timeout`` (statusTimeoutSeconds), so Prometheus
  abandons a query the controller has given up on instead of piling them up.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Iterable
from typing import Any

import aiohttp
import structlog

from autoscaler.config import Pool, PrometheusSource
from autoscaler.controller.sources.sidecars import SidecarStatus, Unreadable, json_object, read_bounded

log = structlog.get_logger("autoscaler.prometheus")

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""One sample is ~150 bytes: 1,000 pods answer ~150 KiB; more is not this query's answer."""

_VARIABLE = re.compile(r"\$(?:\{(namespace|arch)\}|(namespace|arch)\b)")


class PrometheusError(ValueError):
    """The query failed, or its answer is not the vector the contract asks for."""


def render_query(template: str, *, pool: Pool) -> str:
    """The pool's query: ``$namespace`` and ``$arch`` replaced by the pool's (both are
    DNS-label/arch names, so nothing needs quoting inside a PromQL string)."""
    values = {"namespace": pool.namespace, "arch": pool.arch}
    return _VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], template)


def parse_response(body: bytes) -> dict[str, SidecarStatus | Unreadable]:
    """Parse an instant query's JSON into pod name -> status; raise :class:`PrometheusError`
    when the answer as a whole is unusable."""
    try:
        raw = json_object(body)
    except ValueError as e:
        raise PrometheusError(str(e)) from e
    if raw.get("status") != "success":
        raise PrometheusError(_error_text(raw))
    data = raw.get("data")
    if not isinstance(data, dict):
        raise PrometheusError("no data object")
    if data.get("resultType") != "vector":
        raise PrometheusError(
            f"resultType {data.get('resultType')!r}, not 'vector' (the query must be an instant vector)"
        )
    result = data.get("result")
    if not isinstance(result, list):
        raise PrometheusError("data.result is not a list")

    samples: dict[str, list[SidecarStatus | Unreadable]] = {}
    for i, sample in enumerate(result):
        if not isinstance(sample, dict) or not isinstance(sample.get("metric"), dict):
            raise PrometheusError(f"result[{i}] is not a sample with a metric")
        metric: dict[str, Any] = sample["metric"]
        pod = metric.get("pod")
        if not isinstance(pod, str) or not pod:
            raise PrometheusError(
                f"result[{i}] has no pod label (the query must return one sample per pod, labelled pod): {metric}"
            )
        arch = metric.get("arch")
        samples.setdefault(pod, []).append(_sample(sample.get("value"), arch=arch if isinstance(arch, str) else None))

    return {
        pod: found[0]
        if len(found) == 1
        else Unreadable(f"{len(found)} samples for this pod (the query must return one)")
        for pod, found in samples.items()
    }


def _sample(value: Any, *, arch: str | None) -> SidecarStatus | Unreadable:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], int | float)
        or not isinstance(value[1], str)
    ):
        return Unreadable(f'sample value {value!r} is not [time, "number"]')
    try:
        number = float(value[1])
    except ValueError:
        return Unreadable(f"sample value {value[1]!r} is not a number")
    if math.isnan(number):  # the sidecar's "buildkitd unreachable": unknown, never 0
        return SidecarStatus(arch=arch, buildkit_up=False, draining=False, active_count=None)
    if math.isinf(number) or number < 0:
        return Unreadable(f"sample value {value[1]} is not a finite number ≥ 0")
    return SidecarStatus(arch=arch, buildkit_up=True, draining=False, active_count=math.ceil(number))


def _error_text(raw: dict[str, Any]) -> str:
    kind, error = raw.get("errorType"), raw.get("error")
    if error:
        return f"{kind}: {error}" if kind else str(error)
    return f"status {raw.get('status')!r}, not 'success'"


async def query(
    session: aiohttp.ClientSession, *, url: str, promql: str, timeout_seconds: float
) -> dict[str, SidecarStatus | Unreadable]:
    """Run ``promql`` at ``url``; raise :class:`PrometheusError` for whatever the network,
    Prometheus or the answer does wrong."""
    endpoint = url.rstrip("/") + "/api/v1/query"
    params = {"query": promql, "timeout": f"{timeout_seconds:g}"}
    try:
        async with (
            asyncio.timeout(timeout_seconds),
            session.get(endpoint, params=params, allow_redirects=False) as response,
        ):
            body = await read_bounded(response.content, limit=MAX_RESPONSE_BYTES)
            status = response.status
    except TimeoutError as e:
        raise PrometheusError(f"no answer within {timeout_seconds:g} s") from e
    except aiohttp.ClientError as e:
        raise PrometheusError(f"{type(e).__name__}: {e}") from e
    if len(body) > MAX_RESPONSE_BYTES:
        raise PrometheusError(f"answer exceeds {MAX_RESPONSE_BYTES} bytes")
    if status != 200:
        # Prometheus explains 400/422/503 in a JSON body; a proxy's HTML page says nothing useful.
        try:
            raw = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raw = None
        detail = f": {_error_text(raw)}" if isinstance(raw, dict) and raw.get("error") else ""
        raise PrometheusError(f"HTTP {status}{detail}")
    return parse_response(body)


async def fetch_pool(
    session: aiohttp.ClientSession,
    *,
    source: PrometheusSource,
    pool: Pool,
    pods: Iterable[str],
    timeout_seconds: float,
) -> dict[str, SidecarStatus | Unreadable]:
    """Every named pod's active builds from ``source`` (the same shape as ``fetch_all``):
    a pod without a sample, or every pod when the query failed, is :class:`Unreadable`."""
    names = list(pods)
    if not names:
        return {}
    promql = render_query(source.query, pool=pool)
    try:
        found = await query(session, url=source.url, promql=promql, timeout_seconds=timeout_seconds)
    except PrometheusError as e:
        log.warning("prometheus_query_failed", pool=pool.name, url=source.url, query=promql, reason=str(e))
        failed = Unreadable(f"Prometheus query failed: {e}")
        return dict.fromkeys(names, failed)
    missing = Unreadable("no sample in Prometheus' answer")
    return {name: found.get(name, missing) for name in names}
