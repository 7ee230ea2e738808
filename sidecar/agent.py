"""The HAProxy agent-check server: each router probe gets this builder's state and load in one line.

The router (one HAProxy per arch) tries three load tiers in order: builders running no
build (``idle``), builders with a free build slot (``free``), then every builder that
is up (``any``). Its agent-check connects to ``--agent-listen``, sends the tier's name
and ``\\n``, reads one line and closes. Load this router did not place (bake's builds
multiplexed on one connection, another router replica's, a direct connection's) counts
the same, because the answer comes from the builder's true active-build count.

:func:`reply` is the whole decision, a pure function of what the builder state says at
one instant, the requested tier and the build slots (the table is in docs/sidecar.md,
"The agent"). :class:`AgentServer` only reads a bounded request, asks it, writes the
line and closes. A hostile peer costs bounded bytes (:data:`MAX_REQUEST_BYTES`),
bounded time (:data:`REQUEST_SECONDS`) and at most :data:`MAX_CONNECTIONS` open
connections; an error on one connection is logged and counted, never the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
from dataclasses import dataclass

import structlog

from sidecar.metrics import Metrics
from sidecar.state import BuilderState

log = structlog.get_logger("sidecar.agent")

MAX_REQUEST_BYTES = 64
"""The longest request line read: a tier's name is at most 4 bytes; the rest of a longer
line is never read (it is answered as an unknown tier)."""

REQUEST_SECONDS = 0.5
"""How long a connection may take to send its line. HAProxy sends ``agent-send`` with the
connection; a router configured without it is still answered (as tier ``any``) well inside
its check timeout (``agent-inter``, 1 s shipped)."""

RECEIVE_BUFFER_BYTES = 4096
"""The kernel's receive buffer for each agent connection (Linux doubles it). asyncio's
first read takes up to 256 KiB of what the kernel holds, and the kernel grows a busy
socket's buffer to megabytes: a small one keeps what junk can queue, in the kernel and
in this process, to a few KiB per connection. A request is a few bytes."""

MAX_CONNECTIONS = 256
"""Connections served at once; any more are closed unanswered at once. The routers need a
few per second (three tiers per replica every ``agent-inter``), so only a flood reaches
this, and it bounds what a flood costs: 256 tasks with a few KiB each."""


class Tier(enum.StrEnum):
    """What the router asks about: which of its three backends this probe feeds."""

    IDLE = "idle"
    """Builders running no build."""
    FREE = "free"
    """Builders with a free build slot."""
    ANY = "any"
    """Every builder that is up: where a build goes when every builder is full (never refused)."""


class Kind(enum.StrEnum):
    """The agent-check verbs this agent answers with."""

    UP = "up"
    DRAIN = "drain"
    DOWN = "down"


class Defaulted(enum.StrEnum):
    """Why a request was answered as tier ``any`` instead of the tier it named."""

    TIMEOUT = "timeout"
    """No complete line within :data:`REQUEST_SECONDS`."""
    EMPTY = "empty"
    """A blank line, or the peer closed before sending one."""
    INVALID = "invalid"
    """Not a tier's name, or longer than :data:`MAX_REQUEST_BYTES`."""


@dataclass(frozen=True, slots=True)
class Observation:
    """What a reply depends on, read from the builder state at one instant."""

    builds: int | None
    """Active builds; None while buildkitd is unreachable or its count unknown (never 0)."""
    draining: bool
    """From the instant a drain starts until ``DELETE /drain``."""
    accepting: bool = True
    """False once buildkitd began its own shutdown: its builds finish, new ones are refused."""

    @classmethod
    def of(cls, state: BuilderState) -> Observation:
        return cls(builds=state.active_count(), draining=state.draining, accepting=state.connection.accepting)


@dataclass(frozen=True, slots=True)
class Reply:
    """One agent-check answer."""

    kind: Kind
    weight_percent: int | None = None
    """For ``up`` only: 1 to 100, HAProxy's share of the server's configured weight."""

    @property
    def line(self) -> str:
        """The line on the wire. ``ready`` is in every ``up``: HAProxy 2.6 lifts an earlier
        agent ``drain`` only on ``ready``, not on a weight alone."""
        if self.kind is Kind.UP:
            return f"up ready {self.weight_percent}%\n"
        return f"{self.kind.value}\n"


DOWN = Reply(Kind.DOWN)
DRAIN = Reply(Kind.DRAIN)


