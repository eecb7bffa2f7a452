"""The instance agent's decisions, each pinned to its rule on a hand-built world (agent_factories):
which request a stage hands on and when, which bid wins, when a bid may bid, and when an agent asks
for balance. Every expected value is worked out by hand in the comments."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent_factories import RECORDER, Agents, FakeView, make_agents, seq
from l4.agents.agent import NEVER_S, AgentConfig
from l4.agents.messages import (
    Ask,
    Award,
    Bid,
    BoundaryMove,
    Decline,
    LengthReport,
    LoadReport,
    PlanUpdate,
    TradeKind,
)
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
    w.tick(0, 0.5)
    assert w.moves == [(1, 0, 2, "cascade")]  # to the less loaded bidder of stage 1
    assert w.world.incoming == [(1, 2, 100, 0.5)]
    assert w.bus.sent["Award"] == 1 and w.bus.sent["Decline"] == 1
    assert w.agents[0].stats["asks_cascade"] == 1
    assert w.agents[0].stats["moved_cascade_decode"] == 1
    # The winner's reservation went to the migration, the loser's was declined: none is left.
    assert w.agents[1].reserved_blocks() == w.agents[2].reserved_blocks() == 0
    assert w.agents[1].stats["bids"] == w.agents[2].stats["bids"] == 1
    assert s.state is SeqState.DECODE


def test_a_request_handed_on_is_counted_by_its_source_only_up_to_the_hand_off() -> None:
    # It left stage 0 at 100 tokens; the source's window must not count what it decodes after.
    w = make_agents(TWO_STAGES, v1=FakeView(1, decode_s=0.5), v2=FakeView(2, decode_s=0.25))
    s = w.view(0).add(seq(1, 90), 100)
    s.instances.append(0)
    observer = w.agents[0].observer
    observer.note_incoming(s, 90, 0.0)
    w.tick(0, 0.5)
    assert w.moves == [(1, 0, 2, "cascade")]
    w.view(0).lengths[1] = 130  # still seen here: a live hand-off waits for the next token
    observer.close(w.view(0), 1.0)
    assert observer.last_window is not None
    assert observer.last_window.decode_steps.sum() == pytest.approx(10.0)  # 90 -> 100 in 1 s


def test_an_overflowed_request_stays_where_it_went() -> None:
    w = make_agents(TWO_STAGES)
    w.view(0).add(seq(1, 150), 150).instances.append(0)  # above stage 0's bound...
    w.view(0).add(seq(2, 150), 150).instances.append(0)
    w.world.staying.add(1)  # ...but 1 was sent here because stage 1 had no room for it
    w.tick(0, 0.5)
    assert [m[0] for m in w.moves] == [2]


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
    assert w.inbox == [
        Bid(
            ask_id=1,
            sender=1,
            load_s=0.75,
            earliest_accept_s=2.0,
            expires_s=3.0,
            prefill_s=0.25,
            decode_s=0.5,
        )
    ]
    assert w.agents[1].reserved_blocks() == 7


def test_a_spill_gets_no_bid_from_an_instance_with_requests_queued() -> None:
    # A spilled arrival must not jump the queue of the later stage's own (longer) requests.
    w = make_agents(TWO_STAGES, v1=FakeView(1, decode_s=0.5))
    w.view(1).add(seq(9, 300, SeqState.WAITING), 300)
    w.bus.send(1, _ask(kind=TradeKind.SPILL, sender_load_s=10.0))
    w.bus.flush()
    assert w.inbox == [] and w.agents[1].reserved_blocks() == 0
    # The same ask as a cascade is bid for: only spills defer to the queue.
    w.bus.send(1, _ask(kind=TradeKind.CASCADE, sender_load_s=10.0, ask_id=2))
    w.bus.flush()
    assert [b.ask_id for b in w.inbox if isinstance(b, Bid)] == [2]


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


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"tick_s": 0.0}, "balancing tick must be > 0 s"),
        ({"balance_threshold": -0.1}, "balance threshold must be >= 0 and persistence >= 1 tick"),
        ({"balance_persist_ticks": 0}, "balance threshold must be >= 0 and persistence"),
        ({"bid_timeout_s": 0.0}, "timeouts must be > 0 s"),
        ({"trade_timeout_s": 0.0}, "timeouts must be > 0 s"),
    ],
)
def test_agent_config_is_validated(bad: dict[str, float], message: str) -> None:
    with pytest.raises(ValidationError, match=f"^{message}"):
        AgentConfig(**bad)  # type: ignore[arg-type]


def test_agent_config_edges_are_allowed() -> None:
    AgentConfig(balance_threshold=0.0, balance_persist_ticks=1)
    AgentConfig(tick_s=0.5, bid_timeout_s=0.5, trade_timeout_s=0.5)


# ---- messages -----------------------------------------------------------------------------------
def test_a_new_agent_holds_nothing_and_drains_nothing() -> None:
    w = make_agents(TWO_STAGES)
    a = w.agents[0]
    assert a.draining is False and a.reports == {} and a.stats == {}
    assert a.reserved_blocks() == 0 and a.view() is w.view(0)
    assert a.observer.instance_id == 0


def test_length_reports_are_kept_per_sender() -> None:
    w = make_agents(TWO_STAGES)
    report = LengthReport(
        sender=2, stage=1, arrivals=(1.0,), prompt_tokens=(1.0,), prompt_tokens_sq=(1.0,),
        decode_steps=(1.0,), decode_length_sum=(1.0,), crossings=(0.0,), max_length_tokens=5.0,
        requests_seen=1, sent_s=0.5,
    )  # fmt: skip
    w.bus.send(1, report)
    w.bus.flush()
    assert w.agents[1].reports == {2: report}


def test_boundary_moves_apply_to_the_plan_in_force_only() -> None:
    w = make_agents(TWO_STAGES)
    a = w.agents[0]
    for msg in (
        BoundaryMove(index=1, tokens=150, version=0, sender=RECORDER),
        BoundaryMove(index=1, tokens=120, version=1, sender=RECORDER),  # another plan's
        BoundaryMove(index=2, tokens=300, version=0, sender=RECORDER),  # no such boundary
    ):
        w.bus.send(0, msg)
    w.bus.flush()
    assert a.table == replace(TWO_STAGES, boundaries_tokens=(150,))


def test_a_plan_update_that_keeps_the_stage_does_not_drain() -> None:
    w = make_agents(TWO_STAGES)
    update = PlanUpdate(
        version=2, boundaries_tokens=(300,), stage_of_instance=(0, 1, 1), sender=RECORDER
    )
    w.bus.send(0, update)
    w.bus.flush()
    a = w.agents[0]
    assert a.table == StageTable(boundaries_tokens=(300,), stage_of_instance=(0, 1, 1), version=2)
    assert a.draining is False


# ---- more of the cascade ------------------------------------------------------------------------
def test_the_cascade_looks_past_requests_it_does_not_hand_on() -> None:
    w = make_agents(TWO_STAGES)
    w.view(0).add(seq(1, 150, SeqState.PREFILL), 150)  # not decoding: skipped, not the end
    w.view(0).add(seq(2, 40), 40)  # short: skipped, not the end
    w.view(0).add(seq(3, 130), 130)
    w.tick(0, 0.0)
    assert [m[0] for m in w.moves] == [3]


def test_an_equally_long_request_is_not_asked_for_after_a_refusal() -> None:
    w = make_agents(TWO_STAGES, v1=FakeView(1, free=0), v2=FakeView(2, free=0))
    w.view(0).add(seq(1, 150), 150)
    w.view(0).add(seq(2, 150), 150)
    w.tick(0, 0.0)
    assert w.agents[0].stats["asks_cascade"] == 1


@pytest.mark.parametrize(("length", "free", "moves"), [(127, 8, 1), (128, 8, 0), (128, 9, 1)])
def test_an_ask_wants_the_blocks_of_the_context_and_the_next_token(
    length: int, free: int, moves: int
) -> None:
    # 127 tokens + the next one fill 8 blocks of 16; 128 + 1 need a 9th.
    w = make_agents(TWO_STAGES, v1=FakeView(1, free=free), v2=FakeView(2, free=free))
    w.view(0).add(seq(1, length), length)
    w.tick(0, 0.0)
    assert len(w.moves) == moves


def test_a_bid_reserves_whole_blocks() -> None:
    # Lost awards and declines leave the reservations: ceil(101 / 16) = 7 blocks each.
    w = make_agents(TWO_STAGES)
    w.bus._drop = lambda dst, msg: isinstance(msg, Award | Decline)
    w.view(0).add(seq(1, 100), 100)
    w.tick(0, 0.0)
    assert w.agents[1].reserved_blocks() == w.agents[2].reserved_blocks() == 7


def test_a_slow_release_rate_still_gives_a_finite_acceptance_time() -> None:
    w = make_agents(TWO_STAGES, v1=FakeView(1, free=0))
    a, v = w.agents[1], w.view(1)
    a.publish_load(1.0)
    v.released_tokens = 1
    a.publish_load(3.0)  # 1 token in 2 s: 0.5 tokens/s sampled, 0.15 tokens/s smoothed
    assert a.earliest_accept_s(v, 1, 3.0) == pytest.approx(3.0 + 16 / 0.15, rel=1e-12)


def test_round_robin_moves_note_the_length_and_time() -> None:
    w = make_agents(TWO_STAGES, config=AgentConfig(use_bids=False))
    w.view(0).add(seq(1, 120), 120)
    w.tick(0, 0.25)
    assert w.world.incoming == [(1, 101, 120, 0.25)]


# ---- more of the balance ------------------------------------------------------------------------
def test_balance_with_two_instances_in_the_stage() -> None:
    table = StageTable(boundaries_tokens=(), stage_of_instance=(0, 0))
    w = make_agents(table, config=AgentConfig(balance_threshold=0.25, balance_persist_ticks=1))
    w.view(0).add(seq(1, 500), 500)
    w.report(0, 0.0, decode_s=2.0)
    w.report(1, 0.0, decode_s=0.5)  # mean 1.25, gap 0.75: the 0.5 s request closes most of it
    w.tick(0, 0.0)
    assert w.moves == [(1, 0, 1, "balance")]


def test_balance_needs_the_agents_own_fresh_report() -> None:
    w = make_agents(ONE_STAGE, config=AgentConfig(balance_threshold=0.25, balance_persist_ticks=1))
    w.view(0).add(seq(1, 1200), 1200)
    w.report(1, 0.0, decode_s=0.5)
    w.report(2, 0.0, decode_s=0.5)
    w.tick(0, 0.0)  # its own report is missing: it cannot know it is over the mean
    assert w.moves == []


def test_a_report_a_nanosecond_old_is_still_fresh() -> None:
    w = make_agents(ONE_STAGE, config=AgentConfig(balance_threshold=0.25, balance_persist_ticks=1))
    w.view(0).add(seq(1, 1200), 1200)
    now = 1.0
    for i, load in enumerate((3.5, 1.0, 1.5)):
        w.report(i, now - 1e-9, decode_s=load)
    w.tick(0, now)
    assert len(w.moves) == 1


def test_balance_skips_requests_it_cannot_move() -> None:
    # Mean 2.0, gap 1.5: the prefilling request (1.5 s) would match the gap exactly, the first
    # decoding one overshoots (3.0 = 2 x gap); the last one (0.5 s) is the one that can go.
    w = _balance_world((3.5, 1.0, 1.5), [])
    v = w.view(0)
    v.add(seq(1, 1500, SeqState.PREFILL), 1500)
    v.add(seq(2, 3000), 3000)
    v.add(seq(3, 500), 500)
    w.tick(0, 0.0)
    assert w.moves == [(3, 0, 1, "balance")]


def test_balance_skips_decodes_whose_migration_stalls_them_too_long() -> None:
    # As in the test above the 500-token request closes the gap best, but with a stall of 1 ms
    # per token (0.5 s) over the limit of 0.1 x the source's decode step (0.35 s), it stays; the
    # 300-token one (0.3 s stall, delta 0.3) goes instead.
    w = make_agents(
        ONE_STAGE,
        config=AgentConfig(
            balance_threshold=0.25, balance_persist_ticks=1, balance_max_stall_steps=0.1
        ),
    )
    w.world.stall_s_per_token = 0.001
    w.view(0).add(seq(3, 500), 500)
    w.view(0).add(seq(4, 300), 300)
    for i, load in enumerate((3.5, 1.0, 1.5)):
        w.report(i, 0.0, decode_s=load)
    w.tick(0, 0.0)
    assert w.moves == [(4, 0, 1, "balance")]


def test_balance_ties_go_to_the_first_request() -> None:
    w = _balance_world((3.5, 1.0, 1.5), [1000, 2000, 1000])  # 1.0 and 2.0: both 0.5 from the gap
    w.tick(0, 0.0)
    assert w.moves == [(0, 0, 1, "balance")]


def test_prefill_balance_moves_queued_prompts_by_their_prefill_time() -> None:
    # Prefill parts 3.5 / 1.0 / 1.5: gap 1.5. Prompts of 500 and 700 tokens take 1.0 and 1.4 s to
    # prefill (FakeLoad: L / 500): 700 is closer. By decode time (L / 1000) 500 would be.
    w = make_agents(ONE_STAGE, config=AgentConfig(balance_threshold=0.25, balance_persist_ticks=1))
    w.view(0).add(seq(1, 500, SeqState.WAITING), 500)
    w.view(0).add(seq(2, 700, SeqState.WAITING), 700)
    for i, load in enumerate((3.5, 1.0, 1.5)):
        w.report(i, 0.0, decode_s=0.0, prefill_s=load)
    w.tick(0, 0.0)
    assert w.moves == [(2, 0, 1, "balance")]


def test_a_balanced_prefill_part_leaves_the_decode_part_to_balance() -> None:
    # Prefill parts imbalanced but nothing queued to move; decode parts imbalanced too.
    w = make_agents(ONE_STAGE, config=AgentConfig(balance_threshold=0.25, balance_persist_ticks=1))
    w.view(0).add(seq(1, 1200), 1200)
    for i, load in enumerate((3.5, 1.0, 1.5)):
        w.report(i, 0.0, decode_s=load, prefill_s=load)
    w.tick(0, 0.0)
    assert w.moves == [(1, 0, 1, "balance")]


def test_one_balance_trade_per_tick() -> None:
    # Both parts imbalanced, a queued and a decoding candidate: the queued one moves, and only it.
    w = make_agents(ONE_STAGE, config=AgentConfig(balance_threshold=0.25, balance_persist_ticks=1))
    w.view(0).add(seq(1, 600, SeqState.WAITING), 600)
    w.view(0).add(seq(2, 1200), 1200)
    for i, load in enumerate((3.5, 1.0, 1.5)):
        w.report(i, 0.0, decode_s=load, prefill_s=load)
    w.tick(0, 0.0)
    assert w.moves == [(1, 0, 1, "balance")]
    assert w.bus.sent["Ask"] == 2  # the queued trade went to both lighter peers, nothing else


def test_a_balance_trade_the_peer_would_not_gain_from_is_not_made() -> None:
    # Peer 1 reported 1.0 but now carries 2.5: 2.5 + 1.2 >= 3.5, it does not bid; peer 2 (1.5
    # reported and now) does: 1.5 + 1.2 < 3.5.
    w = _balance_world((3.5, 1.0, 1.5), [1200])
    w.view(1).decode_s, w.view(2).decode_s = 2.5, 1.5
    w.tick(0, 0.0)
    assert w.moves == [(0, 0, 2, "balance")]
    assert w.agents[1].stats.get("bids", 0) == 0


def test_queued_balance_asks_compare_the_prefill_part_at_the_bidder() -> None:
    # The peers' decode parts are heavy, their prefill parts light: a queued prompt may go.
    w = make_agents(ONE_STAGE, config=AgentConfig(balance_threshold=0.25, balance_persist_ticks=1))
    w.view(0).add(seq(1, 700, SeqState.WAITING), 700)
    w.view(1).decode_s, w.view(1).prefill_s = 9.0, 1.0
    w.view(2).decode_s, w.view(2).prefill_s = 9.0, 1.5
    for i, load in enumerate((3.5, 1.0, 1.5)):
        w.report(i, 0.0, decode_s=0.0, prefill_s=load)
    w.tick(0, 0.0)
    assert len(w.moves) == 1


def test_the_queued_part_has_its_own_persistence_count() -> None:
    w = make_agents(ONE_STAGE, config=AgentConfig(balance_threshold=0.25, balance_persist_ticks=2))
    w.view(0).add(seq(1, 700, SeqState.WAITING), 700)
    for k, now in enumerate((0.0, 0.2)):
        for i, load in enumerate((3.5, 1.0, 1.5)):
            w.report(i, now, decode_s=0.0, prefill_s=load)
        w.tick(0, now)
        assert len(w.moves) == k  # asks on the second tick over the threshold, not the first


def test_a_landed_balance_trade_frees_the_next_one_before_its_timeout() -> None:
    w = _balance_world((3.5, 1.0, 1.5), [1200, 1100])
    w.tick(0, 0.0)
    moved = w.view(0).run.pop(0)
    moved.instances.append(1)  # it landed on instance 1
    for i, load in enumerate((3.5, 1.0, 1.5)):
        w.report(i, 0.2, decode_s=load)
    w.tick(0, 0.2)
    assert [m[0] for m in w.moves] == [0, 1]


def test_a_balance_trade_blocks_the_next_until_its_timeout() -> None:
    w = _balance_world((3.5, 1.0, 1.5), [1200, 1100])
    w.tick(0, 0.0)
    for now in (4.9, 5.0):
        for i, load in enumerate((3.5, 1.0, 1.5)):
            w.report(i, now, decode_s=load)
        w.tick(0, now)
    assert len(w.moves) == 2  # at 5.0 (trade timeout 5 s) the next trade may go


# ---- more of the drain --------------------------------------------------------------------------
def _moved_to_stage_1(w: Agents) -> None:
    update = PlanUpdate(
        version=1, boundaries_tokens=(100,), stage_of_instance=(1, 0, 1), sender=RECORDER
    )
    w.bus.send(0, update)
    w.bus.flush()


def test_drain_ends_once_everything_left() -> None:
    w = make_agents(TWO_STAGES)
    w.view(0).add(seq(1, 50, SeqState.WAITING), 50)
    w.view(0).add(seq(2, 150), 150)  # stage 1's: stays
    _moved_to_stage_1(w)
    w.tick(0, 0.0)
    assert w.moves == [(1, 0, 1, "drain")]
    assert w.agents[0].draining is False


def test_drain_goes_on_while_a_hand_out_is_refused() -> None:
    w = make_agents(TWO_STAGES, v1=FakeView(1, free=0))
    w.view(0).add(seq(1, 50, SeqState.WAITING), 50)
    _moved_to_stage_1(w)
    w.tick(0, 0.0)
    assert w.moves == [] and w.agents[0].draining is True


def test_drain_goes_on_while_a_short_request_decodes_here() -> None:
    # A decoding request below the new stage's lower bound that was not handed out (in flight).
    w = make_agents(TWO_STAGES)
    w.view(0).add(seq(1, 60), 60)
    _moved_to_stage_1(w)
    w.tick(0, 0.0)
    assert w.moves == [(1, 0, 1, "drain")]
    assert w.agents[0].draining is True  # the fake cluster never takes it off: still here
    w.view(0).run.clear()
    w.tick(0, 0.2)
    assert w.agents[0].draining is False


def test_drain_leaves_longer_decodes_to_the_cascade() -> None:
    # Instance 0 moved to stage 0 of (100, 200): a decoding request of 150 belongs downstream and
    # the cascade (not the drain) hands it on; a queued one of 150 is drained.
    table = StageTable(boundaries_tokens=(100, 200), stage_of_instance=(1, 0, 2))
    w = make_agents(table)
    w.view(0).add(seq(1, 150), 150)
    w.view(0).add(seq(2, 150, SeqState.WAITING), 150)
    update = PlanUpdate(
        version=1, boundaries_tokens=(100, 200), stage_of_instance=(0, 1, 2), sender=RECORDER
    )
    w.bus.send(0, update)
    w.bus.flush()
    w.tick(0, 0.0)
    assert sorted(w.moves) == [(1, 0, 1, "cascade"), (2, 0, 1, "drain")]


def test_drain_stops_asking_a_stage_that_refused() -> None:
    w = make_agents(TWO_STAGES, v1=FakeView(1, free=0))
    w.view(0).add(seq(1, 50, SeqState.WAITING), 50)
    w.view(0).add(seq(2, 60, SeqState.WAITING), 60)
    _moved_to_stage_1(w)
    w.tick(0, 0.0)
    assert w.agents[0].stats["asks_drain"] == 1
    assert w.agents[0].draining is True


def test_every_ask_of_a_tick_keeps_its_own_reservation() -> None:
    # Lost awards and declines: each of two asks left its 7 blocks reserved at both bidders.
    w = make_agents(TWO_STAGES)
    w.bus._drop = lambda dst, msg: isinstance(msg, Award | Decline)
    w.view(0).add(seq(1, 100), 100)
    w.view(0).add(seq(2, 100), 100)
    w.tick(0, 0.0)
    assert w.agents[1].reserved_blocks() == w.agents[2].reserved_blocks() == 14


def test_an_answer_to_an_expired_bid_is_ignored() -> None:
    w = make_agents(TWO_STAGES)
    for msg in (Award(ask_id=42, sender=RECORDER), Decline(ask_id=43, sender=RECORDER)):
        w.bus.send(1, msg)
    w.bus.flush()
    assert w.agents[1].reserved_blocks() == 0


def test_a_queued_part_still_persisting_leaves_the_tick_to_the_decode_part() -> None:
    # Persistence 2: the decode part is over the threshold from the first tick, the queued part
    # only from the second; at the second tick the decode part may trade, the queued one waits.
    w = make_agents(ONE_STAGE, config=AgentConfig(balance_threshold=0.25, balance_persist_ticks=2))
    w.view(0).add(seq(1, 700, SeqState.WAITING), 700)
    w.view(0).add(seq(2, 1200), 1200)
    for now, prefill in ((0.0, (1.0, 1.0, 1.0)), (0.2, (3.5, 1.0, 1.5))):
        for i, load in enumerate((3.5, 1.0, 1.5)):
            w.report(i, now, decode_s=load, prefill_s=prefill[i])
        w.tick(0, now)
    assert w.moves == [(2, 0, 1, "balance")]
