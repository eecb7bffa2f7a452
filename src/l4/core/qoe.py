"""The QoE cost of a stage partition and the analytic stage model (L4.md section 4).

``StageModel.cost_table(summary, E)`` gives, for every stage ``[g_i, g_j)`` of the grid and every
instance count ``n`` in ``1..E``, the stage's predicted TTFT, TPOT and QoE cost per second, as
``(K+1, K+1, E)`` arrays indexed ``[i, j, n - 1]`` (entries with ``i >= j`` are infinite). It is a
planner's estimate; the simulator is the ground truth. The model, per instance of a stage:

* prefill share ``phi`` = GPU seconds per second spent on the stage's prompts (plus, with token
  replay, the contexts re-prefilled by requests migrating in at ``g_i``), divided by ``n``;
* decode batch ``B`` and TPOT from the fixed point ``TPOT = T(B + 1) / (1 - phi)`` with Little's
  law ``B = r * TPOT / n``; ``T`` is the decode step time of the step-cost model (the tagged request
  plus ``B`` others, heterogeneity term with the step-weighted mean length and the expected
  longest context of ``B + 1`` requests: the step-weighted quantile ``(B + 1) / (B + 2)``, capped
  at ``lmax_quantile``; a fixed high quantile overstated the straggler of small batches).
  Solved by ``l4.core.decode_batch`` (Newton on the piecewise-linear ``T``, a scan past a hump);
  with ``T`` affine this is exactly ``TPOT = a / (1 - phi - b r / n)``;
* infinite cost when ``phi + b r / n >= 1`` (no fixed point), when ``B + 1`` exceeds
  ``max_num_seqs``, or when the running contexts ``(B + 1) * l_mean`` exceed the KV capacity;
* TTFT = queueing of prefill work (Pollaczek-Khinchine for one instance, pooled like M/G/n by
  Sakasegawa's approximation for n, service spread from the prompt spread; plus the batch term
  of M^X/G/1 for requests arriving together, thinned to the stage's share) + the prompt's own
  chunks (one decode step each plus its prefill work);
* migration latency at the stage's upper boundary ``g_j`` (charged to the source stage):
  kv-transfer = ``downtime_base + (tokens decoded during the background copy) * kv_bytes / bw``,
  replay = ``replay_overhead + re-prefill of g_j tokens``, replay with a shared KV store =
  ``replay_overhead + g_j * kv_bytes / store_bw + one step`` (no re-prefill work at the
  destination; same numbers as ``l4.core.migration``).

Cost per second = ``w_ttft * arrivals * TTFT + w_tpot * decode_steps * TPOT
+ w_migration * crossings * migration_latency``. More instances never raise a stage's cost: an
instance can always stay idle, so the table takes the running minimum over ``n``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from l4.core.decode_batch import BatchLimits, batch_max, decode_batch
from l4.core.migration import MigrationModel
from l4.core.objective import QoeWeights, SloObjective
from l4.core.summary import (
    DEFAULT_LMAX_QUANTILE,
    SPREAD_WINDOW_S,
    RangeTable,
    WorkloadSummary,
)
from l4.costmodel.profile import MixedAttention, Profile
from l4.costmodel.step import StepCostModel
from l4.errors import ValidationError
from l4.instance.config import InstanceConfig

FloatArray = npt.NDArray[np.float64]
# Stage x count elements evaluated at once by evaluate_stages (its temporaries: ~30 MB).
_EVAL_ELEMENTS = 1 << 16


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class StageCosts:
    """Arrays ``[i, j, n - 1]``: QoE cost per second, predicted TTFT and TPOT, and the load.

    ``load`` is the worst of compute utilisation, sequence-slot and KV use (>= 1 when the stage
    is unsustainable); the planner uses it to rank plans when every plan is infinite.
    """

    cost: FloatArray
    ttft_s: FloatArray
    tpot_s: FloatArray
    load: FloatArray

    @property
    def max_instances(self) -> int:
        return int(self.cost.shape[2])


class StageModel:
    """Pure function object: workload summary in, per-stage costs out."""

    __slots__ = (
        "_alpha_do",
        "_alpha_log_n",
        "_alpha_wp",
        "_decode_base_s",
        "_lin_slope",
        "_lin_x",
        "_lin_y",
        "_mixed",
        "_per_seq_s",
        "_per_token_s",
        "_step",
        "_step_fixed_s",
        "instance",
        "limits",
        "lmax_quantile",
        "migration",
        "objective",
        "profile",
        "weights",
    )

    def __init__(
        self,
        profile: Profile,
        *,
        instance: InstanceConfig | None = None,
        migration: MigrationModel | None = None,
        weights: QoeWeights | None = None,
        lmax_quantile: float = DEFAULT_LMAX_QUANTILE,
        objective: SloObjective | None = None,
    ) -> None:
        self.profile = profile
        self.instance = instance or InstanceConfig.from_profile(profile)
        self.limits = BatchLimits.of(self.instance)
        self.migration = migration or MigrationModel()
        self.weights = weights or QoeWeights()
        self.lmax_quantile = lmax_quantile
        # None: the mean-latency cost of L4.md section 4 alone (infinite for overloaded stages).
        self.objective = objective
        self._step = StepCostModel(profile)
        # The step-cost model's constants with all layers folded in, as StepCostModel does.
        p = profile
        layers = p.model.num_layers
        self._per_token_s = (
            layers * p.model.kv_bytes_per_token_per_layer / p.decode_attention.bytes_per_s
        )
        self._decode_base_s = layers * p.decode_attention.base_s
        self._step_fixed_s = p.step_fixed_s + self._decode_base_s
        self._per_seq_s = p.step_per_seq_s + layers * p.decode_attention.per_seq_s
        self._lin_x = np.asarray(p.linear.x, dtype=np.float64)
        self._lin_y = np.asarray(p.linear.y, dtype=np.float64)
        self._lin_slope = np.diff(self._lin_y) / np.diff(self._lin_x)
        self._alpha_log_n = np.log2(np.asarray(p.alpha.num_decodes, dtype=np.float64))
        self._alpha_do = np.asarray(p.alpha.decode_only, dtype=np.float64)
        self._alpha_wp = np.asarray(p.alpha.with_prefill, dtype=np.float64)
        self._mixed = None if p.mixed_attention is None else _MixedWork(p.mixed_attention, layers)

    # ---- the step-cost model, vectorised ------------------------------------------------------
    def decode_step_s(
        self, batch: FloatArray, l_mean: FloatArray, l_max: FloatArray, prefill_frac: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """Step time of ``batch`` decodes (real-valued, >= 1) and its slope in ``batch``.

        A share ``prefill_frac`` of the steps carries a prefill chunk. Decode-only steps equal
        ``StepCostModel.step_time_s`` for whole batches of one context length per statistic;
        steps with a chunk are its one-kernel attention (``MixedAttention``) without the chunk's
        own terms (``prefill_work_s`` counts those) and without the critical-path maximum.
        Alpha is frozen in the slope (Newton's model).
        """
        xs = self._lin_x
        seg = np.minimum(np.maximum(np.searchsorted(xs, batch, side="right") - 1, 0), len(xs) - 2)
        lin_slope = self._lin_slope[seg]
        lin = self._lin_y[seg] + lin_slope * (batch - xs[seg])
        lb = np.log2(np.maximum(batch, 1.0))
        a_do = np.interp(lb, self._alpha_log_n, self._alpha_do)
        a_wp = np.interp(lb, self._alpha_log_n, self._alpha_wp)
        if self._mixed is None or not np.any(prefill_frac):
            # No one-kernel fit (a prefill step's decodes priced as alone), or no prefill.
            alpha = a_do + prefill_frac * (a_wp - a_do)
            per_seq = self._per_seq_s + self._per_token_s * (l_mean + alpha * (l_max - l_mean))
            value: FloatArray = self._step_fixed_s + lin + per_seq * batch
            slope: FloatArray = lin_slope + per_seq
            return value, slope
        alone = self._per_seq_s + self._per_token_s * (l_mean + a_do * (l_max - l_mean))
        # l_mean and l_max in one pass: these arrays are small in refinement's many calls.
        if batch.shape == l_mean.shape == l_max.shape:
            both, d_both = self._mixed.work(np.stack([batch, batch]), np.stack([l_mean, l_max]))
        else:
            shape = np.broadcast_shapes(batch.shape, l_mean.shape, l_max.shape)
            both, d_both = self._mixed.work(
                np.broadcast_to(batch, (2, *shape)),
                np.stack([np.broadcast_to(l_mean, shape), np.broadcast_to(l_max, shape)]),
            )
        w_mean, w_max = both
        dw_mean, dw_max = d_both
        packed = w_mean + a_wp * (w_max - w_mean)
        packed_slope = dw_mean + a_wp * (dw_max - dw_mean)
        host = self.profile.step_per_seq_s
        keep = 1.0 - prefill_frac
        value = (
            self._step_fixed_s
            - prefill_frac * self._decode_base_s
            + lin
            + keep * alone * batch
            + prefill_frac * (host * batch + packed)
        )
        slope = lin_slope + keep * alone + prefill_frac * (host + packed_slope)
        return value, slope

    def prefill_work_s(
        self, tokens: FloatArray, tokens_sq: FloatArray, chunks: FloatArray
    ) -> FloatArray:
        """GPU seconds to prefill prompts totalling ``tokens`` (and ``tokens_sq``) in ``chunks``.

        Linear layers at their full-chunk per-token cost (prefill rides on decode steps whose
        fixed cost is already paid), causal attention ``p (p + 1) / 2`` pairs per prompt.
        """
        p = self.profile
        layers = p.model.num_layers
        budget = float(self.instance.max_num_batched_tokens)
        lin_budget = p.linear(budget)
        per_token = (lin_budget - p.linear(1.0)) / max(budget - 1.0, 1.0)
        # Steps with a chunk run one attention kernel: its chunk terms (and base) here, its
        # decode rows in decode_step_s.
        pa = p.prefill_attention if p.mixed_attention is None else p.mixed_attention
        out: FloatArray = (
            (per_token + layers * pa.per_token_s) * tokens
            + layers * pa.per_token_context_s * (tokens_sq + tokens) / 2.0
            + layers * pa.base_s * chunks
        )
        return out

    # ---- the table ----------------------------------------------------------------------------
    def cost_table(self, summary: WorkloadSummary, max_instances: int) -> StageCosts:
        if max_instances < 1:
            raise ValidationError(f"need >= 1 instance, got {max_instances}")
        ranges = summary.ranges(self.lmax_quantile)
        k1 = summary.grid.num_buckets + 1
        ii, jj = np.triu_indices(k1, k=1)
        n = np.arange(1, max_instances + 1, dtype=np.float64)[None, :]
        cost, ttft, tpot, load = self._evaluate(ranges, ii, jj, n)
        # An extra instance can always idle: take the running best over n, with its TTFT/TPOT.
        pos = np.where(cost <= np.minimum.accumulate(cost, axis=1), np.arange(cost.shape[1]), 0)
        best = np.maximum.accumulate(pos, axis=1)
        rows = np.arange(cost.shape[0])[:, None]
        shape = (k1, k1, max_instances)
        out = [np.full(shape, np.inf), np.full(shape, np.inf), np.full(shape, np.inf)]
        for arr, src in zip(out, (cost, ttft, tpot), strict=True):
            arr[ii, jj] = src[rows, best]
        load_full = np.full(shape, np.inf)
        load_full[ii, jj] = load[rows, best]
        return StageCosts(cost=out[0], ttft_s=out[1], tpot_s=out[2], load=load_full)

    def stage_costs(
        self, ranges: RangeTable, lo: npt.ArrayLike, hi: npt.ArrayLike, n: npt.ArrayLike
    ) -> tuple[FloatArray, FloatArray]:
        """(cost, load) of stages ``[g_lo[k], g_hi[k])`` with exactly ``n`` (or ``n[k]``)
        instances each.

        For refinement, which re-solves one boundary at a time: only the candidate stages are
        evaluated, not the whole table. Infinite cost marks an unsustainable stage.
        """
        cost, _, _, load = self.stage_prediction(ranges, lo, hi, n)
        return cost, load

    def stage_prediction(
        self, ranges: RangeTable, lo: npt.ArrayLike, hi: npt.ArrayLike, n: npt.ArrayLike
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """(cost, TTFT, TPOT, load) of stages ``[g_lo[k], g_hi[k])`` with ``n`` (or ``n[k]``)
        instances each."""
        ii = np.asarray(lo, dtype=np.intp)
        jj = np.asarray(hi, dtype=np.intp)
        counts = np.broadcast_to(np.asarray(n, dtype=np.float64), ii.shape)[:, None]
        cost, ttft, tpot, load = self._evaluate(ranges, ii, jj, counts)
        return cost[:, 0], ttft[:, 0], tpot[:, 0], load[:, 0]

    def migration_latency_s(
        self, context_tokens: npt.ArrayLike, tpot_s: float, step_s: float
    ) -> FloatArray:
        """What a request of ``context_tokens`` loses to one migration (the planner's model)."""
        ctx = np.asarray(context_tokens, dtype=np.float64)
        return self._migration_latency_s(ctx, np.full_like(ctx, tpot_s), np.full_like(ctx, step_s))

    def evaluate_stages(
        self, ranges: RangeTable, lo: npt.ArrayLike, hi: npt.ArrayLike, counts: npt.ArrayLike
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """Raw cost, TTFT, TPOT and load of stages ``[g_lo[p], g_hi[p])`` with each of ``counts``
        instances: arrays (pairs, counts), without the idle rule of ``cost_table``.

        For the planner's large-fleet search, which asks for a few counts of every stage or every
        count of a few stages; evaluated a slice of stages at a time so memory stays bounded.
        """
        ii = np.asarray(lo, dtype=np.intp)
        jj = np.asarray(hi, dtype=np.intp)
        n = np.asarray(counts, dtype=np.float64)[None, :]
        step = max(1, _EVAL_ELEMENTS // max(n.size, 1))
        parts = [
            self._evaluate(ranges, ii[s : s + step], jj[s : s + step], n)
            for s in range(0, len(ii), step)
        ]
        if not parts:
            empty = np.zeros((0, n.size))
            return empty, empty.copy(), empty.copy(), empty.copy()
        cost, ttft, tpot, load = (np.concatenate([p[k] for p in parts]) for k in range(4))
        return cost, ttft, tpot, load

    def _evaluate(
        self, rt: RangeTable, ii: npt.NDArray[np.intp], jj: npt.NDArray[np.intp], n: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """Cost, TTFT, TPOT and load for pairs ``(ii, jj)`` (column vectors) times counts ``n``
        (a row, or a column of one count per pair).

        With ``SloObjective.rate_spread`` and a workload whose arrivals bunch (the summary's
        ``arrival_spread``), the cost is the three-point Gauss-Hermite mean over the stage's
        arrival rate per second: its variance beyond a Poisson stream's. TTFT, TPOT and load
        stay the mean rate's. The three rates are evaluated in one pass, as rows of one array
        (the solver's cost is per call on the few candidates refinement asks for)."""
        spread = self._rate_spread(rt, ii, jj)
        if spread is None:
            return self._evaluate_at(rt, ii, jj, n, None, self._overload_horizon_s)
        sel, sd = spread
        both = np.concatenate([sel, sel])
        scale = np.concatenate([np.ones((ii.size, 1)), 1.0 + sd, np.maximum(1.0 - sd, 0.0)])
        # Overloaded at a burst's rate, a stage is so only while the burst lasts.
        horizon = np.concatenate(
            [
                np.full((ii.size, 1), self._overload_horizon_s),
                np.full((2 * sel.size, 1), SPREAD_WINDOW_S),
            ]
        )
        rows = np.concatenate([np.arange(ii.size), both])
        counts = n if n.shape[0] == 1 else n[rows]
        cost, ttft, tpot, load = self._evaluate_at(rt, ii[rows], jj[rows], counts, scale, horizon)
        p, s = ii.size, sel.size
        high, low = cost[p : p + s], cost[p + s :]
        cost = cost[:p].copy()
        cost[sel] = (4.0 * cost[sel] + high + low) / 6.0
        return cost, ttft[:p], tpot[:p], load[:p]

    @property
    def _overload_horizon_s(self) -> float:
        return 0.0 if self.objective is None else self.objective.overload_horizon_s

    def _rate_spread(
        self, rt: RangeTable, ii: npt.NDArray[np.intp], jj: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.intp], FloatArray] | None:
        """The pairs whose arrivals bunch and sqrt(3) standard deviations of their rate, as a
        fraction of its mean (a column); None when no pair's cost is spread."""
        if self.objective is None or not self.objective.rate_spread or not rt.spread_excess.size:
            return None
        # The stage's arrivals per window vary by (D - 1) x mean more than a Poisson stream's
        # (D: index of dispersion); the Poisson part is already in the queueing model.
        top = len(rt.bounds_tokens) - 1
        total = float(rt.arrival_rps[0, top])
        lam = rt.arrival_rps[ii, jj]
        excess = np.maximum(rt.spread_excess[ii, jj], 0.0) * total
        sel = np.flatnonzero((lam > 0) & (excess > 0))
        if not sel.size:
            return None
        sd = np.sqrt(excess[sel] / SPREAD_WINDOW_S) / lam[sel]
        return sel, (math.sqrt(3.0) * sd)[:, None]

    def _evaluate_at(
        self,
        rt: RangeTable,
        ii: npt.NDArray[np.intp],
        jj: npt.NDArray[np.intp],
        n: FloatArray,
        scale: FloatArray | None,
        horizon_s: FloatArray | float,
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """``_evaluate`` at the mean rate, or with every rate of the stage times ``scale``
        (a column, one per pair): its arrivals, prompts, decode steps and crossings; an overload
        costs ``horizon_s`` of it (a column too, or one for all)."""
        col = np.s_[:, None]
        top = len(rt.bounds_tokens) - 1
        k = np.ones((1, 1)) if scale is None else scale
        lam = rt.arrival_rps[ii, jj][col] * k
        tokens = rt.prompt_tokens_ps[ii, jj][col] * k
        tokens_sq = rt.prompt_tokens_sq_ps[ii, jj][col] * k
        r = rt.decode_steps_ps[ii, jj][col] * k
        l_mean = rt.l_mean_tokens[ii, jj][col]
        l_max_q = rt.l_max_by_quantile[:, ii, jj][:, :, None]  # (Q, pairs, 1)
        g_lo = rt.bounds_tokens[ii][col]
        g_hi = rt.bounds_tokens[jj][col]
        m_in = rt.crossing_rps[ii][col] * k
        m_out = np.where(jj == top, 0.0, rt.crossing_rps[jj])[col] * k
        budget = float(self.instance.max_num_batched_tokens)
        replay = self.migration.recomputes

        # Prefill work: the stage's prompts, plus the contexts that replay re-prefills.
        inflow = m_in if replay else np.zeros_like(m_in)
        all_tokens = tokens + inflow * g_lo
        all_sq = tokens_sq + inflow * g_lo * g_lo
        prefills = lam + inflow
        chunk_rate = prefills + all_tokens / budget
        work = self.prefill_work_s(all_tokens, all_sq, chunk_rate)
        phi = work / n
        prefill_rate = chunk_rate / n  # chunk-carrying steps per second per instance

        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t, tpot, util, load, feasible = self._decode(
                rt, r, n, phi, l_mean, l_max_q, prefill_rate
            )

            # TTFT: queueing for prefill work, then the prompt's own chunks. The wait is
            # Pollaczek-Khinchine for n = 1 and pools like M/G/n (Sakasegawa) for larger stages,
            # because arrivals are placed inside a stage by load (bids), not at random.
            mean_work = np.where(prefills > 0, work / prefills, 0.0)
            cv2 = np.where(
                all_tokens > 0, np.maximum(all_sq * prefills / all_tokens**2 - 1.0, 0.0), 0.0
            )
            pooling = np.power(util, np.sqrt(2.0 * (n + 1.0)) - 2.0) / n
            wait = (1.0 + cv2) / 2.0 * mean_work * phi * pooling / (1.0 - util)
            # Requests arriving together wait for each other's prefill at any load (the batch
            # term of M^X/G/1). A stage with share p of the arrivals sees groups thinned by p
            # (binomial thinning scales E[X^2]/E[X] - 1 by p); bids spread a group over the n
            # instances, so a request queues behind (1 + excess) / n - 1 others of its group.
            total_rate = max(float(rt.arrival_rps[0, top]), 1e-12)
            excess = np.minimum(lam / total_rate, 1.0) * rt.arrival_batch_excess
            ahead = np.maximum((1.0 + excess) / n - 1.0, 0.0)
            wait = wait + ahead / 2.0 * mean_work / (1.0 - util)
            mean_prompt = np.where(lam > 0, tokens / lam, g_lo)
            own_chunks = np.maximum(np.ceil(mean_prompt / budget), 1.0)
            mean_sq = np.where(lam > 0, tokens_sq / lam, g_lo**2)  # attention is quadratic
            own_work = self.prefill_work_s(mean_prompt, mean_sq, own_chunks)
            ttft = wait + own_chunks * t + own_work

            mig = self._migration_latency_s(g_hi, tpot, t)
            w = self.weights
            cost = w.ttft * lam * ttft + w.tpot * r * tpot + w.migration * m_out * mig
            if self.objective is not None:
                p_wait = np.minimum(pooling * n * util, 1.0)
                p_wait = 1.0 - (1.0 - p_wait) * (1.0 / (1.0 + ahead))  # or behind one's group
                cost = self._slo_cost(
                    rt, ii, jj, cost, wait=wait, p_wait=p_wait, t=t, tpot=tpot, load=load,
                    feasible=feasible, lam=lam, r=r, l_mean=l_mean, scale=k,
                    horizon_s=horizon_s,
                )  # fmt: skip
        inf = np.inf
        finite_cost = self.objective is not None
        return (
            cost if finite_cost else np.where(feasible, cost, inf),
            np.where(feasible, ttft, inf),
            np.where(feasible, tpot, inf),
            np.where(np.isfinite(load), load, 1e9),
        )

    def _decode(
        self,
        rt: RangeTable,
        r: FloatArray,
        n: FloatArray,
        phi: FloatArray,
        l_mean: FloatArray,
        l_max_q: FloatArray,
        prefill_rate: FloatArray,
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, npt.NDArray[np.bool_]]:
        """The stages' decode side from their decode steps ``r`` per second on ``n`` instances
        with prefill share ``phi``: (step time, TPOT, utilisation, load, feasible). The batch is
        ``l4.core.decode_batch``'s; the load is the worst of compute, sequence slots and KV."""
        free = 1.0 - phi
        k_r = np.where(free > 0, r / (n * free), np.inf)
        shape = np.broadcast_shapes(k_r.shape, l_mean.shape)
        k_f, lm_f, pr_f = (np.broadcast_to(x, shape).ravel() for x in (k_r, l_mean, prefill_rate))
        lq_f = np.broadcast_to(l_max_q, (l_max_q.shape[0], *shape)).reshape(l_max_q.shape[0], -1)
        qs = np.asarray(rt.lmax_quantiles, dtype=np.float64)
        batch, frac, ok = decode_batch(
            self, k_f, lm_f, lq_f, qs, pr_f, (free > 0).ravel(), self.limits
        )
        l_max = batch_max(lq_f, qs, batch, np.arange(batch.size)).reshape(shape)
        batch, frac, ok = batch.reshape(shape), frac.reshape(shape), ok.reshape(shape)
        t, slope = self.decode_step_s(batch + 1.0, l_mean, l_max, frac)
        ok &= np.abs(k_r * t - batch) <= 1e-3 * (1.0 + batch)
        seqs = batch + 1.0
        util = phi + r * slope / n
        load = np.maximum.reduce(
            [
                np.where(ok, util, np.maximum(util, 1.0)),
                seqs / self.instance.max_num_seqs,
                seqs * l_mean / self.instance.kv_capacity_tokens,
            ]
        )
        return t, t / free, util, load, ok & (load < 1.0)

    def _slo_cost(
        self,
        rt: RangeTable,
        ii: npt.NDArray[np.intp],
        jj: npt.NDArray[np.intp],
        latency: FloatArray,
        *,
        wait: FloatArray,
        p_wait: FloatArray,
        t: FloatArray,
        tpot: FloatArray,
        load: FloatArray,
        feasible: npt.NDArray[np.bool_],
        lam: FloatArray,
        r: FloatArray,
        l_mean: FloatArray,
        scale: FloatArray,
        horizon_s: FloatArray | float,
    ) -> FloatArray:
        """``SloObjective``'s cost of every (pair, n) from the stage model's predictions; the
        prompt buckets' arrivals times ``scale`` (``_evaluate_at``), an overload lasting
        ``horizon_s``."""
        obj = self.objective
        assert obj is not None
        top = len(rt.bounds_tokens) - 1
        budget = float(self.instance.max_num_batched_tokens)
        total_rate = float(rt.arrival_rps[0, top])
        mean_output = float(rt.decode_steps_ps[0, top]) / total_rate if total_rate > 0 else 1.0
        shape = np.broadcast_shapes(wait.shape, latency.shape)
        misses = np.zeros(shape)
        excess = np.zeros(shape)
        allowed = 1.0 - obj.target
        cond_wait = np.where(p_wait > 0, wait / np.maximum(p_wait, 1e-12), 0.0)
        for k in range(top):
            lam_k = float(rt.arrival_rps[k, k + 1])
            if lam_k <= 0:
                continue
            inside = ((ii <= k) & (k < jj))[:, None]
            if not inside.any():
                continue
            prompt = float(rt.prompt_tokens_ps[k, k + 1]) / lam_k
            prompt_sq = float(rt.prompt_tokens_sq_ps[k, k + 1]) / lam_k
            chunks = max(math.ceil(prompt / budget), 1)
            slo = obj.slo_scale * self._unloaded_ttft_s(round(prompt))
            own = chunks * t + float(self.prefill_work_s(prompt, prompt_sq, chunks))  # type: ignore[arg-type]
            slack = slo - own
            tail = np.exp(-np.maximum(slack, 0.0) / np.maximum(cond_wait, 1e-12))
            p_miss = np.where(slack <= 0, 1.0, np.where(cond_wait > 0, p_wait * tail, 0.0))
            p_miss = np.where(feasible, p_miss, 1.0)
            misses += np.where(inside, lam_k * scale * p_miss, 0.0)
            excess += np.where(inside, lam_k * scale * np.maximum(p_miss - allowed, 0.0), 0.0)
        # TPOT: the stage's mean TPOT against the SLO at its mean context, in requests.
        slo_tpot = (
            obj.slo_scale
            * self.decode_step_s(np.ones_like(l_mean), l_mean, l_mean, np.zeros_like(l_mean))[0]
        )
        ramp = np.clip((tpot / slo_tpot - 0.8) / 0.4, 0.0, 1.0)
        ramp = np.where(feasible, ramp, 1.0)
        decoding = r / max(mean_output, 1.0)  # requests per second decoding here
        misses = misses + decoding * ramp
        excess = excess + decoding * np.maximum(ramp - allowed, 0.0)
        overload = (lam + decoding) * horizon_s * np.maximum(load, 1.0)
        latency = np.where(feasible, latency, overload)
        out: FloatArray = latency + obj.miss_cost_s * misses + obj.tail_cost_s * excess
        return out

    def _unloaded_ttft_s(self, prompt_tokens: int) -> float:
        """TTFT of a prompt alone on an idle instance: the SLO reference (EVALUATION.md)."""
        budget = self.instance.max_num_batched_tokens
        return self._step.unloaded_latency_s(max(prompt_tokens, 1), 1, budget)[0]

    def _migration_latency_s(
        self, context_tokens: FloatArray, tpot_s: FloatArray, step_s: FloatArray
    ) -> FloatArray:
        """Latency a request loses migrating at ``context_tokens`` (see the module docstring)."""
        m = self.migration
        kv_bytes = float(self.profile.model.kv_bytes_per_token)
        if m.mechanism == "kv-transfer":
            copy_s = context_tokens * kv_bytes / m.bandwidth_bytes_per_s
            decoded = copy_s / tpot_s  # tokens that grew during the background copy
            out: FloatArray = m.downtime_base_s + decoded * kv_bytes / m.bandwidth_bytes_per_s
            return out
        if m.kv_store_bandwidth_bytes_per_s is not None:
            load_s = context_tokens * kv_bytes / m.kv_store_bandwidth_bytes_per_s
            stored: FloatArray = m.replay_overhead_s + load_s + step_s
            return stored
        budget = float(self.instance.max_num_batched_tokens)
        chunks = np.maximum(np.ceil(context_tokens / budget), 1.0)
        refill = self.prefill_work_s(context_tokens, context_tokens**2, chunks)
        out = m.replay_overhead_s + refill + chunks * step_s
        return out


class _MixedWork:
    """``layers * (per_seq n + W(n, l))`` of ``MixedAttention`` on arrays, and its slope in n.

    The same bilinear table as ``MixedAttention.decode_work_s`` (proportional beyond the knots):
    each axis gives two knots and their weights, and the four corners come from the flat grid.
    """

    __slots__ = ("_flat", "_layers", "_n", "_per_seq_s", "_stride", "_x")

    def __init__(self, mixed: MixedAttention, layers: int) -> None:
        self._n = np.asarray(mixed.num_decodes, dtype=np.float64)
        self._x = np.asarray(mixed.context_tokens, dtype=np.float64)
        grid = mixed.work_grid()
        self._flat = grid.ravel()
        self._stride = grid.shape[1]
        self._layers = float(layers)
        self._per_seq_s = mixed.per_seq_s

    def work(self, n: FloatArray, context: FloatArray) -> tuple[FloatArray, FloatArray]:
        if n.shape != context.shape:
            n, context = np.broadcast_arrays(n, context)
        n_lo, wn_lo, wn_hi = _axis_weights(self._n, n)
        l_lo, wl_lo, wl_hi = _axis_weights(self._x, context)
        flat, stride = self._flat, self._stride
        a = n_lo * stride + l_lo
        b = a + stride
        row_lo = wl_lo * flat[a] + wl_hi * flat[a + 1]
        row_hi = wl_lo * flat[b] + wl_hi * flat[b + 1]
        value = wn_lo * row_lo + wn_hi * row_hi
        # d/dn: across the cell inside the grid; W / n (proportional) beyond it.
        k = self._n
        inside = (n > k[0]) & (n < k[-1])
        slope = np.where(inside, (row_hi - row_lo) / (k[n_lo + 1] - k[n_lo]), value / n)
        out: FloatArray = self._layers * (self._per_seq_s * n + value)
        out_slope: FloatArray = self._layers * (self._per_seq_s + slope)
        return out, out_slope


def _axis_weights(
    knots: FloatArray, x: FloatArray
) -> tuple[npt.NDArray[np.intp], FloatArray, FloatArray]:
    """Cell ``j`` of ``x`` and the weights of knots ``j`` and ``j + 1``.

    Linear inside; beyond an end, the end knot's value times ``x / knot`` (the weights of a
    clamped position scaled by that ratio), so ``w_lo * v[j] + w_hi * v[j + 1]`` is the
    interpolant everywhere.
    """
    xc = np.minimum(np.maximum(x, knots[0]), knots[-1])
    scale = x / xc
    pos = np.interp(xc, knots, np.arange(len(knots), dtype=np.float64))
    j = np.minimum(pos.astype(np.intp), len(knots) - 2)
    f = pos - j
    return j, (1.0 - f) * scale, f * scale
