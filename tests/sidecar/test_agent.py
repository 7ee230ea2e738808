"""The HAProxy agent's reply: the pure decision over every row of the router contract's
table, and the request line it reads."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.agent import (
    MAX_REQUEST_BYTES,
    Defaulted,
    Kind,
    Observation,
    Tier,
    reply,
    requested_tier,
)

UP_LINE = re.compile(r"\Aup ready (100|[1-9][0-9]?)%\n\Z")
"""Every up reply: `ready` always, a weight of 1 to 100 %, never 0 %, never maxconn."""


def line(observation: Observation, tier: Tier, slots: int) -> str:
    return reply(observation, tier=tier, slots=slots).line


# -- the reply: the contract's table, row by row ---------------------------------------

UNREACHABLE = Observation(builds=None, draining=False, accepting=False)
UNKNOWN_YET = Observation(builds=None, draining=False)
"""Never synced: the count is unknown (None), whatever else is true."""


@pytest.mark.parametrize("tier", list(Tier))
@pytest.mark.parametrize("observation", [UNREACHABLE, UNKNOWN_YET, Observation(builds=None, draining=True)])
def test_unreachable_or_unknown_count_is_down_for_every_tier(observation: Observation, tier: Tier) -> None:
    for slots in (1, 2, 3, 1000):
        assert "down\n" == line(observation, tier, slots)


@pytest.mark.parametrize("tier", list(Tier))
@pytest.mark.parametrize("builds", [0, 1, 2, 3, 50])
def test_draining_is_drain_for_every_tier_whatever_the_load(builds: int, tier: Tier) -> None:
    for slots in (1, 2, 3, 1000):
        assert "drain\n" == line(Observation(builds=builds, draining=True), tier, slots)


@pytest.mark.parametrize("tier", list(Tier))
def test_buildkitd_refusing_new_connections_while_its_builds_finish_is_drain(tier: Tier) -> None:
    """Not in the contract's table (decided here): readiness already fails; the count is
    still exact, and drain leaves its sessions alone until it exits (then: down)."""
    for builds in (0, 1, 5):
        assert "drain\n" == line(Observation(builds=builds, draining=False, accepting=False), tier, 2)


SLOTS_2 = [
    # builds: 0, slots - 1, slots, above slots
    (Tier.IDLE, [(0, "up ready 100%"), (1, "drain"), (2, "drain"), (3, "drain")]),
    (Tier.FREE, [(0, "up ready 100%"), (1, "up ready 50%"), (2, "drain"), (3, "drain")]),
    (Tier.ANY, [(0, "up ready 100%"), (1, "up ready 66%"), (2, "up ready 50%"), (3, "up ready 40%")]),
]
SLOTS_3 = [
    (Tier.IDLE, [(0, "up ready 100%"), (2, "drain"), (3, "drain"), (4, "drain")]),
    (Tier.FREE, [(0, "up ready 100%"), (1, "up ready 67%"), (2, "up ready 34%"), (3, "drain"), (4, "drain")]),
    (Tier.ANY, [(0, "up ready 100%"), (2, "up ready 60%"), (3, "up ready 50%"), (4, "up ready 42%")]),
]
SLOTS_1 = [
    (Tier.IDLE, [(0, "up ready 100%"), (1, "drain"), (2, "drain")]),
    (Tier.FREE, [(0, "up ready 100%"), (1, "drain"), (2, "drain")]),
    (Tier.ANY, [(0, "up ready 100%"), (1, "up ready 50%"), (2, "up ready 33%"), (1000, "up ready 1%")]),
]


@pytest.mark.parametrize(
    ("slots", "tier", "rows"),
    [(2, tier, rows) for tier, rows in SLOTS_2]
    + [(3, tier, rows) for tier, rows in SLOTS_3]
    + [(1, tier, rows) for tier, rows in SLOTS_1],
    ids=lambda v: str(v) if isinstance(v, int | Tier) else "",
)
def test_each_tier_at_0_slots_minus_1_slots_and_above(slots: int, tier: Tier, rows: list[tuple[int, str]]) -> None:
    for builds, expected in rows:
        assert (builds, expected + "\n") == (builds, line(Observation(builds=builds, draining=False), tier, slots))


@given(slots=st.integers(1, 1000), builds=st.integers(0, 100_000))
def test_every_up_reply_says_ready_with_the_exact_weight_and_never_0_percent(slots: int, builds: int) -> None:
    observation = Observation(builds=builds, draining=False)
    idle, free, any_ = (line(observation, tier, slots) for tier in (Tier.IDLE, Tier.FREE, Tier.ANY))
    assert ("up ready 100%\n" if builds == 0 else "drain\n") == idle
    if builds < slots:
        assert f"up ready {math.ceil(Fraction(100 * (slots - builds), slots))}%\n" == free
    else:
        assert "drain\n" == free
    assert f"up ready {max(1, math.floor(Fraction(100 * slots, slots + builds)))}%\n" == any_
    for answer in (idle, free, any_):
        assert answer == "drain\n" or UP_LINE.match(answer), answer
        assert "maxconn" not in answer
    # A tier a builder belongs to at some load, it belongs to at any lower load; weights fall as load rises.
    lighter = Observation(builds=max(0, builds - 1), draining=False)
    for tier in Tier:
        now, before = reply(observation, tier=tier, slots=slots), reply(lighter, tier=tier, slots=slots)
        if now.kind is Kind.UP:
            assert before.kind is Kind.UP
            assert before.weight_percent is not None
            assert now.weight_percent is not None
            assert before.weight_percent >= now.weight_percent


# -- the request line -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"idle\n", (Tier.IDLE, None)),
        (b"free\n", (Tier.FREE, None)),
        (b"any\n", (Tier.ANY, None)),
        (b"idle", (Tier.IDLE, None)),  # ended by the peer's end of data
        (b"free\r\n", (Tier.FREE, None)),
        (b"  idle \t\n", (Tier.IDLE, None)),
        (b"idle\nfree\n", (Tier.IDLE, None)),  # one line only
        (b"", (Tier.ANY, Defaulted.EMPTY)),
        (b"\n", (Tier.ANY, Defaulted.EMPTY)),
        (b" \r\n", (Tier.ANY, Defaulted.EMPTY)),
        (b"IDLE\n", (Tier.ANY, Defaulted.INVALID)),
        (b"idle free\n", (Tier.ANY, Defaulted.INVALID)),
        (b"\xff\xfeidle\n", (Tier.ANY, Defaulted.INVALID)),
        (b"\x00\n", (Tier.ANY, Defaulted.INVALID)),
        (b"idle" + b" " * (MAX_REQUEST_BYTES - 4), (Tier.ANY, Defaulted.INVALID)),  # the limit, no newline
    ],
)
def test_the_request_names_a_tier_or_is_answered_as_any(data: bytes, expected: tuple[Tier, Defaulted | None]) -> None:
    assert expected == requested_tier(data)


@given(data=st.binary(max_size=MAX_REQUEST_BYTES))
def test_any_bytes_read_name_a_tier_or_any_with_a_reason(data: bytes) -> None:
    tier, defaulted = requested_tier(data)
    assert (defaulted is None) == (data.partition(b"\n")[0].strip() in {b"idle", b"free", b"any"})
    assert defaulted is None or tier is Tier.ANY
