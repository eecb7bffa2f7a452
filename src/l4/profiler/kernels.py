"""Attention kernels over a KV pool, how a batch is placed in it, and the reference to check them.

Kernel families (``KERNELS``), each resolved by ``resolve_kernel`` from what the installed
software offers (capability detection, never version strings):

* ``flash``: one FlashAttention-2 launch for the whole step through
  ``torch.ops.aten._flash_attention_forward``, the op under ``torch.nn.attention.varlen``
  (CUDA only), as vLLM v1's FlashAttention backend runs a step: decodes (one query token each)
  and the prefill chunk (causal, aligned to the end of its context) in one varlen call, GQA
  native. Where the op takes a ``block_table`` (PyTorch >= 2.13) the K/V are paged (pages of a
  multiple of 256 tokens, FlashAttention-2's minimum); otherwise each sequence's K/V is one
  contiguous window of a flat pool, found by ``cu_seq_k`` (its first token) and ``seqused_k``
  (its length). Paging changes where the bytes are, not which program reads how many, so the
  straggler effect is the same. A decode-only step is non-causal, which for one query token is
  the same attention and lets FlashAttention pack the query heads of a KV group together.
* ``triton``: the paged, split-KV kernel of ``l4.profiler.triton_attention`` (vLLM's Triton
  backend design, 16-token pages). On a CPU it runs under Triton's interpreter.
* ``sdpa``: one ``scaled_dot_product_attention`` call per sequence on K/V gathered from the pool
  beforehand (any device). It serialises the sequences, so it is a reference and the CPU smoke
  path, not a model of an engine.

``reference_attention`` is plain float32 math; ``check_kernel`` compares a kernel with it before
any timing, on batches placed both freely and in a few pages (so pages or windows are shared, as
in the oversized reference batches), so a mis-set flag (causal alignment, GQA grouping, page
size, window offsets) fails loudly instead of producing plausible numbers.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the usual torch alias)

from l4.errors import ConfigError
from l4.profiler.grid import (
    BatchLayout,
    HeadShape,
    PrefillSpec,
    page_table,
    pages_for,
    window_starts,
)

KERNELS = ("flash", "triton", "sdpa")
FLASH_LAYOUTS = ("paged", "windows")
FLASH_MIN_PAGE_TOKENS = 256
TRITON_MISSING = "the triton kernel needs the triton package: pip install triton"

Attention = Callable[[], torch.Tensor]
"""A prepared step: calling it runs the attention once and returns the output."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KvPool:
    """K and V of one layer: (pages, page tokens, KV heads, head dim) each, contiguous, so a
    flat view (tokens, KV heads, head dim) serves the contiguous-window layout too."""

    key: torch.Tensor
    value: torch.Tensor

    @property
    def num_pages(self) -> int:
        return int(self.key.shape[0])

    @property
    def page_tokens(self) -> int:
        return int(self.key.shape[1])

    @property
    def num_tokens(self) -> int:
        return self.num_pages * self.page_tokens


def allocate_pool(
    head: HeadShape,
    *,
    num_pages: int,
    page_tokens: int,
    device: torch.device,
    dtype: torch.dtype,
    seed: int,
) -> KvPool:
    # random contents: zeros would hide wrong indexing from the check and can run faster
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (num_pages, page_tokens, head.num_kv_heads, head.head_dim)
    key = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    value = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    return KvPool(key=key, value=value)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceBatch:
    """A ``BatchLayout`` on the device, placed in the pool either through a block table (paged)
    or as one contiguous window of the flat pool per sequence."""

    layout: BatchLayout
    query: torch.Tensor
    """(total query tokens, query heads, head dim)"""
    cu_seq_q: torch.Tensor
    cu_seq_k: torch.Tensor
    """int32; paged: cumulative lengths; windows: each sequence's first token in the flat pool,
    then the end of the last window"""
    seqused_k: torch.Tensor
    """int32 context length of each sequence"""
    block_table: torch.Tensor | None
    """paged: (sequences, max pages) int32"""
    kv_start: tuple[int, ...] | None
    """windows: each sequence's first token in the flat pool"""
    back_to_back: bool
    """windows laid one after the other, so ``cu_seq_k`` alone delimits them"""

    @property
    def max_q(self) -> int:
        return max(self.layout.query_tokens)

    @property
    def max_k(self) -> int:
        return max(self.layout.kv_tokens)


