"""The analytic stage model: agreement with the step-cost model, monotonicity, overload."""

from __future__ import annotations

import numpy as np
import pytest

from factories import log_uniform_summary, tiny_profile
from l4.core.grid import exponential_grid
from l4.core.migration import MigrationConfig, MigrationMechanism, MigrationModel
from l4.core.objective import QoeWeights
from l4.core.qoe import StageModel
from l4.core.summary import summarize_lengths
from l4.costmodel import StepCostModel, load_profile
from l4.errors import ValidationError

H100 = load_profile("h100-llama-3.2-3b")


def _summary(rate_rps: float, *, max_context: int = 131072) -> object:
    rng = np.random.default_rng(0)
    n = 400
    prompts = np.minimum(rng.lognormal(8.0, 1.2, n).astype(int) + 1, max_context // 2)
    outputs = rng.integers(50, 500, n)
    return summarize_lengths(
        exponential_grid(max_context),
        input_tokens=prompts,
        output_tokens=outputs,
        duration_s=n / rate_rps,
    )


@pytest.mark.parametrize("n", [1, 3, 16, 100, 700])
@pytest.mark.parametrize(("l_mean", "l_max"), [(500, 500), (2000, 9000), (40000, 120000)])
def test_decode_step_matches_step_cost_model(n: int, l_mean: int, l_max: int) -> None:
    model = StageModel(H100)
    step = StepCostModel(H100)
    mixed = H100.mixed_attention
    assert mixed is not None
    for has_prefill in (False, True):
        if has_prefill:
            # The decode rows of the one attention kernel of a step with a chunk, by the
            # documented formula (the chunk's own terms are prefill_work_s's).
            w_mean, w_max = mixed.decode_work_s(n, l_mean), mixed.decode_work_s(n, l_max)
            attention = mixed.per_seq_s * n + w_mean + H100.alpha(n, True) * (w_max - w_mean)
            want = (
                H100.step_fixed_s
                + H100.step_per_seq_s * n
                + H100.linear(n)
                + H100.model.num_layers * attention
            )
        else:
            want = step.step_time_s(
                num_decodes=n, context_sum_tokens=n * l_mean, context_max_tokens=l_max
            )
        got, _ = model.decode_step_s(
            np.array([float(n)]),
            np.array([float(l_mean)]),
            np.array([float(l_max)]),
            np.array([1.0 if has_prefill else 0.0]),
        )
        assert got[0] == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("n", [1, 3, 16])
def test_without_a_one_kernel_fit_prefill_steps_keep_the_summed_form(n: int) -> None:
    profile = tiny_profile()
    assert profile.mixed_attention is None
    step = StepCostModel(profile)
    want = step.step_time_s(num_decodes=n, context_sum_tokens=n * 300, context_max_tokens=900)
    # the alpha of a step with a chunk, minus the chunk's own time
    want += step.decode_attention_s(n, n * 300, 900, True) - step.decode_attention_s(
        n, n * 300, 900, False
    )
    got, _ = StageModel(profile).decode_step_s(
        np.array([float(n)]), np.array([300.0]), np.array([900.0]), np.array([1.0])
    )
    assert got[0] == pytest.approx(want, rel=1e-9)


def test_vectorised_mixed_work_equals_the_profiles_table() -> None:
    from l4.core.qoe import _MixedWork

    mixed = H100.mixed_attention
    assert mixed is not None
    layers = H100.model.num_layers
    rng = np.random.default_rng(1)
    n = rng.uniform(0.5, 700.0, (30, 20))
    ctx = np.exp(rng.uniform(0.0, np.log(200_000), (30, 1)))  # broadcast like _evaluate
    value, slope = _MixedWork(mixed, layers).work(n, ctx)
    want = np.vectorize(lambda a, b: layers * (mixed.per_seq_s * a + mixed.decode_work_s(a, b)))
    assert value == pytest.approx(want(n, ctx), rel=1e-12)
    bumped, _ = _MixedWork(mixed, layers).work(n + 1e-6, ctx)
    assert (bumped - value) / 1e-6 == pytest.approx(slope, rel=1e-5)


def test_more_instances_never_raise_a_stage_cost() -> None:
    costs = StageModel(H100).cost_table(_summary(20.0), 16)
    c = costs.cost
    k1 = c.shape[0]
    ii, jj = np.triu_indices(k1, 1)
    per_pair = c[ii, jj]  # (pairs, E)
    finite = np.isfinite(per_pair[:, :-1])
    assert np.all(per_pair[:, 1:][finite] <= per_pair[:, :-1][finite])
    assert np.all(np.isinf(c[np.tril_indices(k1)]))
    assert np.any(np.isfinite(per_pair))


def test_overloaded_stage_has_infinite_cost_and_load_above_one() -> None:
    model = StageModel(H100)
    light = model.cost_table(_summary(1.0), 4)
    heavy = model.cost_table(_summary(5000.0), 4)
    k = light.cost.shape[0] - 1
    assert np.isfinite(light.cost[0, k, 0])
    assert np.isinf(heavy.cost[0, k, 0]) and heavy.load[0, k, 0] >= 1.0
    assert np.isinf(heavy.ttft_s[0, k, 0]) and np.isinf(heavy.tpot_s[0, k, 0])


def test_kv_demand_above_capacity_is_infinite() -> None:
    profile = tiny_profile(kv_capacity_tokens=2048, max_context_tokens=2048)
    model = StageModel(profile)
    grid = exponential_grid(2048, substeps_per_octave=1, min_tokens=64)
    # Long requests decoding for long: many running at once, each holding ~1.5K tokens.
    s = summarize_lengths(grid, input_tokens=[1500] * 50, output_tokens=[500] * 50, duration_s=1)
    costs = model.cost_table(s, 2)
    k = grid.num_buckets
    assert np.isinf(costs.cost[0, k, 1])


def test_tpot_grows_with_load_and_context() -> None:
    model = StageModel(H100)
    lo, hi = model.cost_table(_summary(2.0), 1), model.cost_table(_summary(20.0), 1)
    k = lo.cost.shape[0] - 1
    assert hi.tpot_s[0, k, 0] > lo.tpot_s[0, k, 0] > 0
    assert hi.ttft_s[0, k, 0] > lo.ttft_s[0, k, 0] > 0


def test_migration_defaults_mirror_the_simulator() -> None:
    sim = MigrationConfig()
    core = MigrationModel()
    assert core.bandwidth_bytes_per_s == sim.bandwidth_bytes_per_s
    assert core.downtime_base_s == sim.downtime_base_s
    assert core.replay_overhead_s == sim.replay_overhead_s
    assert MigrationModel.like(sim, "replay").mechanism == "replay"
    with pytest.raises(ValidationError):
        MigrationModel(mechanism="teleport")


def test_migration_latency_per_mechanism() -> None:
    ctx = np.array([[16384.0]])
    tpot = np.array([[0.01]])
    kv = StageModel(H100, migration=MigrationModel(mechanism="kv-transfer"))
    rp = StageModel(H100, migration=MigrationModel(mechanism="replay"))
    b = H100.model.kv_bytes_per_token
    copy_s = 16384 * b / 25e9
    want_kv = 0.005 + (copy_s / 0.01) * b / 25e9
    assert kv._migration_latency_s(ctx, tpot, tpot)[0, 0] == pytest.approx(want_kv)
    # Replay re-prefills the whole context: far more than a stop-and-copy.
    assert rp._migration_latency_s(ctx, tpot, tpot)[0, 0] > 5 * want_kv
    # With a shared KV store the context loads at the store's bandwidth, then one step.
    store = MigrationModel(mechanism="replay", kv_store_bandwidth_bytes_per_s=10e9)
    st = StageModel(H100, migration=store)
    step = np.array([[0.004]])
    want = 0.002 + 16384 * b / 10e9 + 0.004
    assert st._migration_latency_s(ctx, tpot, step)[0, 0] == pytest.approx(want)
    assert store.recomputes is False and MigrationModel(mechanism="replay").recomputes
    sim = MigrationConfig(mechanism=MigrationMechanism.REPLAY, kv_store_bandwidth_bytes_per_s=1e9)
    assert MigrationModel.like(sim, "replay").kv_store_bandwidth_bytes_per_s == 1e9
    with pytest.raises(ValidationError):
        MigrationModel(kv_store_bandwidth_bytes_per_s=1e9)  # kv-transfer has no store


def test_a_kv_store_removes_the_replayed_prefill_from_the_destination_stage() -> None:
    grid = exponential_grid(H100.model.max_context_tokens)
    summary = log_uniform_summary(grid, seed=1)
    plain = StageModel(H100, migration=MigrationModel(mechanism="replay"))
    stored = StageModel(
        H100,
        migration=MigrationModel(mechanism="replay", kv_store_bandwidth_bytes_per_s=25e9),
    )
    a = plain.cost_table(summary, 4)
    b = stored.cost_table(summary, 4)
    finite = np.isfinite(a.cost) & np.isfinite(b.cost)
    # Re-prefilled contexts load the downstream stages: the store is never costlier, but for a
    # hair near saturation, where fewer prefill steps leave more decode-only steps and the
    # measured alpha is higher in those (0.15 against 0.04 at 128 decodes).
    assert np.all(b.cost[finite] <= a.cost[finite] * (1 + 1e-2))
    assert np.mean(b.cost[finite] <= a.cost[finite] * (1 + 1e-9)) > 0.99
    assert np.any(b.cost[finite] < a.cost[finite] * 0.99)


def test_slo_weights() -> None:
    w = QoeWeights.slo_normalised(ttft_slo_s=2.0, tpot_slo_s=0.1)
    assert (w.ttft, w.tpot, w.migration) == (0.5, 10.0, 10.0)
    with pytest.raises(ValidationError):
        QoeWeights(ttft=-1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mechanism": "teleport"}, "migration mechanism must be one of"),
        ({"bandwidth_bytes_per_s": 0.0}, "^migration bandwidth must be > 0$"),
        ({"downtime_base_s": -1.0}, "^migration overheads must be >= 0$"),
        ({"replay_overhead_s": -1.0}, "^migration overheads must be >= 0$"),
    ],
)
def test_migration_model_is_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MigrationModel(**kwargs)  # type: ignore[arg-type]
    MigrationModel(downtime_base_s=0.0, replay_overhead_s=0.0)


