"""The gateway's book of in-flight requests, seen through the simulator's views.

`LiveInstance` implements `l4.views.InstanceView` and `LiveCluster` implements
`l4.views.ClusterView` over live state, so the policy objects, the planner and the L4 agents run
here exactly as they run in the simulator. Two sources feed them:

* the book: every request the gateway relays, as the same `l4.instance.Sequence` the simulator
  uses, with its prompt length, the tokens streamed so far and its phase (WAITING until its first
  token from the current instance, then DECODE; DETACHED while a move is in flight; FINISHED);
* each backend's scraped metrics, for what the book cannot see: load that other clients (or other
  gateway replicas) put on the engine, and the KV capacity (`vllm:cache_config_info`).

Load is a sum of contributions: this gateway's own (from the book, exact and current) plus a
foreign part, the scraped total minus what the book held when the scrape was taken (never
negative). Several gateway replicas sharing a store would each publish their own part.

Guarantees: a request is in at most one instance's book at a time (`admit`, `detach`, `finish`
move it); `migrate` only marks a move (the request's relay performs it at a token boundary) and
refuses what cannot move: pinned requests, finished or already moving ones, unavailable
destinations, a source that is not where the request is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from l4.errors import InvariantError
from l4.gateway.scrape import EngineLoad
from l4.instance.sequence import SeqState, Sequence
from l4.views import InstanceView


@dataclass(slots=True)
class MoveOrder:
    dst: int
    reason: str
    ordered_s: float


class LiveRequest:
    """One client request while the gateway serves it (it may visit several instances)."""

    __slots__ = (
        "generated_ids",
        "hold_cut",
        "interrupt",
        "move",
        "pinned",
        "prompt_ids",
        "seq",
    )

    def __init__(self, seq: Sequence, prompt_ids: list[int], *, pinned: bool) -> None:
        self.seq = seq
        self.prompt_ids = prompt_ids
        self.generated_ids: list[int] = []
        self.pinned = pinned
        self.move: MoveOrder | None = None
        # True while the last streamed token ended inside a character (tokens but no text): a cut
        # there would lose the character's first bytes, so a move waits for the next token.
        self.hold_cut = False
        # Closes the current upstream stream (set by the relay while one is open).
        self.interrupt: Callable[[], None] | None = None

    @property
    def request_id(self) -> int:
        return self.seq.request_id

    @property
    def length_tokens(self) -> int:
        return self.seq.spec.input_tokens + self.seq.generated_tokens

    def cut_now(self) -> None:
        """Close the upstream stream now if the cut is safe (else the relay cuts at the next
        token boundary, where it checks `move`)."""
        if self.interrupt is not None and not self.hold_cut:
            self.interrupt()


class LiveInstance:
    """One backend as a policy sees it: `l4.views.InstanceView` over the book and scrapes."""

    def __init__(
        self,
        instance_id: int,
        *,
        num_kv_blocks: int,
        block_size_tokens: int,
        max_num_batched_tokens: int,
        max_num_seqs: int,
    ) -> None:
        self._id = instance_id
        self.num_kv_blocks = num_kv_blocks
        self.block_size_tokens = block_size_tokens
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self._waiting: dict[int, LiveRequest] = {}
        self._decoding: dict[int, LiveRequest] = {}
        self._released_tokens = 0
        self.healthy = True
        self.load = EngineLoad()
        self.scraped_s: float | None = None
        self._foreign_waiting = 0
        self._foreign_running = 0
        self._foreign_blocks = 0

    # ---- InstanceView -------------------------------------------------------------------------
    @property
    def instance_id(self) -> int:
        return self._id

    @property
    def available(self) -> bool:
        return self.healthy

    @property
    def num_waiting(self) -> int:
        return len(self._waiting) - self._prefilling() + self._foreign_waiting

    @property
    def num_running(self) -> int:
        return len(self._decoding) + self._prefilling() + self._foreign_running

    def _prefilling(self) -> int:
        """How many of the requests still without a first token the engine has already started.

        vLLM (and the simulator) count a request whose prefill is under way as running, and only
        the ones not yet scheduled as waiting; the gateway cannot see that split, only that no
        token came yet. It follows the engine's rule instead: the queue is served in order, and
        each step's token budget goes to the decodes first (one token each), then to prompts:
        the oldest prompts that the remaining budget reaches have started. (A long prompt's later
        chunks free budget that this ignores: it errs towards "waiting", by one request at most
        per step's worth of prompt tokens.)"""
        budget = self.max_num_batched_tokens - len(self._decoding)
        seats = self.max_num_seqs - len(self._decoding)
        started = 0
        for r in self._waiting.values():
            if budget <= 0 or started >= seats:
                break
            started += 1
            budget -= r.length_tokens
        return started

    def _split_queue(self) -> tuple[list[LiveRequest], list[LiveRequest]]:
        """The requests without a first token, as (started by the engine, not yet scheduled)."""
        queue = list(self._waiting.values())
        n = self._prefilling()
        return queue[:n], queue[n:]

    @property
    def kv_usage(self) -> float:
        return min(1.0, self._used_blocks() / self.num_kv_blocks)

    @property
    def released_tokens(self) -> int:
        return self._released_tokens

    def free_blocks(self) -> int:
        return self.num_kv_blocks - self._used_blocks()

    def waiting_demand_blocks(self) -> int:
        # Only the prompts not yet started, as the simulator counts it: a started prefill holds
        # its blocks already (`_own_blocks`), it is no longer a demand.
        _, queued = self._split_queue()
        return sum(self._blocks(r.length_tokens + 1) for r in queued)

    def pending_prefill(self) -> tuple[int, float]:
        # A queued request (new, or replayed after a move) prefills its whole context; how much of
        # a prompt the engine already computed is not visible from outside, so none is assumed.
        tokens = 0
        pairs = 0.0
        for r in self._waiting.values():
            n = r.length_tokens
            tokens += n
            pairs += n * n / 2
        return tokens, pairs

    def running(self) -> list[Sequence]:
        started, _ = self._split_queue()
        return [r.seq for r in (*self._decoding.values(), *started)]

    def waiting(self) -> list[Sequence]:
        _, queued = self._split_queue()
        return [r.seq for r in queued]

    def length_of(self, seq: Sequence) -> int:
        return seq.spec.input_tokens + seq.generated_tokens

    def decode_length_stats(self) -> tuple[int, int, int]:
        total = 0
        longest = 0
        for r in self._decoding.values():
            n = r.length_tokens
            total += n
            longest = max(longest, n)
        return len(self._decoding), total, longest

    # ---- the book -----------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._waiting) + len(self._decoding)

    def requests(self) -> list[LiveRequest]:
        return [*self._waiting.values(), *self._decoding.values()]

    def add(self, req: LiveRequest) -> None:
        self._waiting[req.request_id] = req

    def started(self, req: LiveRequest) -> None:
        """The request's first token from this instance: it decodes here now."""
        if self._waiting.pop(req.request_id, None) is not None:
            self._decoding[req.request_id] = req

    def remove(self, req: LiveRequest, *, finished: bool) -> None:
        gone = self._waiting.pop(req.request_id, None) or self._decoding.pop(req.request_id, None)
        if gone is None:
            raise InvariantError(f"request {req.request_id} is not at instance {self._id}")
        if finished:
            self._released_tokens += req.length_tokens

    def observe(self, load: EngineLoad, now_s: float) -> None:
        """A fresh scrape: keep what the book does not explain as foreign load."""
        self.load = load
        self.scraped_s = now_s
        if not load.recognized:
            return
        scraped = load.num_running + load.num_waiting
        foreign = max(0, scraped - self.in_flight)
        # The engine's own split (our queued requests may already be prefilling there).
        self._foreign_running = foreign * load.num_running // scraped if scraped else 0
        self._foreign_waiting = foreign - self._foreign_running
        scraped_blocks = round(load.kv_usage * self.num_kv_blocks)
        self._foreign_blocks = max(0, scraped_blocks - self._own_blocks())

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self.block_size_tokens)

    def _own_blocks(self) -> int:
        """Blocks the engine holds for the book's requests: the decoding ones' contexts and the
        prompts it has started (`_prefilling`), whole.

        vLLM allocates a prompt's blocks chunk by chunk and the gateway cannot see how far a
        prefill got, so a started prompt counts whole: an upper bound by at most its unfinished
        chunks. Leaving started prompts out (as the book once did) let every scrape taken during
        a prefill read its blocks as foreign load, frozen until the next scrape, while the same
        prompt still counted as waiting demand and, once it streamed a token, as decoding too:
        a busy instance looked up to a fifth fuller than it was."""
        started, _ = self._split_queue()
        return sum(self._blocks(r.length_tokens) for r in (*self._decoding.values(), *started))

    def _used_blocks(self) -> int:
        return self._own_blocks() + self._foreign_blocks


