"""Attention over a paged KV pool with what PyTorch offers, and a reference to check it against.

* ``varlen``: one FlashAttention-2 launch for the whole step through
  ``torch.nn.attention.varlen.varlen_attn`` with a block table (CUDA only). This is how vLLM v1's
  FlashAttention backend runs a step: decodes (one query token each) and the prefill chunk
  (causal, aligned to the end of its context) in a single varlen call over the paged cache. A
  decode-only step is passed as non-causal, which is the same attention for one query token and
  lets the kernel take its decode path (query heads of a KV group packed together), as vLLM's
  does. PyTorch's FlashAttention-2 needs pages of a multiple of 256 tokens.
* ``sdpa``: one ``scaled_dot_product_attention`` call per sequence on K/V gathered from the pool
  beforehand (any device). It serialises the sequences, so it is a reference and the CPU smoke
  path, not a model of an engine.

``reference_attention`` is plain float32 math; ``check_kernel`` compares a kernel with it before
any timing, so a mis-set flag (causal alignment, GQA grouping, page size) fails loudly instead of
producing plausible numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 (the usual torch alias)

from l4.errors import ConfigError
from l4.profiler.grid import BatchLayout, HeadShape, PrefillSpec, page_table

KERNELS = ("varlen", "sdpa")

Attention = Callable[[], torch.Tensor]
"""A prepared step: calling it runs the attention once and returns the output."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KvPool:
    """Paged K and V of one layer: (pages, page tokens, KV heads, head dim) each."""

    key: torch.Tensor
    value: torch.Tensor

    @property
    def num_pages(self) -> int:
        return int(self.key.shape[0])

    @property
    def page_tokens(self) -> int:
        return int(self.key.shape[1])


def allocate_pool(
    head: HeadShape,
    *,
    num_pages: int,
    page_tokens: int,
    device: torch.device,
    dtype: torch.dtype,
    seed: int,
) -> KvPool:
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (num_pages, page_tokens, head.num_kv_heads, head.head_dim)
    key = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    value = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    return KvPool(key=key, value=value)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceBatch:
    """A ``BatchLayout`` on the device, in FlashAttention's varlen + block-table form."""

    layout: BatchLayout
    query: torch.Tensor
    """(total query tokens, query heads, head dim)"""
    cu_seq_q: torch.Tensor
    cu_seq_k: torch.Tensor
    seqused_k: torch.Tensor
    block_table: torch.Tensor
    """(sequences, max pages) int32; the varlen kernel reads pages of the pool through it"""

    @property
    def max_q(self) -> int:
        return max(self.layout.query_tokens)

    @property
    def max_k(self) -> int:
        return max(self.layout.kv_tokens)


def _cumulative(lengths: tuple[int, ...], device: torch.device) -> torch.Tensor:
    out = [0]
    for v in lengths:
        out.append(out[-1] + v)
    return torch.tensor(out, dtype=torch.int32, device=device)


