"""A measurement run of ``l4 profile-attention``: parts, their files, resuming, provenance.

A run is a list of parts, one per (model head shape, kernel family), in a fixed order (the
calibration's own kernel and model first). A part times its skew grid, then (in a suite) uniform
batches at long contexts, and only then writes its files; its sidecar JSON, written last, marks
it complete. A part whose sidecar records the same settings is not measured again, so a stopped
run is finished by running the same command on the same folder. After every part the run's
summary ``suite.json`` and (with ``--archive``) a tar.gz of the folder are rewritten, so a run
killed at its time limit still hands back everything it finished. One part failing (a kernel
that does not compile, a check that fails) is recorded and the others still run.

``--suite hopper`` is the Hopper measurement of issue 14 (``HOPPER_SUITE``: skew shapes like the
public LLMServingSim table plus one 64K or 128K request among short ones, decode-only and with a
prefill chunk, n = 2..256, and uniform decode (n = 1..256) and prefill at contexts up to 128K),
for both kernel families; ``estimate_s`` says how long it should take.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import json
import platform
import subprocess
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

import l4
from l4.costmodel.alpha_fit import SkewShape, fit_alpha, read_skew_csv, write_skew_csv
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
from l4.profiler.kernels import (
    FLASH_MIN_PAGE_TOKENS,
    KernelSpec,
    device_batch,
    flash_arguments,
    flash_spec,
    resolve_kernel,
)
from l4.profiler.measure import Bench, RunConfig, Timer, TimingConfig, skew_layouts, time_points
from l4.profiler.uniform import (
    UNIFORM_COLUMNS,
    UniformShape,
    fit_terms,
    uniform_record,
    uniform_shapes,
)

GIB = 1024**3
SUITE_FILE = "suite.json"
SIDECAR_FORMAT = "l4-skew-profile"


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


# ---------------------------------------------------------------------------------------------
# provenance


def _nvidia_smi() -> dict[str, str] | None:
    query = "driver_version,name,clocks.max.sm,clocks.max.memory,power.limit"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.strip().splitlines()[0] if out.strip() else ""
    values = [v.strip() for v in first.split(",")]
    return dict(zip(query.split(","), values, strict=False))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            cwd=Path(l4.__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _triton_version() -> str | None:
    # from the installed metadata: importing triton here would fix its interpreter mode
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Where the numbers come from: machine, GPU, driver and software versions."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _triton_version(),
        "numpy": np.__version__,
        "l4": l4.__version__,
        "l4_commit": _git_commit(),
        "flash_attention_arguments": sorted(flash_arguments()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "memory_bytes": props.total_memory,
            "l2_cache_bytes": getattr(props, "L2_cache_size", None),
        }
        env["nvidia_smi"] = _nvidia_smi()
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return str(platform.processor() or platform.machine())


def copy_bytes_per_s(device: torch.device, num_bytes: int) -> float:
    """A device-to-device copy, bytes read + written per second (the HBM ceiling kernels reach)."""
    src = torch.randn(num_bytes // 4, device=device)
    dst = torch.empty_like(src)
    (t,) = Timer(device, 0).times_s([lambda: dst.copy_(src)], TimingConfig(warmup=2, repeats=10))
    return 2.0 * src.numel() * 4 / t


def kernel_names(run: Callable[[], object], device: torch.device) -> list[str]:
    """The device kernels (CPU ops on a CPU) one call launches, as torch's profiler names them."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        run()
        if cuda:
            torch.cuda.synchronize()
    want = "CUDA" if cuda else "CPU"
    return sorted({str(e.name) for e in prof.events() if e.device_type.name == want})[:20]


# ---------------------------------------------------------------------------------------------
# one part


@dataclass(slots=True, kw_only=True)
class PartResult:
    model: str
    kernel: str
    status: str
    """done | done-earlier | failed | deadline | not-started"""
    files: list[str] = field(default_factory=list)
    error: str | None = None
    wall_s: float = 0.0
    alpha: dict[str, Any] | None = None


def part_stem(settings: RunSettings, profile: Profile, kernel: str) -> str:
    stem = model_stem(profile.model.name)
    return f"{stem}_{kernel}" if settings.suite.kernel_in_file_names else stem


