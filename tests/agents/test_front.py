"""The front door on its own: a real bus, scripted bidders in place of the agents.

Each bidder answers every ask with the terms it was given (how long until it could take the
request, its queued prefill) and records what it receives, so a test sees which instances were
asked, for what kind of trade, and who was awarded or declined."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import l4.agents.front as front_module
from factories import req, tiny_profile
from l4.agents.agent import AgentConfig
from l4.agents.bus import MessageBus
from l4.agents.config import L4Config
from l4.agents.front import FrontDoor
from l4.agents.load import LoadModel
from l4.agents.messages import FRONT, Ask, Award, Bid, Decline, Message, TradeKind
from l4.agents.stages import StageTable
from l4.core.grid import exponential_grid
from l4.core.objective import SloObjective
from l4.core.summary import arrival_batch_excess, arrival_spread
from l4.costmodel import StepCostModel
from l4.instance import InstanceConfig

PROFILE = tiny_profile(kv_capacity_tokens=8192, max_context_tokens=2048)
COST = StepCostModel(PROFILE)
BUDGET = InstanceConfig.from_profile(PROFILE).max_num_batched_tokens
LOAD = LoadModel(COST, budget_tokens=BUDGET)
GRID = exponential_grid(2048)
BLOCK = 16
# Two stages of two: prompts below 100 tokens enter at 0 and 1, the rest at 2 and 3.
TWO = StageTable(boundaries_tokens=(100,), stage_of_instance=(0, 0, 1, 1))


@dataclasses.dataclass(frozen=True)
class Terms:
    wait_s: float = 0.0  # until it has KV room for the request
    prefill_s: float = 0.0  # its queued prefill
    decode_s: float = 0.0  # its next decode step
    load_s: float = 0.0


class Bidders:
    def __init__(self, bus: MessageBus, n: int) -> None:
        self._bus = bus
        self.terms: dict[int, Terms] = {}
        self.got: dict[int, list[Message]] = {i: [] for i in range(n)}
        for i in range(n):
            bus.subscribe(i, lambda msg, i=i: self._on(i, msg))

    def _on(self, i: int, msg: Message) -> None:
        self.got[i].append(msg)
        terms = self.terms.get(i)
        if isinstance(msg, Ask) and terms is not None:
            bid = Bid(
                ask_id=msg.ask_id,
                sender=i,
                load_s=terms.load_s,
                earliest_accept_s=msg.sent_s + terms.wait_s,
                expires_s=msg.sent_s + 1.0,
                prefill_s=terms.prefill_s,
                decode_s=terms.decode_s,
            )
            self._bus.send(FRONT, bid)

    def asks(self, i: int) -> list[Ask]:
        return [m for m in self.got[i] if isinstance(m, Ask)]

    def replies(self, i: int) -> list[tuple[str, int]]:
        out = [m for m in self.got[i] if isinstance(m, Award | Decline)]
        assert all(m.sender == FRONT for m in out)  # every message names its sender
        return [(type(m).__name__, m.ask_id) for m in out]


def door(
    table: StageTable = TWO,
    config: L4Config | None = None,
    *,
    spread: np.ndarray | None = None,
    batch_excess: float = 0.0,
) -> tuple[FrontDoor, Bidders]:
    bus = MessageBus()
    front = FrontDoor(
        L4Config() if config is None else config,
        bus=bus,
        table=table,
        load=LOAD,
        cost=COST,
        budget_tokens=BUDGET,
        block_tokens=BLOCK,
        grid=GRID,
        batch_excess=batch_excess,
        spread=spread,
    )
    return front, Bidders(bus, len(table.stage_of_instance))


def ttft_slo_s(prompt_tokens: int, scale: float = 5.0) -> float:
    return scale * COST.unloaded_latency_s(prompt_tokens, 2, BUDGET)[0]


def test_the_best_bid_wins_and_every_other_bidder_is_declined() -> None:
    front, bidders = door()
    bidders.terms = {0: Terms(load_s=0.5), 1: Terms(load_s=0.2), 2: Terms(), 3: Terms()}
    assert front.route(req(7, 48, 10), 1.0) == 1
    (ask,) = bidders.asks(0)
    assert bidders.asks(1) == [ask]
    # The KV an arrival needs: its prompt and its first generated token (49 tokens: 4 blocks).
    assert (ask.kind, ask.request_id, ask.length_tokens, ask.blocks) == (TradeKind.ADMIT, 7, 48, 4)
    assert (ask.sender, ask.queued, ask.sent_s) == (FRONT, True, 1.0)
    assert bidders.replies(1) == [("Award", ask.ask_id)]
    assert bidders.replies(0) == [("Decline", ask.ask_id)]
    # Taken at once and promptly: the later stage is neither asked nor told anything.
    assert bidders.got[2] == [] and bidders.got[3] == []
    assert (front.spills, front.overflows) == (0, 0)
    # 47 tokens and the first generated one fill 3 blocks exactly.
    front.route(req(8, 47, 10), 1.0)
    assert bidders.asks(0)[-1].blocks == 3


def test_earliest_acceptance_ranks_before_load() -> None:
    front, bidders = door()
    bidders.terms = {0: Terms(wait_s=0.0, load_s=0.9), 1: Terms(wait_s=0.01, load_s=0.0)}
    assert front.route(req(1, 48, 10), 0.0) == 0


def test_a_queue_at_the_entry_spills_to_an_idle_later_stage_asked_alone() -> None:
    front, bidders = door()
    slo = ttft_slo_s(48)
    # Room at once (no overflow), but a queued prefill of 0.6 x the TTFT SLO: over the spill
    # threshold (0.5), and an idle later instance is more than 20% cheaper.
    bidders.terms = {0: Terms(prefill_s=0.6 * slo), 1: Terms(prefill_s=0.7 * slo)}
    bidders.terms |= {2: Terms(prefill_s=0.1 * slo), 3: Terms(prefill_s=0.0)}
    assert front.route(req(1, 48, 10), 10.0) == 3 and front.spills == 1
    (admit,) = bidders.asks(0)
    assert bidders.asks(1) == [admit] and admit.kind is TradeKind.ADMIT
    (spill,) = bidders.asks(3)
    assert bidders.asks(2) == [spill] and spill.kind is TradeKind.SPILL
    assert spill.ask_id != admit.ask_id
    assert bidders.replies(3) == [("Award", spill.ask_id)]
    assert bidders.replies(2) == [("Decline", spill.ask_id)]
    # The entry stage's own bids all declined: the request went elsewhere.
    assert bidders.replies(0) == [("Decline", admit.ask_id)]
    assert bidders.replies(1) == [("Decline", admit.ask_id)]
    assert front.route(req(2, 48, 10), 10.0) == 3 and front.spills == 2


def test_no_spill_unless_the_later_stage_is_cheaper_by_the_margin() -> None:
    front, bidders = door()
    slo = ttft_slo_s(48)
    own = LOAD.prompt_s(48)
    # Entry: 0.6 x the SLO in all (own prefill included); later: its own prefill only, which
    # is cheaper by more than 20% only if 0.8 x 0.6 x slo > own.
    assert own < 0.45 * slo
    bidders.terms = {0: Terms(prefill_s=0.6 * slo - own), 2: Terms()}
    assert front.route(req(1, 48, 10), 0.0) == 2
    # Now the later stage queues 0.5 of the SLO: over the 0.6 x 0.8 = 0.48 it must beat.
    front, bidders = door()
    bidders.terms = {0: Terms(prefill_s=0.6 * slo - own), 2: Terms(prefill_s=0.5 * slo)}
    assert front.route(req(1, 48, 10), 0.0) == 0 and front.spills == 0
    assert bidders.replies(2) == [("Decline", bidders.asks(2)[0].ask_id)]


@pytest.mark.parametrize(
    "objective,scale,prompt",
    [(None, 5.0, 48), (SloObjective(slo_scale=8.0), 8.0, 48), (SloObjective(), 5.0, 1)],
)
@pytest.mark.parametrize("over", [True, False])
def test_the_spill_threshold_is_half_the_ttft_slo_of_the_objective(
    objective: SloObjective | None, scale: float, prompt: int, over: bool
) -> None:
    # Without an SLO objective (l4_meanlat) the SLOs are 5 x the unloaded latencies. An entry
    # wait 0.1% over half the TTFT SLO (the arrival's own prefill included) offers the arrival
    # to the later stage; 0.1% under does not.
    front, bidders = door(config=L4Config(objective=objective, stage_margin=0.0))
    threshold = 0.5 * ttft_slo_s(prompt, scale)
    wait = threshold * (1.001 if over else 0.999) - LOAD.prompt_s(prompt)
    bidders.terms = {0: Terms(prefill_s=wait), 2: Terms()}
    front.route(req(1, prompt, 10), 10.0)
    assert [a.kind for a in bidders.asks(2)] == ([TradeKind.SPILL] if over else [])


def test_an_arrival_with_no_room_in_its_stage_overflows_to_a_lower_neighbour() -> None:
    table = StageTable(boundaries_tokens=(100, 400), stage_of_instance=(0, 1, 2))
    front, bidders = door(table)
    # Stage 1 (its entry) and stage 2 have no room now; stage 0 has.
    bidders.terms = {0: Terms(load_s=0.5), 1: Terms(wait_s=3.0), 2: Terms(wait_s=1.0)}
    assert front.route(req(5, 200, 10), 0.0) == 0
    assert front.overflows == 1 and front.stays(5) and not front.stays(6)
    overflow = bidders.asks(0)[0]
    assert overflow.kind is TradeKind.ADMIT and bidders.asks(2) == [overflow]
    assert bidders.replies(0) == [("Award", overflow.ask_id)]
    assert bidders.replies(2) == [("Decline", overflow.ask_id)]


def test_overflowed_requests_are_forgotten_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(front_module, "_OVERFLOWED_KEPT", 2)
    front, bidders = door()
    bidders.terms = {0: Terms(wait_s=1.0), 1: Terms(wait_s=1.0), 2: Terms(), 3: Terms()}
    for rid in (1, 2, 3):
        assert front.route(req(rid, 48, 10), 0.0) in (2, 3)
    assert [front.stays(r) for r in (1, 2, 3)] == [False, True, True]
    assert front.overflows == 3


def test_the_arrival_measures_keep_the_last_minute_and_smooth_the_batch_excess() -> None:
    spread0 = np.full((GRID.num_buckets, GRID.num_buckets), 0.25)
    front, _ = door(spread=spread0, batch_excess=2.0)
    assert front.spread is spread0 and front.batch_excess == 2.0  # the planned workload's
    times = [0.0, 50.0, 50.0, 70.0, 95.0]
    prompts = [40, 300, 40, 1000, 40]
    for k, (t, p) in enumerate(zip(times, prompts, strict=True)):
        front.route(req(k, p, 10), t)
    front.measure_arrivals(100.0, smoothing=0.3)
    # Over the last 60 s only (the arrival at 0 s is older), once at least 30 s are seen.
    expected = arrival_spread(GRID, times[1:], prompts[1:])
    assert front.spread is not None and np.array_equal(front.spread, expected)
    assert not np.array_equal(expected, arrival_spread(GRID, times, prompts))
    assert front.batch_excess == pytest.approx(0.3 * arrival_batch_excess(times) + 0.7 * 2.0)
    # The next window starts empty: one arrival cannot measure a batch, the EMA is kept.
    front.route(req(9, 40, 10), 101.0)
    front.measure_arrivals(102.0, smoothing=0.3)
    assert front.batch_excess == pytest.approx(0.3 * arrival_batch_excess(times) + 0.7 * 2.0)


@pytest.mark.parametrize("later_over_margin", [-0.05, 0.05])
def test_the_margin_compares_whole_costs_the_arrivals_own_prefill_included(
    later_over_margin: float,
) -> None:
    front, bidders = door()
    slo = ttft_slo_s(48)
    own = LOAD.prompt_s(48)
    # Entry: 0.6 of the SLO with its own prefill; the later instance spills it only if its
    # queue plus that prefill is under 0.8 x 0.6 = 0.48 of the SLO.
    later = 0.48 * slo - own + later_over_margin * own
    bidders.terms = {0: Terms(prefill_s=0.6 * slo - own), 2: Terms(prefill_s=later)}
    spilled = front.route(req(1, 48, 10), 10.0) == 2
    assert spilled == (later_over_margin < 0)


@pytest.mark.parametrize(
    "entry_decode,later_decode,spills",
    [(0.0, 0.0, True), (0.0, 1.0, False), (1.0, 0.5, True), (0.0, 0.3, True)],
)
def test_a_later_stage_that_decodes_slowly_is_priced_by_its_tpot(
    entry_decode: float, later_decode: float, spills: bool
) -> None:
    # Decode steps in TPOT SLOs: a step of x TPOT SLOs costs what a wait of x TTFT SLOs does.
    front, bidders = door()
    slo = ttft_slo_s(48)
    tpot_slo = 5.0 * COST.unloaded_latency_s(48, 2, BUDGET)[1]
    own = LOAD.prompt_s(48)
    bidders.terms = {
        0: Terms(prefill_s=0.6 * slo - own, decode_s=entry_decode * tpot_slo),
        2: Terms(decode_s=later_decode * tpot_slo),
    }
    assert (front.route(req(1, 48, 10), 10.0) == 2) == spills


def test_with_every_bid_lost_an_arrival_goes_round_robin_in_its_stage() -> None:
    front, bidders = door()
    assert [front.route(req(k, 48, 10), 0.0) for k in range(3)] == [0, 1, 0]
    assert len(bidders.asks(0)) == 3  # asked each time, answered never


def test_neighbours_that_do_not_answer_leave_the_arrival_queued_in_its_stage() -> None:
    front, bidders = door()
    bidders.terms = {0: Terms(wait_s=2.0), 1: Terms(wait_s=1.0)}  # no room; stage 1 silent
    assert front.route(req(1, 48, 10), 0.0) == 1
    assert (front.overflows, front.spills) == (0, 0) and not front.stays(1)
    assert [a.kind for a in bidders.asks(2)] == [TradeKind.ADMIT, TradeKind.SPILL]


def test_no_spill_when_no_later_instance_can_take_it_now() -> None:
    front, bidders = door(config=L4Config(overflow=False))
    slo = ttft_slo_s(48)
    bidders.terms = {0: Terms(prefill_s=slo), 2: Terms(wait_s=0.5), 3: Terms(wait_s=0.5)}
    assert front.route(req(1, 48, 10), 0.0) == 0 and front.spills == 0
    spill = bidders.asks(2)[0]
    assert bidders.replies(2) == bidders.replies(3) == [("Decline", spill.ask_id)]


def test_round_robin_inside_the_stage_without_bids() -> None:
    table = StageTable(boundaries_tokens=(100,), stage_of_instance=(0, 0, 0, 1))
    config = L4Config(agent=AgentConfig(use_bids=False, balance=False))
    front, bidders = door(table, config)
    assert [front.route(req(k, 48, 10), 0.0) for k in range(4)] == [0, 1, 2, 0]
    assert [front.route(req(k, 300, 10), 0.0) for k in range(2)] == [3, 3]
    assert all(not msgs for msgs in bidders.got.values())


def test_a_lone_instance_takes_every_arrival_without_an_ask() -> None:
    front, bidders = door(StageTable.single(1))
    assert front.route(req(1, 48, 10), 0.0) == 0
    assert bidders.got[0] == []


@pytest.mark.parametrize(
    "refine,replan,measured", [(True, False, True), (False, True, True), (False, False, False)]
)
def test_arrivals_are_measured_when_something_plans_with_them(
    refine: bool, replan: bool, measured: bool
) -> None:
    config = L4Config(refine=refine, replan=replan, staged=True)
    front, _ = door(config=config, batch_excess=2.0)
    for k, t in enumerate((0.0, 0.0, 0.0, 1.0)):  # three at once: a batch
        front.route(req(k, 48, 10), t)
    front.measure_arrivals(2.0, smoothing=0.5)
    expected = 0.5 * arrival_batch_excess([0.0, 0.0, 0.0, 1.0]) + 0.5 * 2.0
    assert front.batch_excess == (pytest.approx(expected) if measured else 2.0)


def test_two_arrivals_make_a_window_one_does_not() -> None:
    front, _ = door(batch_excess=0.0)
    front.route(req(1, 48, 10), 0.0)
    front.measure_arrivals(1.0, smoothing=0.5)
    assert front.batch_excess == 0.0
    front.route(req(2, 48, 10), 1.5)
    front.route(req(3, 48, 10), 1.5)  # two at once: a batch of two, excess 1
    front.measure_arrivals(2.0, smoothing=0.5)
    assert arrival_batch_excess([1.5, 1.5]) == 1.0 and front.batch_excess == 0.5


@pytest.mark.parametrize(
    "times,now,kept",
    [
        ([40.0, 45.0, 90.0, 95.0], 100.0, [40.0, 45.0, 90.0, 95.0]),  # exactly 60 s old: kept
        ([0.0, 45.0, 90.0, 95.0], 100.0, [45.0, 90.0, 95.0]),
        ([70.0, 95.0], 100.0, [70.0, 95.0]),  # exactly 30 s seen: enough
        ([75.0, 95.0], 100.0, None),  # 25 s: the planned spread stays
        ([20.0], 100.0, None),  # too old: nothing left
    ],
)
def test_the_spread_is_measured_over_the_last_minute_once_half_of_it_is_seen(
    times: list[float], now: float, kept: list[float] | None
) -> None:
    planned = np.full((GRID.num_buckets, GRID.num_buckets), 0.25)
    front, _ = door(spread=planned)
    prompts = [40 + 300 * (k % 3) for k in range(len(times))]
    for k, (t, p) in enumerate(zip(times, prompts, strict=True)):
        front.route(req(k, p, 10), t)
    front.measure_arrivals(now, smoothing=0.3)
    if kept is None:
        assert front.spread is planned
    else:
        assert front.spread is not None
        assert np.array_equal(front.spread, arrival_spread(GRID, kept, prompts[-len(kept) :]))
