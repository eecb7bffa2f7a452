"""The instance agent's decisions, each pinned to its rule on a hand-built world (agent_factories):
which request a stage hands on and when, which bid wins, when a bid may bid, and when an agent asks
for balance. Every expected value is worked out by hand in the comments."""

from __future__ import annotations

import pytest

from agent_factories import RECORDER, Agents, FakeView, make_agents, seq
from l4.agents.agent import NEVER_S, AgentConfig
from l4.agents.messages import Ask, Bid, LoadReport, PlanUpdate, TradeKind
from l4.agents.stages import StageTable
from l4.errors import ValidationError
from l4.instance.sequence import SeqState

# Stage 0 = [0, 100) on instance 0; stage 1 = [100, inf) on instances 1 and 2.
TWO_STAGES = StageTable(boundaries_tokens=(100,), stage_of_instance=(0, 1, 1))
ONE_STAGE = StageTable(boundaries_tokens=(), stage_of_instance=(0, 0, 0))


def _ask(
    *,
    kind: TradeKind = TradeKind.CASCADE,
    blocks: int = 2,
    queued: bool = False,
    sender_load_s: float = 0.0,
    delta_load_s: float = 0.0,
    sent_s: float = 0.0,
    ask_id: int = 1,
) -> Ask:
    return Ask(
        ask_id=ask_id,
        sender=RECORDER,
        kind=kind,
        request_id=7,
        length_tokens=100,
        blocks=blocks,
        queued=queued,
        sender_load_s=sender_load_s,
        delta_load_s=delta_load_s,
        sent_s=sent_s,
    )


# ---- cascade ------------------------------------------------------------------------------------
def test_cascade_hands_on_a_request_that_reached_the_upper_bound() -> None:
    w = make_agents(TWO_STAGES, v1=FakeView(1, decode_s=0.5), v2=FakeView(2, decode_s=0.25))
    s = w.view(0).add(seq(1, 100), 100)  # length == hi: it belongs to stage 1 now
    w.tick(0, 0.0)
    assert w.moves == [(1, 0, 2, "cascade")]  # to the less loaded bidder of stage 1
    assert w.world.incoming == [(1, 2, 100)]
    assert w.agents[0].stats["asks_cascade"] == 1
    assert w.agents[0].stats["moved_cascade_decode"] == 1
    # The winner's reservation went to the migration, the loser's was declined: none is left.
    assert w.agents[1].reserved_blocks() == w.agents[2].reserved_blocks() == 0
    assert w.agents[1].stats["bids"] == w.agents[2].stats["bids"] == 1
    assert s.state is SeqState.DECODE


def test_cascade_leaves_a_request_one_token_below_the_bound() -> None:
    w = make_agents(TWO_STAGES)
    w.view(0).add(seq(1, 99), 99)
    w.tick(0, 0.0)
    assert w.moves == [] and w.bus.sent["Ask"] == 0


def test_cascade_skips_prefilling_and_queued_requests() -> None:
    w = make_agents(TWO_STAGES)
    w.view(0).add(seq(1, 150, SeqState.PREFILL), 150)
    w.view(0).add(seq(2, 150, SeqState.WAITING), 150)
    w.view(0).add(seq(3, 40), 40)
    w.tick(0, 0.0)
    assert w.moves == []


def test_the_last_stage_never_cascades() -> None:
    w = make_agents(TWO_STAGES)
    w.view(1).add(seq(1, 5000), 5000)
    w.tick(1, 0.0)
    assert w.moves == [] and w.bus.sent["Ask"] == 0


def test_cascade_goes_to_the_stage_of_the_length() -> None:
    table = StageTable(boundaries_tokens=(100, 200), stage_of_instance=(0, 1, 2))
    w = make_agents(table)
    w.view(0).add(seq(1, 250), 250)  # past both bounds: straight to stage 2
    w.view(0).add(seq(2, 150), 150)
    w.tick(0, 0.0)
    assert sorted(w.moves) == [(1, 0, 2, "cascade"), (2, 0, 1, "cascade")]


def test_equal_loads_go_to_the_lower_instance_id() -> None:
    w = make_agents(TWO_STAGES, v1=FakeView(1, decode_s=0.25), v2=FakeView(2, decode_s=0.25))
    w.view(0).add(seq(1, 120), 120)
    w.tick(0, 0.0)
    assert w.moves == [(1, 0, 1, "cascade")]


