"""KV placement (pages, contiguous windows) and the flash kernel's plumbing, on a CPU.

PyTorch's FlashAttention op runs only on CUDA, so ``fake_flash`` stands in for it: a float32
model of the op's documented contract (varlen queries by ``cum_seq_q``; each sequence's keys
start at ``cum_seq_k[i]`` and number ``seqused_k[i]`` when given, else ``cum_seq_k[i+1] -
cum_seq_k[i]``; with ``block_table`` key position j is slot j % page of page
``block_table[i, j // page]``; GQA by key-head groups; causal aligned to the bottom right). The
real op is checked the same way on the GPU before anything is timed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")  # the profiler's extra; CI may run without it

from l4.errors import ConfigError, ValidationError  # noqa: E402
from l4.profiler import kernels  # noqa: E402
from l4.profiler.grid import BatchLayout, HeadShape, PrefillSpec, window_starts  # noqa: E402

CPU = torch.device("cpu")
HEAD = HeadShape(num_q_heads=6, num_kv_heads=2, head_dim=16)
ALL_ARGS = frozenset({"seqused_k", "block_table", "window_size_left", "alibi_slopes"})


def fake_flash(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cum_seq_q: torch.Tensor,
    cum_seq_k: torch.Tensor,
    max_q: int,
    max_k: int,
    dropout_p: float,
    is_causal: bool,
    return_debug_mask: bool,
    *,
    seqused_k: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,
    honour_seqused_k: bool = True,
) -> tuple[torch.Tensor, ...]:
    assert dropout_p == 0.0 and not return_debug_mask
    outs = []
    for i in range(cum_seq_q.numel() - 1):
        q = query[int(cum_seq_q[i]) : int(cum_seq_q[i + 1])].float()
        if seqused_k is not None and honour_seqused_k:
            n_k = int(seqused_k[i])
        else:
            n_k = int(cum_seq_k[i + 1]) - int(cum_seq_k[i])
        pos = torch.arange(max(n_k, 0))
        if block_table is not None:
            page = key.shape[1]
            pages = block_table[i, pos // page].long()
            k, v = key[pages, pos % page], value[pages, pos % page]
        else:
            start = int(cum_seq_k[i])
            k, v = key[start + pos], value[start + pos]
        group = q.shape[1] // k.shape[1]
        k = k.float().repeat_interleave(group, dim=1)
        v = v.float().repeat_interleave(group, dim=1)
        s = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
        if is_causal:
            visible = pos[None, :] <= torch.arange(q.shape[0])[:, None] + n_k - q.shape[0]
            s = s.masked_fill(~visible, float("-inf"))
        outs.append(torch.einsum("hqk,khd->qhd", s.softmax(-1), v))
    return (torch.cat(outs), torch.empty(0))


def _use_fake(monkeypatch: pytest.MonkeyPatch, args: frozenset[str], **kwargs: Any) -> None:
    monkeypatch.setattr(kernels, "_flash_op", lambda: lambda *a, **k: fake_flash(*a, **k, **kwargs))
    monkeypatch.setattr(kernels, "flash_arguments", lambda: args)


def _pool(page_tokens: int, num_pages: int) -> kernels.KvPool:
    return kernels.allocate_pool(
        HEAD, num_pages=num_pages, page_tokens=page_tokens, device=CPU, dtype=torch.float32, seed=5
    )


def test_flash_over_contiguous_windows_matches_the_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _use_fake(monkeypatch, ALL_ARGS - {"block_table"})
    spec = kernels.flash_spec("windows")
    assert not spec.paged
    assert kernels.check_kernel(spec, HEAD, _pool(256, 8), seed=2) < 1e-4


def test_paged_flash_matches_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    _use_fake(monkeypatch, ALL_ARGS)
    spec = kernels.flash_spec("paged")
    assert spec.paged
    assert kernels.check_kernel(spec, HEAD, _pool(256, 8), seed=2) < 1e-4


def test_overlapping_windows_need_seqused_k(monkeypatch: pytest.MonkeyPatch) -> None:
    # a torch without seqused_k delimits windows by cum_seq_k alone: only back-to-back batches
    _use_fake(monkeypatch, frozenset({"window_size_left"}))
    pool = _pool(256, 8)
    spec = kernels.flash_spec("windows")
    assert not spec.shares_kv
    assert kernels.check_kernel(spec, HEAD, pool, seed=2) < 1e-4
    too_big = BatchLayout(decode_kv_tokens=(1500, 1500))  # 3000 tokens, a pool of 2048
    batch = kernels.device_batch(too_big, HEAD, pool, paged=False, seed=0)
    assert not batch.back_to_back
    with pytest.raises(ConfigError, match="has no seqused_k"):
        spec.prepare(batch, pool)


def test_a_torch_that_ignores_seqused_k_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    _use_fake(monkeypatch, ALL_ARGS - {"block_table"}, honour_seqused_k=False)
    with pytest.raises(ConfigError, match="sharing pages"):
        kernels.check_kernel(kernels.flash_spec("windows"), HEAD, _pool(256, 8), seed=2)


def test_paged_flash_without_block_tables_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    _use_fake(monkeypatch, ALL_ARGS - {"block_table"})
    with pytest.raises(ConfigError, match="--flash-layout windows"):
        kernels.check_kernel(kernels.flash_spec("paged"), HEAD, _pool(256, 8), seed=2)


def test_flash_layout_follows_the_op_not_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "flash_arguments", lambda: ALL_ARGS)
    assert kernels.flash_layout("auto", 256) == "paged"
    assert kernels.flash_layout("auto", 16) == "windows"  # FlashAttention-2 pages are 256k
    assert kernels.flash_layout("windows", 256) == "windows"
    monkeypatch.setattr(kernels, "flash_arguments", lambda: ALL_ARGS - {"block_table"})
    assert kernels.flash_layout("auto", 256) == "windows"


def test_this_torch_reports_its_flash_arguments() -> None:
    # the op exists in CPU builds too (it only runs on CUDA): detection needs no GPU
    assert {"seqused_k", "window_size_left"} <= kernels.flash_arguments()


def test_a_window_longer_than_the_pool_is_one_clear_error() -> None:
    layout = BatchLayout(decode_kv_tokens=(10, 600))
    with pytest.raises(ConfigError, match="raise --kv-pool-gib"):
        kernels.device_batch(layout, HEAD, _pool(16, 32), paged=False, seed=0)


def test_windows_lie_back_to_back_while_the_batch_fits() -> None:
    starts, back_to_back = window_starts((3, 5, 2), 20, seed=4)
    assert back_to_back
    assert (np.diff(starts) == (3, 5)).all()
    assert 0 <= starts[0] <= 20 - 10


def test_windows_overlap_when_the_batch_does_not_fit() -> None:
    starts, back_to_back = window_starts((8, 8, 8), 20, seed=4)
    assert not back_to_back
    # span 20 - 8 = 12 over 3 sequences: slots 0, 4, 8 in some order, one common phase <= 4
    assert sorted(starts - starts.min()) == [0, 4, 8] and 0 <= starts.min() <= 4
    with pytest.raises(ValidationError):
        window_starts((11,), 10, seed=0)


@given(
    lengths=st.lists(st.integers(1, 50), min_size=1, max_size=12),
    extra=st.integers(0, 300),
    seed=st.integers(0, 1000),
)
def test_windows_stay_in_the_pool_and_are_disjoint_when_they_fit(
    lengths: list[int], extra: int, seed: int
) -> None:
    pool = max(lengths) + extra
    starts, back_to_back = window_starts(lengths, pool, seed)
    ends = starts + np.asarray(lengths)
    assert (starts >= 0).all() and (ends <= pool).all()
    assert back_to_back == (sum(lengths) <= pool)
    order = np.argsort(starts)
    if back_to_back:
        assert (starts[order][1:] >= ends[order][:-1]).all()
    else:  # spread evenly: no two sequences walk the same bytes close together
        spacing = (pool - max(lengths)) // len(lengths)
        assert (np.diff(starts[order]) >= spacing).all()


def test_a_prefill_only_batch_is_a_layout() -> None:
    layout = BatchLayout(decode_kv_tokens=(), prefill=PrefillSpec(chunk_tokens=4, prior_tokens=6))
    assert layout.query_tokens == (4,) and layout.kv_tokens == (10,)
    with pytest.raises(ValidationError):
        BatchLayout(decode_kv_tokens=())
