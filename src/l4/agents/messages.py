"""The agents' message protocol: small frozen records that could be serialised as they are.

Addresses are instance ids (>= 0) and ``FRONT`` (the front door that admits new requests). Every
message names its sender; times are seconds on the shared clock the runtime injects. Requests
travel by id: the payload of a hand-off (the request's tokens or KV) is moved by the migration
mechanism, never by the bus.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

FRONT = -1  # the front door's address


class TradeKind(enum.Enum):
    ADMIT = "admit"  # place a new arrival inside its entry stage
    CASCADE = "cascade"  # a request reached its stage's upper bound: hand it downstream
    BALANCE = "balance"  # move a request to a lighter peer of the same stage
    DRAIN = "drain"  # a re-plan moved the instance: hand out what no longer belongs to it
    SPILL = "spill"  # a new arrival its entry stage cannot admit promptly, offered downstream


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadReport:
    """Published every balancing tick on the stage's topic (retained: the latest one counts)."""

    sender: int
    stage: int
    load_s: float  # decode_s + prefill_s (see l4.agents.load)
    decode_s: float
    prefill_s: float
    kv_usage: float
    sent_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class LengthReport:
    """What one instance served over a refinement window, as EMA-smoothed rates per grid bucket.

    The arrays are a ``WorkloadSummary`` over a 1 s window (see ``l4.core.summary``); the counts
    of requests seen in the window decide the low-traffic freeze.
    """

    sender: int
    stage: int
    arrivals: tuple[float, ...]
    prompt_tokens: tuple[float, ...]
    prompt_tokens_sq: tuple[float, ...]
    decode_steps: tuple[float, ...]
    decode_length_sum: tuple[float, ...]
    crossings: tuple[float, ...]
    max_length_tokens: float
    requests_seen: int
    sent_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Ask:
    """An offer of one request: "who can take it, and when?"."""

    ask_id: int
    sender: int
    kind: TradeKind
    request_id: int
    length_tokens: int
    blocks: int  # KV blocks the request needs at its destination
    queued: bool  # the request waits for its prefill (it moves prefill load, not decode load)
    sender_load_s: float  # for a balance ask: the asker's load in the part the request moves
    delta_load_s: float  # the load the request adds (estimate): bids must gain from it
    sent_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Bid:
    """An answer to an ask; it reserves ``blocks`` at the bidder until awarded or expired."""

    ask_id: int
    sender: int
    load_s: float
    earliest_accept_s: float
    expires_s: float
    # The two parts of load_s (l4.agents.load): what a newcomer waits for its first token, and
    # the bidder's next decode step (what it would pay per token).
    prefill_s: float = 0.0
    decode_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Award:
    """The asker took this bid; the bidder turns its reservation over to the migration."""

    ask_id: int
    sender: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Decline:
    """The asker did not take this bid (another won, or none was good enough)."""

    ask_id: int
    sender: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BoundaryMove:
    """Boundary ``index`` (between stages index-1 and index, 1-based) moves to ``tokens``."""

    index: int
    tokens: int
    version: int  # the plan version it applies to; stale moves are ignored
    sender: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanUpdate:
    """A full re-plan: new boundaries, the stage of every instance, who is out of service."""

    version: int
    boundaries_tokens: tuple[int, ...]
    stage_of_instance: tuple[int, ...]
    sender: int
    out: frozenset[int] = frozenset()


Message = LoadReport | LengthReport | Ask | Bid | Award | Decline | BoundaryMove | PlanUpdate
