"""A fake buildkitd: a real ``grpc.aio`` server speaking the Control API subset.

It behaves as ``shared/buildkit-control-api.md`` documents a real v0.32.2
daemon: every ``ListenBuildHistory`` stream starts with the response header
``buildkit-current-timestamp`` and then every active build as STARTED;
``EarlyExit`` ends the stream after that (an idle daemon's snapshot is an empty
stream); without ``ActiveOnly`` the stored records follow as COMPLETE; live
streams then get STARTED / COMPLETE / DELETED events. A build's COMPLETE is
sent twice (the second with ``Generation`` 1), and the test can reorder,
duplicate, drop or hold events, and gate snapshots, to play the races a real
daemon's goroutines produce.

Used by the tests, the demo and the benchmarks; it serves on a unix socket or
on TCP, with TLS or mTLS as buildkitd does.

It also serves ``Solve``, which the sidecar never calls: a test client runs a build
over a real connection, as buildx does (through the router, or straight to the
daemon). The build lasts :data:`BUILD_SECONDS` (a frontend attribute; 0 if absent)
and ends COMPLETE, or is lost if the daemon is killed first. The daemon notes who
asked (the client certificate's common name, under mTLS) and over which connection
(the peer address), so a test can prove that TLS ran end to end through a proxy and
which builds shared one connection.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import grpc
import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp

from sidecar.protocol import control_pb2, control_pb2_grpc, ops_pb2, worker_pb2

_refs = itertools.count(1)

BUILD_SECONDS = "fake.build-seconds"
"""The ``FrontendAttrs`` key of a ``Solve`` that says how long the fake build runs (seconds)."""


def new_ref() -> str:
    """A ref shaped like buildkitd's (25 lowercase alphanumerics)."""
    return f"fakebuild{next(_refs):016d}"


def _ts(unix: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(unix * 1e9))
    return ts


@dataclass(frozen=True)
class Solved:
    """One ``Solve`` the daemon took: which build, for whom, over which connection."""

    ref: str
    client: str
    """The client certificate's common name (mTLS), or "" without one."""
    peer: str
    """gRPC's peer string for the connection (``ipv4:127.0.0.1:40312``): one per connection."""
    at: float
    """When it arrived (``time.monotonic()``)."""


@dataclass
class Build:
    ref: str
    created_at: float
    completed_at: float | None = None
    error_code: int = 0
    error_message: str = ""
    generation: int = 0

    def record(self) -> control_pb2.BuildHistoryRecord:
        record = control_pb2.BuildHistoryRecord(
            Ref=self.ref, CreatedAt=_ts(self.created_at), Generation=self.generation
        )
        if self.completed_at is not None:
            record.CompletedAt.CopyFrom(_ts(self.completed_at))
            record.numTotalSteps = 3
            record.numCompletedSteps = 3
        if self.error_code:
            record.error.code = self.error_code
            record.error.message = self.error_message
        return record


def started(build: Build) -> control_pb2.BuildHistoryEvent:
    return control_pb2.BuildHistoryEvent(type=control_pb2.STARTED, record=build.record())


def complete(build: Build) -> control_pb2.BuildHistoryEvent:
    return control_pb2.BuildHistoryEvent(type=control_pb2.COMPLETE, record=build.record())


_END = object()


@dataclass
class _Subscriber:
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)


