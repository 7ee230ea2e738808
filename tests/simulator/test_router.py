"""The router model (:mod:`autoscaler.simulator.routing`): hand-computed placements, drains, failures and the queue.

Most scenarios fix every agent check at the same phase (``agent_phase=0``: polls at whole
multiples of the interval) so each placement can be worked out by hand; the seeded phases
are for real runs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoscaler.cli import build_parser
from autoscaler.config import Config
from autoscaler.simulator.engine import PoolSim, pool_run
from autoscaler.simulator.model import FleetModel
from autoscaler.simulator.outcome import Outcome
from autoscaler.simulator.pods import SimPod
from autoscaler.simulator.routing import ANY, FREE, IDLE, Routers, tier_weights
from autoscaler.simulator.runs import check_invariants, run, simulate
from autoscaler.simulator.trace import Trace
from tests.simulator.test_simulation import CONFIG, cli, pool_config, trace_of


def router(**changes: object) -> FleetModel:
    """One router, agent checks every 1 s in step at whole seconds, pods ready at once."""
    settings: dict[str, object] = {"routing": "router", "routers": 1, "agent_phase": 0.0, "startup_seconds": 0.0}
    settings.update(changes)
    return FleetModel(**settings)  # type: ignore[arg-type]


def static_run(config: Config, trace: Trace, model: FleetModel, replicas: int) -> PoolSim:
    """``replicas`` builders ready before the trace began, no controller."""
    pool = config.pools[0]
    sim = PoolSim(pool=pool, builds=trace.builds, model=model, poll_interval_seconds=config.poll_interval_seconds,
                  static_replicas=replicas)  # fmt: skip
    sim.run()
    return sim


def placed(sim: PoolSim) -> list[str | None]:
    return [pod.name if pod is not None else None for pod in sim.pod_of]


# --- the agent's answers and leastconn, on the routers alone -----------------------------------------


def test_agent_weights_per_tier_follow_the_contract() -> None:
    # (idle, free, any) for 2 slots: drain is None, never 0.
    assert (100, 100, 100) == tier_weights(0, 2)
    assert (None, 50, 66) == tier_weights(1, 2)
    assert (None, None, 50) == tier_weights(2, 2)
    assert (None, None, 1) == tier_weights(500, 2)
    assert (None, 67, 75) == tier_weights(1, 3)  # ceil(100 × 2/3) = 67; floor(300/4) = 75


def pods_running(*builds: int) -> list[SimPod]:
    """Pods that every router has known since before the trace, each running that many builds."""
    pods = []
    for i, count in enumerate(builds):
        pod = SimPod(name=f"b{i + 1}", created=0.0, capacity=2)
        pod.builds = [(math.inf, j) for j in range(count)]
        pods.append(pod)
    return pods


def routers_over(pods: Sequence[SimPod], *, count: int = 1, interval: float = 1.0, phase: float = 0.0) -> Routers:
    model = FleetModel(routers=count, agent_interval_seconds=interval, agent_phase=phase)
    routers = Routers(model=model, slots=2, key="amd64")
    for pod in pods:
        routers.appear(pod, -math.inf)
        routers.record(pod, -1.0)  # its builds, seen by every poll from -1 on
    return routers


def test_the_first_tier_with_a_usable_builder_wins_whatever_the_connections() -> None:
    pods = pods_running(2, 1, 0)
    routers = routers_over(pods)
    for _ in range(3):
        routers.connect(pods[2], 0, IDLE)  # b3 carries this router's connections, yet is the only idle one
    assert (pods[2], IDLE) == routers.pick(0, pods, 5.0)
    pods = pods_running(2, 1, 3)
    assert (pods[1], FREE) == routers_over(pods).pick(0, pods, 5.0)
    pods = pods_running(2, 3)
    assert (pods[0], ANY) == routers_over(pods).pick(0, pods, 5.0)  # both full: the lowest index


def test_leastconn_puts_a_builder_without_own_connections_first_whatever_its_weight() -> None:
    # Both full (tier any). b1: 2 builds, weight floor(200/4) = 50; b2: 10 builds, weight floor(200/12) = 16.
    pods = pods_running(2, 10)
    routers = routers_over(pods)
    routers.connect(pods[0], 0, ANY)  # b1: key (1 + 1)/50 = 0.04; b2 has none of this router's: key 0
    chosen = []
    for _ in range(7):
        choice = routers.pick(0, pods, 5.0)
        assert choice is not None
        assert ANY == choice[1]
        chosen.append(choice[0].name)
        routers.connect(choice[0], 0, ANY)
    # b2 first (own 0: key 0, whatever its weight), then its key is 2/16 = 0.125; then b1 while its
    # (own + 1)/50 is lower: own 1 to 5 (keys 0.04 to 0.12); at own 6, 7/50 = 0.14 > 0.125: b2.
    assert ["b2", "b1", "b1", "b1", "b1", "b1", "b2"] == chosen


def test_leastconn_ties_go_to_the_lowest_index() -> None:
    pods = pods_running(1, 1, 1)
    routers = routers_over(pods)
    assert (pods[0], FREE) == routers.pick(0, pods, 5.0)
    routers.connect(pods[0], 0, FREE)
    routers.connect(pods[1], 0, FREE)
    assert (pods[2], FREE) == routers.pick(0, pods, 5.0)
    routers.connect(pods[2], 0, FREE)
    assert (pods[0], FREE) == routers.pick(0, pods, 5.0)  # all at (1 + 1)/50: the first


def test_each_tier_backend_counts_only_its_own_connections() -> None:
    # b1 got a connection through the idle backend; in the free backend it still has none.
    pods = pods_running(1, 1)
    routers = routers_over(pods)
    routers.connect(pods[0], 0, IDLE)
    routers.connect(pods[1], 0, FREE)
    assert (pods[0], FREE) == routers.pick(0, pods, 5.0)


def test_each_router_counts_only_its_own_connections() -> None:
    pods = pods_running(2, 2)
    routers = routers_over(pods, count=2)
    routers.connect(pods[0], 0, ANY)
    assert (pods[1], ANY) == routers.pick(0, pods, 5.0)  # router 0 avoids its own connection
    assert (pods[0], ANY) == routers.pick(1, pods, 5.0)  # router 1 never saw it: the lowest index


def test_a_builder_loaded_through_another_router_leaves_the_idle_tier_at_the_next_poll() -> None:
    pods = pods_running(0, 0)
    routers = routers_over(pods, count=2)
    # Router 0 places a build on b1 at 10.2 (after the poll at 10).
    routers.connect(pods[0], 0, IDLE)
    pods[0].builds.append((math.inf, 99))
    routers.record(pods[0], 10.2)
    # Router 1 has no connection to anyone: leastconn alone would pick b1 (the lowest index).
    assert (pods[0], IDLE) == routers.pick(1, pods, 10.7)  # its view is from 10: b1 still idle
    assert (pods[1], IDLE) == routers.pick(1, pods, 11.0)  # the poll at 11 saw b1 busy: the tier steers


def test_a_drain_is_seen_at_the_first_poll_after_it_began() -> None:
    pods = pods_running(0, 1)
    routers = routers_over(pods, interval=1.0, phase=0.3)  # polls at …, 9.3, 10.3, 11.3
    pods[0].drain_started = 10.3  # at a poll's instant: that poll does not see it (drains begin after)
    assert (pods[0], IDLE) == routers.pick(0, pods, 10.0)
    assert (pods[0], IDLE) == routers.pick(0, pods, 11.29)
    assert (pods[1], FREE) == routers.pick(0, pods, 11.3)  # b1 answers drain: the next tier
    pods[1].drain_started = 11.0
    assert None is routers.pick(0, pods, 12.3)  # both drain: no usable builder


def test_a_new_builder_enters_the_view_at_the_first_poll_after_it_became_ready() -> None:
    pods = pods_running(2, 0)
    routers = Routers(model=FleetModel(routers=1, agent_interval_seconds=2.0, agent_phase=0.5), slots=2, key="x")
    routers.appear(pods[0], -math.inf)
    routers.record(pods[0], -1.0)
    routers.appear(pods[1], 3.0)  # polls at 1, 3, 5: seen at 3
    assert (pods[0], ANY) == routers.pick(0, pods, 2.9)
    assert (pods[1], IDLE) == routers.pick(0, pods, 3.0)
    assert 3.0 == routers.first_seen(0, pods[1])
    late = SimPod(name="late", created=0.0, capacity=2)
    routers.appear(late, 3.0, seen_at_once=False)  # ready after the polls at 3 (a scale-up at 0 s start-up)
    assert 5.0 == routers.first_seen(0, late)


# --- the whole fleet ------------------------------------------------------------------------------------


def test_builds_fill_idle_then_free_then_any_builders_in_order() -> None:
    # Three warm builders of 2 slots, one router, long builds arriving half a second after each poll:
    # each sees every earlier build. Idle first (b1, b2, b3), then a second build on each (free tier,
    # weight 50 each, no free-backend connection yet: the lowest index first), then the any tier
    # (weight floor(200/4) = 50): b1 (no any-backend connection), then b2 (b1 has one), then b3.
    config = pool_config(min_replicas=3, max_replicas=3, target=2)
    trace = trace_of(*((i + 0.5, 1000) for i in range(9)))
    sim = static_run(config, trace, router(), replicas=3)
    names = [f"amd64-{i}" for i in (1, 2, 3, 1, 2, 3, 1, 2, 3)]
    assert names == placed(sim)


def test_builds_within_one_interval_through_one_router_spread_by_its_own_connections() -> None:
    # The same three builders, builds 0.1 s apart after the poll at 0: the view is stale (all idle)
    # but the router's own idle-backend connections spread them.
    config = pool_config(min_replicas=3, max_replicas=3, target=2)
    trace = trace_of((0.1, 1000), (0.2, 1000), (0.3, 1000), (0.4, 1000))
    sim = static_run(config, trace, router(), replicas=3)
    # The fourth: every builder idle in the view, each with one idle-backend connection: (1 + 1)/100 each, b1.
    assert ["amd64-1", "amd64-2", "amd64-3", "amd64-1"] == placed(sim)


def test_two_routers_within_one_interval_can_both_pick_the_same_idle_builder() -> None:
    # Two builds 0.1 s apart after a poll over two idle builders: through one router they go to b1 and
    # b2; through two routers each router has no connection of its own and picks b1. Which router a
    # build reaches is random: over seeds, both cases happen, and each is placed as worked out.
    config = pool_config(min_replicas=2, max_replicas=2, target=2)
    trace = trace_of((0.1, 1000), (0.2, 1000))
    seen = set()
    for seed in range(12):
        sim = static_run(config, trace, router(routers=2, seed=seed), replicas=2)
        same_router = sim.router_of[0] == sim.router_of[1]
        seen.add(same_router)
        assert (["amd64-1", "amd64-2"] if same_router else ["amd64-1", "amd64-1"]) == placed(sim)
    assert {True, False} == seen


def drained_scenario(*, drain_timeout: float = 50.0) -> PoolSim:
    """Slots 1, no spare, one warm builder, agent checks every 5 s (at 0, 5, 10, ...), controller every 10 s.

    L (1, 1000 s) and S (2, 5 s) share b1 (the only builder; S reaches it through the idle tier's stale
    view, at (1 + 1)/100) at half speed: S ends at 12. The poll at 10 sees 2 builds: b2 is created, ready
    at once, after the agents' poll at 10: seen from 15. The poll at 20 sees 1 build and removes the
    idle b2: it drains from 20, which the agents' poll at 20 does not see. C (21, 100 s) reaches the
    view of 20: b2 idle, so C runs on the draining b2. D (26, 1 s) reaches the view of 25: b2 answers
    drain, b1 is full: D on b1 (tier any).
    """
    config = pool_config(min_replicas=1, max_replicas=2, target=1, spare=0)
    trace = trace_of((1, 1000), (2, 5), (21, 100), (26, 1))
    model = router(agent_interval_seconds=5.0, drain_timeout_seconds=drain_timeout)
    sim = PoolSim(pool=config.pools[0], builds=trace.builds, model=model, poll_interval_seconds=10)
    sim.run()
    assert [] == check_invariants(config, run(config, trace, model=model))
    return sim


def test_a_draining_builder_takes_builds_until_the_routers_next_poll_and_they_count_toward_interruption() -> None:
    sim = drained_scenario()
    assert ["amd64-1", "amd64-1", "amd64-2", "amd64-1"] == placed(sim)
    b2 = next(p for p in sim.gone if p.name == "amd64-2")
    assert 20 == b2.drain_started
    # Its drain deadline, 20 + 50 = 70, cuts C (which would end at 121).
    assert [False, False, True, False] == sim.interrupted
    assert 70 == b2.deleted
    assert 1 == pool_run(sim, end=sim.now).metrics.interrupted_builds
    # A long enough deadline lets C finish on the draining builder.
    sim = drained_scenario(drain_timeout=3300)
    assert [False] * 4 == sim.interrupted
    assert 121 == next(p for p in sim.gone if p.name == "amd64-2").deleted


def test_an_idle_builder_removed_behind_the_router_lives_one_agent_interval() -> None:
    # b2 of the scenario without C and D: removed idle at 20, deleted at 25 (the sidecar's minimum drain).
    config = pool_config(min_replicas=1, max_replicas=2, target=1, spare=0)
    trace = trace_of((1, 1000), (2, 5))
    sim = PoolSim(pool=config.pools[0], builds=trace.builds, model=router(agent_interval_seconds=5.0),
                  poll_interval_seconds=10)  # fmt: skip
    sim.run()
    b2 = next(p for p in sim.gone if p.name == "amd64-2")
    assert (20, 25) == (b2.drain_started, b2.deleted)


def cold(*builds: tuple[float, float], **changes: object) -> Outcome:
    """A fresh pool: its one builder created at 0, ready at 30, seen at 30 (checks at whole seconds)."""
    model = router(startup_seconds=30.0, warm_start=False, **changes)
    result = run(pool_config(), trace_of(*builds), model=model)
    assert [] == check_invariants(pool_config(), result)
    return result.total


def test_a_build_with_no_usable_builder_fails_at_once_and_costs_nothing() -> None:
    with_failure = cold((5, 50), (100, 10))
    without = cold((100, 10))
    assert (1, 0) == (with_failure.failed_builds, without.failed_builds)
    # The failed build never ran: the same fleet, cost and slowdowns; the lower bound leaves it out.
    assert with_failure.builder_seconds == without.builder_seconds == 110
    assert with_failure.lower_bound_builder_seconds == without.lower_bound_builder_seconds == 10
    assert (1.0, 0) == (with_failure.slowdown_max, with_failure.waited_builds)


def test_a_router_queue_holds_a_build_until_a_builder_is_seen_never_past_the_client_deadline() -> None:
    # The builder is seen at 30. Queue 20 s (client deadline 20 s): the build at 15 waits 15 s; the one
    # at 10 exactly 20 s (seen at the limit: still placed); the one at 5 gives up at 25.
    m = cold((5, 50), (10, 50), (15, 50), router_queue_seconds=20.0)
    assert 1 == m.failed_builds
    assert (2, 20.0, 20.0) == (m.waited_builds, m.wait_p95_seconds, m.wait_max_seconds)
    # A queue longer than the client's deadline still fails the build at the deadline.
    m = cold((5, 50), router_queue_seconds=30.0, client_deadline_seconds=20.0)
    assert (1, 0) == (m.failed_builds, m.waited_builds)
    m = cold((5, 50), router_queue_seconds=30.0, client_deadline_seconds=25.0)
    assert (0, 25.0) == (m.failed_builds, m.wait_max_seconds)
    # A short queue: the build at 15 gives up at 25 too.
    assert 3 == cold((5, 50), (10, 50), (15, 50), router_queue_seconds=10.0).failed_builds


def test_queued_builds_are_placed_first_come_first_served_when_a_builder_is_seen() -> None:
    config = pool_config(min_replicas=2, max_replicas=2, target=1)
    trace = trace_of((12, 100), (14, 1000))
    model = router(startup_seconds=30.0, warm_start=False, router_queue_seconds=20.0)
    sim = PoolSim(pool=config.pools[0], builds=trace.builds, model=model, poll_interval_seconds=10,
                  static_replicas=2)  # fmt: skip
    sim.run()
    assert [30.0, 30.0] == sim.dispatched
    assert ["amd64-1", "amd64-2"] == placed(sim)  # the first queued build to the first builder: idle, lowest index


def test_a_warm_fleet_is_known_to_every_router_from_the_start() -> None:
    m = run(pool_config(), trace_of((0, 10)), model=router(routers=3, agent_phase=None)).total
    assert (0, 0, 1.0) == (m.failed_builds, m.waited_builds, m.slowdown_max)


def test_the_router_is_the_default_and_its_runs_are_reproducible() -> None:
    assert "router" == FleetModel().routing
    config = pool_config(max_replicas=4, target=2, spare=1)
    trace = trace_of(*((i * 7.3 % 600, 40 + i % 90) for i in range(80)))
    first = run(config, trace, model=FleetModel(seed=4)).total
    assert first == run(config, trace, model=FleetModel(seed=4)).total
    assert [] == check_invariants(config, run(config, trace, model=FleetModel(seed=4)))


def test_hpa_default_random_is_the_hpa_baseline_behind_random_routing_whatever_the_routing() -> None:
    config = pool_config(max_replicas=4, target=2, spare=1)
    trace = trace_of(*((i * 7.3 % 600, 40 + i % 90) for i in range(80)))
    report = simulate(config, trace, model=FleetModel())
    expected = run(config, trace, model=FleetModel(routing="random"), variant="hpa_default").total
    assert expected == report.hpa_default_random.total
    assert report.hpa_default.total != report.hpa_default_random.total  # the router's own HPA baseline differs
    under_random = simulate(config, trace, model=FleetModel(routing="random"))
    assert under_random.hpa_default_random.total == under_random.hpa_default.total == expected


def test_model_refuses_impossible_router_settings() -> None:
    for bad, message in (
        ({"routers": 0}, "routers must be ≥ 1"),
        ({"agent_interval_seconds": 0.0}, "agent_interval_seconds must be a number > 0"),
        ({"client_deadline_seconds": -1.0}, "client_deadline_seconds must be a number > 0"),
        ({"router_queue_seconds": math.inf}, "router_queue_seconds must be a number ≥ 0"),
        ({"agent_phase": 1.0}, "agent_phase must be in [0, 1)"),
        ({"admission": True}, "admission is an idealisation"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            FleetModel(**bad)  # type: ignore[arg-type]


# --- the command line -------------------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG % (1, 1))
    return path


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--routers", "0"), "argument --routers: must be ≥ 1, not 0"),
        (("--routers", "two"), "argument --routers: must be a whole number ≥ 1, not two"),
        (("--agent-interval", "0"), "argument --agent-interval: must be a number > 0, not 0"),
        (("--agent-interval", "-1"), "argument --agent-interval: must be a number > 0, not -1"),
        (("--agent-interval", "soon"), "argument --agent-interval: must be a number > 0, not soon"),
        (("--client-deadline-seconds", "0"), "argument --client-deadline-seconds: must be a number > 0, not 0"),
        (("--router-queue-seconds", "-5"), "argument --router-queue-seconds: must be a number ≥ 0, not -5"),
        (("--router-queue-seconds", "inf"), "argument --router-queue-seconds: must be a number ≥ 0, not inf"),
        (("--routing", "leastconn"), "argument --routing: invalid choice: 'leastconn'"),
    ],
)
def test_bad_router_flags_are_refused_with_the_flag_and_the_rule(
    flags: tuple[str, ...], message: str, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["simulate", "--config", str(config_file), "--trace", "bursty-ci-day", *flags])
    assert 2 == exit_.value.code
    assert message in capsys.readouterr().err


def test_router_flags_with_another_routing_are_a_usage_error(config_file: Path, tmp_path: Path) -> None:
    code, out, err = cli("simulate", "--config", str(config_file), "--trace", "bursty-ci-day", "--out", str(tmp_path),
                         "--routing", "random", "--routers", "3", "--router-queue-seconds", "5")  # fmt: skip
    assert (2, "") == (code, out)
    assert (
        "buildkit-autoscaler simulate: --routers, --router-queue-seconds describe the router: "
        "only with --routing router, not with --routing random\n"
    ) == err
    assert not (tmp_path / "report.json").exists()


def test_router_flags_reach_the_model_and_the_report(config_file: Path, tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("arch,start,duration_seconds\n" + "".join(f"amd64,{i * 3},{200}\n" for i in range(30)))
    code, out, err = cli("simulate", "--config", str(config_file), "--trace", str(trace), "--out", str(tmp_path),
                         "--routers", "3", "--agent-interval", "2.5", "--router-queue-seconds", "10",
                         "--client-deadline-seconds", "15")  # fmt: skip
    assert (0, "") == (code, err)
    assert "routing router (3 routers, agent every 2.5 s, queue 10 s, client deadline 15 s)" in out.splitlines()[0]
    report = json.loads((tmp_path / "report.json").read_text())
    assert "router" == report["routing"]
    assert 0 == report["total"]["failed_builds"]
    code, out, _ = cli("simulate", "--config", str(config_file), "--trace", str(trace), "--out", str(tmp_path),
                       "--routing", "least-connections")  # fmt: skip
    assert 0 == code
    assert "least-connections" == json.loads((tmp_path / "report.json").read_text())["routing"]
    assert "; routing least-connections, startup" in out.splitlines()[0]


def test_help_lists_the_router_flags_with_their_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("--routers K", "(default 2)", "--agent-interval S", "(default 1)", "--client-deadline-seconds S",
                     "(default 20)", "--router-queue-seconds S", "(default 0)", "(default router)"):  # fmt: skip
        assert expected in text


def reference_pick(routers: Routers, router: int, pods: list[SimPod]) -> tuple[SimPod, int] | None:
    """The contract read literally: every builder in every tier it is in, first tier with one, leastconn."""
    for tier in (IDLE, FREE, ANY):
        ranked = []
        for index, pod in enumerate(pods):
            weight = tier_weights(len(pod.builds), routers.slots)[tier]
            if weight is not None:
                own = routers.agents[pod].conns[3 * router + tier]
                ranked.append(((own + 1) / weight if own else 0.0, index, pod))
        if ranked:
            return min(ranked, key=lambda r: (r[0], r[1]))[2], tier
    return None


@given(
    builds=st.lists(st.integers(0, 7), min_size=1, max_size=8),
    conns=st.lists(st.integers(0, 4), min_size=3 * 8 * 2, max_size=3 * 8 * 2),
    router_index=st.integers(0, 1),
)
def test_pick_ranks_as_the_contract_reads(builds: list[int], conns: list[int], router_index: int) -> None:
    pods = pods_running(*builds)
    routers = routers_over(pods, count=2)
    for i, pod in enumerate(pods):
        routers.agents[pod].conns = conns[6 * i : 6 * i + 6]
    assert reference_pick(routers, router_index, pods) == routers.pick(router_index, pods, 5.0)
