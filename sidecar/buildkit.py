"""A small client for buildkitd's control API, with errors the sidecar can act on.

Every gRPC failure leaves this module as a :class:`BuildkitError` carrying a
:class:`~sidecar.state.Loss`: *refused* (socket missing, connection refused:
the daemon is not running), *slow* (deadline exceeded: maybe busy, not proof
of anything) or *error* (anything else). The drain releases early only on
proof, never on a timeout.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import grpc
import grpc.aio

from common.arch import go_arch
from sidecar.protocol import control_pb2, control_pb2_grpc
from sidecar.settings import Settings
from sidecar.state import Loss

_GRPC_STATUS_TASK = "_AioCall._handle_status_once_received"
"""grpc.aio's own task, one per streaming call, that waits for the call's final status."""

_REFUSED_MARKERS = (
    "connection refused",
    "no such file or directory",
    "econnrefused",
    "enoent",
)


class BuildkitError(Exception):
    """A call to buildkitd failed; ``loss`` says what the failure proves."""

    def __init__(self, message: str, *, loss: Loss, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.loss = loss
        self.code = code


def classify(error: grpc.aio.AioRpcError) -> BuildkitError:
    """Wrap a gRPC error into a :class:`BuildkitError` with the loss it proves."""
    code = error.code()
    details = error.details() or ""
    text = details.lower()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        loss = Loss.SLOW
    elif code == grpc.StatusCode.UNAVAILABLE and any(m in text for m in _REFUSED_MARKERS):
        loss = Loss.REFUSED
    else:
        loss = Loss.ERROR
    name = code.name if code is not None else "UNKNOWN"
    return BuildkitError(f"{name}: {details}", loss=loss, code=code)


def timestamp(ts: Any, present: bool) -> datetime | None:
    """A protobuf Timestamp as an aware UTC datetime, or None if unset."""
    if not present:
        return None
    value: datetime = ts.ToDatetime(tzinfo=UTC)
    return value


def grpc_target(addr: str) -> str:
    """The gRPC target for ``unix:///path`` or ``tcp://host:port``."""
    parts = urlsplit(addr)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    if parts.scheme == "tcp":
        return parts.netloc
    raise ValueError(f"unsupported buildkitd address {addr!r}")


def open_channel(settings: Settings) -> grpc.aio.Channel:
    """A fresh channel for one connection attempt.

    The follower makes a new channel per attempt and runs its own jittered
    backoff, rather than leaning on gRPC's internal reconnect backoff (which
    grows to two minutes and would hide a restarted daemon).
    """
    options: list[tuple[str, str | int]] = [
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.enable_retries", 0),
    ]
    target = grpc_target(settings.buildkit_addr)
    if settings.tls_ca_cert is None and settings.tls_cert is None:
        return grpc.aio.insecure_channel(target, options=options)
    root = settings.tls_ca_cert.read_bytes() if settings.tls_ca_cert else None
    key = settings.tls_key.read_bytes() if settings.tls_key else None
    cert = settings.tls_cert.read_bytes() if settings.tls_cert else None
    credentials = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)
    if settings.tls_server_name:
        options.append(("grpc.ssl_target_name_override", settings.tls_server_name))
    return grpc.aio.secure_channel(target, credentials, options=options)


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """The parts of a BuildHistoryRecord the sidecar uses."""

    ref: str
    created_at: datetime | None
    completed_at: datetime | None
    error_code: int
    error_message: str


def record_of(record: control_pb2.BuildHistoryRecord) -> HistoryRecord:
    return HistoryRecord(
        ref=record.Ref,
        created_at=timestamp(record.CreatedAt, record.HasField("CreatedAt")),
        completed_at=timestamp(record.CompletedAt, record.HasField("CompletedAt")),
        error_code=record.error.code,
        error_message=record.error.message,
    )


