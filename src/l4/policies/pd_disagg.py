"""`pd_disagg`: prefill/decode disaggregation (DistServe, OSDI'24; Splitwise, ISCA'24).

The instances form two pools: the first ``P`` prefill, the other ``N - P`` decode. Arrivals go to
the prefill pool only (fewest pending prefill tokens with a KV guard, `least_prefill`'s rule
inside the pool). Once a request has produced its first token it is handed to the decode pool
through ``ClusterView.migrate``, the deployment's mechanism and the one every migrating policy
uses: with ``kv-transfer`` its KV cache is copied in the background while it keeps decoding on the
prefill instance (DistServe's and Splitwise's KV hand-off); with ``replay`` the decode instance
re-prefills prompt and generated tokens (what a gateway in front of unmodified engines can do).
A decode pool without room leaves the request decoding where it is and retries at the next tick,
so nothing is lost or stuck when the split is wrong, only slower. Instances out of service
(`InstanceView.available`) take neither arrivals nor hand-offs.

Decode destination: the decode instance with the most free KV (after its queue and the hand-offs
already sent this tick; the pool's instances are alike, so this is the least KV in use), among
those with room for the request's context: long contexts cost attention and memory, which a
request count misses. Ties go to the lowest id.

The split. ``pd_disagg:P`` fixes ``P`` prefill instances. Plain ``pd_disagg`` sizes it from the
expected workload (`PolicyContext.workload`) and the cost model, by the ratio of GPU time each
phase needs (Splitwise's rule of thumb for provisioning pools):

* prefill: ``W_p`` = GPU seconds per second to prefill the prompts (linear layers at a full chunk's
  per-token cost, causal attention, per-chunk overhead: `StageModel.prefill_work_s`);
* decode: ``W_d = r * T(B) / B``, the decode steps per second ``r`` times the per-token share of a
  decode step at the largest batch an instance holds, ``B = min(max_num_seqs, KV capacity /
  mean context)`` (``T``: the step-cost model at the workload's step-weighted mean context). That
  is the least GPU time decoding needs: a decode instance batches as far as it can. (At the batch
  Little's law gives on all ``N`` instances every instance is always stepping, so that batch
  cannot measure decode work: ``r * T(B) / B = N`` identically.)
* ``P = round(N * W_p / (W_p + W_d))`` held to ``[1, N - 1]``. Without a workload, ``P = N / 2``.

The experiment suite runs several splits and reports the best per scenario.
"""

from __future__ import annotations

from dataclasses import dataclass

from l4.core.qoe import StageModel
from l4.core.summary import WorkloadSummary
from l4.errors import ValidationError
from l4.instance.sequence import SeqState
from l4.policies.base import available, register_policy, register_policy_option
from l4.policies.least_prefill import least_prefill_choice, room_blocks
from l4.request import RequestSpec
from l4.views import ClusterView, PolicyContext

MIGRATION_REASON = "pd_handoff"


@dataclass(frozen=True, slots=True, kw_only=True)
class PdConfig:
    num_prefill: int | None = None  # None: sized from the workload
    tick_s: float = 0.02  # how often prefill instances hand finished prefills over
    give_up_s: float = 5.0  # a hand-off not seen to land by then may be retried
    headroom_tokens: int = 256  # KV a destination must have beyond the context (as kv-transfer)

    def __post_init__(self) -> None:
        if self.num_prefill is not None and self.num_prefill < 1:
            raise ValidationError("pd_disagg needs at least one prefill instance")
        if not (self.tick_s > 0 and self.give_up_s > 0) or self.headroom_tokens < 0:
            raise ValidationError("pd_disagg: tick and give-up must be > 0 s, headroom >= 0")