class LiveCluster:
    """The instances behind the gateway: `l4.views.ClusterView` with moves by token replay."""

    def __init__(self, instances: list[LiveInstance], *, clock: Callable[[], float]) -> None:
        self.instances = instances
        self._clock = clock
        self._requests: dict[int, LiveRequest] = {}
        self.refused_moves: dict[str, int] = {}

    # ---- ClusterView --------------------------------------------------------------------------
    @property
    def num_instances(self) -> int:
        return len(self.instances)

    def instance(self, instance_id: int) -> InstanceView:
        return self.instances[instance_id]

    def migrate(self, seq: Sequence, src: int, dst: int, reason: str) -> bool:
        req = self._requests.get(seq.request_id)
        movable = (
            req is not None
            and src != dst
            and 0 <= dst < len(self.instances)
            and not req.pinned
            and req.move is None
            and seq.state in (SeqState.WAITING, SeqState.DECODE)
            and bool(seq.instances)
            and seq.instances[-1] == src
            and self.instances[dst].healthy
        )
        if not movable or req is None:
            self.refused_moves[reason] = self.refused_moves.get(reason, 0) + 1
            return False
        req.move = MoveOrder(dst=dst, reason=reason, ordered_s=self._clock())
        req.cut_now()
        return True

    # ---- the book -----------------------------------------------------------------------------
    def healthy_ids(self) -> list[int]:
        return [i.instance_id for i in self.instances if i.healthy]

    def admit(self, req: LiveRequest, instance_id: int) -> None:
        """Queue ``req`` at an instance (a new request, or a moved one arriving)."""
        seq = req.seq
        seq.state = SeqState.WAITING
        seq.instances.append(instance_id)
        self._requests[req.request_id] = req
        self.instances[instance_id].add(req)

    def started(self, req: LiveRequest, now_s: float) -> None:
        seq = req.seq
        seq.state = SeqState.DECODE
        if seq.first_token_s is None:
            seq.first_token_s = now_s
        self.instances[seq.instances[-1]].started(req)

    def detach(self, req: LiveRequest) -> None:
        """Leave the current instance for a move; the request is in transit until `admit`."""
        self.instances[req.seq.instances[-1]].remove(req, finished=False)
        req.seq.state = SeqState.DETACHED
        req.move = None

    def finish(self, req: LiveRequest, now_s: float) -> None:
        seq = req.seq
        if seq.state is not SeqState.DETACHED:
            self.instances[seq.instances[-1]].remove(req, finished=True)
        seq.state = SeqState.FINISHED
        seq.finish_s = now_s
        self._requests.pop(req.request_id, None)

    def on_instance(self, instance_id: int) -> list[LiveRequest]:
        return self.instances[instance_id].requests()

    def in_flight(self) -> int:
        return len(self._requests)