def _cumulative(lengths: tuple[int, ...]) -> list[int]:
    out = [0]
    for v in lengths:
        out.append(out[-1] + v)
    return out


def device_batch(
    layout: BatchLayout,
    head: HeadShape,
    pool: KvPool,
    *,
    paged: bool,
    seed: int,
    region_pages: int | None = None,
) -> DeviceBatch:
    """Place ``layout`` in the first ``region_pages`` pages of the pool (default: all of it)."""
    device = pool.key.device
    region = min(region_pages or pool.num_pages, pool.num_pages)
    gen = torch.Generator(device=device).manual_seed(seed)
    query = torch.randn(
        (sum(layout.query_tokens), head.num_q_heads, head.head_dim),
        generator=gen,
        device=device,
        dtype=pool.key.dtype,
    )
    block_table = None
    kv_start: tuple[int, ...] | None = None
    back_to_back = True
    if paged:
        table = page_table(layout.kv_tokens, pool.page_tokens, region, seed)
        block_table = torch.from_numpy(table).to(device)
        cu_k = _cumulative(layout.kv_tokens)
    else:
        region_tokens = region * pool.page_tokens
        if layout.max_kv_tokens > region_tokens:
            raise ConfigError(
                f"a sequence of {layout.max_kv_tokens} tokens does not fit the KV pool of "
                f"{region_tokens} tokens; raise --kv-pool-gib"
            )
        starts, back_to_back = window_starts(layout.kv_tokens, region_tokens, seed)
        kv_start = tuple(int(s) for s in starts)
        cu_k = [*kv_start, kv_start[-1] + layout.kv_tokens[-1]]
    return DeviceBatch(
        layout=layout,
        query=query,
        cu_seq_q=torch.tensor(_cumulative(layout.query_tokens), dtype=torch.int32, device=device),
        cu_seq_k=torch.tensor(cu_k, dtype=torch.int32, device=device),
        seqused_k=torch.tensor(layout.kv_tokens, dtype=torch.int32, device=device),
        block_table=block_table,
        kv_start=kv_start,
        back_to_back=back_to_back,
    )


