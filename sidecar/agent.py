"""The HAProxy agent-check reply: each router probe gets this builder's state and load in one line.

The router (one HAProxy per arch) tries three load tiers in order: builders running no
build (``idle``), builders with a free build slot (``free``), then every builder that
is up (``any``). Its agent-check sends the tier's name and ``\\n`` and reads one line.
Load this router did not place (bake's builds multiplexed on one connection, another
router replica's, a direct connection's) counts the same, because the answer comes
from the builder's true active-build count.

:func:`reply` is the whole decision, a pure function of what the builder state says at
one instant, the requested tier and the build slots (the table of issue 11's router
contract); :func:`requested_tier` reads the tier a request names.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sidecar.state import BuilderState

MAX_REQUEST_BYTES = 64
"""The longest request line read: a tier's name is at most 4 bytes; the rest of a longer
line is never read (it is answered as an unknown tier)."""


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
    """No complete line in time (the listener's limit)."""
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
