"""Migration mechanisms (L4.md section 3), as the simulator models them.

* kv-transfer: the KV cache is copied in the background at `bandwidth_bytes_per_s` while the
  request keeps decoding at the source; the destination reserves KV (and a sequence slot) for the
  whole context up front; then a stop-and-copy of what grew meanwhile, costing `downtime_base_s`
  plus those tokens over the bandwidth. Only decoding requests can move this way.
* replay: the source aborts the request at its next step boundary; after `replay_overhead_s` (an
  HTTP round trip) the destination receives prompt + generated tokens as a new prompt and
  re-prefills them. Works for any request, queued or running.
* replay with a shared KV store (`kv_store_bandwidth_bytes_per_s` set; LMCache-style: engines
  write their KV cache to a store shared by the instances): a decoding request is aborted and
  resent the same way, but the destination loads its context from the store at that bandwidth
  instead of recomputing it, holding the blocks from the start of the load, and resumes
  decoding. Without room for the context at the destination, or for a request that is not yet
  decoding (its KV is incomplete), it falls back to plain replay.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from l4.errors import ValidationError


class MigrationMechanism(enum.Enum):
    KV_TRANSFER = "kv-transfer"
    REPLAY = "replay"


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationConfig:
    mechanism: MigrationMechanism = MigrationMechanism.KV_TRANSFER
    # 25 GB/s: a PCIe-5/NVLink-less inter-GPU path through host memory, Llumnix's setting class.
    bandwidth_bytes_per_s: float = 25e9
    downtime_base_s: float = 0.005
    replay_overhead_s: float = 0.002
    # KV reserved at the destination beyond the current context, for tokens decoded during the copy.
    headroom_tokens: int = 256
    # Replay only: load the context from a shared KV store at this bandwidth (None: recompute).
    kv_store_bandwidth_bytes_per_s: float | None = None

    def __post_init__(self) -> None:
        if self.bandwidth_bytes_per_s <= 0:
            raise ValidationError("migration bandwidth must be > 0")
        store = self.kv_store_bandwidth_bytes_per_s
        if store is not None:
            if not store > 0:
                raise ValidationError("KV store bandwidth must be > 0")
            if self.mechanism is not MigrationMechanism.REPLAY:
                raise ValidationError("a shared KV store only applies to --migration replay")
        if self.downtime_base_s < 0 or self.replay_overhead_s < 0 or self.headroom_tokens < 0:
            raise ValidationError("migration overheads must be >= 0")

    @property
    def label(self) -> str:
        """``kv-transfer``, ``replay`` or ``replay+store`` (reports and the experiment suite)."""
        store = self.kv_store_bandwidth_bytes_per_s is not None
        return self.mechanism.value + ("+store" if store else "")


# ---- the planner's view (l4.core.qoe prices migrations with it) ---------------------------
MECHANISMS = ("kv-transfer", "replay")


class _MigrationConfigLike(Protocol):
    @property
    def bandwidth_bytes_per_s(self) -> float: ...
    @property
    def downtime_base_s(self) -> float: ...
    @property
    def replay_overhead_s(self) -> float: ...
    @property
    def kv_store_bandwidth_bytes_per_s(self) -> float | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationModel:
    """Migration costs as the planner sees them; defaults equal ``l4.core.migration``'s."""

    mechanism: str = "kv-transfer"
    bandwidth_bytes_per_s: float = 25e9
    downtime_base_s: float = 0.005
    replay_overhead_s: float = 0.002
    # Replay only: the destination loads the context from a shared KV store at this bandwidth
    # instead of re-prefilling it (None: plain replay).
    kv_store_bandwidth_bytes_per_s: float | None = None

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ValidationError(f"migration mechanism must be one of {MECHANISMS}")
        if self.bandwidth_bytes_per_s <= 0:
            raise ValidationError("migration bandwidth must be > 0")
        if self.downtime_base_s < 0 or self.replay_overhead_s < 0:
            raise ValidationError("migration overheads must be >= 0")
        store = self.kv_store_bandwidth_bytes_per_s
        if store is not None and not (store > 0 and self.mechanism == "replay"):
            raise ValidationError("a KV store needs replay and a bandwidth > 0")

    @property
    def recomputes(self) -> bool:
        """Plain replay: the destination re-prefills the migrated context."""
        return self.mechanism == "replay" and self.kv_store_bandwidth_bytes_per_s is None

    @classmethod
    def like(cls, config: _MigrationConfigLike, mechanism: str) -> MigrationModel:
        """The planner's view of a simulator ``MigrationConfig``."""
        return cls(
            mechanism=mechanism,
            bandwidth_bytes_per_s=config.bandwidth_bytes_per_s,
            downtime_base_s=config.downtime_base_s,
            replay_overhead_s=config.replay_overhead_s,
            kv_store_bandwidth_bytes_per_s=config.kv_store_bandwidth_bytes_per_s,
        )
