"""The front door: where each arrival is placed, and what it sees of how arrivals come.

An arrival's entry stage (by prompt length) bids for it and the best bid wins: earliest
acceptance, then lowest load (round robin inside the stage for ``l4_rr``, or when every bid was
lost). Two ways out of the entry stage, both priced per request:

* overflow: no entry instance has KV room for the prompt now, a neighbouring stage's has;
* spill: the entry stage would start it late (``spill_threshold`` x its TTFT SLO) and a later
  stage's idle instance is ``spill_margin`` cheaper (TTFT and TPOT, each over its SLO).

The front door is a participant of the bus like the agents: it keeps its own copy of the stage
table, updated by the leaders' boundary moves and the coordinator's plans. It also measures the
arrivals it sees (how many come together, how they bunch over seconds), which the runtime adds to
the agents' reports when a round plans.
"""

from __future__ import annotations

import collections
import itertools

from l4.agents.bus import MessageBus
from l4.agents.config import L4Config
from l4.agents.load import LoadModel
from l4.agents.messages import (
    FRONT,
    Ask,
    Award,
    Bid,
    BoundaryMove,
    Decline,
    Message,
    PlanUpdate,
    TradeKind,
)
from l4.agents.stages import StageTable
from l4.core.grid import LengthGrid
from l4.core.summary import FloatArray, arrival_batch_excess, arrival_spread
from l4.costmodel.step import StepCostModel
from l4.request import RequestSpec

# Arrivals bunching is measured over this much recent history (at least half of it seen before
# it replaces the planned workload's measure).
SPREAD_HISTORY_S = 60.0
# Overflowed requests remembered (they stay where they went); the oldest have long finished.
_OVERFLOWED_KEPT = 65_536