def test_migration_latency_of_whole_token_counts() -> None:
    # The public entry: contexts as integers, the TPOT and step time as scalars.
    b = H100.model.kv_bytes_per_token
    kv = StageModel(H100, migration=MigrationModel(mechanism="kv-transfer"))
    want_kv = 0.005 + (16384 * b / 25e9 / 0.01) * b / 25e9
    assert kv.migration_latency_s([16384, 16384], 0.01, 0.004).tolist() == pytest.approx(
        [want_kv, want_kv]
    )
    store = MigrationModel(mechanism="replay", kv_store_bandwidth_bytes_per_s=10e9)
    got = StageModel(H100, migration=store).migration_latency_s([16384], 0.01, 0.004)
    assert got.tolist() == pytest.approx([0.002 + 16384 * b / 10e9 + 0.004])


def test_prefill_work_uses_the_one_kernel_fit_where_the_profile_has_one() -> None:
    mixed = H100.mixed_attention
    assert mixed is not None and mixed.per_token_s != H100.prefill_attention.per_token_s
    model = StageModel(H100)
    layers = H100.model.num_layers
    budget = float(model.instance.max_num_batched_tokens)
    per_token = (H100.linear(budget) - H100.linear(1.0)) / (budget - 1.0)
    tokens, tokens_sq, chunks = 3000.0, 5e6, 2.0
    want = (
        (per_token + layers * mixed.per_token_s) * tokens
        + layers * mixed.per_token_context_s * (tokens_sq + tokens) / 2.0
        + layers * mixed.base_s * chunks
    )
    got = model.prefill_work_s(np.array([tokens]), np.array([tokens_sq]), np.array([chunks]))
    assert got[0] == pytest.approx(want, rel=1e-12)
