"""Executing a profiling run: parts, their files, resuming, the summary and the archive.

Parts run kernel by kernel (every model with the first kernel, then the next kernel). A part times
its skew grid, then its uniform batches, and only then writes its files; its sidecar JSON,
written last, marks it complete. A part whose sidecar records the same settings is not measured
again, so a stopped run is finished by running the same command on the same folder. After every
part the run's summary ``suite.json`` and (with ``--archive``) a tar.gz of the folder are
rewritten, so a run killed at its time limit still hands back everything it finished. One part
failing (a kernel that does not compile, a check that fails) is recorded and the others still
run; a deadline stops the run between points and leaves the rest for a rerun.
"""

from __future__ import annotations

import csv
import hashlib
import json
import tarfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from l4.costmodel.alpha_fit import fit_alpha, read_skew_csv, write_skew_csv
from l4.costmodel.profile import Profile
from l4.errors import ConfigError
from l4.profiler.grid import BatchLayout, GridSpec, HeadShape, PrefillSpec
from l4.profiler.kernels import KernelSpec, device_batch, flash_spec, resolve_kernel
from l4.profiler.measure import Bench, RunConfig, TimingConfig, skew_layouts, time_points
from l4.profiler.provenance import copy_bytes_per_s, device_name, environment, kernel_names
from l4.profiler.suite import (
    GIB,
    DeadlineError,
    RunSettings,
    estimate_s,
    model_stem,
    page_tokens_for,
    suite_points,
)
from l4.profiler.uniform import UNIFORM_COLUMNS, fit_terms, uniform_record

SUITE_FILE = "suite.json"
SIDECAR_FORMAT = "l4-skew-profile"


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
    # kernel-major: the calibration's kernel (first) for every model before the next kernel, so
    # a kernel that wrecks the CUDA context (an illegal access) cannot cost the calibration data
    todo = [(p, k) for k in settings.kernels for p in settings.profiles]
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