class FrontDoor:
    def __init__(
        self,
        config: L4Config,
        *,
        bus: MessageBus,
        table: StageTable,
        load: LoadModel,
        cost: StepCostModel,
        budget_tokens: int,
        block_tokens: int,
        grid: LengthGrid,
        batch_excess: float,
        spread: FloatArray | None,
    ) -> None:
        self.config = config
        self.table = table
        self.bus = bus
        bus.subscribe(FRONT, self._handle)
        self._load = load
        self._cost = cost
        self._budget = budget_tokens
        self._bs = block_tokens
        self._grid = grid
        self._slo_scale = 5.0 if config.objective is None else config.objective.slo_scale
        self._slos: dict[int, tuple[float, float]] = {}
        self._ask_ids = itertools.count(1)
        self._bids: dict[int, list[Bid]] = {}
        self._rr: dict[int, int] = {}
        self._overflowed: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.spills = 0
        self.overflows = 0
        self.boundary_moves = 0
        self.replans = 0
        # How many arrive together (EMA by window), only when something plans with it.
        self._measure = config.refine or config.replan
        self._arrivals_s: list[float] = []
        self.batch_excess = batch_excess
        # ...and how they bunch over seconds, per prompt bucket, over the last SPREAD_HISTORY_S.
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self.spread = spread

    def new_ask_id(self) -> int:
        """Ask ids are unique across the front door and every agent (one counter)."""
        return next(self._ask_ids)

    def stays(self, request_id: int) -> bool:
        return request_id in self._overflowed

    def next_round_robin(self, stage: int) -> int:
        members = self.table.members(stage)
        k = self._rr.get(stage, 0)
        self._rr[stage] = k + 1
        return members[k % len(members)]

    # ---- placement -----------------------------------------------------------------------------
    def route(self, request: RequestSpec, now_s: float) -> int:
        if self._measure:
            self._arrivals_s.append(now_s)
            self._recent.append((now_s, request.input_tokens))
        stage = self.table.stage_of(request.input_tokens)
        members = self.table.members(stage)
        can_spill = self.config.spill and stage + 1 < self.table.num_stages
        can_overflow = self.config.overflow and self.table.num_stages > 1
        if len(members) == 1 and not (can_spill or can_overflow):
            return members[0]
        if not self.config.agent.use_bids:
            return self.next_round_robin(stage)
        ask_id, bids = self._ask_bids(TradeKind.ADMIT, request, members, now_s)
        if not bids:  # every bid lost: place by load as the retained reports last said
            return self.next_round_robin(stage)
        best = min(bids, key=lambda b: (b.earliest_accept_s, b.load_s, b.sender))
        if can_overflow and best.earliest_accept_s > now_s:
            elsewhere = self._overflow(request, stage, now_s)
            if elsewhere is not None:
                self._answer(ask_id, bids, None)
                return elsewhere
        spill = self._spill(request, best, stage, now_s) if can_spill else None
        self._answer(ask_id, bids, None if spill is not None else best)
        return best.sender if spill is None else spill

    def _ask_bids(
        self, kind: TradeKind, request: RequestSpec, members: list[int], now_s: float
    ) -> tuple[int, list[Bid]]:
        """Ask ``members`` to bid for a new arrival; (the ask's id, the bids that came back)."""
        ask = Ask(
            ask_id=self.new_ask_id(),
            sender=FRONT,
            kind=kind,
            request_id=request.request_id,
            length_tokens=request.input_tokens,
            blocks=-(-(request.input_tokens + 1) // self._bs),
            queued=True,
            sender_load_s=0.0,
            delta_load_s=0.0,
            sent_s=now_s,
        )
        for i in members:
            self.bus.send(i, ask)
        self.bus.flush()
        return ask.ask_id, self._bids.pop(ask.ask_id, [])

    def _answer(self, ask_id: int, bids: list[Bid], winner: Bid | None) -> None:
        for b in bids:
            reply: Message = (
                Award(ask_id=ask_id, sender=FRONT)
                if b is winner
                else Decline(ask_id=ask_id, sender=FRONT)
            )
            self.bus.send(b.sender, reply)
        self.bus.flush()

    def _slo_s(self, prompt_tokens: int) -> tuple[float, float]:
        """(TTFT, TPOT) SLOs of a prompt: the objective's scale x its unloaded latencies."""
        hit = self._slos.get(prompt_tokens)
        if hit is None:
            ttft, tpot = self._cost.unloaded_latency_s(max(prompt_tokens, 1), 2, self._budget)
            hit = self._slos[prompt_tokens] = (self._slo_scale * ttft, self._slo_scale * tpot)
        return hit

    def _overflow(self, request: RequestSpec, stage: int, now_s: float) -> int | None:
        """The least loaded instance of a neighbouring stage with KV room for ``request`` now,
        or None (then it queues in its entry stage)."""
        near = [s for s in (stage - 1, stage + 1) if 0 <= s < self.table.num_stages]
        ask_id, bids = self._ask_bids(
            TradeKind.ADMIT, request, [i for s in near for i in self.table.members(s)], now_s
        )
        ready = [b for b in bids if b.earliest_accept_s <= now_s]
        best = min(ready, key=lambda b: (b.load_s, b.sender), default=None)
        self._answer(ask_id, bids, best)
        if best is None:
            return None
        self.overflows += 1
        self._overflowed[request.request_id] = None
        while len(self._overflowed) > _OVERFLOWED_KEPT:
            self._overflowed.popitem(last=False)
        return best.sender

    def _spill(self, request: RequestSpec, entry: Bid, stage: int, now_s: float) -> int | None:
        """The later-stage instance to admit ``request`` at, or None to keep it in its stage.

        Priced like the objective, per request: TTFT over its SLO plus TPOT over its SLO, the
        TTFT being the bidder's wait (memory, then pending prefill) plus the prompt's own
        prefill, the TPOT its next decode step. The request is counted by its real length
        wherever it lands (the observers record prompts, not stages)."""
        ttft_slo, tpot_slo = self._slo_s(request.input_tokens)
        own = self._load.prompt_s(request.input_tokens)

        def cost(b: Bid) -> float:
            wait = max(b.earliest_accept_s - now_s, 0.0) + b.prefill_s
            return (wait + own) / ttft_slo + b.decode_s / tpot_slo

        entry_wait = max(entry.earliest_accept_s - now_s, 0.0) + entry.prefill_s + own
        if entry_wait <= self.config.spill_threshold * ttft_slo:
            return None
        later = [i for s in range(stage + 1, self.table.num_stages) for i in self.table.members(s)]
        ask_id, bids = self._ask_bids(TradeKind.SPILL, request, later, now_s)
        ready = [b for b in bids if b.earliest_accept_s <= now_s]
        best = min(ready, key=lambda b: (cost(b), b.sender), default=None)
        if best is None or not cost(best) < cost(entry) * (1.0 - self.config.spill_margin):
            best = None
        self._answer(ask_id, bids, best)
        if best is None:
            return None
        self.spills += 1
        return best.sender

    # ---- what the front door hears -------------------------------------------------------------
    def _handle(self, msg: Message) -> None:
        if isinstance(msg, Bid):
            self._bids.setdefault(msg.ask_id, []).append(msg)
        elif isinstance(msg, BoundaryMove):
            if msg.version == self.table.version:
                moved = self.table.with_move(msg.index, msg.tokens)
                if moved is not None:
                    self.table = moved
                    self.boundary_moves += 1
        elif isinstance(msg, PlanUpdate):
            self.table = StageTable(
                boundaries_tokens=msg.boundaries_tokens,
                stage_of_instance=msg.stage_of_instance,
                version=msg.version,
                out=msg.out,
            )
            if msg.sender != FRONT:  # the coordinator's re-plan, not a change of membership
                self.replans += 1

    # ---- how arrivals come ---------------------------------------------------------------------
    def measure_arrivals(self, now_s: float, smoothing: float) -> None:
        """Close this window's arrival measures: the batch excess (EMA, ``smoothing`` the weight
        of this window) and the spread over the last SPREAD_HISTORY_S."""
        if len(self._arrivals_s) >= 2:
            window = arrival_batch_excess(self._arrivals_s)
            self.batch_excess = smoothing * window + (1 - smoothing) * self.batch_excess
        self._arrivals_s = []
        while self._recent and self._recent[0][0] < now_s - SPREAD_HISTORY_S:
            self._recent.popleft()
        if self._recent and now_s - self._recent[0][0] >= SPREAD_HISTORY_S / 2:
            times, prompts = zip(*self._recent, strict=True)
            self.spread = arrival_spread(self._grid, times, prompts)
