"""The instance agent (L4.md section 6): one per instance, acting on it and talking by messages.

Every balancing tick an agent publishes its load on its stage's topic, then

1. **cascade**: hands downstream every decoding request whose length reached its stage's upper
   bound (to the stage containing its length, so always downstream); with no acceptable bid the
   request stays and the hand-off is retried next tick;
2. **drain**: after a re-plan moved it to another stage, hands out the requests that now belong to
   another stage (queued ones first, they carry no KV);
3. **balance**: when its load exceeds its stage's mean by ``balance_threshold``, asks its lighter
   peers to take the request whose move best closes the gap (one trade in flight at a time).

Trades are ask -> bids -> award/decline. A bid reserves the blocks the request needs until it is
awarded, declined or ``bid_timeout_s`` passes, so two asks never count on the same free memory and
a lost message never leaks a reservation. Bids carry the bidder's load and its earliest acceptance
time: now when the blocks are free after its queued prompts and reservations, else when its
completions should have freed them (at its observed release rate).

Guarantees: a request is handed to a later stage only (cascade), is never handed out while a
previous move of it is in flight, and is only moved through ``ClusterView.migrate`` (which cannot
lose it). Clock injected: ``now_s`` comes with every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from l4.agents.bus import MessageBus
from l4.agents.load import LoadModel
from l4.agents.messages import (
    Ask,
    Award,
    Bid,
    BoundaryMove,
    Decline,
    LengthReport,
    LoadReport,
    Message,
    PlanUpdate,
    TradeKind,
)
from l4.agents.observer import WindowObserver
from l4.agents.stages import StageTable
from l4.errors import ValidationError
from l4.instance.sequence import SeqState, Sequence
from l4.views import ClusterView, InstanceView

# A bid whose earliest acceptance is this far off still ranks arrivals, but takes no migration.
NEVER_S = 1e9


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    tick_s: float = 0.2  # balancing tick
    balance_threshold: float = 0.2  # ask when load > (1 + threshold) x the stage mean...
    balance_persist_ticks: int = 5  # ...for this many ticks in a row (not a passing burst)
    # A decoding request moves to balance load only if its migration stalls it no longer than
    # this many of the source's decode steps: a stop-and-copy (kv-transfer) does, a re-prefill
    # (token replay) of any sizeable context does not, and its cost would exceed the gain.
    balance_max_stall_steps: float = 10.0
    bid_timeout_s: float = 1.0
    trade_timeout_s: float = 5.0  # a trade not seen to land by then no longer blocks the next
    release_smoothing: float = 0.3  # EMA weight of the newest release-rate sample
    use_bids: bool = True  # False: round robin inside stages (the l4_rr ablation)
    balance: bool = True

    def __post_init__(self) -> None:
        if not self.tick_s > 0:
            raise ValidationError("balancing tick must be > 0 s")
        if self.balance_threshold < 0 or self.balance_persist_ticks < 1:
            raise ValidationError("balance threshold must be >= 0 and persistence >= 1 tick")
        if self.balance_max_stall_steps < 0:
            raise ValidationError("balance stall limit must be >= 0 steps")
        if not (self.bid_timeout_s > 0 and self.trade_timeout_s > 0):
            raise ValidationError("timeouts must be > 0 s")


class World(Protocol):
    """What the runtime lends an agent: the cluster now, and the way to follow a moved request."""

    @property
    def cluster(self) -> ClusterView: ...
    def note_incoming(self, seq: Sequence, dst: int, length_tokens: int, now_s: float) -> None: ...
    def next_round_robin(self, stage: int) -> int: ...
    def stays(self, request_id: int) -> bool:
        """Whether a request was placed outside its stage on purpose (an overflow): it finishes
        where it is rather than cascade."""
        ...

    def migration_stall_s(self, length_tokens: int) -> float:
        """What moving a decoding request of this length stalls it, by the deployment's
        mechanism (the planner's migration model)."""
        ...


@dataclass(slots=True)
class _Reservation:
    blocks: int
    expires_s: float


@dataclass(slots=True)
class _Move:
    seq: Sequence
    dst: int
    deadline_s: float


class InstanceAgent:
    def __init__(
        self,
        instance_id: int,
        *,
        bus: MessageBus,
        world: World,
        table: StageTable,
        load: LoadModel,
        observer: WindowObserver,
        config: AgentConfig,
        block_tokens: int,
    ) -> None:
        self.instance_id = instance_id
        self.table = table
        self.observer = observer
        self.config = config
        self._bus = bus
        self._world = world
        self._load = load
        self.load_model = load
        self._bs = block_tokens
        self._reservations: dict[int, _Reservation] = {}
        self._bids: dict[int, list[Bid]] = {}
        self._moving: dict[int, _Move] = {}  # request id -> a move of ours in flight
        self._trade: _Move | None = None  # the one balance trade in flight
        self._over = {True: 0, False: 0}  # ticks in a row over the threshold, by load part
        self._release_rate_tps = 0.0
        self._last_release: tuple[float, int] | None = None
        self.draining = False
        self.reports: dict[int, LengthReport] = {}  # as a stage leader: the latest per sender
        self.stats: dict[str, int] = {}
        bus.subscribe(instance_id, self.handle)

    # ---- state --------------------------------------------------------------------------------
    @property
    def stage(self) -> int:
        return self.table.stage_of_instance[self.instance_id]

    def view(self) -> InstanceView:
        return self._world.cluster.instance(self.instance_id)

    def reserved_blocks(self) -> int:
        return sum(r.blocks for r in self._reservations.values())

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    # ---- messages -----------------------------------------------------------------------------
    def handle(self, msg: Message) -> None:
        if isinstance(msg, Ask):
            self._on_ask(msg)
        elif isinstance(msg, Bid):
            self._bids.setdefault(msg.ask_id, []).append(msg)
        elif isinstance(msg, Award | Decline):
            self._reservations.pop(msg.ask_id, None)
        elif isinstance(msg, LengthReport):
            self.reports[msg.sender] = msg
        elif isinstance(msg, BoundaryMove):
            if msg.version == self.table.version:
                moved = self.table.with_move(msg.index, msg.tokens)
                if moved is not None:
                    self.table = moved
        elif isinstance(msg, PlanUpdate):
            old = self.stage
            self.table = StageTable(
                boundaries_tokens=msg.boundaries_tokens,
                stage_of_instance=msg.stage_of_instance,
                version=msg.version,
                out=msg.out,
            )
            self.draining = self.draining or self.stage != old

    def earliest_accept_s(self, view: InstanceView, blocks: int, now_s: float) -> float:
        free = view.free_blocks() - view.waiting_demand_blocks() - self.reserved_blocks()
        if free >= blocks:
            return now_s
        if self._release_rate_tps <= 0:
            return now_s + NEVER_S
        return now_s + (blocks - free) * self._bs / self._release_rate_tps

    def _on_ask(self, ask: Ask) -> None:
        now = ask.sent_s
        self._expire(now)
        view = self.view()
        parts = self._load.of(view)
        load = parts.total_s
        mine = parts.prefill_s if ask.queued else parts.decode_s
        # Only a balance trade that lowers the pair's worse load is worth its migration.
        if ask.kind is TradeKind.BALANCE and (
            self._trade is not None or not mine + ask.delta_load_s < ask.sender_load_s
        ):
            return
        # A spilled arrival never queues in front of this stage's own waiting requests: long
        # requests must not starve behind short ones escaping their stage.
        if ask.kind is TradeKind.SPILL and view.num_waiting > 0:
            return
        earliest = self.earliest_accept_s(view, ask.blocks, now)
        expires = now + self.config.bid_timeout_s
        self._reservations[ask.ask_id] = _Reservation(ask.blocks, expires)
        self._bus.send(
            ask.sender,
            Bid(
                ask_id=ask.ask_id,
                sender=self.instance_id,
                load_s=load,
                earliest_accept_s=earliest,
                expires_s=expires,
                prefill_s=parts.prefill_s,
                decode_s=parts.decode_s,
            ),
        )
        self._count("bids")

    def _expire(self, now_s: float) -> None:
        stale = [k for k, r in self._reservations.items() if r.expires_s <= now_s]
        for k in stale:
            del self._reservations[k]
            self._count("reservations_expired")

    # ---- the tick -----------------------------------------------------------------------------
    def publish_load(self, now_s: float) -> None:
        view = self.view()
        released = view.released_tokens
        if self._last_release is not None:
            t0, r0 = self._last_release
            if now_s > t0:
                sample = (released - r0) / (now_s - t0)
                a = self.config.release_smoothing
                self._release_rate_tps = a * sample + (1 - a) * self._release_rate_tps
        self._last_release = (now_s, released)
        parts = self._load.of(view)
        self._bus.publish(
            f"stage/{self.stage}",
            self.instance_id,
            LoadReport(
                sender=self.instance_id,
                stage=self.stage,
                load_s=parts.total_s,
                decode_s=parts.decode_s,
                prefill_s=parts.prefill_s,
                kv_usage=view.kv_usage,
                sent_s=now_s,
            ),
        )

    def tick(self, now_s: float, new_ask_id: _AskIds) -> None:
        self._expire(now_s)
        self._settle(now_s)
        view = self.view()
        self._cascade(view, now_s, new_ask_id)
        if self.draining:
            self._drain(view, now_s, new_ask_id)
        if self.config.balance and self.config.use_bids and self._trade is None:
            self._balance(view, now_s, new_ask_id)

    def _settle(self, now_s: float) -> None:
        """Forget moves that landed (or finished, or timed out)."""
        me = self.instance_id
        done = [
            rid
            for rid, m in self._moving.items()
            if m.seq.state is SeqState.FINISHED
            or (m.seq.instances and m.seq.instances[-1] != me)
            or m.deadline_s <= now_s
        ]
        for rid in done:
            move = self._moving.pop(rid)
            if self._trade is move:
                self._trade = None
        if self._trade is not None and self._trade.deadline_s <= now_s:
            self._trade = None

    def _cascade(self, view: InstanceView, now_s: float, new_ask_id: _AskIds) -> None:
        _, hi = self.table.bounds(self.stage)
        if hi is None:
            return
        n, _, longest = view.decode_length_stats()
        if n == 0 or longest - 1 < hi:  # the stats count the token the next step adds
            return
        refused: dict[int, int] = {}
        for seq in view.running():
            if seq.state is not SeqState.DECODE or seq.request_id in self._moving:
                continue
            if self._world.stays(seq.request_id):
                continue
            length = view.length_of(seq)
            if length < hi:
                continue
            target = self.table.stage_of(length)
            self._hand_off_unless_refused(
                view, seq, length, target, TradeKind.CASCADE, refused, now_s, new_ask_id
            )

    def _drain(self, view: InstanceView, now_s: float, new_ask_id: _AskIds) -> None:
        mine = self.stage
        lo, _ = self.table.bounds(mine)
        left = 0
        refused: dict[int, int] = {}
        for seq in [*view.waiting(), *view.running()]:
            length = view.length_of(seq)
            target = self.table.stage_of(length)
            if target == mine or seq.request_id in self._moving:
                continue
            if target > mine and seq.state is SeqState.DECODE:
                continue  # the cascade moves those
            if seq.state is SeqState.PREFILL:
                left += 1  # moves once it decodes (or finishes here)
                continue
            if not self._hand_off_unless_refused(
                view, seq, length, target, TradeKind.DRAIN, refused, now_s, new_ask_id
            ):
                left += 1
        self.draining = left > 0 or any(
            view.length_of(s) < lo for s in view.running() if s.state is SeqState.DECODE
        )

    def _balance(self, view: InstanceView, now_s: float, new_ask_id: _AskIds) -> None:
        reports = self._bus.retained(f"stage/{self.stage}")
        fresh = {
            i: r
            for i, r in reports.items()
            if isinstance(r, LoadReport) and r.stage == self.stage and r.sent_s >= now_s - 1e-9
        }
        if len(fresh) < 2 or self.instance_id not in fresh:
            return
        # Queued prompts move for prefill imbalance (cheap: no KV), decoding requests for decode
        # imbalance; the two are compared separately so a transient long prefill never pushes
        # decodes around.
        for queued in (True, False):
            if self._balance_part(view, fresh, queued, now_s, new_ask_id):
                return

    def _balance_part(
        self,
        view: InstanceView,
        fresh: dict[int, LoadReport],
        queued: bool,
        now_s: float,
        new_ask_id: _AskIds,
    ) -> bool:
        def part(r: LoadReport) -> float:
            return r.prefill_s if queued else r.decode_s

        mean = sum(part(r) for r in fresh.values()) / len(fresh)
        mine = part(fresh[self.instance_id])
        if not mine > mean * (1.0 + self.config.balance_threshold):
            self._over[queued] = 0
            return False
        self._over[queued] += 1
        if self._over[queued] < self.config.balance_persist_ticks:
            return False
        gap = mine - mean
        best: tuple[float, Sequence, int, float] | None = None
        pool = view.waiting() if queued else view.running()
        max_stall_s = self.config.balance_max_stall_steps * fresh[self.instance_id].decode_s
        for seq in pool:
            if seq.request_id in self._moving or (not queued and seq.state is not SeqState.DECODE):
                continue
            length = view.length_of(seq)
            if not queued and self._world.migration_stall_s(length) > max_stall_s:
                continue  # the move would cost the request more than the balance gains
            delta = self._load.prompt_s(length) if queued else self._load.decode_delta_s(length)
            if delta >= 2 * gap:
                continue  # moving it would overshoot the mean by more than it closes
            score = abs(gap - delta)
            if best is None or score < best[0]:
                best = (score, seq, length, delta)
        peers = [i for i, r in fresh.items() if i != self.instance_id and part(r) < mean]
        if best is None or not peers:
            return False
        _, seq, length, delta = best
        self._count("asks_balance")
        won = self._trade_out(
            view, seq, length, peers, TradeKind.BALANCE, mine, delta, now_s, new_ask_id
        )
        if won is not None:
            self._trade = self._moving[seq.request_id]
        return True

    # ---- trades -------------------------------------------------------------------------------
    def _blocks(self, length: int) -> int:
        return -(-(length + 1) // self._bs)

    def _hand_off_unless_refused(
        self,
        view: InstanceView,
        seq: Sequence,
        length: int,
        target_stage: int,
        kind: TradeKind,
        refused: dict[int, int],
        now_s: float,
        new_ask_id: _AskIds,
    ) -> bool:
        """``_hand_off`` unless ``target_stage`` refused a request no longer than ``seq`` this
        tick (``refused``: stage -> shortest length it refused). Bids accept by free KV blocks, so
        a stage that could not take a request cannot take a longer one: past saturation, asking
        it again for every waiting hand-off only burns messages."""
        if length >= refused.get(target_stage, 1 << 62):
            return False
        if self._hand_off(view, seq, length, target_stage, kind, now_s, new_ask_id):
            return True
        refused[target_stage] = length
        return False

    def _hand_off(
        self,
        view: InstanceView,
        seq: Sequence,
        length: int,
        target_stage: int,
        kind: TradeKind,
        now_s: float,
        new_ask_id: _AskIds,
    ) -> bool:
        self._count(f"asks_{kind.value}")
        if not self.config.use_bids:
            dst = self._world.next_round_robin(target_stage)
            return self._move(seq, length, dst, kind, now_s)
        peers = self.table.members(target_stage)
        load = self._load.of(view).decode_s
        delta = self._load.decode_delta_s(length)
        return (
            self._trade_out(view, seq, length, peers, kind, load, delta, now_s, new_ask_id)
            is not None
        )

    def _trade_out(
        self,
        view: InstanceView,
        seq: Sequence,
        length: int,
        peers: list[int],
        kind: TradeKind,
        load_s: float,
        delta_s: float,
        now_s: float,
        new_ask_id: _AskIds,
    ) -> int | None:
        """Ask ``peers``, award the best bid that can take ``seq`` now; the winner or None."""
        ask = Ask(
            ask_id=new_ask_id(),
            sender=self.instance_id,
            kind=kind,
            request_id=seq.request_id,
            length_tokens=length,
            blocks=self._blocks(length),
            queued=seq.state is SeqState.WAITING,
            sender_load_s=load_s,
            delta_load_s=delta_s,
            sent_s=now_s,
        )
        for p in peers:
            if p != self.instance_id:
                self._bus.send(p, ask)
        self._bus.flush()
        bids = self._bids.pop(ask.ask_id, [])
        ok = [b for b in bids if b.earliest_accept_s <= now_s and b.expires_s > now_s]
        winner = min(ok, key=lambda b: (b.load_s, b.sender)) if ok else None
        moved = winner is not None and self._move(seq, length, winner.sender, kind, now_s)
        for b in bids:
            won = moved and winner is not None and b.sender == winner.sender
            reply: Message = (
                Award(ask_id=ask.ask_id, sender=self.instance_id)
                if won
                else Decline(ask_id=ask.ask_id, sender=self.instance_id)
            )
            self._bus.send(b.sender, reply)
        self._bus.flush()
        if not moved:
            self._count(f"no_taker_{kind.value}")
            return None
        return winner.sender if winner is not None else None

    def _move(self, seq: Sequence, length: int, dst: int, kind: TradeKind, now_s: float) -> bool:
        if not self._world.cluster.migrate(seq, self.instance_id, dst, kind.value):
            self._count(f"refused_{kind.value}")
            return False
        self._moving[seq.request_id] = _Move(seq, dst, now_s + self.config.trade_timeout_s)
        self.observer.note_left(seq, length)
        self._world.note_incoming(seq, dst, length, now_s)
        self._count(f"moved_{kind.value}_{seq.state.value}")
        return True


class _AskIds(Protocol):
    def __call__(self) -> int: ...