def test_bids_rank_by_total_load_prefill_included() -> None:
    # 1: 0.25 + 0.5 = 0.75 in all; 2: 0.5 + 0 = 0.5: instance 2 wins though its decode is heavier.
    w = make_agents(
        TWO_STAGES,
        v1=FakeView(1, decode_s=0.25, prefill_s=0.5),
        v2=FakeView(2, decode_s=0.5),
    )
    w.view(0).add(seq(1, 120), 120)
    w.tick(0, 0.0)
    assert w.moves == [(1, 0, 2, "cascade")]


def test_a_bid_that_can_only_accept_later_loses_to_one_that_accepts_now() -> None:
    # Instance 2 is lighter but full; it has seen room freed (release rate > 0), so its earliest
    # acceptance is finite but in the future: the heavier instance 1 takes the request now.
    w = make_agents(
        TWO_STAGES,
        v1=FakeView(1, decode_s=0.5),
        v2=FakeView(2, decode_s=0.25, free=0),
    )
    w.agents[2].publish_load(0.0)
    w.view(2).released_tokens = 1000
    w.agents[2].publish_load(1.0)
    w.view(0).add(seq(1, 120), 120)
    w.tick(0, 1.0)
    assert w.moves == [(1, 0, 1, "cascade")]


def test_no_bid_acceptable_now_moves_nothing_and_frees_every_reservation() -> None:
    w = make_agents(TWO_STAGES, v1=FakeView(1, free=3), v2=FakeView(2, free=0))
    w.view(0).add(seq(1, 120), 120)  # needs ceil(121 / 16) = 8 blocks
    w.tick(0, 0.0)
    assert w.moves == []
    assert w.agents[0].stats["no_taker_cascade"] == 1
    assert w.agents[1].reserved_blocks() == w.agents[2].reserved_blocks() == 0


def test_a_refused_migration_is_not_a_move() -> None:
    w = make_agents(TWO_STAGES, v1=FakeView(1, decode_s=0.5), v2=FakeView(2, decode_s=0.25))
    w.world.cluster.refuse.add(2)
    w.view(0).add(seq(1, 120), 120)
    w.tick(0, 0.0)
    assert w.moves == []
    assert w.agents[0].stats["refused_cascade"] == 1
    assert w.agents[0].stats["no_taker_cascade"] == 1
    assert w.agents[2].reserved_blocks() == 0


def test_a_stage_that_refused_a_request_is_not_asked_for_a_longer_one() -> None:
    w = make_agents(TWO_STAGES, v1=FakeView(1, free=0), v2=FakeView(2, free=0))
    w.view(0).add(seq(1, 150), 150)
    w.view(0).add(seq(2, 300), 300)  # longer: stage 1 cannot take it either, no ask
    w.tick(0, 0.0)
    assert w.agents[0].stats["asks_cascade"] == 1
    w2 = make_agents(TWO_STAGES, v1=FakeView(1, free=0), v2=FakeView(2, free=0))
    w2.view(0).add(seq(1, 300), 300)
    w2.view(0).add(seq(2, 150), 150)  # shorter than the refused one: still worth asking
    w2.tick(0, 0.0)
    assert w2.agents[0].stats["asks_cascade"] == 2


def test_a_request_in_flight_is_not_handed_out_again_until_the_trade_times_out() -> None:
    w = make_agents(TWO_STAGES, config=AgentConfig(trade_timeout_s=5.0))
    w.view(0).add(seq(1, 120), 120)  # the fake cluster never takes it off instance 0
    w.tick(0, 0.0)
    w.tick(0, 4.9)
    assert len(w.moves) == 1
    w.tick(0, 5.0)  # deadline 0 + 5.0 reached: the move is forgotten, the request asked for again
    assert len(w.moves) == 2