class BuildkitClient:
    """The three calls the sidecar makes, on one channel."""

    def __init__(self, channel: grpc.aio.Channel, *, rpc_timeout_seconds: float) -> None:
        self._stub = control_pb2_grpc.ControlStub(channel)
        self._timeout = rpc_timeout_seconds

    async def version(self) -> str:
        """buildkitd's version string, e.g. ``v0.32.2``."""
        try:
            reply = await self._stub.Info(control_pb2.InfoRequest(), timeout=self._timeout)
        except grpc.aio.AioRpcError as e:
            raise classify(e) from e
        return reply.buildkitVersion.version

    async def arch(self) -> str | None:
        """The native architecture: the first platform of the first worker.

        A node with QEMU emulation registered lists emulated platforms after
        the native one, so only the first is taken.
        """
        try:
            reply = await self._stub.ListWorkers(control_pb2.ListWorkersRequest(), timeout=self._timeout)
        except grpc.aio.AioRpcError as e:
            raise classify(e) from e
        for worker in reply.record:
            for platform in worker.platforms:
                if platform.Architecture:
                    return go_arch(platform.Architecture)
        return None

    def listen(self) -> grpc.aio.UnaryStreamCall[control_pb2.BuildHistoryRequest, control_pb2.BuildHistoryEvent]:
        """The long-lived stream of active builds' events (no deadline); end it with :func:`close_stream`."""
        return self._stub.ListenBuildHistory(control_pb2.BuildHistoryRequest(ActiveOnly=True))

    async def snapshot(self) -> dict[str, datetime | None]:
        """The builds running now (ref -> CreatedAt): ``ActiveOnly, EarlyExit``.

        An idle daemon answers with an empty stream.
        """
        request = control_pb2.BuildHistoryRequest(ActiveOnly=True, EarlyExit=True)
        running: dict[str, datetime | None] = {}
        try:
            async for event in self._stub.ListenBuildHistory(request, timeout=self._timeout):
                if event.type == control_pb2.STARTED and event.record.Ref:
                    record = record_of(event.record)
                    running[record.ref] = record.created_at
        except grpc.aio.AioRpcError as e:
            raise classify(e) from e
        return running

    async def history(self, *, limit: int = 0) -> AsyncIterator[HistoryRecord]:
        """Every record buildkitd keeps (completed ones included), then the end."""
        request = control_pb2.BuildHistoryRequest(EarlyExit=True, Limit=limit)
        try:
            async for event in self._stub.ListenBuildHistory(request, timeout=max(self._timeout, 60.0)):
                if event.record.Ref:
                    yield record_of(event.record)
        except grpc.aio.AioRpcError as e:
            raise classify(e) from e


async def close_stream(call: grpc.aio.UnaryStreamCall[Any, Any], *, timeout_seconds: float) -> None:
    """Cancel a streaming call (if still open) and wait until gRPC has finished it.

    ``cancel()`` marks the call cancelled at once, but grpc.aio keeps a task per
    streaming call that waits for the final status from gRPC's core, and after a
    local cancel that status comes back from gRPC's poller thread a few loop
    iterations later (many under CPU load). Nothing else awaits that task: whoever
    returns right after ``cancel()`` leaves it running behind them. grpc.aio gives
    no handle on it, so it is found by the call it refers to; should a grpc release
    change that, there is nothing to wait for and tests/test_following.py says so.
    ``timeout_seconds`` bounds the wait; the task is never cancelled.
    """
    status = _status_task(call)
    call.cancel()
    if status is not None:
        await asyncio.wait({status}, timeout=timeout_seconds)


def _status_task(call: grpc.aio.Call) -> asyncio.Task[Any] | None:
    """grpc.aio's pending status task for ``call`` (None: none, or already done)."""
    core_call = getattr(call, "_cython_call", None)
    if core_call is None:
        return None
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        if task.done() or getattr(coro, "__qualname__", None) != _GRPC_STATUS_TASK:
            continue
        # The coroutine's closure holds the call it waits for.
        if any(ref is core_call for scope in gc.get_referents(coro) for ref in gc.get_referents(scope)):
            return task
    return None