def device_batch(layout: BatchLayout, head: HeadShape, pool: KvPool, *, seed: int) -> DeviceBatch:
    device = pool.key.device
    table = page_table(layout.kv_tokens, pool.page_tokens, pool.num_pages, seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    query = torch.randn(
        (sum(layout.query_tokens), head.num_q_heads, head.head_dim),
        generator=gen,
        device=device,
        dtype=pool.key.dtype,
    )
    return DeviceBatch(
        layout=layout,
        query=query,
        cu_seq_q=_cumulative(layout.query_tokens, device),
        cu_seq_k=_cumulative(layout.kv_tokens, device),
        seqused_k=torch.tensor(layout.kv_tokens, dtype=torch.int32, device=device),
        block_table=torch.from_numpy(table).to(device),
    )


def _sequence_kv(batch: DeviceBatch, pool: KvPool, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence i's K and V gathered from its pages: (KV heads, tokens, head dim) each."""
    tokens = batch.layout.kv_tokens[i]
    pages = batch.block_table[i, : math.ceil(tokens / pool.page_tokens)].long()
    k = pool.key[pages].flatten(0, 1)[:tokens]
    v = pool.value[pages].flatten(0, 1)[:tokens]
    return k.transpose(0, 1), v.transpose(0, 1)


def _causal_mask(prefill: PrefillSpec, device: torch.device) -> torch.Tensor:
    """Query i of a chunk after ``prior`` cached tokens sees keys 0 .. prior + i (bottom-right)."""
    q = torch.arange(prefill.chunk_tokens, device=device)[:, None]
    k = torch.arange(prefill.prior_tokens + prefill.chunk_tokens, device=device)[None, :]
    return k <= q + prefill.prior_tokens


def _queries(batch: DeviceBatch) -> list[torch.Tensor]:
    """Each sequence's queries: (query heads, tokens, head dim)."""
    out, start = [], 0
    for tokens in batch.layout.query_tokens:
        out.append(batch.query[start : start + tokens].transpose(0, 1))
        start += tokens
    return out


def prepare_varlen(batch: DeviceBatch, pool: KvPool) -> Attention:
    if pool.key.device.type != "cuda":
        raise ConfigError("the varlen kernel (FlashAttention) needs --device cuda; use sdpa")
    # imported here: the module pulls in torch._dynamo (1.5 s), which the CPU path never needs
    from torch.nn.attention.varlen import varlen_attn

    window = (-1, 0) if batch.layout.has_prefill else (-1, -1)
    max_q, max_k = batch.max_q, batch.max_k

    def run() -> torch.Tensor:
        out = varlen_attn(
            batch.query,
            pool.key,
            pool.value,
            batch.cu_seq_q,
            batch.cu_seq_k,
            max_q,
            max_k,
            window_size=window,
            enable_gqa=True,
            seqused_k=batch.seqused_k,
            block_table=batch.block_table,
        )
        assert isinstance(out, torch.Tensor)  # a tuple only when return_aux asks for the lse
        return out

    return run


def prepare_sdpa(batch: DeviceBatch, pool: KvPool) -> Attention:
    device = pool.key.device
    kv = [_sequence_kv(batch, pool, i) for i in range(len(batch.layout.kv_tokens))]
    queries = _queries(batch)
    masks: list[torch.Tensor | None] = [None] * len(queries)
    if batch.layout.has_prefill:
        masks[-1] = _causal_mask(batch.layout.prefill, device)

    def run() -> torch.Tensor:
        outs = [
            F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=m, enable_gqa=True)[
                0
            ].transpose(0, 1)
            for q, (k, v), m in zip(queries, kv, masks, strict=True)
        ]
        return torch.cat(outs)

    return run


PREPARE: dict[str, Callable[[DeviceBatch, KvPool], Attention]] = {
    "varlen": prepare_varlen,
    "sdpa": prepare_sdpa,
}


def reference_attention(batch: DeviceBatch, pool: KvPool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per sequence in float32, GQA by repeating KV heads."""
    group = batch.query.shape[1] // pool.key.shape[2]
    scale = 1.0 / math.sqrt(batch.query.shape[2])
    outs = []
    for i, q in enumerate(_queries(batch)):
        k, v = (t.float().repeat_interleave(group, dim=0) for t in _sequence_kv(batch, pool, i))
        scores = q.float() @ k.transpose(1, 2) * scale
        if batch.layout.has_prefill and i == len(batch.layout.kv_tokens) - 1:
            mask = _causal_mask(batch.layout.prefill, q.device)
            scores = scores.masked_fill(~mask, float("-inf"))
        outs.append((scores.softmax(-1) @ v).transpose(0, 1))
    return torch.cat(outs)


CHECK_LAYOUTS = (
    BatchLayout(decode_kv_tokens=(37, 300, 513)),
    BatchLayout(
        decode_kv_tokens=(37, 300, 513), prefill=PrefillSpec(chunk_tokens=20, prior_tokens=45)
    ),
)
"""Lengths off page boundaries, a long and a short decode, a chunk after a cached prefix."""


def check_kernel(kernel: str, head: HeadShape, pool: KvPool, *, seed: int) -> float:
    """Run ``kernel`` on ``CHECK_LAYOUTS`` against ``reference_attention``; the worst absolute
    error, or ConfigError if it is beyond the dtype's rounding."""
    tol = 1e-4 if pool.key.dtype == torch.float32 else 3e-2
    worst = 0.0
    for j, layout in enumerate(CHECK_LAYOUTS):
        batch = device_batch(layout, head, pool, seed=seed + j)
        got = PREPARE[kernel](batch, pool)().float()
        want = reference_attention(batch, pool)
        err = float((got - want).abs().max())
        worst = max(worst, err)
        if not err <= tol * (1.0 + float(want.abs().max())):
            what = "with a prefill chunk" if layout.has_prefill else "decode-only"
            raise ConfigError(
                f"kernel {kernel} disagrees with the reference attention on a {what} batch "
                f"(max abs error {err:.3g}); refusing to time it"
            )
    return worst
