"""What a profiling run measures: suites, their settings, and how long they should take.

A run is a list of parts, one per (model head shape, kernel family); a ``SuiteSpec`` says what
each part times (skew grids, uniform batches, repeats) and ``RunSettings`` everything else
(kernels, models, device, output). ``--suite hopper`` is the Hopper measurement of issue 14
(``HOPPER_SUITE``: skew shapes like the public LLMServingSim table plus one 64K or 128K request
among short ones, decode-only and with a prefill chunk, n = 2..256, and uniform decode
(n = 1..256) and prefill at contexts up to 128K), for both kernel families; ``estimate_s`` says
how long it should take on an H100 under stated, pessimistic assumptions. ``l4.profiler.run``
executes a run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from l4.costmodel.alpha_fit import SkewShape
from l4.costmodel.profile import Profile
from l4.errors import ConfigError, L4Error
from l4.profiler.grid import (
    NO_PREFILL,
    BatchLayout,
    GridSpec,
    HeadShape,
    PrefillSpec,
    grid_points,
)
from l4.profiler.kernels import FLASH_MIN_PAGE_TOKENS
from l4.profiler.measure import skew_layouts
from l4.profiler.uniform import UniformShape, uniform_shapes

GIB = 1024**3


@dataclass(frozen=True, slots=True, kw_only=True)
class SuiteSpec:
    """What a run measures per part (the kernels and models are the run's settings)."""

    name: str
    grids: tuple[GridSpec, ...]
    uniform: tuple[UniformShape, ...] = ()
    warmup: int = 3
    repeats: int = 15
    kv_pool_gib: float = 8.0
    kernel_in_file_names: bool = True


HOPPER_DECODES = (2, 4, 8, 16, 32, 64, 128, 256)
HOPPER_PREFILLS = (
    NO_PREFILL,
    PrefillSpec(chunk_tokens=128, prior_tokens=0),
    PrefillSpec(chunk_tokens=2048, prior_tokens=8192),
)
HOPPER_SUITE = SuiteSpec(
    name="hopper",
    grids=(
        # like LLMServingSim's public skew table (skew 4, shares 1/8 .. 3/4) and wider skews
        GridSpec(
            num_decodes=HOPPER_DECODES,
            short_tokens=(256, 1024, 4096),
            long_tokens=(1024, 4096, 16384),
            num_long=(1,),
            long_shares=(0.125, 0.25, 0.5, 0.75),
            prefills=HOPPER_PREFILLS,
        ),
        # one very long request among short ones
        GridSpec(
            num_decodes=HOPPER_DECODES,
            short_tokens=(256, 1024),
            long_tokens=(65536, 131072),
            num_long=(1,),
            prefills=HOPPER_PREFILLS,
        ),
    ),
    uniform=uniform_shapes(
        decodes=(1, 4, 16, 64, 256),
        contexts=(4096, 16384, 65536, 131072),
        chunks=(512, 2048, 8192),
        priors=(0, 16384, 65536, 122880),
    ),
    warmup=2,
    repeats=10,
    kv_pool_gib=16.0,
)
"""Issue 14's measurement: per model and kernel about 580 skew points (3 batches each) and 32
uniform batches; see ``estimate_s``."""

QUICK_SUITE = SuiteSpec(
    name="hopper-quick",
    grids=(
        GridSpec(
            num_decodes=(2, 4),
            short_tokens=(16,),
            long_tokens=(256,),
            num_long=(1,),
            long_shares=(0.5,),
            prefills=(NO_PREFILL, PrefillSpec(chunk_tokens=16, prior_tokens=32)),
        ),
    ),
    uniform=uniform_shapes(decodes=(1, 2), contexts=(64, 256), chunks=(16,), priors=(0, 64)),
    warmup=1,
    repeats=3,
    kv_pool_gib=0.01,
)
"""The hopper suite's pipeline on tiny shapes (a CPU runs it in seconds; numbers mean nothing)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSettings:
    suite: SuiteSpec
    kernels: tuple[str, ...]
    profiles: tuple[Profile, ...]
    device: torch.device
    dtype: torch.dtype
    page_size: int | None
    """tokens per KV page; None: FlashAttention's minimum for flash, vLLM's 16 otherwise"""
    flash_layout: str
    flush_bytes: int
    seed: int
    quick: bool
    out: Path
    archive: Path | None = None
    deadline_s: float | None = None
    max_batch_tokens: int | None = None
    """caps the mixed batches; None: the profile's KV capacity (no cap with --quick)"""
    keep_going: bool = True
    """record a failing part and go on (a suite); False raises (a single measurement)"""


class DeadlineError(L4Error):
    """The run's deadline passed; what is finished is written, the rest is left for a rerun."""


def model_stem(model_name: str) -> str:
    """``meta-llama/Llama-3.1-8B`` -> ``llama-3.1-8b``: the output file stem."""
    return model_name.rsplit("/", 1)[-1].lower()


def page_tokens_for(settings: RunSettings, kernel: str) -> int:
    if settings.page_size is not None:
        if settings.page_size < 1:
            raise ConfigError("--page-size must be positive")
        return settings.page_size
    return FLASH_MIN_PAGE_TOKENS if kernel == "flash" else 16


def suite_points(settings: RunSettings, profile: Profile) -> tuple[SkewShape, ...]:
    """The skew shapes of one model: every grid's points within the batch cap, no repeats."""
    cap = settings.max_batch_tokens
    if cap is None and not settings.quick:
        cap = profile.kv_capacity_tokens
    points: dict[SkewShape, None] = {}
    for grid in settings.suite.grids:
        capped = grid if cap is None else replace(grid, max_batch_tokens=cap)
        points.update(dict.fromkeys(grid_points(capped)))
    return tuple(points)


# ---------------------------------------------------------------------------------------------
# estimate


@dataclass(frozen=True, slots=True, kw_only=True)
class CostAssumptions:
    """A deliberately pessimistic H100 (the H200 reads 1.4x faster)."""

    kv_bytes_per_s: float = 2.5e12
    flops_per_s: float = 2.0e14
    """FlashAttention-2's causal prefill"""
    triton_flops_per_s: float = 5.0e13
    """the Triton kernel's prefill: 16-row query blocks, no tensor-core pipelining tuned"""
    run_overhead_s: float = 150e-6
    """per timed run: the 256 MiB cache flush (~90 us) plus launch and event gaps"""
    point_setup_s: float = 0.02
    """per point: page tables and query tensors of its batches"""
    part_setup_s: float = 25.0
    """per part: KV pool, kernel check, Triton compilation, kernel-name capture"""
    run_setup_s: float = 30.0
    """once: interpreter, torch and CUDA start, copy-bandwidth probe"""


def _layout_cost_s(
    layout: BatchLayout, head: HeadShape, a: CostAssumptions, flops_per_s: float
) -> float:
    kv = layout.total_kv_tokens * head.kv_bytes_per_token(2)
    flops = 0.0
    if layout.has_prefill:
        c, p = layout.prefill.chunk_tokens, layout.prefill.prior_tokens
        flops = 4.0 * c * (p + (c + 1) / 2) * head.num_q_heads * head.head_dim
    return kv / a.kv_bytes_per_s + flops / flops_per_s + a.run_overhead_s


def estimate_s(settings: RunSettings, assumptions: CostAssumptions | None = None) -> float:
    """Seconds the run should take on a GPU: per batch (warm-up + repeats) x (KV bytes / HBM
    rate + attention FLOPs / FLOP rate + per-run overhead), plus per-point, per-part and
    per-run setup (``CostAssumptions``)."""
    a = assumptions or CostAssumptions()
    runs = settings.suite.warmup + settings.suite.repeats
    total = a.run_setup_s
    for profile in settings.profiles:
        head = HeadShape.from_model(profile.model)
        points = suite_points(settings, profile)
        layouts = [*skew_layouts(points), *(u.layout() for u in settings.suite.uniform)]
        setup_s = a.part_setup_s + a.point_setup_s * (len(points) + len(settings.suite.uniform))
        for kernel in settings.kernels:
            rate = a.triton_flops_per_s if kernel == "triton" else a.flops_per_s
            total += setup_s + runs * sum(_layout_cost_s(b, head, a, rate) for b in layouts)
    return total