def test_a_landed_or_finished_move_is_forgotten() -> None:
    w = make_agents(TWO_STAGES)
    s = w.view(0).add(seq(1, 120), 120)
    w.tick(0, 0.0)
    s.instances.append(1)  # it landed on instance 1 ...
    s.instances.append(0)  # ... and came back here: this agent may hand it out again
    w.tick(0, 0.2)
    assert len(w.moves) == 1  # the last instance is this one again: still counted in flight
    s.instances.append(2)
    w.tick(0, 0.4)
    assert len(w.moves) == 2  # it left (last instance 2): forgotten, asked for again
    s.state = SeqState.FINISHED
    w.tick(0, 0.6)
    assert len(w.moves) == 2  # a finished request is no decoding request to hand on


def test_round_robin_inside_the_stage_without_bids() -> None:
    w = make_agents(TWO_STAGES, config=AgentConfig(use_bids=False))
    w.view(0).add(seq(1, 120), 120)
    w.tick(0, 0.0)
    assert w.moves == [(1, 0, 101, "cascade")]  # the fake world's round robin of stage 1
    assert w.bus.sent["Ask"] == 0


# ---- bids ---------------------------------------------------------------------------------------
def test_a_bid_reserves_the_blocks_and_carries_load_and_expiry() -> None:
    w = make_agents(TWO_STAGES, v1=FakeView(1, decode_s=0.5, prefill_s=0.25))
    w.bus.send(1, _ask(blocks=7, sent_s=2.0))
    w.bus.flush()
    assert w.inbox == [Bid(ask_id=1, sender=1, load_s=0.75, earliest_accept_s=2.0, expires_s=3.0)]
    assert w.agents[1].reserved_blocks() == 7


def test_reservations_expire_after_the_bid_timeout() -> None:
    w = make_agents(TWO_STAGES, config=AgentConfig(bid_timeout_s=1.0))
    w.bus.send(1, _ask(blocks=3, sent_s=0.0))
    w.bus.flush()
    w.tick(1, 0.99)
    assert w.agents[1].reserved_blocks() == 3
    w.tick(1, 1.0)
    assert w.agents[1].reserved_blocks() == 0
    assert w.agents[1].stats["reservations_expired"] == 1


def test_earliest_acceptance_counts_queued_demand_and_reservations() -> None:
    # 10 free blocks, 3 wanted by queued prompts, 2 reserved by an earlier bid: 5 left.
    w = make_agents(TWO_STAGES, v1=FakeView(1, free=10, waiting_demand=3))
    a, v = w.agents[1], w.view(1)
    w.bus.send(1, _ask(blocks=2))
    w.bus.flush()
    assert a.earliest_accept_s(v, 5, 1.0) == 1.0
    # One block short and nothing ever released: never.
    assert a.earliest_accept_s(v, 6, 1.0) == 1.0 + NEVER_S


def test_earliest_acceptance_from_the_release_rate() -> None:
    w = make_agents(TWO_STAGES, v1=FakeView(1, free=5))
    a, v = w.agents[1], w.view(1)
    a.publish_load(0.0)
    v.released_tokens = 1000
    a.publish_load(1.0)  # 1000 tokens/s sampled, EMA weight 0.3 from 0: 300 tokens/s
    # 6 blocks wanted, 5 free: one block of 16 tokens at 300 tokens/s.
    assert a.earliest_accept_s(v, 6, 1.0) == pytest.approx(1.0 + 16 / 300, rel=1e-12)
    a.publish_load(2.0)  # nothing released in the last second: 0.7 * 300 = 210 tokens/s
    assert a.earliest_accept_s(v, 7, 2.0) == pytest.approx(2.0 + 32 / 210, rel=1e-12)
    a.publish_load(2.0)  # no time passed: no sample, the rate stays
    assert a.earliest_accept_s(v, 7, 2.0) == pytest.approx(2.0 + 32 / 210, rel=1e-12)


def test_published_load_is_the_load_model_of_the_view() -> None:
    w = make_agents(TWO_STAGES, v1=FakeView(1, decode_s=0.5, prefill_s=0.25, kv_usage=0.5))
    w.agents[1].publish_load(3.0)
    report = w.bus.retained("stage/1")[1]
    assert isinstance(report, LoadReport)
    assert report.sender == 1 and report.stage == 1
    assert (report.load_s, report.decode_s, report.prefill_s) == (0.75, 0.5, 0.25)
    assert report.kv_usage == 0.5 and report.sent_s == 3.0


