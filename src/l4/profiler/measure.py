"""Timing: medians of repeated runs, interleaved across the three batches of a grid point.

On CUDA each run is bracketed by CUDA events after a write of ``flush_bytes`` that evicts the L2
cache (a real step reaches a layer's KV cold: the other layers ran in between) and keeps the GPU
busy while the launch is queued, so the events time the kernel, not the Python call. On a CPU,
``perf_counter`` around the call. The three batches of a point take turns within every repeat, so
clock or thermal drift moves their times together instead of biasing alpha.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from l4.costmodel.alpha_fit import SkewRow, SkewShape
from l4.errors import ValidationError
from l4.profiler.grid import BatchKind, HeadShape, batch_layout, pages_needed
from l4.profiler.kernels import PREPARE, allocate_pool, check_kernel, device_batch


@dataclass(frozen=True, slots=True, kw_only=True)
class TimingConfig:
    warmup: int
    repeats: int
    flush_bytes: int = 0
    """Bytes written before every timed run to evict the cache (CUDA only; 0 = none)."""

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeats < 1:
            raise ValidationError("--warmup must be >= 0 and --repeats >= 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    kernel: str
    device: torch.device
    dtype: torch.dtype
    page_tokens: int
    max_pool_pages: int
    timing: TimingConfig
    seed: int = 0


class _Timer:
    def __init__(self, device: torch.device, flush_bytes: int) -> None:
        self.cuda = device.type == "cuda"
        self.flush = (
            torch.empty(flush_bytes // 4, dtype=torch.int32, device=device)
            if self.cuda and flush_bytes > 0
            else None
        )

    def times_s(self, fns: Sequence[Callable[[], object]], timing: TimingConfig) -> list[float]:
        """Median seconds of each function over ``timing.repeats`` interleaved runs."""
        for _ in range(timing.warmup):
            for fn in fns:
                fn()
        samples: list[list[float]] = [[] for _ in fns]
        if not self.cuda:
            for _ in range(timing.repeats):
                for k, fn in enumerate(fns):
                    t0 = time.perf_counter()
                    fn()
                    samples[k].append(time.perf_counter() - t0)
            return [statistics.median(s) for s in samples]
        torch.cuda.synchronize()
        events = []
        for _ in range(timing.repeats):
            for k, fn in enumerate(fns):
                if self.flush is not None:
                    self.flush.zero_()
                # torch.cuda.Event's constructor carries no annotations
                start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
                end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
                start.record()
                fn()
                end.record()
                events.append((k, start, end))
        torch.cuda.synchronize()
        for k, start, end in events:
            samples[k].append(start.elapsed_time(end) * 1e-3)
        return [statistics.median(s) for s in samples]


def pool_pages(points: Sequence[SkewShape], page_tokens: int, max_pool_pages: int) -> int:
    """Enough pages for the largest batch of the grid, at most ``max_pool_pages``."""
    need = max(
        pages_needed(batch_layout(p, kind), page_tokens) for p in points for kind in BatchKind
    )
    return max(1, min(need, max_pool_pages))


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRun:
    rows: tuple[SkewRow, ...]
    pool_pages: int
    check_max_abs_error: float


def profile_points(
    head: HeadShape,
    points: Sequence[SkewShape],
    cfg: RunConfig,
    progress: Callable[[int, int], None] | None = None,
) -> ModelRun:
    """Time every grid point for one head shape: one KV pool, the kernel checked first."""
    if not points:
        raise ValidationError("the grid is empty (every point exceeds --max-batch-tokens?)")
    kinds = (BatchKind.SKEW, BatchKind.MEAN, BatchKind.MAX)
    with torch.inference_mode():
        pages = pool_pages(points, cfg.page_tokens, cfg.max_pool_pages)
        pool = allocate_pool(
            head,
            num_pages=pages,
            page_tokens=cfg.page_tokens,
            device=cfg.device,
            dtype=cfg.dtype,
            seed=cfg.seed,
        )
        check = check_kernel(cfg.kernel, head, pool, seed=cfg.seed + 1)
        timer = _Timer(cfg.device, cfg.timing.flush_bytes)
        prepare = PREPARE[cfg.kernel]
        rows: list[SkewRow] = []
        for i, point in enumerate(points):
            fns = [
                prepare(
                    device_batch(batch_layout(point, kind), head, pool, seed=cfg.seed + 3 * i + j),
                    pool,
                )
                for j, kind in enumerate(kinds)
            ]
            t_skew, t_mean, t_max = timer.times_s(fns, cfg.timing)
            rows.append(SkewRow(shape=point, t_mean_s=t_mean, t_max_s=t_max, t_skew_s=t_skew))
            if progress is not None:
                progress(i + 1, len(points))
    return ModelRun(rows=tuple(rows), pool_pages=pages, check_max_abs_error=check)
