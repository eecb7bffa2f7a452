"""Fault injection for tests of what sits in front of the engine (gateways, clients, retries).

Guarantees:

* `FaultConfig` validates itself: an error rate in [0, 1], an error status of 500 or 503, a crash
  threshold >= 1 token, a slow-down factor > 0. The default injects nothing.
* `ErrorDraws` answers "fail this request?" from a generator seeded by (engine seed, instance id):
  the same seed and the same order of valid requests fail the same requests.
* `SlowedStepCost` is the cost model with every step time multiplied by a constant; the affine
  shape the instance relies on (closed-form decode runs) is kept, since scaling preserves it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from l4.costmodel.profile import Profile
from l4.costmodel.step import PrefillChunk, StepCostModel
from l4.errors import ValidationError

# The OpenAI client maps these types to its exception classes; vLLM uses the same names.
ERROR_TYPES = {500: "InternalServerError", 503: "ServiceUnavailableError"}


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultConfig:
    """What to break, on purpose. All off by default."""

    error_rate: float = 0.0  # fraction of valid generation requests answered with an error
    error_status: int = 500  # 500 or 503
    crash_after_tokens: int | None = None  # stop answering once this many tokens were emitted
    slowdown: float = 1.0  # multiplies every step time (a slower or throttled GPU)

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValidationError(f"--error-rate must be in [0, 1], got {self.error_rate}")
        if self.error_status not in ERROR_TYPES:
            raise ValidationError(f"--error-status must be 500 or 503, got {self.error_status}")
        if self.crash_after_tokens is not None and self.crash_after_tokens < 1:
            raise ValidationError(
                f"--crash-after-tokens must be >= 1, got {self.crash_after_tokens}"
            )
        if not self.slowdown > 0.0:
            raise ValidationError(f"--slowdown must be > 0, got {self.slowdown}")

    @property
    def active(self) -> bool:
        return self.error_rate > 0.0 or self.crash_after_tokens is not None or self.slowdown != 1.0


class ErrorDraws:
    """Seeded Bernoulli draws, one per valid generation request, in arrival order."""

    __slots__ = ("_rate", "_rng")

    def __init__(self, rate: float, *, seed: int, instance_id: int) -> None:
        self._rate = rate
        # A string seed is hashed with SHA-512 by `random`, so it is stable across runs.
        self._rng = random.Random(f"l4-engine-faults/{seed}/{instance_id}")

    def fail_next(self) -> bool:
        if self._rate <= 0.0:
            return False
        return self._rng.random() < self._rate


class SlowedStepCost(StepCostModel):
    """`StepCostModel` whose step times are `factor` times longer."""

    __slots__ = ("factor",)

    def __init__(self, profile: Profile, factor: float) -> None:
        super().__init__(profile)
        self.factor = factor

    def step_time_s(
        self,
        *,
        num_decodes: int,
        context_sum_tokens: int,
        context_max_tokens: int,
        chunks: Sequence[PrefillChunk] = (),
    ) -> float:
        base = super().step_time_s(
            num_decodes=num_decodes,
            context_sum_tokens=context_sum_tokens,
            context_max_tokens=context_max_tokens,
            chunks=chunks,
        )
        return base * self.factor


def step_cost(profile: Profile, faults: FaultConfig) -> StepCostModel:
    """The cost model an emulated instance steps with: the profile's, slowed if asked."""
    if faults.slowdown == 1.0:
        return StepCostModel(profile)
    return SlowedStepCost(profile, faults.slowdown)