@pytest.mark.parametrize(
    ("decode_s", "prefill_s", "queued", "bids"),
    [
        (0.5, 9.0, False, True),  # 0.5 + 0.25 = 0.75 < 1.0: the pair's worse load drops
        (0.75, 9.0, False, False),  # 0.75 + 0.25 = 1.0: not lower, not worth a migration
        (9.0, 0.5, True, True),  # queued: the prefill part is compared
        (9.0, 0.75, True, False),
    ],
)
def test_a_balance_bid_must_lower_the_pairs_worse_load(
    decode_s: float, prefill_s: float, queued: bool, bids: bool
) -> None:
    w = make_agents(ONE_STAGE, v1=FakeView(1, decode_s=decode_s, prefill_s=prefill_s))
    ask = _ask(kind=TradeKind.BALANCE, queued=queued, sender_load_s=1.0, delta_load_s=0.25)
    w.bus.send(1, ask)
    w.bus.flush()
    assert (len(w.inbox) == 1) is bids
    assert w.agents[1].reserved_blocks() == (2 if bids else 0)


def test_cascade_and_drain_asks_are_bid_on_whatever_the_load() -> None:
    w = make_agents(ONE_STAGE, v1=FakeView(1, decode_s=9.0))
    for i, kind in enumerate((TradeKind.CASCADE, TradeKind.DRAIN)):
        w.bus.send(1, _ask(kind=kind, sender_load_s=1.0, delta_load_s=0.25, ask_id=i))
    w.bus.flush()
    assert len(w.inbox) == 2


# ---- balance ------------------------------------------------------------------------------------
def _balance_world(
    reports: tuple[float, float, float], lengths: list[int], persist: int = 1, **views: FakeView
) -> Agents:
    w = make_agents(
        ONE_STAGE,
        config=AgentConfig(balance_threshold=0.25, balance_persist_ticks=persist),
        **views,
    )
    for i, length in enumerate(lengths):
        w.view(0).add(seq(i, length), length)
    for i, load in enumerate(reports):
        w.report(i, 0.0, decode_s=load)
    return w


def test_balance_moves_the_request_that_best_closes_the_gap_to_the_lightest() -> None:
    # Mean (3.5 + 1.0 + 1.5) / 3 = 2.0; 3.5 > 1.25 x 2.0; gap 1.5. Deltas 0.5, 0.9, 1.2, 2.5:
    # 1.2 is closest to the gap. Peers below the mean: 1 and 2; 1 bids the lower load.
    w = _balance_world((3.5, 1.0, 1.5), [500, 900, 1200, 2500])
    w.view(1).decode_s, w.view(2).decode_s = 1.0, 1.5
    w.tick(0, 0.0)
    assert w.moves == [(2, 0, 1, "balance")]
    assert w.agents[0].stats["asks_balance"] == 1


def test_balance_asks_only_peers_below_the_mean() -> None:
    # Mean (3.5 + 0.5 + 2.0) / 3 = 2.0: instance 2 is at the mean, not below; though its live
    # load (0.1) would win a bid, it is not asked.
    w = _balance_world((3.5, 0.5, 2.0), [1200], v2=FakeView(2, decode_s=0.1))
    w.view(1).decode_s = 0.5
    w.tick(0, 0.0)
    assert w.moves == [(0, 0, 1, "balance")]
    assert w.bus.sent["Ask"] == 1


def test_balance_threshold_is_strict() -> None:
    # Mean 2.0, threshold 0.25: exactly 2.5 is not over it, 2.75 is.
    w = _balance_world((2.5, 1.0, 2.5), [500])
    w.tick(0, 0.0)
    assert w.moves == []
    w = _balance_world((2.75, 1.0, 2.25), [500])
    w.tick(0, 0.0)
    assert w.moves == [(0, 0, 1, "balance")]


def test_balance_never_overshoots_by_more_than_it_closes() -> None:
    # Mean (3.5 + 1.0 + 1.5) / 3 = 2.0, gap 1.5: a move of 3.0 (= 2 x gap) only swaps the sides.
    w = _balance_world((3.5, 1.0, 1.5), [3000])
    w.tick(0, 0.0)
    assert w.moves == []
    w = _balance_world((3.5, 1.0, 1.5), [2999])
    w.tick(0, 0.0)
    assert w.moves == [(0, 0, 1, "balance")]