def part_settings(settings: RunSettings, profile: Profile, kernel: str) -> dict[str, Any]:
    """What makes two measurements of a part the same (the resume key)."""
    suite = settings.suite
    return {
        "suite": suite.name,
        "grids": [grid_dict(g) for g in suite.grids],
        "uniform": [asdict(u) for u in suite.uniform],
        "warmup": suite.warmup,
        "repeats": suite.repeats,
        "kv_pool_gib": suite.kv_pool_gib,
        "model": profile.model.name,
        "kernel": kernel,
        "flash_layout": settings.flash_layout,
        "page_size": settings.page_size,
        "device": device_name(settings.device),
        "dtype": str(settings.dtype).removeprefix("torch."),
        "seed": settings.seed,
        "quick": settings.quick,
        "max_batch_tokens": settings.max_batch_tokens,
    }


def settings_key(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def grid_dict(spec: GridSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["prefills"] = [[p.chunk_tokens, p.prior_tokens] for p in spec.prefills]
    return d


def _done_earlier(sidecar: Path, key: str, files: Sequence[Path]) -> dict[str, Any] | None:
    if not sidecar.exists() or not all(f.exists() for f in files):
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("run", {}).get("settings_key") != key:
        return None
    return meta


def _open_bench(
    head: HeadShape, cfg: RunConfig, layouts: Sequence[BatchLayout], settings: RunSettings
) -> Bench:
    """The bench; paged flash that fails its check under ``--flash-layout auto`` falls back to
    contiguous windows (an op that takes a block table it cannot use), recorded in the sidecar."""
    try:
        return Bench(head, cfg, layouts)
    except (ConfigError, RuntimeError):
        auto_paged = cfg.kernel.paged and settings.flash_layout == "auto"
        if not (cfg.kernel.name == "flash" and auto_paged):
            raise
    return Bench(head, replace(cfg, kernel=flash_spec("windows")), layouts)


def _write_uniform_csv(path: Path, records: Sequence[dict[str, str]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=UNIFORM_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)


def _sample_kernel_names(bench: Bench) -> dict[str, Any]:
    """What one decode-only and one mixed step launch (torch's profiler); an error is recorded."""
    names: dict[str, Any] = {}
    samples = {
        "decode_only": BatchLayout(decode_kv_tokens=(1000, 3000)),
        "with_prefill": BatchLayout(
            decode_kv_tokens=(1000, 3000), prefill=PrefillSpec(chunk_tokens=256, prior_tokens=512)
        ),
    }
    if bench.cfg.device.type != "cuda":
        return {"note": "captured on CUDA runs only"}
    for what, layout in samples.items():
        try:
            with torch.inference_mode():
                batch = device_batch(
                    layout, bench.head, bench.pool, paged=bench.cfg.kernel.paged, seed=7
                )
                run = bench.cfg.kernel.prepare(batch, bench.pool)
                run()  # compiled and warm before the profiler looks
                names[what] = kernel_names(run, bench.cfg.device)
        except Exception as exc:  # provenance only: never fail a measurement for it
            names[what] = f"unavailable: {type(exc).__name__}: {exc}"
    return names


class Progress:
    """Progress lines on stderr (every 10% of a part, with its rate) and the deadline check."""

    def __init__(self, err: Console, label: str, deadline: float | None) -> None:
        self.err = err
        self.label = label
        self.deadline = deadline
        self.t0 = time.monotonic()
        self.next = 0.1

    def __call__(self, done: int, total: int) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineError(f"{self.label}: deadline reached at {done}/{total}")
        if total >= 20 and done / total >= self.next and done < total:
            el = time.monotonic() - self.t0
            left = el / done * (total - done)
            self.err.print(f"{self.label}: {done}/{total} ({el:.0f} s, ~{left:.0f} s left)")
            while self.next <= done / total:
                self.next += 0.1


def run_part(
    settings: RunSettings,
    profile: Profile,
    kernel: str,
    env: dict[str, Any],
    progress: Progress,
) -> PartResult:
    """Measure one (model, kernel) part and write its files; skip it if done earlier."""
    t0 = time.monotonic()
    head = HeadShape.from_model(profile.model)
    stem = part_stem(settings, profile, kernel)
    out = settings.out
    csv_path = out / f"{stem}_skew.csv"
    uni_path = out / f"{stem}_uniform.csv"
    sidecar = csv_path.with_suffix(".json")
    files = [csv_path] + ([uni_path] if settings.suite.uniform else [])
    key_doc = part_settings(settings, profile, kernel)
    key = settings_key(key_doc)
    result = PartResult(model=profile.model.name, kernel=kernel, status="done")
    earlier = _done_earlier(sidecar, key, files)
    if earlier is not None:
        result.status = "done-earlier"
        result.files = [p.name for p in (*files, sidecar)]
        result.alpha = earlier.get("alpha")
        return result

    points = suite_points(settings, profile)
    if not points:
        raise ConfigError("the grid is empty (every point exceeds --max-batch-tokens?)")
    page = page_tokens_for(settings, kernel)
    spec: KernelSpec = resolve_kernel(
        kernel, settings.device, page_tokens=page, flash_layout_request=settings.flash_layout
    )
    element_bytes = settings.dtype.itemsize
    page_bytes = page * head.kv_bytes_per_token(element_bytes)
    timing = TimingConfig(
        warmup=settings.suite.warmup,
        repeats=settings.suite.repeats,
        flush_bytes=settings.flush_bytes,
    )
    cfg = RunConfig(
        kernel=spec,
        device=settings.device,
        dtype=settings.dtype,
        page_tokens=page,
        max_pool_pages=max(1, int(settings.suite.kv_pool_gib * GIB // page_bytes)),
        timing=timing,
        seed=settings.seed,
    )
    uniform = settings.suite.uniform
    layouts = [*skew_layouts(points), *(u.layout() for u in uniform)]
    bench = _open_bench(head, cfg, layouts, settings)
    spec = bench.cfg.kernel
    progress.err.print(
        f"{progress.label}: {len(points)} skew points + {len(uniform)} uniform batches, "
        f"{spec.implementation}; kernel check max abs error {bench.check_max_abs_error:.3g}"
    )
    total = len(points) + len(uniform)
    rows = time_points(bench, points, lambda done, _: progress(done, total))
    uni_times: list[float] = []
    for i, shape in enumerate(uniform):
        (t,) = bench.times_s([shape.layout()], seed=settings.seed + 100_000 + i)
        uni_times.append(t)
        progress(len(points) + i + 1, total)
    names = _sample_kernel_names(bench)
    pool_pages = bench.pool_pages
    check_error = bench.check_max_abs_error
    del bench
    if settings.device.type == "cuda":
        torch.cuda.empty_cache()

    write_skew_csv(csv_path, rows)
    alpha: dict[str, Any] | None = None
    fit_errors: dict[str, Any] | str
    try:
        fit = fit_alpha(read_skew_csv(csv_path))
        alpha, fit_errors = fit.table_dict(), fit.errors
    except ConfigError as exc:  # e.g. no row with t_max > t_mean: the data stays, unfitted
        fit_errors = f"no alpha table: {exc}"
    uniform_meta: dict[str, Any] | None = None
    if uniform:
        records = [
            uniform_record(u, t, head, element_bytes, profile)
            for u, t in zip(uniform, uni_times, strict=True)
        ]
        _write_uniform_csv(uni_path, records)
        uniform_meta = {
            "csv": uni_path.name,
            "fit": fit_terms(uniform, uni_times, head, element_bytes),
            "profile": profile.name,
            "profile_terms": {
                "decode_attention": asdict(profile.decode_attention),
                "prefill_attention": asdict(profile.prefill_attention),
            },
        }
    wall_s = time.monotonic() - t0
    meta = {
        "format": SIDECAR_FORMAT,
        "version": 2,
        "model": {"name": profile.model.name, **asdict(head)},
        "profile": profile.name,
        "csv": csv_path.name,
        "points": len(rows),
        "measurement": {
            "device": device_name(settings.device),
            "device_type": settings.device.type,
            "torch": torch.__version__,
            "cuda": env.get("cuda"),
            "triton": env.get("triton"),
            "driver": (env.get("nvidia_smi") or {}).get("driver_version"),
            "kernel": spec.name,
            "kernel_implementation": spec.implementation,
            "kernel_names": names,
            "kv_layout": "paged" if spec.paged else "windows",
            "dtype": str(settings.dtype).removeprefix("torch."),
            "page_tokens": page,
            "kv_pool_pages": pool_pages,
            "warmup": timing.warmup,
            "repeats": timing.repeats,
            "timer": "cuda-events" if settings.device.type == "cuda" else "perf_counter",
            "l2_flush_bytes": timing.flush_bytes,
            "kernel_check_max_abs_error": check_error,
            "quick": settings.quick,
            "seed": settings.seed,
            "wall_s": wall_s,
            "grids": [grid_dict(g) for g in settings.suite.grids],
        },
        "alpha": alpha,
        "fit_error": fit_errors,
        "uniform": uniform_meta,
        "run": {"suite": settings.suite.name, "settings_key": key, "settings": key_doc},
    }
    # the sidecar last: its presence with this key marks the part complete
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    result.files = [p.name for p in (*files, sidecar)]
    result.alpha = alpha
    result.wall_s = wall_s
    return result


# ---------------------------------------------------------------------------------------------
# the run


def write_archive(folder: Path, archive: Path) -> None:
    """A tar.gz of the folder's files (flat), replaced atomically."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                tar.add(path, arcname=f"{folder.name}/{path.name}")
    tmp.replace(archive)


@dataclass(slots=True, kw_only=True)
class RunReport:
    parts: list[PartResult]
    summary_path: Path

    @property
    def complete(self) -> bool:
        return all(p.status in ("done", "done-earlier") for p in self.parts)


def run_suite(settings: RunSettings, err: Console) -> RunReport:
    """Measure every (model, kernel) part; write files, ``suite.json`` and the archive."""
    t0 = time.monotonic()
    deadline = None if settings.deadline_s is None else t0 + settings.deadline_s
    settings.out.mkdir(parents=True, exist_ok=True)
    env = environment(settings.device)
    est = estimate_s(settings)
    name = device_name(settings.device)
    err.print(
        f"{settings.suite.name}: {len(settings.profiles)} models x {len(settings.kernels)} "
        f"kernels ({', '.join(settings.kernels)}) on {name}, torch {env['torch']}, triton "
        f"{env['triton']}; estimated {est:.0f} s on an H100 (see CostAssumptions)"
    )
    copy_bw = None
    if settings.device.type == "cuda":
        copy_bw = copy_bytes_per_s(settings.device, GIB)
        err.print(f"device-to-device copy: {copy_bw / 1e12:.2f} TB/s (read + write)")
    parts: list[PartResult] = []
    summary_path = settings.out / SUITE_FILE
    todo = [(p, k) for k in settings.kernels for p in settings.profiles]
    # the calibration's own data first: both kernels of the first model, then the next model
    todo.sort(key=lambda pk: (settings.profiles.index(pk[0]), settings.kernels.index(pk[1])))
    stopped = False
    for i, (profile, kernel) in enumerate(todo, start=1):
        label = f"[{i}/{len(todo)}] {model_stem(profile.model.name)} {kernel}"
        result = PartResult(model=profile.model.name, kernel=kernel, status="not-started")
        if not stopped:
            progress = Progress(err, label, deadline)
            try:
                result = run_part(settings, profile, kernel, env, progress)
            except DeadlineError as exc:
                result.status, result.error = "deadline", str(exc)
                stopped = True
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one part's failure must not lose the others' data
                if not settings.keep_going:
                    raise
                result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
            err.print(f"{label}: {result.status}" + (f" ({result.error})" if result.error else ""))
        parts.append(result)
        _write_summary(summary_path, settings, env, copy_bw, est, parts, todo, t0)
        if settings.archive is not None:
            write_archive(settings.out, settings.archive)
    return RunReport(parts=parts, summary_path=summary_path)


def _write_summary(
    path: Path,
    settings: RunSettings,
    env: dict[str, Any],
    copy_bw: float | None,
    est: float,
    parts: list[PartResult],
    todo: Sequence[tuple[Profile, str]],
    t0: float,
) -> None:
    listed = [asdict(p) for p in parts]
    listed += [
        asdict(PartResult(model=p.model.name, kernel=k, status="not-started"))
        for p, k in todo[len(parts) :]
    ]
    doc = {
        "format": "l4-profile-run",
        "version": 1,
        "suite": settings.suite.name,
        "quick": settings.quick,
        "environment": env,
        "copy_bytes_per_s": copy_bw,
        "estimate_s": est,
        "wall_s": time.monotonic() - t0,
        "parts": listed,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
