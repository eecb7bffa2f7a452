"""Hand-built worlds for instance agents: instances whose every observed number is set by the test.

``FakeView`` implements ``l4.views.InstanceView`` from plain fields, ``FakeLoad`` the agent's load
model with round numbers (decode load = ``decode_s`` field; a decoding request of ``L`` tokens adds
``L / 1000`` s), so the expected decisions can be worked out by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from factories import policy_context, req, tiny_profile
from l4.agents.agent import AgentConfig, InstanceAgent
from l4.agents.bus import MessageBus
from l4.agents.config import L4Config
from l4.agents.load import Load
from l4.agents.messages import LoadReport, Message
from l4.agents.observer import WindowObserver
from l4.agents.refinement import RefinementConfig
from l4.agents.runtime import L4Runtime
from l4.agents.stages import StageTable
from l4.core.grid import exponential_grid
from l4.instance.sequence import SeqState, Sequence
from l4.offload import Offload

BLOCK_TOKENS = 16


def seq(request_id: int, length: int, state: SeqState = SeqState.DECODE) -> Sequence:
    """A request of context ``length`` (prompt ``length`` when queued) in ``state``."""
    s = Sequence(req(request_id, length, 1000))
    s.state = state
    return s


@dataclass
class FakeView:
    instance_id: int
    decode_s: float = 0.0
    prefill_s: float = 0.0
    free: int = 1000
    waiting_demand: int = 0
    released_tokens: int = 0
    kv_usage: float = 0.0
    available: bool = True
    pending: tuple[int, float] = (0, 0.0)  # (tokens, attention pairs) still to prefill
    lengths: dict[int, int] = field(default_factory=dict)
    run: list[Sequence] = field(default_factory=list)
    wait: list[Sequence] = field(default_factory=list)

    def add(self, s: Sequence, length: int) -> Sequence:
        (self.wait if s.state is SeqState.WAITING else self.run).append(s)
        self.lengths[s.request_id] = length
        return s

    @property
    def num_waiting(self) -> int:
        return len(self.wait)

    @property
    def num_running(self) -> int:
        return len(self.run)

    def free_blocks(self) -> int:
        return self.free

    def waiting_demand_blocks(self) -> int:
        return self.waiting_demand

    def pending_prefill(self) -> tuple[int, float]:
        return self.pending

    def running(self) -> list[Sequence]:
        return list(self.run)

    def waiting(self) -> list[Sequence]:
        return list(self.wait)

    def length_of(self, s: Sequence) -> int:
        return self.lengths[s.request_id]

    def decode_length_stats(self) -> tuple[int, int, int]:
        # As an instance reports it: the contexts of the next step (one token more each).
        decoding = [self.lengths[s.request_id] + 1 for s in self.run if s.state is SeqState.DECODE]
        return len(decoding), sum(decoding), max(decoding, default=0)


class FakeLoad:
    def of(self, view: FakeView) -> Load:
        return Load(decode_s=view.decode_s, prefill_s=view.prefill_s)

    def decode_delta_s(self, length_tokens: int) -> float:
        return length_tokens / 1000

    def prompt_s(self, tokens: int) -> float:
        return tokens / 500  # unlike a decode's: tests tell which one was used


@dataclass
class FakeCluster:
    views: dict[int, FakeView]
    refuse: set[int] = field(default_factory=set)  # destinations that refuse migrations
    moves: list[tuple[int, int, int, str]] = field(default_factory=list)  # (rid, src, dst, why)

    @property
    def num_instances(self) -> int:
        return len(self.views)

    def instance(self, instance_id: int) -> FakeView:
        return self.views[instance_id]

    def migrate(self, s: Sequence, src: int, dst: int, reason: str) -> bool:
        if dst in self.refuse:
            return False
        self.moves.append((s.request_id, src, dst, reason))
        return True


@dataclass
class FakeWorld:
    cluster: FakeCluster
    incoming: list[tuple[int, int, int, float]] = field(default_factory=list)  # rid, dst, L, t
    rr: int = 0
    stall_s_per_token: float = 0.0  # what a decoding request's move stalls it, per context token
    staying: set[int] = field(default_factory=set)  # requests that never cascade (overflows)

    def migration_stall_s(self, length_tokens: int) -> float:
        return self.stall_s_per_token * length_tokens

    def note_incoming(self, s: Sequence, dst: int, length_tokens: int, now_s: float) -> None:
        self.incoming.append((s.request_id, dst, length_tokens, now_s))

    def stays(self, request_id: int) -> bool:
        return request_id in self.staying

    def next_round_robin(self, stage: int) -> int:
        self.rr += 1
        return 100 + stage  # an address no test instance has: visible in the moves


class AskIds:
    def __init__(self) -> None:
        self.next = 0

    def __call__(self) -> int:
        self.next += 1
        return self.next


@dataclass
class Agents:
    bus: MessageBus
    world: FakeWorld
    agents: dict[int, InstanceAgent]
    ask_ids: AskIds
    inbox: list[Message]  # what reached the recorder address ``RECORDER``

    @property
    def moves(self) -> list[tuple[int, int, int, str]]:
        return self.world.cluster.moves

    def view(self, i: int) -> FakeView:
        return self.world.cluster.views[i]

    def tick(self, i: int, now_s: float) -> None:
        self.agents[i].tick(now_s, self.ask_ids)

    def report(self, i: int, now_s: float, *, decode_s: float, prefill_s: float = 0.0) -> None:
        """Publish a load report for instance ``i`` as its agent would."""
        stage = self.agents[i].stage
        self.bus.publish(
            f"stage/{stage}",
            i,
            LoadReport(
                sender=i,
                stage=stage,
                load_s=decode_s + prefill_s,
                decode_s=decode_s,
                prefill_s=prefill_s,
                kv_usage=0.0,
                sent_s=now_s,
            ),
        )


RECORDER = 99


def make_agents(table: StageTable, config: AgentConfig | None = None, **views: FakeView) -> Agents:
    """One agent per instance of ``table`` over ``FakeView``s (``v0=...`` overrides instance 0)."""
    bus = MessageBus()
    inbox: list[Message] = []
    bus.subscribe(RECORDER, inbox.append)
    n = len(table.stage_of_instance)
    cluster = FakeCluster({i: views.get(f"v{i}", FakeView(i)) for i in range(n)})
    world = FakeWorld(cluster)
    grid = exponential_grid(4096, min_tokens=32)
    agents = {
        i: InstanceAgent(
            i,
            bus=bus,
            world=world,
            table=table,
            load=FakeLoad(),  # type: ignore[arg-type]
            observer=WindowObserver(i, grid, 0.5),
            config=config or AgentConfig(),
            block_tokens=BLOCK_TOKENS,
        )
        for i in range(n)
    }
    return Agents(bus=bus, world=world, agents=agents, ask_ids=AskIds(), inbox=inbox)


def far_above() -> dict[str, FakeView]:
    """Instances 0..2 running ten decodes each: 300-570 tokens on instance 0, ~1500 on the
    others, all far above a first boundary at 64 tokens (``runtime_over`` keyword arguments)."""
    views = {}
    for i in range(3):
        v = FakeView(i)
        for k in range(10):
            length = 300 + 30 * k if i == 0 else 1500 + k
            v.add(seq(100 * i + k, length), length).instances.append(i)
        views[f"v{i}"] = v
    return views


# ---- a whole runtime over fake instances --------------------------------------------------------
RUNTIME_PROFILE = tiny_profile(kv_capacity_tokens=8192, max_context_tokens=2048)
# The decisions under test one at a time: no spill (tests/agents/test_runtime.py has it), a re-plan
# adopted on its first proposal and with no staging margin, the mean-latency objective (the SLO
# objective's choices are tests/core/test_objective.py's).
RUNTIME_CONFIG = L4Config(
    replan_period_s=1.0,
    replan_min_gain=0.0,
    replan_confirmations=1,
    stage_margin=0.0,
    objective=None,
    spill=False,
    agent=AgentConfig(balance=False),
    refinement=RefinementConfig(period_s=0.5, freeze_min_requests=0, min_relative_move=0.0),
)


def runtime_over(
    table: StageTable,
    config: L4Config = RUNTIME_CONFIG,
    *,
    offload: Offload | None = None,
    **views: FakeView,
) -> tuple[L4Runtime, FakeCluster]:
    """An L4 runtime holding ``table`` over fake instances (``v0=FakeView(0)``, ...; idle ones
    for the rest)."""
    n = len(table.stage_of_instance)
    ctx = policy_context(RUNTIME_PROFILE, n, offload=offload)
    policy = L4Runtime(ctx, config)
    policy.table = table
    for a in policy.agents:
        a.table = table
    cluster = FakeCluster({i: views.get(f"v{i}", FakeView(i)) for i in range(n)})
    return policy, cluster