def test_balance_waits_for_the_imbalance_to_persist() -> None:
    w = _balance_world((3.5, 1.0, 1.5), [1200], persist=3)
    for k, now in enumerate((0.0, 0.2, 0.4)):
        for i, load in enumerate((3.5, 1.0, 1.5)):
            w.report(i, now, decode_s=load)
        w.tick(0, now)
        assert len(w.moves) == (1 if k == 2 else 0)


def test_a_passing_burst_resets_the_persistence_count() -> None:
    w = _balance_world((3.5, 1.0, 1.5), [1200], persist=2)
    for now, mine in ((0.0, 3.5), (0.2, 1.5), (0.4, 3.5), (0.6, 3.5)):
        for i, load in enumerate((mine, 1.0, 1.5)):
            w.report(i, now, decode_s=load)
        w.tick(0, now)
        expected = 1 if now == 0.6 else 0
        assert len(w.moves) == expected, now


def test_one_balance_trade_in_flight_at_a_time() -> None:
    w = _balance_world((3.5, 1.0, 1.5), [1200, 1100])
    w.tick(0, 0.0)
    for i, load in enumerate((3.5, 1.0, 1.5)):
        w.report(i, 0.2, decode_s=load)
    w.tick(0, 0.2)
    assert len(w.moves) == 1 and w.bus.sent["Ask"] == 2


def test_balance_reads_only_fresh_reports() -> None:
    w = _balance_world((3.5, 1.0, 1.5), [1200])
    w.tick(0, 0.2)  # the reports are from t = 0
    assert w.moves == []


def test_queued_prompts_move_for_prefill_imbalance() -> None:
    w = make_agents(ONE_STAGE, config=AgentConfig(balance_threshold=0.25, balance_persist_ticks=1))
    w.view(0).add(seq(1, 1200, SeqState.WAITING), 1200)
    w.view(0).add(seq(2, 1200), 1200)  # decoding: not what a prefill imbalance moves
    for i, load in enumerate((3.5, 1.0, 1.5)):
        w.report(i, 0.0, decode_s=1.0, prefill_s=load)
    w.tick(0, 0.0)
    assert w.moves == [(1, 0, 1, "balance")]
    assert w.agents[0].stats["moved_balance_waiting"] == 1


def test_balance_can_be_switched_off() -> None:
    w = make_agents(ONE_STAGE, config=AgentConfig(balance=False, balance_persist_ticks=1))
    w.view(0).add(seq(1, 1200), 1200)
    for i, load in enumerate((3.5, 1.0, 1.5)):
        w.report(i, 0.0, decode_s=load)
    w.tick(0, 0.0)
    assert w.moves == []


# ---- drain --------------------------------------------------------------------------------------
def test_after_a_replan_an_instance_hands_out_what_is_no_longer_its_stage() -> None:
    w = make_agents(TWO_STAGES)
    v = w.view(0)
    v.add(seq(1, 50, SeqState.WAITING), 50)  # now stage 0's: handed out (queued, no KV)
    v.add(seq(2, 60), 60)  # decoding, now stage 0's: handed out
    v.add(seq(3, 70, SeqState.PREFILL), 70)  # moves once it decodes
    v.add(seq(4, 150), 150)  # stage 1: stays
    update = PlanUpdate(
        version=1, boundaries_tokens=(100,), stage_of_instance=(1, 0, 1), sender=RECORDER
    )
    w.bus.send(0, update)
    w.bus.flush()
    assert w.agents[0].stage == 1 and w.agents[0].draining
    w.tick(0, 0.0)
    assert sorted(w.moves) == [(1, 0, 1, "drain"), (2, 0, 1, "drain")]
    assert w.agents[0].stats["moved_drain_waiting"] == 1
    assert w.agents[0].draining  # the prefilling request is still to go


def test_agent_config_is_validated() -> None:
    for bad in (
        {"tick_s": 0.0},
        {"balance_threshold": -0.1},
        {"balance_persist_ticks": 0},
        {"bid_timeout_s": 0.0},
        {"trade_timeout_s": 0.0},
    ):
        with pytest.raises(ValidationError):
            AgentConfig(**bad)  # type: ignore[arg-type]
