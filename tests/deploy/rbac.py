"""The autoscaler's RBAC read two ways: what its code calls (derived from the code, through
the generated Kubernetes client to the REST path and verb), and what a rendered Role
grants, per resource and per name. The deploy tests compare the two."""

from __future__ import annotations

import ast
import inspect
import re
from collections import defaultdict

from kubernetes_asyncio import client as kube_client

from tests.deploy.manifests import ROOT, Obj

Permission = tuple[str, str, str]
"""(apiGroup, resource[/subresource], verb)"""


def _api_classes() -> dict[str, type]:
    """The kubernetes_asyncio API classes the autoscaler constructs (``client.XxxApi(...)``)."""
    names: set[str] = set()
    for path in (ROOT / "autoscaler").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr.endswith("Api")
                and node.func.attr != "ApiClient"
            ):
                names.add(node.func.attr)
    assert names, "no API classes found in autoscaler/"
    return {name: getattr(kube_client, name) for name in names}


def _endpoint(api: type, method: str) -> tuple[str, str]:
    """The (path, HTTP method) the generated client calls for ``method``."""
    source = inspect.getsource(getattr(api, method + "_with_http_info"))
    match = re.search(r"call_api\(\s*'([^']+)',\s*'([A-Z]+)'", source)
    assert match, f"{api.__name__}.{method}: no call_api found"
    return match[1], match[2]


def _permission(path: str, http: str) -> tuple[str, str, str]:
    """(apiGroup, resource[/subresource], verb) for one REST call."""
    parts = path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    resource, named, sub = rest[0], len(rest) > 1, rest[2:3]
    verb = {"GET": "get" if named else "list", "POST": "create", "PUT": "update", "PATCH": "patch"}.get(http)
    if http == "DELETE":
        verb = "delete" if named else "deletecollection"
    assert verb, f"{http} {path}"
    return group, "/".join([resource, *sub]), verb


def code_permissions() -> set[Permission]:
    """What the autoscaler's code calls, derived from the code: every API method it names
    (mapped through the generated client to its REST path and verb), and ``watch`` for
    every list call it hands to a watch-backed cache (``WatchCache(list_call=...)``)."""
    classes = _api_classes()
    methods = {
        m for cls in classes.values() for m in vars(cls) if not m.startswith("_") and not m.endswith("_with_http_info")
    }
    used: set[str] = set()
    watched: set[str] = set()
    for path in (ROOT / "autoscaler").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in methods:
                used.add(node.attr)
            if isinstance(node, ast.keyword) and node.arg == "list_call" and isinstance(node.value, ast.Attribute):
                watched.add(node.value.attr)
    # The watch cache really does watch what it lists.
    watching = (ROOT / "autoscaler" / "controller" / "watching.py").read_text(encoding="utf-8")
    assert "watch.Watch()" in watching
    assert "stream(\n                self._list" in watching
    assert used, "no Kubernetes API calls found in autoscaler/"
    grants: set[tuple[str, str, str]] = set()
    for method in used:
        owners = [cls for cls in classes.values() if method in vars(cls)]
        assert 1 == len(owners), f"{method}: ambiguous between {owners}"
        path, http = _endpoint(owners[0], method)
        if not path.startswith(("/api/", "/apis/")):
            # A non-resource URL (GET /version, the start-up probe): every client may
            # read it through the cluster's own system:public-info-viewer, not our Role.
            assert ("/version/", "GET") == (path, http)
            continue
        group, resource, verb = _permission(path, http)
        grants.add((group, resource, verb))
        if method in watched:
            assert "list" == verb
            grants.add((group, resource, "watch"))
    return grants


def role_permissions(role: Obj) -> set[Permission]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def grants_by_name(role: Obj) -> dict[tuple[str, str, str | None], set[str]]:
    """(apiGroup, resource, name) -> the verbs the Role grants on it; ``None`` as the name
    for a rule without ``resourceNames`` (any object of that resource)."""
    grants: dict[tuple[str, str, str | None], set[str]] = defaultdict(set)
    for rule in role["rules"]:
        names: list[str | None] = list(rule.get("resourceNames", [])) or [None]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for name in names:
                    grants[group, resource, name] |= set(rule["verbs"])
    return dict(grants)