def _sequence_kv(batch: DeviceBatch, pool: KvPool, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence i's K and V gathered from the pool: (KV heads, tokens, head dim) each."""
    tokens = batch.layout.kv_tokens[i]
    if batch.block_table is not None:
        pages = batch.block_table[i, : pages_for(tokens, pool.page_tokens)].long()
        k = pool.key[pages].flatten(0, 1)[:tokens]
        v = pool.value[pages].flatten(0, 1)[:tokens]
    else:
        assert batch.kv_start is not None  # a batch is paged or windowed
        start = batch.kv_start[i]
        k = pool.key.flatten(0, 1)[start : start + tokens]
        v = pool.value.flatten(0, 1)[start : start + tokens]
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


def _is_prefill(batch: DeviceBatch, i: int) -> bool:
    return batch.layout.has_prefill and i == len(batch.layout.kv_tokens) - 1


# ---------------------------------------------------------------------------------------------
# flash: PyTorch's FlashAttention-2 varlen op


def _flash_op() -> Any:
    """The op (a function so a test can stand in a CPU model of it)."""
    return torch.ops.aten._flash_attention_forward


def flash_arguments() -> frozenset[str]:
    """The argument names of this torch's ``_flash_attention_forward`` (empty if it has none)."""
    try:
        schema = torch.ops.aten._flash_attention_forward.default._schema
    except (AttributeError, RuntimeError):
        return frozenset()
    return frozenset(a.name for a in schema.arguments)


def flash_layout(requested: str, page_tokens: int) -> str:
    """``paged`` or ``windows``: what ``--flash-layout auto`` means with this torch."""
    if requested != "auto":
        return requested
    paged = "block_table" in flash_arguments() and page_tokens % FLASH_MIN_PAGE_TOKENS == 0
    return "paged" if paged else "windows"


def prepare_flash(batch: DeviceBatch, pool: KvPool) -> Attention:
    args = flash_arguments()
    kwargs: dict[str, Any] = {}
    if batch.block_table is not None:
        if "block_table" not in args:
            raise ConfigError(
                f"torch {torch.__version__}'s flash attention takes no block table; "
                "use --flash-layout windows"
            )
        if pool.page_tokens % FLASH_MIN_PAGE_TOKENS:
            raise ConfigError(
                f"paged flash attention needs pages of a multiple of {FLASH_MIN_PAGE_TOKENS} tokens"
            )
        key, value = pool.key, pool.value
        kwargs = {"block_table": batch.block_table, "seqused_k": batch.seqused_k}
    else:
        key, value = pool.key.flatten(0, 1), pool.value.flatten(0, 1)
        if not batch.back_to_back:
            # windows that overlap (a reference batch larger than the pool) need their lengths
            if "seqused_k" not in args:
                raise ConfigError(
                    f"torch {torch.__version__}'s flash attention has no seqused_k, so a batch "
                    f"of {batch.layout.total_kv_tokens} KV tokens must fit the pool; raise "
                    "--kv-pool-gib or shrink the grid"
                )
            kwargs = {"seqused_k": batch.seqused_k}
    op = _flash_op()
    causal = batch.layout.has_prefill
    max_q, max_k = batch.max_q, batch.max_k

    def run() -> torch.Tensor:
        # (output, logsumexp, rng state, unused, debug mask); dropout 0, no debug mask
        out = op(
            batch.query,
            key,
            value,
            batch.cu_seq_q,
            batch.cu_seq_k,
            max_q,
            max_k,
            0.0,
            causal,
            False,
            **kwargs,
        )
        result: torch.Tensor = out[0]
        return result

    return run


# ---------------------------------------------------------------------------------------------
# triton: the paged split-KV kernel


def _triton_is_interpreting(module: Any) -> bool:
    return type(module._attention_kernel).__name__ == "InterpretedFunction"


def import_triton_attention(device: torch.device) -> Any:
    """``l4.profiler.triton_attention``, compiled for the GPU or interpreted on a CPU.

    Triton picks its interpreter when it is first imported (``TRITON_INTERPRET``), so a CPU run
    sets that before the import, and a process that already imported Triton the other way is
    refused instead of timing the interpreter on a GPU (or failing to compile on a CPU).
    """
    interpret = device.type != "cuda"
    if interpret and "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        module = importlib.import_module("l4.profiler.triton_attention")
    except ImportError:
        raise ConfigError(TRITON_MISSING) from None
    if _triton_is_interpreting(module) != interpret:
        raise ConfigError(
            "triton kernel: "
            + (
                "set TRITON_INTERPRET=1 before Triton is imported to run it on a CPU"
                if interpret
                else "TRITON_INTERPRET is set: unset it to time the compiled kernel on the GPU"
            )
        )
    return module


def prepare_triton(batch: DeviceBatch, pool: KvPool) -> Attention:
    if batch.block_table is None:
        raise ConfigError("the triton kernel reads a paged KV cache")
    module = import_triton_attention(pool.key.device)
    run: Attention = module.prepare_paged_attention(
        query=batch.query,
        key_cache=pool.key,
        value_cache=pool.value,
        query_tokens=batch.layout.query_tokens,
        cu_seq_q=batch.cu_seq_q,
        kv_lens=batch.seqused_k,
        block_table=batch.block_table,
    )
    return run


# ---------------------------------------------------------------------------------------------
# sdpa: a call per sequence (reference and CPU smoke path)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelSpec:
    """A kernel family resolved for this machine."""

    name: str
    paged: bool
    """K/V through a block table (else one contiguous window per sequence)"""
    implementation: str
    """what runs, for the measurement's provenance"""
    prepare: Callable[[DeviceBatch, KvPool], Attention]
    shares_kv: bool = True
    """can time batches larger than the pool (sequences reading the same pages or windows)"""


def flash_spec(layout: str) -> KernelSpec:
    if layout not in FLASH_LAYOUTS:
        raise ConfigError(f"--flash-layout must be auto or one of {', '.join(FLASH_LAYOUTS)}")
    how = (
        "paged KV through block_table + seqused_k"
        if layout == "paged"
        else "a contiguous KV window per sequence (cu_seq_k start, seqused_k length)"
    )
    return KernelSpec(
        name="flash",
        paged=layout == "paged",
        implementation=(
            "torch.ops.aten._flash_attention_forward (PyTorch's FlashAttention-2 varlen), one "
            f"launch per step, {how}"
        ),
        prepare=prepare_flash,
        shares_kv=layout == "paged" or "seqused_k" in flash_arguments(),
    )


def resolve_kernel(
    name: str, device: torch.device, *, page_tokens: int, flash_layout_request: str = "auto"
) -> KernelSpec:
    """The kernel ``name`` as this torch (and Triton) can run it on ``device``."""
    if name == "flash":
        if device.type != "cuda":
            raise ConfigError("the flash kernel (FlashAttention) needs --device cuda; use sdpa")
        return flash_spec(flash_layout(flash_layout_request, page_tokens))
    if name == "triton":
        module = import_triton_attention(device)
        mode = "interpreted on the CPU" if device.type != "cuda" else "compiled"
        return KernelSpec(
            name="triton",
            paged=True,
            implementation=(
                "l4.profiler.triton_attention (vLLM-style paged split-KV attention: one program "
                "per query block x KV head, 16 KV splits + merge for small decode-only batches), "
                f"triton {module.TRITON_VERSION}, {mode}"
            ),
            prepare=prepare_triton,
        )
    if name == "sdpa":
        return KernelSpec(
            name="sdpa",
            paged=True,
            implementation="torch.nn.functional.scaled_dot_product_attention, a call per sequence",
            prepare=prepare_sdpa,
        )
    raise ConfigError(f"unknown kernel {name!r} (expected one of {', '.join(KERNELS)})")


def reference_attention(batch: DeviceBatch, pool: KvPool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per sequence in float32, GQA by repeating KV heads."""
    group = batch.query.shape[1] // pool.key.shape[2]
    scale = 1.0 / math.sqrt(batch.query.shape[2])
    outs = []
    for i, q in enumerate(_queries(batch)):
        k, v = (t.float().repeat_interleave(group, dim=0) for t in _sequence_kv(batch, pool, i))
        scores = q.float() @ k.transpose(1, 2) * scale
        if _is_prefill(batch, i):
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


def check_region_pages(layout: BatchLayout, page_tokens: int) -> int:
    """A region that just holds the longest sequence, so the others share its pages or window
    (for ``CHECK_LAYOUTS`` at any page size: they need more than their longest sequence)."""
    return pages_for(layout.max_kv_tokens, page_tokens)


def check_kernel(
    spec: KernelSpec,
    head: HeadShape,
    pool: KvPool,
    *,
    seed: int,
    layouts: tuple[BatchLayout, ...] = CHECK_LAYOUTS,
) -> float:
    """Run ``spec`` on ``layouts`` against ``reference_attention``, each placed in the whole pool
    and (if the kernel can share) again in a few pages; the worst absolute error, or ConfigError
    if it is beyond the dtype's rounding."""
    tol = 1e-4 if pool.key.dtype == torch.float32 else 3e-2
    worst = 0.0
    for j, layout in enumerate(layouts):
        for shared in (False, True) if spec.shares_kv else (False,):
            region = check_region_pages(layout, pool.page_tokens) if shared else None
            seed_j = seed + 2 * j + shared
            batch = device_batch(
                layout, head, pool, paged=spec.paged, seed=seed_j, region_pages=region
            )
            got = spec.prepare(batch, pool)().float()
            want = reference_attention(batch, pool)
            err = float((got - want).abs().max()) if got.shape == want.shape else math.inf
            worst = max(worst, err)
            if not err <= tol * (1.0 + float(want.abs().max())):
                what = "with a prefill chunk" if layout.has_prefill else "decode-only"
                where = " sharing pages" if shared else ""
                raise ConfigError(
                    f"kernel {spec.name} disagrees with the reference attention on a {what} "
                    f"batch{where} (max abs error {err:.3g}); refusing to time it"
                )
    return worst
