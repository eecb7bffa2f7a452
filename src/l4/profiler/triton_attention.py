# ruff: noqa: N803 (Triton kernels name their compile-time constants in capitals)
"""A paged, split-KV attention kernel in Triton, built like vLLM's Triton attention backend.

What it computes: for each sequence of a step (decodes with one query token, prefill chunks with
many), causal attention of its queries over its paged K/V (``block_table`` pages of ``PAGE``
tokens, layout (pages, page tokens, KV heads, head dim) as in vLLM), GQA by sharing each KV head
with its group of query heads. ``reference_attention`` in ``l4.profiler.kernels`` is the float32
reference it is checked against before any timing.

How, following the design of vLLM's ``unified_attention`` (triton_unified_attention.py; no code
taken from it): one program per (query block, KV head[, KV split]). A query block is
``BLOCK_Q`` consecutive query tokens of one sequence times the ``GROUP`` query heads of the KV
head, ``BLOCK_M`` = ``BLOCK_Q * GROUP`` rows (at least 16, the smallest ``tl.dot``), so one load
of a K/V tile serves every query head that reads it. A program walks the context in tiles of
``TILE`` tokens, translating positions to pages through the block table, with an online softmax.

The launch policy is the straggler mechanism being measured, so it mirrors vLLM's: a batch of
decodes only, small enough that ``blocks x KV heads <= 128`` programs would leave the GPU idle,
splits every sequence's context into ``NUM_SPLITS = 16`` equal segments (tile 16) and merges the
partial results in a second kernel; every other batch (any prefill, or many decodes) runs one
program per block over its whole context (tile 32). One long sequence in a large batch is then
walked by a handful of programs while the rest of the GPU has finished.

On a CPU the kernels run under Triton's interpreter, which Triton selects when it is imported:
``TRITON_INTERPRET=1`` must be set before the first ``import triton`` of the process
(``l4.profiler.kernels.import_triton_attention`` does that and refuses a mismatch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import triton  # type: ignore[import-not-found,import-untyped,unused-ignore]
import triton.language as tl  # type: ignore[import-not-found,import-untyped,unused-ignore]

from l4.errors import ConfigError

TRITON_VERSION: str = str(triton.__version__)


@dataclass(frozen=True, slots=True, kw_only=True)
class SplitPolicy:
    """When to split the KV walk (vLLM's defaults: at most 128 programs, 16 segments)."""

    max_programs_to_split: int = 128
    num_splits: int = 16
    tile_tokens: int = 32
    """Tile of the unsplit kernel (vLLM's prefill tile)."""
    split_tile_tokens: int = 16
    """Tile of the split kernel (vLLM's decode tile for 16-bit caches)."""


VLLM_POLICY = SplitPolicy()


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchPlan:
    """The grid of one step: which sequence and first query token each query block covers."""

    group: int
    block_m: int
    block_q: int
    block_seq: tuple[int, ...]
    block_first: tuple[int, ...]
    num_splits: int
    tile_tokens: int

    @property
    def num_blocks(self) -> int:
        return len(self.block_seq)


def plan_launch(
    query_tokens: Sequence[int], num_q_heads: int, num_kv_heads: int, policy: SplitPolicy
) -> LaunchPlan:
    """The launch of one step with ``query_tokens`` queries per sequence.

    vLLM finds each block's sequence by a binary search inside the kernel; here the host lists
    them once when the step is prepared, which is outside the timed region either way.
    """
    group = num_q_heads // num_kv_heads
    block_m = 16 if group <= 16 else 1 << (group - 1).bit_length()
    block_q = block_m // group
    seqs: list[int] = []
    firsts: list[int] = []
    for seq, tokens in enumerate(query_tokens):
        for first in range(0, tokens, block_q):
            seqs.append(seq)
            firsts.append(first)
    split = max(query_tokens) == 1 and len(seqs) * num_kv_heads <= policy.max_programs_to_split
    return LaunchPlan(
        group=group,
        block_m=block_m,
        block_q=block_q,
        block_seq=tuple(seqs),
        block_first=tuple(firsts),
        num_splits=policy.num_splits if split else 1,
        tile_tokens=policy.split_tile_tokens if split else policy.tile_tokens,
    )


@triton.jit  # type: ignore[untyped-decorator,misc,unused-ignore]
def _attention_kernel(
    out_ptr: tl.tensor,
    part_acc_ptr: tl.tensor,
    part_max_ptr: tl.tensor,
    part_sum_ptr: tl.tensor,
    q_ptr: tl.tensor,
    k_ptr: tl.tensor,
    v_ptr: tl.tensor,
    block_table_ptr: tl.tensor,
    kv_len_ptr: tl.tensor,
    q_start_ptr: tl.tensor,
    block_seq_ptr: tl.tensor,
    block_first_ptr: tl.tensor,
    scale: tl.float32,
    q_stride_tok: tl.int64,
    q_stride_head: tl.int64,
    o_stride_tok: tl.int64,
    o_stride_head: tl.int64,
    kv_stride_page: tl.int64,
    kv_stride_tok: tl.int64,
    kv_stride_head: tl.int64,
    table_stride: tl.int64,
    NUM_Q_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE: tl.constexpr,
    TILE: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
) -> None:
    block = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq = tl.load(block_seq_ptr + block)
    first = tl.load(block_first_ptr + block)
    q_begin = tl.load(q_start_ptr + seq)
    q_len = tl.load(q_start_ptr + seq + 1) - q_begin
    kv_len = tl.load(kv_len_ptr + seq)
    # the chunk's own keys are in the cache already (vLLM v1): queries sit at its end
    cached = kv_len - q_len

    rows = tl.arange(0, BLOCK_M)
    q_pos = first + rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    row_ok = (rows < BLOCK_Q * GROUP) & (q_pos < q_len)
    dims = tl.arange(0, HEAD_DIM)
    tok = (q_begin + q_pos).to(tl.int64)
    q = tl.load(
        q_ptr + tok[:, None] * q_stride_tok + head[:, None] * q_stride_head + dims[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )

    # causal: no query of the block sees past its last query's position
    key_end = tl.minimum(cached + first + BLOCK_Q, kv_len)
    num_tiles = (key_end + TILE - 1) // TILE
    per_split = (num_tiles + NUM_SPLITS - 1) // NUM_SPLITS
    tile_lo = split * per_split
    tile_hi = tl.minimum(tile_lo + per_split, num_tiles)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    table_row = block_table_ptr + seq.to(tl.int64) * table_stride
    offsets = tl.arange(0, TILE)
    for t in range(tile_lo, tile_hi):
        pos = t * TILE + offsets
        key_ok = pos < key_end
        page = tl.load(table_row + pos // PAGE, mask=key_ok, other=0).to(tl.int64)
        slot = page * kv_stride_page + (pos % PAGE) * kv_stride_tok + kv_head * kv_stride_head
        k = tl.load(k_ptr + slot[None, :] + dims[:, None], mask=key_ok[None, :], other=0.0)
        v = tl.load(v_ptr + slot[:, None] + dims[None, :], mask=key_ok[:, None], other=0.0)
        s = tl.dot(q, k) * scale
        visible = key_ok[None, :] & (pos[None, :] <= cached + q_pos[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # a row with nothing visible yet keeps -inf; 0 as its reference avoids inf - inf
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_ref[:, None])
        rescale = tl.exp(m_i - m_ref)
        l_i = l_i * rescale + tl.sum(p, axis=1)
        acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_off = tok[:, None] * o_stride_tok + head[:, None] * o_stride_head + dims[None, :]
        tl.store(out_ptr + o_off, out, mask=row_ok[:, None])
    else:
        part = (tok * NUM_Q_HEADS + head) * NUM_SPLITS + split
        tl.store(part_max_ptr + part, m_i, mask=row_ok)
        tl.store(part_sum_ptr + part, l_i, mask=row_ok)
        tl.store(part_acc_ptr + part[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_ok[:, None])


@triton.jit  # type: ignore[untyped-decorator,misc,unused-ignore]
def _merge_kernel(
    out_ptr: tl.tensor,
    part_acc_ptr: tl.tensor,
    part_max_ptr: tl.tensor,
    part_sum_ptr: tl.tensor,
    o_stride_tok: tl.int64,
    o_stride_head: tl.int64,
    NUM_Q_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
) -> None:
    tok = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    base = (tok * NUM_Q_HEADS + head) * NUM_SPLITS
    splits = tl.arange(0, NUM_SPLITS)
    dims = tl.arange(0, HEAD_DIM)
    # split 0 always holds the first key, which every query sees: the maximum is finite
    m = tl.load(part_max_ptr + base + splits)
    m_all = tl.max(m, axis=0)
    w = tl.exp(m - m_all)
    total = tl.sum(w * tl.load(part_sum_ptr + base + splits), axis=0)
    acc = tl.load(part_acc_ptr + (base + splits)[:, None] * HEAD_DIM + dims[None, :])
    out = tl.sum(acc * w[:, None], axis=0) / total
    tl.store(out_ptr + tok * o_stride_tok + head * o_stride_head + dims, out)


KERNEL_NAMES = ("_attention_kernel", "_merge_kernel")
"""The Triton kernels' names, as profilers list them."""


def prepare_paged_attention(
    *,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    query_tokens: Sequence[int],
    cu_seq_q: torch.Tensor,
    kv_lens: torch.Tensor,
    block_table: torch.Tensor,
    policy: SplitPolicy = VLLM_POLICY,
) -> Callable[[], torch.Tensor]:
    """A prepared step: buffers and grid built once, each call launches the kernel(s) only.

    ``query`` is (tokens, query heads, head dim); the caches (pages, page tokens, KV heads, head
    dim); ``cu_seq_q`` the int32 query offsets (sequences + 1), ``kv_lens`` the int32 context
    lengths including each sequence's own queries, ``block_table`` (sequences, pages) int32.
    On a CPU tensor the kernels run under Triton's interpreter.
    """
    num_tokens, num_q_heads, head_dim = (int(d) for d in query.shape)
    _, page_tokens, num_kv_heads, kv_dim = (int(d) for d in key_cache.shape)
    if value_cache.shape != key_cache.shape or value_cache.stride() != key_cache.stride():
        raise ConfigError("triton kernel: K and V caches must have the same layout")
    if kv_dim != head_dim or num_q_heads % num_kv_heads:
        raise ConfigError("triton kernel: query and cache head shapes do not match")
    if head_dim & (head_dim - 1) or head_dim < 16:
        raise ConfigError(f"triton kernel: head dim {head_dim} is not a power of two >= 16")
    if policy.num_splits & (policy.num_splits - 1):
        raise ConfigError("triton kernel: the number of KV splits must be a power of two")
    plan = plan_launch(query_tokens, num_q_heads, num_kv_heads, policy)
    attention, merge = _attention_kernel, _merge_kernel
    device = query.device
    block_seq = torch.tensor(plan.block_seq, dtype=torch.int32, device=device)
    block_first = torch.tensor(plan.block_first, dtype=torch.int32, device=device)
    out = torch.empty_like(query)
    splits = plan.num_splits
    part_acc = torch.empty(
        (num_tokens, num_q_heads, splits, head_dim) if splits > 1 else (1,),
        dtype=torch.float32,
        device=device,
    )
    part_max = torch.empty(
        (num_tokens, num_q_heads, splits) if splits > 1 else (1,),
        dtype=torch.float32,
        device=device,
    )
    part_sum = torch.empty_like(part_max)
    scale = 1.0 / math.sqrt(head_dim)
    grid = (plan.num_blocks, num_kv_heads, splits)

    def run() -> torch.Tensor:
        attention[grid](
            out,
            part_acc,
            part_max,
            part_sum,
            query,
            key_cache,
            value_cache,
            block_table,
            kv_lens,
            cu_seq_q,
            block_seq,
            block_first,
            scale,
            query.stride(0),
            query.stride(1),
            out.stride(0),
            out.stride(1),
            key_cache.stride(0),
            key_cache.stride(1),
            key_cache.stride(2),
            block_table.stride(0),
            NUM_Q_HEADS=num_q_heads,
            GROUP=plan.group,
            BLOCK_Q=plan.block_q,
            BLOCK_M=plan.block_m,
            HEAD_DIM=head_dim,
            PAGE=page_tokens,
            TILE=plan.tile_tokens,
            NUM_SPLITS=splits,
        )
        if splits > 1:
            merge[(num_tokens, num_q_heads)](
                out,
                part_acc,
                part_max,
                part_sum,
                out.stride(0),
                out.stride(1),
                NUM_Q_HEADS=num_q_heads,
                HEAD_DIM=head_dim,
                NUM_SPLITS=splits,
            )
        return out

    return run
