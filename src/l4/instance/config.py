"""Engine knobs of one instance, as `vllm serve` names them."""

from __future__ import annotations

from dataclasses import dataclass

from l4.costmodel.profile import Profile
from l4.errors import ValidationError


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    num_kv_blocks: int
    block_size_tokens: int = 16

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValidationError(f"--max-num-seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValidationError(
                f"--max-num-batched-tokens must be >= 1, got {self.max_num_batched_tokens}"
            )
        if self.num_kv_blocks < 1:
            raise ValidationError("the KV cache must hold at least one block")

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_kv_blocks * self.block_size_tokens

    @classmethod
    def from_profile(
        cls,
        profile: Profile,
        *,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
    ) -> InstanceConfig:
        """vLLM's defaults for the profile's GPU unless the user overrides them."""
        cfg = cls(
            max_num_seqs=max_num_seqs or profile.default_max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens or profile.default_max_num_batched_tokens,
            num_kv_blocks=profile.num_kv_blocks,
            block_size_tokens=profile.block_size_tokens,
        )
        if cfg.kv_capacity_tokens < profile.model.max_context_tokens:
            # vLLM refuses to start in this case; so do we, with the same advice.
            raise ValidationError(
                f"the KV cache ({cfg.kv_capacity_tokens} tokens) is smaller than the model's "
                f"max context ({profile.model.max_context_tokens} tokens); raise "
                "--kv-capacity-tokens"
            )
        return cfg