def reply(observation: Observation, *, tier: Tier, slots: int) -> Reply:
    """The answer to one probe for ``tier``, with ``slots`` build slots (≥ 1).

    Never ``0%`` (HAProxy would read a weight of 0 as drain, silently) and never
    ``maxconn:`` (``maxconn:0`` means unlimited): a tier this builder does not belong
    to is ``drain``, which leaves its established sessions alone.
    """
    builds = observation.builds
    if builds is None:
        return DOWN
    if observation.draining or not observation.accepting:
        return DRAIN
    if tier is Tier.IDLE:
        return Reply(Kind.UP, 100) if builds == 0 else DRAIN
    if tier is Tier.FREE:
        if builds >= slots:
            return DRAIN
        return Reply(Kind.UP, -(-100 * (slots - builds) // slots))  # ceil: one free slot of many is not 0%
    return Reply(Kind.UP, max(1, 100 * slots // (slots + builds)))


def requested_tier(data: bytes) -> tuple[Tier, Defaulted | None]:
    """The tier a request names (its first line, surrounding blanks ignored), or ``any``
    with the reason. ``data`` is at most :data:`MAX_REQUEST_BYTES` as read."""
    line, newline, _rest = data.partition(b"\n")
    if not newline and len(data) >= MAX_REQUEST_BYTES:
        return Tier.ANY, Defaulted.INVALID
    word = line.strip()
    if not word:
        return Tier.ANY, Defaulted.EMPTY
    try:
        return Tier(word.decode("ascii")), None
    except (UnicodeDecodeError, ValueError):
        return Tier.ANY, Defaulted.INVALID


class AgentServer:
    """The agent's TCP listener: per connection, one line read, one line written, closed."""

    def __init__(
        self,
        *,
        state: BuilderState,
        slots: int,
        metrics: Metrics,
        max_connections: int = MAX_CONNECTIONS,
        request_seconds: float = REQUEST_SECONDS,
    ) -> None:
        self._state = state
        self._slots = slots
        self._metrics = metrics
        self._max_connections = max_connections
        self._request_seconds = request_seconds
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (0: any free port); raises :class:`OSError` if it cannot."""
        # limit: the stream stops reading from a socket past twice this (a few bytes matter).
        self._server = await asyncio.start_server(self._accept, host, port, limit=MAX_REQUEST_BYTES)
        for listener in self._server.sockets:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)  # accepted ones inherit it

    @property
    def port(self) -> int:
        """The port listened on (the chosen one when started on port 0)."""
        if self._server is None:
            raise RuntimeError("the agent is not listening")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def open_connections(self) -> int:
        """Connections being served now (at most ``max_connections``)."""
        return len(self._open)

    async def close(self) -> None:
        """Stop listening, and end the connections still open (each would end within
        :data:`REQUEST_SECONDS` anyway)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in self._open:
            task.cancel()
        await asyncio.gather(*self._open, return_exceptions=True)
        if server is not None:
            await server.wait_closed()  # (since 3.12 it waits for the connections just ended)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve a new connection in a task of its own, or close it at once past the limit."""
        if self._server is None:  # accepted just before close(): nobody would end its task
            writer.transport.abort()
            return
        if len(self._open) >= self._max_connections:
            self._metrics.agent_connections_refused.labels(arch=self._metrics.arch).inc()
            writer.transport.abort()
            return
        task = asyncio.create_task(self._connection(reader, writer), name="agent-connection")
        self._open.add(task)
        task.add_done_callback(self._open.discard)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arch = self._metrics.arch
        try:
            tier, defaulted = await self._request(reader)
            if defaulted is not None:
                self._metrics.agent_requests_defaulted.labels(arch=arch, reason=defaulted.value).inc()
            answer = reply(Observation.of(self._state), tier=tier, slots=self._slots)
            # A few bytes: the socket's buffer takes them at once, so a peer that never
            # reads cannot hold this connection (close() below does not wait for it).
            writer.write(answer.line.encode("ascii"))
            self._metrics.agent_replies.labels(arch=arch, tier=tier.value, reply=answer.kind.value).inc()
        except ConnectionError:
            pass  # the peer reset or left: nobody to answer
        except Exception as e:  # one connection's boundary: an error here is never the server's
            log.exception("agent_connection_error", arch=self._state.arch, error=repr(e))
            self._metrics.loop_errors.labels(arch=arch, loop="agent").inc()
        finally:
            writer.close()

    async def _request(self, reader: asyncio.StreamReader) -> tuple[Tier, Defaulted | None]:
        """Read up to one line (at most :data:`MAX_REQUEST_BYTES`, within
        :data:`REQUEST_SECONDS`), ended by a newline or the peer's end of data."""
        data = b""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._request_seconds):
                while b"\n" not in data and len(data) < MAX_REQUEST_BYTES:
                    chunk = await reader.read(MAX_REQUEST_BYTES - len(data))
                    if not chunk:
                        return requested_tier(data)
                    data += chunk
                return requested_tier(data)
        return Tier.ANY, Defaulted.TIMEOUT
