"""Watch-backed caches: one LIST, then a WATCH that keeps the copy current.

A cycle reads the cache, never the API server, so a steady fleet costs no
LIST at all. The watch resumes from the last resourceVersion it saw; on 410
Gone (history compacted) it lists again. Until the first LIST succeeded the
cache is not *synced*, and the controller does not act on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any

import structlog
from kubernetes_asyncio import watch

from autoscaler.controller.kube import TRANSIENT, KubeError, wrap

log = structlog.get_logger("autoscaler.watching")

WATCH_TIMEOUT_SECONDS = 300
"""Server-side watch timeout: the API server ends the stream, we resume it."""


class WatchCache:
    """Objects of one kind in one namespace (with an optional label selector), by name."""

    def __init__(
        self,
        *,
        list_call: Callable[..., Any],
        namespace: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        what: str,
        retry_max_seconds: float = 30.0,
    ) -> None:
        self._list = list_call
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.what = what
        self.objects: dict[str, Any] = {}
        self.synced = asyncio.Event()
        self.changed = asyncio.Event()
        """Set whenever an object is added, modified or deleted (the reader clears it)."""
        self._resource_version: str | None = None
        self._retry_max = retry_max_seconds
        self.errors = 0

    def _selectors(self) -> dict[str, str]:
        selectors = {}
        if self.label_selector:
            selectors["label_selector"] = self.label_selector
        if self.field_selector:
            selectors["field_selector"] = self.field_selector
        return selectors

    async def _relist(self) -> None:
        try:
            listed = await self._list(self.namespace, **self._selectors(), _request_timeout=30)
        except TRANSIENT as e:
            raise wrap(e, what=f"list {self.what} in {self.namespace}") from e
        self.objects = {item.metadata.name: item for item in listed.items}
        self._resource_version = listed.metadata.resource_version
        self.synced.set()
        self.changed.set()

    async def prime(self) -> None:
        """The first LIST, made by the caller so that its failure reaches it (:class:`KubeError`):
        the controller's start-up tells a refusal from a transient error. :meth:`run` then watches."""
        await self._relist()

    async def run(self, *, stop: asyncio.Event) -> None:
        """List, then watch, until ``stop``. Errors are logged and retried with backoff."""
        failures = 0
        while not stop.is_set():
            try:
                if self._resource_version is None:
                    await self._relist()
                await self._watch(stop=stop)
                failures = 0
            except KubeError as e:
                if e.status == 410:
                    log.info("watch_expired_relisting", what=self.what, namespace=self.namespace)
                    self._resource_version = None
                    continue
                failures += 1
                self.errors += 1
                log.warning("watch_failed", what=self.what, namespace=self.namespace, error=str(e))
                delay = random.uniform(0, min(self._retry_max, 0.5 * 2**failures))  # noqa: S311 - jitter
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def _watch(self, *, stop: asyncio.Event) -> None:
        async with watch.Watch() as stream:
            events = stream.stream(
                self._list,
                self.namespace,
                **self._selectors(),
                resource_version=self._resource_version,
                timeout_seconds=WATCH_TIMEOUT_SECONDS,
                allow_watch_bookmarks=True,
                _request_timeout=WATCH_TIMEOUT_SECONDS + 30,
            )
            stopper = asyncio.ensure_future(stop.wait())
            nxt: asyncio.Future[Any] | None = None
            try:
                while True:
                    nxt = asyncio.ensure_future(anext(events))
                    done, _ = await asyncio.wait({nxt, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    if stopper in done:
                        return
                    try:
                        event = nxt.result()
                    except StopAsyncIteration:
                        return
                    except TRANSIENT as e:
                        raise wrap(e, what=f"watch {self.what} in {self.namespace}") from e
                    self._apply(event)
            finally:
                # Whether we return, fail or are cancelled: nothing is left running or unretrieved.
                for pending in (nxt, stopper):
                    if pending is not None and not pending.done():
                        pending.cancel()
                    if pending is not None:
                        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, *TRANSIENT):
                            await pending

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        obj = event["object"]
        if kind == "BOOKMARK":
            self._resource_version = event["raw_object"]["metadata"]["resourceVersion"]
            return
        name = obj.metadata.name
        self._resource_version = obj.metadata.resource_version
        if kind == "DELETED":
            self.objects.pop(name, None)
        else:
            self.objects[name] = obj
        self.changed.set()
