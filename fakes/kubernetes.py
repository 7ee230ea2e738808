"""A fake Kubernetes API at the wire: kmock's HTTP server plus a small stateful layer.

kmock 0.8's own emulator does not fit the real kubernetes-asyncio client: it
reads ``?watch=True`` (the client's spelling) as a LIST, has no
resourceVersion and no 409 on stale writes, ignores label and field
selectors, ignores subresources (``deployments/scale``) and has no PUT. So
the tests use kmock's stateless ``KubernetesScaffold`` (discovery, request
recording, fault injection with its DSL) and serve every resource URL from
:class:`FakeCluster`, a dict of objects with a global resourceVersion,
selectors, list+watch (resume, 410 after :meth:`FakeCluster.compact`),
get/create/replace/patch/delete with 409s, and ``deployments/scale``.

It sits at priority -1, so a plain kmock reaction in a test outranks it:
``n = len(k8s.handler["patch"]); k8s.handler["patch"][n:n + 1] << 500`` fails
only the next PATCH. Strategic merge patches are applied as merge patches.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import jsonpatch
import kmock as kmocklib
import pytest
from kubernetes_asyncio import client

KINDS = {
    "pods": "Pod",
    "deployments": "Deployment",
    "leases": "Lease",
    "events": "Event",
    "configmaps": "ConfigMap",
    "horizontalpodautoscalers": "HorizontalPodAutoscaler",
}
EPOCH = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)


# --------------------------------------------------------------------------------------------
# Small stateful layer
# --------------------------------------------------------------------------------------------
def _status(code: int, reason: str, message: str) -> kmocklib.Response:
    return kmocklib.Response(
        status=code,
        payload={
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "code": code,
            "reason": reason,
            "message": message,
        },
    )


def _ok(payload: Any, code: int = 200) -> kmocklib.Response:
    # ALWAYS return an explicit status: kmock 0.8 stores the status of a returned Response on the
    # reaction itself, so one 409 would otherwise "stick" to all later responses of the reaction.
    return kmocklib.Response(status=code, payload=payload)


def _merge_patch(target: Any, patch: Any) -> Any:  # RFC 7386 (None deletes a key)
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


_TERM = re.compile(r"\s*(!?)([\w./-]+)\s*(?:(==|=|!=)\s*([\w./-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*")


def match_labels(selector: str | None, labels: dict[str, str]) -> bool:
    for term in re.split(r",(?![^()]*\))", selector or ""):
        if not term.strip():
            continue
        m = _TERM.fullmatch(term)
        if m is None:
            raise ValueError(f"unsupported label selector term: {term!r}")
        neg, key, op, val, setop, setvals = m.groups()
        values = {v.strip() for v in (setvals or "").split(",")}
        ok = (
            key not in labels
            if neg
            else labels.get(key) == val
            if op in ("=", "==")
            else labels.get(key) != val
            if op == "!="
            else labels.get(key) in values
            if setop == "in"
            else labels.get(key) not in values
            if setop == "notin"
            else key in labels
        )
        if not ok:
            return False
    return True


def match_fields(selector: str | None, obj: dict[str, Any]) -> bool:
    for term in (selector or "").split(","):
        if not term.strip():
            continue
        m = re.fullmatch(r"\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*", term)
        if m is None:
            raise ValueError(f"unsupported field selector term: {term!r}")
        path, op, val = m.groups()
        cur: Any = obj
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if (str(cur) == val) != (op != "!="):
            return False
    return True


class FakeCluster:
    """Objects keyed by (resource, namespace, name); resource = 'plural' or 'plural.group'."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.rv = 1000
        self.history: list[tuple[int, str, dict[str, Any]]] = []  # (rv, resource, event)
        self.compacted_rv = 0  # watches from older RVs -> 410
        self.calls: list[tuple[str, str, str | None, str | None, str | None]] = []  # verb log
        self._watchers: list[tuple[str, str | None, asyncio.Queue[dict[str, Any] | None]]] = []
        self.handler: kmocklib.KubernetesScaffold | None = None
        self.forbidden: set[tuple[str, str]] = set()  # (verb, resource) answered 403, see forbid()

    # ---- wiring into kmock -------------------------------------------------------------
    def install(self, handler: kmocklib.KubernetesScaffold) -> None:
        self.handler = handler
        # Priority -1: below plain user reactions (so tests can inject faults with
        # `handler['patch'][:1] << 500`), above the scaffold's fallbacks (-inf).
        (handler**-1)[self._is_resource_request] << self.handle
        # kubernetes-asyncio's VersionApi asks /version/ (the autoscaler's start-up probe);
        # kmock serves only /version. A real API server answers both.
        (handler**-1)["get /version/"] << {
            "major": "1",
            "minor": "31",
            "gitVersion": "v1.31.0-fake",
            "gitCommit": "0" * 40,
            "gitTreeState": "clean",
            "buildDate": "2024-01-01T00:00:00Z",
            "goVersion": "go1.22.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    @staticmethod
    def _is_resource_request(req: kmocklib.Request) -> bool:
        return req.resource is not None and req.resource.plural is not None

    @property
    def url(self) -> str:
        assert self.handler is not None, "install() first"
        return str(self.handler.url)

    # ---- test-side helpers ---------------------------------------------------------------
    def forbid(self, verb: str, res: str) -> None:
        """Refuse ``verb`` on ``res`` with the 403 Status a real API server sends when RBAC lacks it."""
        self.forbidden.add((verb, res))

    def now(self) -> str:
        loop_time = asyncio.get_running_loop().time()  # fake time under looptime
        return (EPOCH + datetime.timedelta(seconds=loop_time)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def put(self, res: str, ns: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or overwrite an object from the test side (emits a watch event)."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = (res, ns, meta["name"])
        existed = key in self.objects
        if ns is not None:
            meta["namespace"] = ns
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", self.now())
        self._store(res, key, obj, "MODIFIED" if existed else "ADDED")
        return obj

    def delete(self, res: str, ns: str | None, name: str) -> None:
        """Delete an object from the test side (emits a DELETED watch event)."""
        self._store(res, (res, ns, name), None, "DELETED")

    def get(self, res: str, ns: str | None, name: str) -> dict[str, Any]:
        return self.objects[res, ns, name]

    def count(self, verb: str, res: str | None = None) -> int:
        return sum(1 for c in self.calls if c[0] == verb and (res is None or c[1] == res))

    def disconnect_watches(self) -> None:
        """End all watch streams server-side (as an API server does on timeout/restart)."""
        for _, _, queue in list(self._watchers):
            queue.put_nowait(None)

    def compact(self) -> None:
        """Forget the history: watches resuming from an older resourceVersion get 410 Gone."""
        self.history.clear()
        self.compacted_rv = self.rv

    # ---- internals -------------------------------------------------------------------------
    def _store(self, res: str, key: tuple[str, str | None, str], obj: dict[str, Any] | None, etype: str) -> None:
        self.rv += 1
        if obj is None:
            obj = self.objects.pop(key)
        else:
            self.objects[key] = obj
        obj["metadata"]["resourceVersion"] = str(self.rv)
        event = {"type": etype, "object": copy.deepcopy(obj)}
        self.history.append((self.rv, res, event))
        for wres, wns, queue in self._watchers:
            if wres == res and (wns is None or wns == key[1]):
                queue.put_nowait(event)

    @staticmethod
    def _res(req: kmocklib.Request) -> str:
        r = req.resource
        assert r is not None, "served only if _is_resource_request()"
        assert r.plural is not None
        return f"{r.plural}.{r.group}" if r.group else r.plural

    def _wrap(self, req: kmocklib.Request, obj: dict[str, Any]) -> dict[str, Any]:
        r = req.resource
        assert r is not None, "served only if _is_resource_request()"
        assert r.plural is not None
        return dict(
            obj,
            apiVersion=f"{r.group}/{r.version}" if r.group else r.version,
            kind=KINDS.get(r.plural, r.plural.capitalize()),
        )

    def _selected(self, res: str, ns: str | None, params: Mapping[str, str]) -> list[dict[str, Any]]:
        return [
            obj
            for (r, n, _), obj in self.objects.items()
            if r == res
            and (ns is None or n == ns)
            and match_labels(params.get("labelSelector"), obj["metadata"].get("labels") or {})
            and match_fields(params.get("fieldSelector"), obj)
        ]

    async def handle(self, req: kmocklib.Request) -> kmocklib.Response:
        res, ns, name, sub = self._res(req), req.namespace, req.name, req.subresource
        assert req.resource is not None, "checked by _res()"
        assert req.resource.plural is not None
        method = req.method.value
        is_watch = req.params.get("watch", "").lower() in ("true", "1")
        verb = (
            ("watch" if is_watch else "list" if name is None else "get")
            if method == "GET"
            else {"POST": "create", "PUT": "replace", "PATCH": "patch", "DELETE": "delete"}.get(method, method)
        )
        self.calls.append((verb, res, ns, name, sub))
        key: tuple[str, str | None, Any] = (res, ns, name)  # Any: create takes the name from the body
        if (verb, res) in self.forbidden:
            where = f' in the namespace "{ns}"' if ns else ""
            return _status(
                403,
                "Forbidden",
                f'{req.resource.plural} is forbidden: User "system:anonymous" cannot {verb} resource '
                f'"{req.resource.plural}" in API group "{req.resource.group or ""}"{where}',
            )

        if verb == "list":
            items = [self._wrap(req, o) for o in self._selected(res, ns, req.params)]
            return _ok(
                {
                    "apiVersion": self._wrap(req, {})["apiVersion"],
                    "kind": KINDS.get(req.resource.plural, "Object") + "List",
                    "metadata": {"resourceVersion": str(self.rv)},
                    "items": items,
                }
            )
        if verb == "watch":
            return _ok(self._watch(req, res, ns))
        if verb == "create":
            body = copy.deepcopy(req.data or {})
            meta = body.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            key = (res, ns, meta["name"])
            if key in self.objects:
                return _status(409, "AlreadyExists", f'{res} "{meta["name"]}" already exists')
            meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=self.now())
            self._store(res, key, body, "ADDED")
            return _ok(self._wrap(req, body), 201)

        if key not in self.objects:
            return _status(404, "NotFound", f'{res} "{name}" not found')
        current = self.objects[key]
        conflict = _status(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {res} "{name}": the '
            "object has been modified; please apply your changes to the latest "
            "version and try again",
        )

        if sub == "scale":  # deployments/scale (apps/v1) -> autoscaling/v1 Scale
            scale: dict[str, Any] = {
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {"name": name, "namespace": ns, "resourceVersion": current["metadata"]["resourceVersion"]},
                "spec": {"replicas": current.get("spec", {}).get("replicas", 1)},
                "status": {"replicas": current.get("status", {}).get("replicas", 0)},
            }
            if verb == "get":
                return _ok(scale)
            if verb in ("patch", "replace"):
                body = req.data or {}
                new = body if verb == "replace" else _merge_patch(scale, body)
                want_rv = (body.get("metadata") or {}).get("resourceVersion")
                if want_rv and want_rv != current["metadata"]["resourceVersion"]:
                    return conflict
                updated = copy.deepcopy(current)
                updated.setdefault("spec", {})["replicas"] = new["spec"]["replicas"]
                self._store(res, key, updated, "MODIFIED")
                scale["spec"]["replicas"] = new["spec"]["replicas"]
                scale["metadata"]["resourceVersion"] = updated["metadata"]["resourceVersion"]
                return _ok(scale)
            return _status(405, "MethodNotAllowed", f"{verb} on scale")

        if verb == "get":
            return _ok(self._wrap(req, current))
        if verb == "delete":
            self._store(res, key, None, "DELETED")
            return _ok(self._wrap(req, current))
        if verb == "replace":
            body = copy.deepcopy(req.data or {})
            want_rv = body.get("metadata", {}).get("resourceVersion")
            if want_rv and want_rv != current["metadata"]["resourceVersion"]:
                return conflict
            for keep in ("uid", "creationTimestamp", "namespace"):
                body["metadata"][keep] = current["metadata"].get(keep)
            self._store(res, key, body, "MODIFIED")
            return _ok(self._wrap(req, body))
        if verb == "patch":
            ctype = req.headers.get("Content-Type", "")
            if "json-patch" in ctype:  # list body -> RFC 6902
                updated = jsonpatch.apply_patch(current, req.data)
            else:  # merge & strategic (simplified!)
                want_rv = ((req.data or {}).get("metadata") or {}).get("resourceVersion")
                if want_rv and want_rv != current["metadata"]["resourceVersion"]:
                    return conflict
                updated = _merge_patch(current, req.data or {})
            self._store(res, key, updated, "MODIFIED")
            return _ok(self._wrap(req, updated))
        return _status(405, "MethodNotAllowed", verb)

    def _watch(self, req: kmocklib.Request, res: str, ns: str | None) -> AsyncIterator[bytes | dict[str, Any]]:
        params = dict(req.params)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        entry = (res, ns, queue)
        self._watchers.append(entry)  # registered synchronously: no events can be missed
        since = params.get("resourceVersion") or "0"
        if since == "0":  # no RV: synthetic ADDED for the current state
            backlog: list[dict[str, Any]] = [
                {"type": "ADDED", "object": copy.deepcopy(o)} for o in self._selected(res, ns, {})
            ]
        elif int(since) < self.compacted_rv:
            backlog = [
                {
                    "type": "ERROR",
                    "object": {
                        "apiVersion": "v1",
                        "kind": "Status",
                        "status": "Failure",
                        "code": 410,
                        "reason": "Expired",
                        "message": f"too old resource version: {since}",
                    },
                }
            ]
        else:  # resume: replay the history after the given RV
            backlog = [
                ev
                for rv, r, ev in self.history
                if r == res and rv > int(since) and (ns is None or ev["object"]["metadata"].get("namespace") == ns)
            ]
        timeout = params.get("timeoutSeconds")
        deadline = asyncio.get_running_loop().time() + float(timeout) if timeout else None

        def matches(event: dict[str, Any]) -> bool:
            obj = event["object"]
            return event["type"] == "ERROR" or (
                match_labels(params.get("labelSelector"), obj["metadata"].get("labels") or {})
                and match_fields(params.get("fieldSelector"), obj)
            )

        async def stream() -> AsyncIterator[bytes | dict[str, Any]]:
            event: dict[str, Any] | None
            try:
                yield b""  # makes kmock start the streaming response immediately (headers)
                for event in backlog:
                    if matches(event):
                        yield event  # dicts are sent as one JSON line each
                while True:
                    left = None if deadline is None else deadline - asyncio.get_running_loop().time()
                    if left is not None and left <= 0:
                        return  # server-side timeoutSeconds: end of stream
                    try:
                        event = await asyncio.wait_for(queue.get(), left)
                    except TimeoutError:
                        return
                    if event is None:  # disconnect_watches()
                        return
                    if matches(event):
                        yield event
            finally:
                if entry in self._watchers:
                    self._watchers.remove(entry)

        return stream()


@pytest.fixture
async def k8s() -> AsyncIterator[FakeCluster]:
    cluster = FakeCluster()
    async with kmocklib.KubernetesScaffold() as handler, kmocklib.Server(handler):
        cluster.install(handler)
        yield cluster
        cluster.disconnect_watches()  # let open watch handlers finish before the server stops


@pytest.fixture
async def api(k8s: FakeCluster) -> AsyncIterator[client.ApiClient]:
    cfg = client.Configuration(host=k8s.url)  # plain http://127.0.0.1:PORT, no auth, no TLS
    async with client.ApiClient(cfg) as api_client:  # closes its aiohttp session at exit
        yield api_client