def phase_gpu_time(ctx: PolicyContext, summary: WorkloadSummary) -> tuple[float, float]:
    """(prefill, decode) GPU seconds per second the expected workload needs (see above)."""
    d = summary.duration_s
    budget = float(ctx.instance_config.max_num_batched_tokens)
    tokens = float(summary.prompt_tokens.sum()) / d
    tokens_sq = float(summary.prompt_tokens_sq.sum()) / d
    chunks = float(summary.arrivals.sum()) / d + tokens / budget
    model = StageModel(ctx.profile, instance=ctx.instance_config)
    prefill = float(model.prefill_work_s(tokens, tokens_sq, chunks))  # type: ignore[arg-type]
    steps = float(summary.decode_steps.sum())
    if steps <= 0:
        return prefill, 0.0
    l_mean = float(summary.decode_length_sum.sum()) / steps
    cfg = ctx.instance_config
    batch = max(1, min(cfg.max_num_seqs, int(cfg.kv_capacity_tokens // max(l_mean, 1.0))))
    step_s = ctx.cost.step_time_s(
        num_decodes=batch,
        context_sum_tokens=round(batch * l_mean),
        context_max_tokens=round(l_mean),
    )
    return prefill, steps / d * step_s / batch


def default_num_prefill(ctx: PolicyContext) -> int:
    n = ctx.num_instances
    if n < 2:
        raise ValidationError("pd_disagg needs at least 2 instances (a prefill and a decode pool)")
    if ctx.workload is None:
        return n // 2
    w_p, w_d = phase_gpu_time(ctx, ctx.workload)
    share = w_p / (w_p + w_d) if w_p + w_d > 0 else 0.5
    return min(max(round(n * share), 1), n - 1)


class PdDisagg:
    def __init__(self, ctx: PolicyContext, config: PdConfig | None = None) -> None:
        self.config = config or PdConfig()
        n = ctx.num_instances
        p = self.config.num_prefill if self.config.num_prefill is not None else None
        p = default_num_prefill(ctx) if p is None else p
        if not 1 <= p <= n - 1:
            raise ValidationError(
                f"pd_disagg: {p} prefill instances leave no decode pool of {n} instances "
                f"(choose 1..{n - 1})"
            )
        self.num_prefill = p
        self.tick_interval_s: float | None = self.config.tick_s
        self._prefill = list(range(p))
        self._decode = list(range(p, n))
        self._bs = ctx.instance_config.block_size_tokens
        self._moving: dict[int, float] = {}  # request id -> when the hand-off may be retried

    def route(self, request: RequestSpec, cluster: ClusterView, now_s: float) -> int:
        blocks = -(-(request.input_tokens + 1) // self._bs)
        return least_prefill_choice(cluster, self._prefill, blocks)

    def on_tick(self, cluster: ClusterView, now_s: float) -> None:
        self._moving = {rid: t for rid, t in self._moving.items() if t > now_s}
        # KV room of each decode instance in service after its queue and this tick's hand-offs.
        room = {d: room_blocks(cluster.instance(d)) for d in available(cluster, self._decode)}
        for src in self._prefill:
            inst = cluster.instance(src)
            for seq in inst.running():
                if seq.state is not SeqState.DECODE or seq.request_id in self._moving:
                    continue
                need = -(-(inst.length_of(seq) + self.config.headroom_tokens) // self._bs)
                order = sorted((-room[d], d) for d in room if room[d] >= need)
                for _, dst in order:
                    if cluster.migrate(seq, src, dst, MIGRATION_REASON):
                        self._moving[seq.request_id] = now_s + self.config.give_up_s
                        room[dst] -= need
                        break
                    room[dst] = -1  # refused (no sequence slot): skip it this tick

    def groups(self) -> list[list[int]]:
        return [list(self._prefill), list(self._decode)]


@register_policy("pd_disagg")
def _make(ctx: PolicyContext) -> PdDisagg:
    return PdDisagg(ctx)


@register_policy_option("pd_disagg")
def _make_split(ctx: PolicyContext, option: str) -> PdDisagg:
    try:
        p = int(option)
    except ValueError:
        raise ValidationError(
            f"pd_disagg:{option}: the option is the number of prefill instances, an integer"
        ) from None
    return PdDisagg(ctx, PdConfig(num_prefill=p))
