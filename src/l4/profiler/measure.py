"""Timing: medians of repeated runs, interleaved across the batches timed together.

A ``Bench`` is one head shape on one kernel: a KV pool sized for the batches it will time, the
kernel checked against the reference first, and a timer. On CUDA each run is bracketed by CUDA
events after a write of ``flush_bytes`` that evicts the L2 cache (a real step reaches a layer's
KV cold: the other layers ran in between) and keeps the GPU busy while the launch is queued, so
the events time the kernel, not the Python call. On a CPU, ``perf_counter`` around the call. The
batches of a grid point take turns within every repeat, so clock or thermal drift moves their
times together instead of biasing alpha.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from l4.costmodel.alpha_fit import SkewRow, SkewShape
from l4.errors import ValidationError
from l4.profiler.grid import BatchKind, BatchLayout, HeadShape, batch_layout, pages_needed
from l4.profiler.kernels import (
    CHECK_LAYOUTS,
    KernelSpec,
    allocate_pool,
    check_kernel,
    device_batch,
)

SKEW_KINDS = (BatchKind.SKEW, BatchKind.MEAN, BatchKind.MAX)
"""The order of the three batches of a point (and of ``times_s``' result)."""


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
    kernel: KernelSpec
    device: torch.device
    dtype: torch.dtype
    page_tokens: int
    max_pool_pages: int
    timing: TimingConfig
    seed: int = 0


class Timer:
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


def skew_layouts(points: Sequence[SkewShape]) -> list[BatchLayout]:
    return [batch_layout(p, kind) for p in points for kind in SKEW_KINDS]


def pool_pages(layouts: Sequence[BatchLayout], page_tokens: int, max_pool_pages: int) -> int:
    """Enough pages for the largest batch (and the kernel check), at most ``max_pool_pages``."""
    need = max(pages_needed(b, page_tokens) for b in (*layouts, *CHECK_LAYOUTS))
    return max(1, min(need, max_pool_pages))


class Bench:
    """One head shape on one kernel: the pool, the kernel's check, the timer."""

    def __init__(self, head: HeadShape, cfg: RunConfig, layouts: Sequence[BatchLayout]) -> None:
        """``layouts``: every batch this bench will time (they size the pool)."""
        self.head = head
        self.cfg = cfg
        with torch.inference_mode():
            self.pool_pages = pool_pages(layouts, cfg.page_tokens, cfg.max_pool_pages)
            self.pool = allocate_pool(
                head,
                num_pages=self.pool_pages,
                page_tokens=cfg.page_tokens,
                device=cfg.device,
                dtype=cfg.dtype,
                seed=cfg.seed,
            )
            self.check_max_abs_error = check_kernel(cfg.kernel, head, self.pool, seed=cfg.seed + 1)
        self.timer = Timer(cfg.device, cfg.timing.flush_bytes)

    def times_s(self, layouts: Sequence[BatchLayout], seed: int) -> list[float]:
        """Median seconds of each batch, the batches interleaved in every repeat."""
        with torch.inference_mode():
            fns = [
                self.cfg.kernel.prepare(
                    device_batch(
                        layout, self.head, self.pool, paged=self.cfg.kernel.paged, seed=seed + j
                    ),
                    self.pool,
                )
                for j, layout in enumerate(layouts)
            ]
            return self.timer.times_s(fns, self.cfg.timing)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRun:
    rows: tuple[SkewRow, ...]
    pool_pages: int
    check_max_abs_error: float


def time_points(
    bench: Bench,
    points: Sequence[SkewShape],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[SkewRow, ...]:
    """Time every grid point on ``bench`` (the three batches of a point interleaved)."""
    rows: list[SkewRow] = []
    for i, point in enumerate(points):
        layouts = [batch_layout(point, kind) for kind in SKEW_KINDS]
        t_skew, t_mean, t_max = bench.times_s(layouts, seed=bench.cfg.seed + 3 * i)
        rows.append(SkewRow(shape=point, t_mean_s=t_mean, t_max_s=t_max, t_skew_s=t_skew))
        if progress is not None:
            progress(i + 1, len(points))
    return tuple(rows)


def profile_points(
    head: HeadShape,
    points: Sequence[SkewShape],
    cfg: RunConfig,
    progress: Callable[[int, int], None] | None = None,
) -> ModelRun:
    """Time every grid point for one head shape: one KV pool, the kernel checked first."""
    if not points:
        raise ValidationError("the grid is empty (every point exceeds --max-batch-tokens?)")
    bench = Bench(head, cfg, skew_layouts(points))
    rows = time_points(bench, points, progress)
    return ModelRun(
        rows=rows, pool_pages=bench.pool_pages, check_max_abs_error=bench.check_max_abs_error
    )
