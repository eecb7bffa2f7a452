"""The decode batch a stage runs at: Newton's fixed point, its limits and tolerance, and the
least root past a hump of the step time (``l4.core.decode_batch``)."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest

from factories import tiny_profile
from l4.core import decode_batch as solver
from l4.core.decode_batch import batch_max, decode_batch, least_root
from l4.core.grid import exponential_grid
from l4.core.qoe import StageModel
from l4.core.summary import summarize_lengths
from l4.costmodel import StepCostModel, load_profile
from l4.instance import InstanceConfig

H100 = load_profile("h100-llama-3.2-3b")


def test_batch_max_follows_the_expected_maximum_of_the_batch() -> None:
    rng = np.random.default_rng(0)
    grid = exponential_grid(131072)
    s = summarize_lengths(
        grid,
        input_tokens=rng.integers(100, 100_000, 500),
        output_tokens=rng.integers(1, 500, 500),
        duration_s=100.0,
    )
    rt = s.ranges()
    k = grid.num_buckets
    qs = np.asarray(rt.lmax_quantiles)
    table = rt.l_max_by_quantile[:, 0, k][:, None]  # the whole range, one element
    col = np.array([0])
    # A batch of B + 1 = 9 requests: its longest sits at the 0.9 quantile.
    q90 = int(np.flatnonzero(np.isclose(qs, 0.9))[0])
    assert batch_max(table, qs, np.array([8.0]), col)[0] == pytest.approx(table[q90, 0])
    values = [
        batch_max(table, qs, np.array([b]), col)[0] for b in (0.0, 1.0, 3.0, 10.0, 100.0, 1e4)
    ]
    assert values == sorted(values)  # bigger batches meet longer maxima...
    assert values[-1] == pytest.approx(rt.l_max_tokens[0, k])  # ...up to the model's cap
    assert values[0] >= rt.l_mean_tokens[0, k] * 0.5


ROOMY = InstanceConfig(max_num_seqs=1024, max_num_batched_tokens=256, num_kv_blocks=8192)


def test_a_decode_batch_past_the_sequence_limit_is_refused() -> None:
    # Longest context = mean context: T(m) = A + S m is affine, and the batch solves
    # B = k_r T(B + 1), B = k_r (A + S) / (1 - k_r S): 4.37 for k_r = 2000, 10.8 for 3000.
    p = tiny_profile()
    layers, d = p.model.num_layers, p.decode_attention
    linear_slope = (p.linear.y[1] - p.linear.y[0]) / (p.linear.x[1] - p.linear.x[0])  # 1e-5
    a = p.step_fixed_s + layers * d.base_s
    s = (
        linear_slope
        + p.step_per_seq_s
        + layers * d.per_seq_s
        + layers * p.model.kv_bytes_per_token_per_layer / d.bytes_per_s * 100.0
    )
    k_r = np.array([2000.0, 3000.0])
    want = k_r * (a + s) / (1.0 - k_r * s)
    limit = 8
    assert want[0] < limit < want[1]
    model = StageModel(
        p,
        instance=InstanceConfig(max_num_seqs=limit, max_num_batched_tokens=256, num_kv_blocks=8192),
    )
    batch, _, ok = decode_batch(
        model, k_r, np.full(2, 100.0), np.full((1, 2), 100.0), np.array([0.99]), np.zeros(2),
        np.array([True, True]), model.limits,
    )  # fmt: skip
    assert ok.tolist() == [True, False]
    assert batch[0] == pytest.approx(want[0], rel=1e-9)


class _RecordingModel(StageModel):
    """Records Newton's iterates: the batches B at which it evaluates T(B + 1)."""

    def __init__(self) -> None:
        super().__init__(tiny_profile(), instance=ROOMY)
        self.iterates: list[float] = []

    def decode_step_s(
        self,
        batch: npt.NDArray[np.float64],
        l_mean: npt.NDArray[np.float64],
        l_max: npt.NDArray[np.float64],
        prefill_frac: npt.NDArray[np.float64],
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        self.iterates.append(float(batch[0]) - 1.0)
        return super().decode_step_s(batch, l_mean, l_max, prefill_frac)


@pytest.mark.parametrize(("tol", "prefill_rate"), [(0.05, 0.0), (0.01, 300.0)])
def test_newton_stops_at_the_first_step_within_its_tolerance(
    monkeypatch: pytest.MonkeyPatch, tol: float, prefill_rate: float
) -> None:
    # Mean context 100, longest 1000: alpha (falling with the batch) and the prefill share make
    # T non-linear, so Newton takes several steps. It stops after the first step that moves B
    # by at most tol x (1 + B), and not before.
    monkeypatch.setattr(solver, "_NEWTON_TOL", tol)
    model = _RecordingModel()
    batch, _, ok = decode_batch(
        model, np.array([500.0]), np.array([100.0]), np.array([[1000.0]]), np.array([0.99]),
        np.array([prefill_rate]), np.array([True]), model.limits,
    )  # fmt: skip
    b = [*model.iterates, float(batch[0])]
    assert ok[0] and 4 <= len(b) < 40
    moves = [abs(y - x) for x, y in itertools.pairwise(b)]
    assert all(m > tol * (1.0 + y) for m, y in zip(moves[:-1], b[1:-1], strict=True))
    assert moves[-1] <= tol * (1.0 + b[-1])


@pytest.mark.parametrize("residual", [0.5e-3, 1.4e-3])
def test_an_unconverged_newton_hands_over_to_the_root_scan(
    monkeypatch: pytest.MonkeyPatch, residual: float
) -> None:
    # Without Newton steps the batch stays at B = 0, where B = k_r T(B + 1) misses by k_r T(1):
    # the scan and bisection take over and find Newton's root. Four requests of 100 + 50 tokens
    # decode 200 steps at contexts 100..149 and barely prefill: k_r is their decode steps per
    # second on one instance.
    p = tiny_profile()
    t1 = StepCostModel(p).step_time_s(num_decodes=1, context_sum_tokens=125, context_max_tokens=125)
    grid = exponential_grid(2048, substeps_per_octave=1, min_tokens=64)
    summary = summarize_lengths(
        grid, input_tokens=[100] * 4, output_tokens=[50] * 4, duration_s=200 * t1 / residual
    )
    model = StageModel(p, instance=ROOMY)
    rt = summary.ranges(model.lmax_quantile)
    k = grid.num_buckets
    newton = model.stage_prediction(rt, [0], [k], 1)
    assert np.isfinite(newton[0][0])
    monkeypatch.setattr(solver, "_NEWTON_STEPS", 0)
    scanned = model.stage_prediction(rt, [0], [k], 1)
    for a, b in zip(newton, scanned, strict=True):
        assert b[0] == pytest.approx(a[0], rel=1e-6)


def test_the_least_root_past_a_hump_of_the_step_time() -> None:
    # Hopper's measured alpha rises from 16 to 32 decodes and falls after: T(B) has a hump
    # that Newton from B = 0 cannot cross (F' >= 0 on it) or cycles across. One stage of 16
    # instances of Azure-chat-like traffic (mean context 1254, longest 4567) at 5518 decode
    # steps per second per instance: F > 0 up to B = 40 and < 0 from 60, so the operating
    # batch is in between; before the scan the stage was refused as overloaded.
    model = StageModel(H100)
    quantiles = np.array([0.5, 0.95, 0.99])
    l_max_q = np.array([[1263.0], [1946.0], [4567.0]])
    k_r = np.array([5517.7])
    batch, frac, ok = decode_batch(
        model,
        k_r,
        np.array([1254.3]),
        l_max_q,
        quantiles,
        np.array([20.8]),
        np.array([True]),
        model.limits,
    )
    assert ok[0] and 40.0 < batch[0] < 60.0

    def excess(b: float) -> float:
        lx = batch_max(l_max_q, quantiles, np.array([b]), np.array([0]))
        t, _ = model.decode_step_s(np.array([b + 1.0]), np.array([1254.3]), lx, frac)
        return float(k_r[0] * t[0] - b)

    assert abs(excess(float(batch[0]))) <= 1e-3 * (1.0 + batch[0])
    # The least root: F stays positive on a fine grid below it.
    assert all(excess(b) > 0 for b in np.linspace(0.0, batch[0] - 0.5, 200))


def test_the_least_root_of_many_elements_is_each_ones_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The scan and the sections evaluate every element's batches as rows of one array, in
    # chunks of columns: no element may see another's. Elements past the hump, below it and
    # overloaded, solved together (several chunks) and one by one, must agree exactly.
    monkeypatch.setattr(solver, "_SCAN_ELEMENTS", 16 * 40)  # chunks of 40 columns, 2 scan rows
    model = StageModel(H100)
    quantiles = np.array([0.5, 0.95, 0.99])
    n = 101
    rng = np.random.default_rng(7)
    l_mean = rng.uniform(300.0, 3000.0, n)
    l_max_q = np.vstack([l_mean * 1.05, l_mean * 1.6, l_mean * 3.5])
    k_r = rng.uniform(500.0, 9000.0, n)
    rate = rng.uniform(0.0, 40.0, n)
    args = (l_max_q, quantiles)
    cols = np.arange(n)
    together = least_root(model, k_r, l_mean, *args, rate, cols, model.limits)
    root, _, found = together
    assert found.any() and not found.all()  # some found, some overloaded

    # Each root is one: F(B) = k_r T(B + 1) - B (the prefill share iterated three times, as
    # the solver does) changes sign there, from above to below.
    def f(b: float, i: int) -> float:
        lx = batch_max(l_max_q, quantiles, np.array([b]), cols[[i]])
        share = np.zeros(1)
        for _ in range(3):
            step_s, _ = model.decode_step_s(np.array([b + 1.0]), l_mean[[i]], lx, share)
            share = np.minimum(rate[[i]] * step_s, 1.0)
        return float(k_r[i] * step_s[0] - b)

    for i in np.flatnonzero(found):
        eps = 1e-9 * (1.0 + root[i])
        assert f(root[i] - eps, i) > 0 >= f(root[i] + eps, i)
    for i in range(n):
        alone = least_root(model, k_r[[i]], l_mean[[i]], *args, rate[[i]], cols[[i]], model.limits)
        for a, b in zip(together, alone, strict=True):
            assert a[i] == b[0]
