"""The few Kubernetes calls the autoscaler makes, with errors it can act on.

Every ``ApiException`` leaves this module as a :class:`KubeError` saying
whether trying again can help (409 conflict, 429, 5xx, timeouts, connection
errors) or not (403, 404, 422: a configuration or RBAC problem). Writes carry
the ``resourceVersion`` the decision was based on where Kubernetes allows it,
so a write on a stale view fails with 409 instead of undoing someone else's.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

MERGE_PATCH = "application/merge-patch+json"
COMPONENT = "buildkit-autoscaler"

RETRYABLE_STATUSES = frozenset({409, 429, 500, 502, 503, 504})


class KubeError(Exception):
    """A Kubernetes call failed; ``retryable`` says whether trying again can help.

    ``what`` is the call (``list configmaps in buildkit``), ``detail`` the API server's own
    message (its Status ``message``: who was refused what), empty if it sent none.
    """

    def __init__(self, message: str, *, status: int | None, retryable: bool, what: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.what = what
        self.detail = detail

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def not_found(self) -> bool:
        return self.status == 404


def server_message(error: ApiException) -> str:
    """The ``message`` of the Status object the API server sent with an error, or ''."""
    body: object = error.body
    try:
        status = json.loads(body) if isinstance(body, str | bytes) else None
    except ValueError:  # not JSON (UnicodeDecodeError included)
        return ""
    message = status.get("message") if isinstance(status, dict) else None
    return message if isinstance(message, str) else ""


def wrap(error: BaseException, *, what: str) -> KubeError:
    """Turn a client error into a :class:`KubeError` naming the call."""
    if isinstance(error, ApiException):
        status = int(error.status) if error.status else None
        reason = error.reason or ""
        return KubeError(
            f"{what}: HTTP {status} {reason}".rstrip(),
            status=status,
            retryable=status is None or status in RETRYABLE_STATUSES,
            what=what,
            detail=server_message(error),
        )
    return KubeError(f"{what}: {type(error).__name__}: {error}", status=None, retryable=True, what=what)


TRANSIENT = (ApiException, aiohttp.ClientError, TimeoutError)
"""What a Kubernetes call can raise that :func:`wrap` turns into a KubeError."""


@dataclass(frozen=True, slots=True)
class Scale:
    replicas: int
    resource_version: str


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """What an Event is about."""

    kind: str
    api_version: str
    namespace: str
    name: str
    uid: str | None = None


class Kube:
    """Typed wrappers over the calls the controller makes; one ApiClient."""

    def __init__(self, api: client.ApiClient, *, request_timeout_seconds: float = 10.0) -> None:
        self.api = api
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)
        self.timeout = request_timeout_seconds

    async def read_scale(self, namespace: str, deployment: str) -> Scale:
        try:
            scale = await self.apps.read_namespaced_deployment_scale(
                deployment, namespace, _request_timeout=self.timeout
            )
        except TRANSIENT as e:
            raise wrap(e, what=f"read deployments/{deployment}/scale in {namespace}") from e
        return Scale(replicas=int(scale.spec.replicas or 0), resource_version=str(scale.metadata.resource_version))

    async def patch_scale(self, namespace: str, deployment: str, *, replicas: int, resource_version: str) -> Scale:
        """Set the replicas, only if the Deployment did not change since ``resource_version`` (else 409)."""
        body = {"metadata": {"resourceVersion": resource_version}, "spec": {"replicas": replicas}}
        try:
            # _content_type is accepted at run time; the stubs do not list it.
            scale = await self.apps.patch_namespaced_deployment_scale(  # type: ignore[call-arg]
                deployment, namespace, body, _content_type=MERGE_PATCH, _request_timeout=self.timeout
            )
        except TRANSIENT as e:
            raise wrap(e, what=f"patch deployments/{deployment}/scale in {namespace}") from e
        return Scale(replicas=int(scale.spec.replicas or 0), resource_version=str(scale.metadata.resource_version))

    async def deployment_selector(self, namespace: str, deployment: str) -> dict[str, str]:
        """The Deployment's own ``matchLabels`` (matchExpressions are not supported: say so)."""
        try:
            found = await self.apps.read_namespaced_deployment(deployment, namespace, _request_timeout=self.timeout)
        except TRANSIENT as e:
            raise wrap(e, what=f"read deployments/{deployment} in {namespace}") from e
        selector = found.spec.selector
        if selector.match_expressions:
            raise KubeError(
                f"deployments/{deployment} in {namespace} selects pods with matchExpressions; "
                "set the pool's selector explicitly",
                status=None,
                retryable=False,
            )
        return dict(selector.match_labels or {})

    async def patch_pod_annotations(self, namespace: str, pod: str, annotations: Mapping[str, str | None]) -> None:
        """Set (or, with None, remove) annotations on one pod."""
        body = {"metadata": {"annotations": dict(annotations)}}
        try:
            await self.core.patch_namespaced_pod(  # type: ignore[call-arg]
                pod, namespace, body, _content_type=MERGE_PATCH, _request_timeout=self.timeout
            )
        except TRANSIENT as e:
            raise wrap(e, what=f"patch pods/{pod} in {namespace}") from e

    async def hpa_targets(self, namespace: str) -> dict[str, str]:
        """Deployments in ``namespace`` that an HPA targets: deployment name -> HPA name."""
        try:
            hpas = await self.autoscaling.list_namespaced_horizontal_pod_autoscaler(
                namespace, _request_timeout=self.timeout
            )
        except TRANSIENT as e:
            raise wrap(e, what=f"list horizontalpodautoscalers in {namespace}") from e
        targets: dict[str, str] = {}
        for hpa in hpas.items:
            ref = hpa.spec.scale_target_ref
            if ref.kind == "Deployment":
                targets[ref.name] = hpa.metadata.name
        return targets

    async def post_event(
        self,
        about: ObjectRef,
        *,
        type_: str,
        reason: str,
        message: str,
        now: datetime.datetime,
    ) -> None:
        """A core/v1 Event (what ``kubectl describe`` shows)."""
        # The client accepts plain dicts (its annotations say model objects only).
        body: Any = {
            "metadata": {"generateName": f"{about.name}.", "namespace": about.namespace},
            "involvedObject": {
                "kind": about.kind,
                "apiVersion": about.api_version,
                "namespace": about.namespace,
                "name": about.name,
                **({"uid": about.uid} if about.uid else {}),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": _rfc3339(now),
            "lastTimestamp": _rfc3339(now),
            "count": 1,
        }
        try:
            await self.core.create_namespaced_event(about.namespace, body, _request_timeout=self.timeout)
        except TRANSIENT as e:
            raise wrap(e, what=f"create event on {about.kind.lower()}s/{about.name}") from e


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
