"""Follow buildkitd's build history: connect, stream, resync, reconnect.

One connection attempt (a *session*) goes:

1. ``Info`` (version) and, unless ``--arch`` is set, ``ListWorkers`` (arch);
2. open the long-lived ``ListenBuildHistory(ActiveOnly)`` stream and wait for
   its response headers, so the subscription is live before step 3;
3. a one-shot snapshot reconciles the active set: now the count is known;
4. apply stream events as they arrive; every ``resync_interval_seconds`` take
   another snapshot, so a missed event can never leave a phantom build.

When a session ends, the count becomes unknown (``/status`` says null, never 0)
until the next session's snapshot. Attempts are spaced by jittered exponential
backoff. What the failure proves (refused, slow, other) is recorded for the
drain, which releases early only when buildkitd is provably gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable

import grpc
import grpc.aio
import structlog

from sidecar import buildkit
from sidecar.buildkit import BuildkitClient, BuildkitError
from sidecar.ledger import Ledger
from sidecar.metrics import Metrics
from sidecar.protocol import control_pb2
from sidecar.settings import Settings
from sidecar.state import BuilderState, Connection, Loss
from sidecar.tracking import Change

log = structlog.get_logger("sidecar.following")


class Backoff:
    """Full-jitter exponential backoff: a random delay in [0, min(cap, base * 2^n)]."""

    def __init__(self, *, initial: float, cap: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * 2.0**self.failures)
        if ceiling < self.cap:
            # Stop counting once at the cap: 2.0**1024 overflows, which a
            # daemon down for hours (about 1,000 attempts) would otherwise reach.
            self.failures += 1
        # Never below a tenth of the initial delay: a tight loop helps nobody.
        return max(self.initial / 10, self._rng.uniform(0, ceiling))

    def reset(self) -> None:
        self.failures = 0


UNREACHABLE_LOG_INTERVAL_SECONDS = 60.0
"""While buildkitd stays unreachable for the same reason, one ``buildkitd_unreachable`` line a
minute: a wrong ``--buildkit-addr`` shows in ``kubectl logs`` from the first attempt, without a
line per retry."""


class UnreachableLog:
    """Says every failure to reach buildkitd, from the first attempt on, at a bounded rate."""

    def __init__(self, *, address: str) -> None:
        self._address = address
        self._reason: str | None = None
        self._at = -math.inf
        self._unsaid = 0

    def failed(self, *, loss: Loss, detail: str, attempt: int, retry_in_seconds: float, now: float) -> None:
        """A failed attempt: logged if the reason changed or the last line is a minute old."""
        self._unsaid += 1
        if loss.value == self._reason and now - self._at < UNREACHABLE_LOG_INTERVAL_SECONDS:
            return
        log.warning(
            "buildkitd_unreachable",
            address=self._address,
            reason=loss.value,
            detail=detail,
            attempt=attempt,
            failed_attempts_since_last_line=self._unsaid,
            retry_in_seconds=round(retry_in_seconds, 3),
        )
        self._reason, self._at, self._unsaid = loss.value, now, 0

    def connected(self) -> None:
        self._reason, self._at, self._unsaid = None, -math.inf, 0


class _StreamEnded(Exception):
    """The history stream ended with status OK: buildkitd's own graceful exit."""