class FakeBuildkitd(control_pb2_grpc.ControlServicer):
    """The daemon's state, its servicer, and knobs for the test."""

    def __init__(
        self,
        *,
        platforms: Iterable[str] = ("linux/amd64", "linux/amd64/v2", "linux/386"),
        version: str = "v0.32.2",
        duplicate_complete: bool = True,
    ) -> None:
        self.platforms = list(platforms)
        self.version = version
        self.duplicate_complete = duplicate_complete
        self.active: dict[str, Build] = {}
        self.stored: dict[str, Build] = {}
        self.subscribers: list[_Subscriber] = []
        self.snapshot_gate: asyncio.Event | None = None
        """If set, snapshots capture their state at once but wait on it before sending."""
        self.hold_live: bool = False
        """While true, live events are not sent (as if lost in flight): the test publishes what it wants."""
        self.requests: list[control_pb2.BuildHistoryRequest] = []
        self.server: grpc.aio.Server | None = None
        self.address: str = ""
        """The address for the sidecar (``unix:///…`` or ``tcp://host:port``)."""
        self._bind: str = ""
        self.snapshots_served = 0
        self.list_workers_served = 0
        self.solves: list[Solved] = []
        """Every ``Solve`` this daemon took, in arrival order."""
        self.on_solve: Callable[[Solved], None] | None = None
        """Called with each ``Solve`` as it arrives (the test's view of where builds land)."""
        self._tls: grpc.ServerCredentials | None = None
        self.list_workers_reply: control_pb2.ListWorkersResponse | None = None
        """If set, ListWorkers answers this (e.g. a recorded reply) instead of one worker with ``platforms``."""

    # -- lifecycle ---------------------------------------------------------

    async def start(self, bind: str, *, tls: grpc.ServerCredentials | None = None) -> str:
        """Serve on ``unix:/path`` or ``host:port`` (port 0 picks one). Returns the sidecar address.

        With ``tls`` (TCP only) it serves TLS, as buildkitd does with ``--tlscert``/``--tlskey``
        (and mTLS with ``--tlscacert``).
        """
        server = grpc.aio.server()
        control_pb2_grpc.add_ControlServicer_to_server(self, server)
        port = server.add_secure_port(bind, tls) if tls is not None else server.add_insecure_port(bind)
        await server.start()
        self.server = server
        self._tls = tls
        if bind.startswith("unix:"):
            self.address = "unix://" + bind.removeprefix("unix:").removeprefix("//")
            self._bind = bind
        else:
            host = bind.rpartition(":")[0]
            self.address = f"tcp://{host}:{port}"
            self._bind = f"{host}:{port}"
        return self.address

    async def restart(self) -> None:
        """Start again on the same address (after :meth:`kill` or :meth:`graceful_exit`)."""
        await self.start(self._bind, tls=self._tls)

    async def kill(self) -> None:
        """Die at once: every stream breaks (UNAVAILABLE), the socket goes away.

        Running builds are lost, as they would be with a killed daemon.
        """
        server, self.server = self.server, None
        self.subscribers.clear()
        self.active.clear()
        if server is not None:
            await server.stop(grace=None)

    async def graceful_exit(self, *, builds_finish_after: float | None = None) -> None:
        """buildkitd's first SIGTERM: stop listening at once; running builds finish
        (their COMPLETE still reaches open streams), then streams end with OK."""
        server = self.server
        if server is None:
            return
        stopping = asyncio.create_task(server.stop(grace=3600))
        await asyncio.sleep(0)
        if builds_finish_after is not None:
            await asyncio.sleep(builds_finish_after)
            for ref in list(self.active):
                self.complete_build(ref)
        while self.active:
            await asyncio.sleep(0.01)
        for sub in self.subscribers:
            sub.queue.put_nowait(_END)
        await stopping
        self.server = None
        self.subscribers.clear()

    # -- builds --------------------------------------------------------------

    def start_build(self, ref: str | None = None, *, created_at: float | None = None, publish: bool = True) -> str:
        """A build starts; live streams get STARTED (unless ``publish`` is false: a lost event)."""
        build = Build(ref=ref or new_ref(), created_at=time.time() if created_at is None else created_at)
        self.active[build.ref] = build
        if publish:
            self.publish(started(build))
        return build.ref

    def complete_build(
        self,
        ref: str,
        *,
        error_code: int = 0,
        error_message: str = "",
        publish: bool = True,
        completed_at: float | None = None,
    ) -> Build:
        """A build ends; live streams get COMPLETE, then (a moment later, as the
        real daemon does) a second COMPLETE with Generation 1."""
        build = self.active.pop(ref)
        build.completed_at = time.time() if completed_at is None else completed_at
        build.error_code = error_code
        build.error_message = error_message
        self.stored[ref] = build
        if publish:
            self.publish(complete(build))
            if self.duplicate_complete:
                final = Build(**{**build.__dict__, "generation": 1})
                self.publish(complete(final))
        return build

    def fast_build(self, ref: str | None = None) -> str:
        """A fully cached build whose COMPLETE overtakes its STARTED."""
        build = Build(ref=ref or new_ref(), created_at=time.time())
        build.completed_at = build.created_at + 0.05
        self.stored[build.ref] = build
        self.publish(complete(build))
        self.publish(started(build))
        return build.ref

    def publish(self, event: control_pb2.BuildHistoryEvent) -> None:
        """Send one event to every live stream, as it is."""
        if self.hold_live:
            return
        for sub in self.subscribers:
            sub.queue.put_nowait(event)

    def publish_raw(self, event: control_pb2.BuildHistoryEvent) -> None:
        """Send an event even while ``hold_live`` is set."""
        for sub in self.subscribers:
            sub.queue.put_nowait(event)

    def end_streams(self) -> None:
        """End every live stream with status OK."""
        for sub in self.subscribers:
            sub.queue.put_nowait(_END)

    # -- servicer --------------------------------------------------------------

    async def Solve(
        self,
        request: control_pb2.SolveRequest,
        context: grpc.aio.ServicerContext[control_pb2.SolveRequest, control_pb2.SolveResponse],
    ) -> control_pb2.SolveResponse:
        try:
            seconds = float(request.FrontendAttrs.get(BUILD_SECONDS, "0"))
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds < 86_400:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{BUILD_SECONDS} must be seconds in [0, 86400)")
        names = list(context.auth_context().get("x509_common_name", ())) or [b""]
        ref = self.start_build(request.Ref or None)
        solved = Solved(ref=ref, client=names[0].decode(), peer=context.peer(), at=time.monotonic())
        self.solves.append(solved)
        if self.on_solve is not None:
            self.on_solve(solved)
        await asyncio.sleep(seconds)
        if ref not in self.active:  # killed under it (the RPC is already broken) or ended by the test
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"build {ref} lost")
        self.complete_build(ref)
        return control_pb2.SolveResponse()

    async def Info(
        self,
        request: control_pb2.InfoRequest,
        context: grpc.aio.ServicerContext[control_pb2.InfoRequest, control_pb2.InfoResponse],
    ) -> control_pb2.InfoResponse:
        return control_pb2.InfoResponse(
            buildkitVersion=control_pb2.BuildkitVersion(
                package="github.com/moby/buildkit", version=self.version, revision="fake"
            )
        )

    async def ListWorkers(
        self,
        request: control_pb2.ListWorkersRequest,
        context: grpc.aio.ServicerContext[control_pb2.ListWorkersRequest, control_pb2.ListWorkersResponse],
    ) -> control_pb2.ListWorkersResponse:
        self.list_workers_served += 1
        if self.list_workers_reply is not None:
            return self.list_workers_reply
        platforms = []
        for spec in self.platforms:
            os_, arch, *variant = spec.split("/")
            platforms.append(ops_pb2.Platform(OS=os_, Architecture=arch, Variant=variant[0] if variant else ""))
        worker = worker_pb2.WorkerRecord(ID="fakeworker", platforms=platforms)
        return control_pb2.ListWorkersResponse(record=[worker])

    async def ListenBuildHistory(
        self,
        request: control_pb2.BuildHistoryRequest,
        context: grpc.aio.ServicerContext[control_pb2.BuildHistoryRequest, control_pb2.BuildHistoryEvent],
    ) -> AsyncIterator[control_pb2.BuildHistoryEvent]:
        self.requests.append(request)
        await context.send_initial_metadata((("buildkit-current-timestamp", str(time.time_ns())),))
        current = [b for b in self.active.values() if not request.Ref or b.ref == request.Ref]
        stored = [] if request.ActiveOnly else list(self.stored.values())
        subscriber = None
        if not request.EarlyExit:
            subscriber = _Subscriber()
            self.subscribers.append(subscriber)
        else:
            self.snapshots_served += 1
            if self.snapshot_gate is not None:
                await self.snapshot_gate.wait()
        try:
            for build in current:
                yield started(build)
            for build in stored:
                yield complete(build)
            if subscriber is None:
                return
            while True:
                item = await subscriber.queue.get()
                if item is _END:
                    return
                assert isinstance(item, control_pb2.BuildHistoryEvent)
                yield item
        finally:
            if subscriber is not None and subscriber in self.subscribers:
                self.subscribers.remove(subscriber)
