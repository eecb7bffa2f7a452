"""A request's state while it is served by instances (it may visit several)."""

from __future__ import annotations

from enum import Enum

from l4.request import RequestSpec


class SeqState(Enum):
    WAITING = "waiting"  # queued, holds no KV
    PREFILL = "prefill"  # running, computing (part of) its prompt
    DECODE = "decode"  # running, one token per step; counters kept lazily by the instance
    DETACHED = "detached"  # between instances (migration in flight)
    FINISHED = "finished"


class Sequence:
    """Mutable serving state of one request.

    Counters of a DECODE sequence are owned by its instance (which advances them lazily); read
    `generated_tokens` and `length_tokens` only through the instance while it is decoding.
    """

    __slots__ = (
        "base_generated",
        "base_step",
        "blocks",
        "computed_tokens",
        "decode_off",
        "epoch",
        "finish_s",
        "first_token_s",
        "generated_tokens",
        "instances",
        "last_token_s",
        "migrations",
        "order",
        "preemptions",
        "prefill_target_tokens",
        "resume_gap",
        "spec",
        "state",
    )

    def __init__(self, spec: RequestSpec) -> None:
        self.spec = spec
        self.state = SeqState.DETACHED
        self.generated_tokens = 0
        self.computed_tokens = 0
        # Tokens to hold in KV before the next token is emitted: the prompt, or prompt + generated
        # after a recompute (preemption) or a token-replay migration.
        self.prefill_target_tokens = spec.input_tokens
        self.blocks = 0
        self.base_step = 0
        self.base_generated = 0
        self.decode_off = 0
        self.epoch = 0
        self.order = 0
        self.first_token_s: float | None = None
        self.last_token_s: float | None = None
        self.finish_s: float | None = None
        self.instances: list[int] = []
        self.migrations = 0
        self.preemptions = 0
        # The next token closes a gap that no step run records (after a preemption or migration).
        self.resume_gap = False

    @property
    def request_id(self) -> int:
        return self.spec.request_id

    @property
    def remaining_tokens(self) -> int:
        return self.spec.output_tokens - self.generated_tokens

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.spec.request_id}, state={self.state.value}, "
            f"gen={self.generated_tokens}/{self.spec.output_tokens}, "
            f"computed={self.computed_tokens})"
        )