class Follower:
    """Keeps :class:`BuilderState` in step with buildkitd."""

    def __init__(
        self,
        *,
        settings: Settings,
        state: BuilderState,
        metrics: Metrics,
        channel_factory: Callable[[Settings], grpc.aio.Channel] = buildkit.open_channel,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._state = state
        self._metrics = metrics
        self._channel_factory = channel_factory
        self._backoff = Backoff(initial=settings.reconnect_initial_seconds, cap=settings.reconnect_max_seconds, rng=rng)
        self._streams_opened = 0
        self._was_up = False
        # The last session ended with the stream's OK status: if buildkitd now
        # refuses connections, it exited on its own (not a crash).
        self._clean_end = False
        self._failed_attempts = 0
        """Failed attempts and broken sessions so far: :attr:`Connection.attempt`."""
        self._unreachable = UnreachableLog(address=settings.buildkit_addr)
        self._ledger = Ledger(state=state, metrics=metrics)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    async def run(self, *, stop: asyncio.Event) -> None:
        """Follow until ``stop`` is set. Never returns early on buildkitd errors."""
        while not stop.is_set():
            self._state.heartbeat = self._now()
            # This attempt answers any recheck asked before it; one asked during it or the
            # pause after it ends that pause at once.
            self._state.recheck_wanted.clear()
            channel = self._channel_factory(self._settings)
            try:
                await self._session(channel, stop=stop)
            except _StreamEnded:
                # The next attempt (after the short, reset backoff) tells a
                # daemon that exited on its own from one that merely ended a stream.
                self._clean_end = True
                self._lost(Loss.ERROR, "history stream ended (buildkitd shutting down?)")
            except BuildkitError as e:
                loss = e.loss
                if self._clean_end and loss is Loss.REFUSED:
                    loss = Loss.CLEAN_EXIT
                elif loss is not Loss.REFUSED:
                    self._clean_end = False
                self._metrics.connect_failures.labels(arch=self._metrics.arch, loss=e.loss.value).inc()
                self._lost(loss, str(e))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # loop boundary: log, count, retry
                log.exception("follower_error", error=repr(e))
                self._metrics.loop_errors.labels(arch=self._metrics.arch, loop="follower").inc()
                self._clean_end = False
                self._lost(Loss.ERROR, repr(e))
            finally:
                await channel.close(grace=None)
            delay = self._backoff.next_delay()
            connection = self._state.connection
            if not connection.up and connection.attempt > 0 and not stop.is_set():
                self._unreachable.failed(
                    loss=connection.loss, detail=connection.detail, attempt=connection.attempt,
                    retry_in_seconds=delay, now=self._now(),
                )  # fmt: skip
            await self._pause(delay, stop=stop)

    async def _pause(self, delay: float, *, stop: asyncio.Event) -> None:
        """The backoff between attempts: ``delay`` seconds, cut short by ``stop`` or by a
        recheck request (:meth:`BuilderState.request_recheck`)."""
        waiters = {
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self._state.recheck_wanted.wait()),
        }
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    def _lost(self, loss: Loss, detail: str) -> None:
        """Record a failed attempt or a broken session; the count becomes unknown."""
        now = self._now()
        self._failed_attempts += 1
        previous = self._state.connection
        lost_at = previous.lost_at if previous.lost_at is not None else now
        refused_since: float | None = None
        if loss in (Loss.REFUSED, Loss.CLEAN_EXIT):
            refused_since = previous.refused_since if previous.refused_since is not None else lost_at
        self._state.set_connection(
            Connection(
                up=False,
                accepting=False,
                loss=loss,
                lost_at=lost_at,
                refused_since=refused_since,
                attempt=self._failed_attempts,
                detail=detail,
            ),
            now=now,
        )
        if self._was_up:
            self._was_up = False
            log.warning("buildkitd_lost", arch=self._state.arch, reason=loss.value, detail=detail)

    async def _session(self, channel: grpc.aio.Channel, *, stop: asyncio.Event) -> None:
        settings = self._settings
        state = self._state
        client = BuildkitClient(channel, rpc_timeout_seconds=settings.rpc_timeout_seconds)
        version = await client.version()
        if state.arch is None:
            arch = await client.arch()
            if arch is None:
                raise BuildkitError("ListWorkers returned no platform; set --arch", loss=Loss.ERROR)
            state.arch = arch
            log.info("arch_detected", arch=arch)
        state.buildkit_version = version

        call = client.listen()
        reader = asyncio.create_task(self._read(call), name="history-stream")
        try:
            try:
                await asyncio.wait_for(call.initial_metadata(), settings.rpc_timeout_seconds)
            except TimeoutError:
                # buildkitd sends a header first; without one, carry on: the snapshot
                # below and the periodic resync still make the count right.
                log.warning("history_stream_no_headers", arch=state.arch)
            except grpc.aio.AioRpcError as e:
                raise buildkit.classify(e) from e
            self._streams_opened += 1
            if self._streams_opened > 1:
                self._metrics.stream_reconnects.labels(arch=state.arch or "unknown").inc()
            await self._resync(client, reader=reader)
            self._backoff.reset()
            await self._follow(client, reader=reader, stop=stop)
        finally:
            reader.cancel()
            # Not just call.cancel(): gRPC finishes a cancelled call on a task of its own,
            # which would outlive the session (and the follower, at stop).
            await buildkit.close_stream(call, timeout_seconds=settings.rpc_timeout_seconds)
            with contextlib.suppress(asyncio.CancelledError, BuildkitError, _StreamEnded):
                await reader

    async def _read(
        self, call: grpc.aio.UnaryStreamCall[control_pb2.BuildHistoryRequest, control_pb2.BuildHistoryEvent]
    ) -> None:
        """Apply every event of the live stream; raise how it ended."""
        try:
            async for event in call:
                self.apply(event)
        except grpc.aio.AioRpcError as e:
            raise buildkit.classify(e) from e
        raise _StreamEnded()

    def apply(self, event: control_pb2.BuildHistoryEvent) -> Change:
        """Apply one history event to the tracker, then count and log it (:class:`Ledger`)."""
        return self._ledger.apply(event, now=self._now())

    async def _resync(self, client: BuildkitClient, *, reader: asyncio.Task[None]) -> None:
        """Take a snapshot and reconcile; mark the connection up."""
        tracker = self._state.tracker
        token = tracker.begin_snapshot()
        try:
            running = await client.snapshot()
        except BuildkitError as e:
            if reader.done() and not reader.cancelled() and isinstance(reader.exception(), _StreamEnded):
                # The stream ended with OK while this snapshot was failing: that
                # OK is buildkitd's own exit, whatever the snapshot ran into.
                raise _StreamEnded() from e
            if self._state.up and e.loss is Loss.REFUSED and not reader.done():
                # Listeners closed but the open stream still delivers: buildkitd
                # is finishing its builds before exiting. The count is still
                # exact; only new builds cannot come in.
                if self._state.connection.accepting:
                    log.warning("buildkitd_stopping", arch=self._state.arch, detail=str(e))
                    self._state.set_connection(Connection(up=True, accepting=False, loss=Loss.NONE), now=self._now())
                return
            raise
        change = tracker.apply_snapshot(token, running, now=self._now())
        if change:
            self._ledger.changed(change, source="snapshot", now=self._now())
        self._clean_end = False
        self._state.last_sync_unix = time.time()
        self._state.heartbeat = self._now()
        if not self._state.up or not self._state.connection.accepting:
            self._state.set_connection(Connection(up=True, accepting=True, loss=Loss.NONE), now=self._now())
        if not self._was_up:
            self._was_up = True
            self._unreachable.connected()
            log.info(
                "buildkitd_connected",
                arch=self._state.arch,
                buildkit_version=self._state.buildkit_version,
                active=len(tracker),
            )

    async def _follow(self, client: BuildkitClient, *, reader: asyncio.Task[None], stop: asyncio.Event) -> None:
        """Wait on the stream, resyncing on a timer, until it ends or ``stop``."""
        interval = self._settings.resync_interval_seconds
        stopper = asyncio.create_task(stop.wait(), name="follower-stop")
        try:
            while True:
                done, _ = await asyncio.wait({reader, stopper}, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    reader.result()  # raises BuildkitError or _StreamEnded
                    raise _StreamEnded()
                if stopper in done:
                    return
                self._state.heartbeat = self._now()
                await self._resync(client, reader=reader)
        finally:
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopper
