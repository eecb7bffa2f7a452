"""`l4 profile-attention` and `l4 calibrate-alpha`: the I/O edge of the attention profiler.

``add_profile_parser(subparsers)`` / ``run_profile(args)`` and ``add_calibrate_alpha_parser`` /
``run_calibrate_alpha`` follow ``l4.planning_cli``: errors are raised as ``L4Error`` for the main
CLI to turn into exit codes. torch is imported only when ``profile-attention`` runs, so the rest
of ``l4`` works without it.

``profile-attention`` writes, per model, ``<out>/<model>_skew.csv`` (LLMServingSim's skew.csv
columns, see ``l4.costmodel.alpha_fit``) and ``<out>/<model>_skew.json`` (the measurement's
settings, the fitted alpha table and its errors).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from l4.cliargs import add_profile_options, check_output_file, default_profiles_dir
from l4.costmodel.alpha_fit import AlphaFit, fit_alpha, read_skew_csv, write_skew_csv
from l4.costmodel.profile import Profile, load_profile
from l4.errors import ConfigError
from l4.profiler.calibrate import alpha_update, write_update
from l4.profiler.grid import FULL_GRID, QUICK_GRID, GridSpec, HeadShape, PrefillSpec, grid_points

if TYPE_CHECKING:  # measure imports torch, which the CLI only imports when profiling
    from l4.profiler.measure import RunConfig

DEFAULT_PROFILES = "h100-llama-3.2-3b,h100-llama-3.1-8b"
DEFAULT_OUT = Path("out/profile-attention")
TORCH_MISSING = "install torch to profile: pip install torch"
GIB = 1024**3


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected numbers >= 1, got {text!r}")
    return values


def _share_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated shares, got {text!r}") from None


def _prefill_list(text: str) -> tuple[PrefillSpec, ...]:
    out = []
    for item in text.split(","):
        chunk, _, prior = item.strip().partition(":")
        try:
            out.append(PrefillSpec(chunk_tokens=int(chunk), prior_tokens=int(prior or 0)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected CHUNK:PRIOR pairs, got {item!r}") from None
    return tuple(out)


def add_profile_parser(subparsers: Any) -> None:
    """Add ``profile-attention`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "profile-attention",
        help="measure the attention heterogeneity penalty (alpha) on a GPU",
        description="Time decode attention over a paged KV cache for mixed-length batches and "
        "for uniform batches at their mean and longest length; write a skew CSV and the "
        "fitted alpha table per model (see docs/profiler.md).",
    )
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="default: cuda")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny grid, few repeats: tests the pipeline in seconds (not a measurement)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: %(default)s")
    p.add_argument(
        "--profiles",
        default=DEFAULT_PROFILES,
        help="profiles whose model head shapes to profile (default: %(default)s)",
    )
    p.add_argument(
        "--profiles-dir",
        type=Path,
        default=default_profiles_dir(os.environ),
        help="directory of user profiles (default: %(default)s)",
    )
    p.add_argument(
        "--kernel",
        choices=("auto", "varlen", "sdpa"),
        default="auto",
        help="varlen: one FlashAttention launch per step (CUDA); sdpa: a call per sequence "
        "(reference, any device); auto: varlen on cuda, sdpa on cpu",
    )
    p.add_argument("--warmup", type=int, help="untimed runs per batch (default: 3; quick 1)")
    p.add_argument("--repeats", type=int, help="timed runs per batch (default: 15; quick 3)")
    g = p.add_argument_group("grid (defaults: the full grid, or the tiny one with --quick)")
    g.add_argument("--num-decodes", type=_int_list, help="e.g. 2,4,8,16,32,64,128,256")
    g.add_argument("--short", type=_int_list, help="short context lengths, e.g. 256,1024,4096")
    g.add_argument("--long", type=_int_list, help="long context lengths, e.g. 16384,131072")
    g.add_argument("--num-long", type=_int_list, help="long requests per batch, counts")
    g.add_argument("--long-shares", type=_share_list, help="long requests as shares of n")
    g.add_argument(
        "--prefills",
        type=_prefill_list,
        help="prefill chunks CHUNK:PRIOR; 0:0 is a decode-only step (e.g. 0:0,128:0,2048:8192)",
    )
    g.add_argument(
        "--max-batch-tokens",
        type=int,
        help="skip mixed batches with more KV tokens (default: the profile's KV capacity)",
    )
    k = p.add_argument_group("KV cache")
    k.add_argument(
        "--page-size",
        type=int,
        help="tokens per KV page (default: 256 for varlen, FlashAttention-2's minimum; else 16)",
    )
    k.add_argument(
        "--kv-pool-gib",
        type=float,
        default=8.0,
        help="at most this much KV per model; larger reference batches reuse pages (default: 8)",
    )
    p.add_argument("--seed", type=int, default=0, help="page placement and tensor contents")


def add_calibrate_alpha_parser(subparsers: Any) -> None:
    """Add ``calibrate-alpha`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "calibrate-alpha",
        help="refit a profile's alpha table from a skew CSV (dry run unless --write or --out)",
        description="Fit the heterogeneity coefficient table from a skew CSV written by "
        "`l4 profile-attention` (or LLMServingSim) and put it into a calibration profile, with "
        "its provenance and fit error. Without --write or --out nothing is written. The installed "
        "package is never modified: `--profile NAME` then finds the saved profile in "
        "--profiles-dir.",
    )
    p.add_argument("--csv", type=Path, required=True, help="the skew CSV")
    add_profile_options(p, default=None, environ=os.environ)
    p.add_argument(
        "--write",
        action="store_true",
        help="save the calibrated profile: a bundled one as --name (default <profile>-calibrated) "
        "in --profiles-dir, a user profile where it is; never into the installed package",
    )
    p.add_argument(
        "--name",
        help="the calibrated profile's name (and, with --write, its file in --profiles-dir)",
    )
    p.add_argument("--out", type=Path, help="write the calibrated profile to this path instead")
    p.add_argument(
        "--force",
        action="store_true",
        help="accept a CPU or --quick measurement (only to test the pipeline)",
    )


def _import_torch() -> Any:
    try:
        return importlib.import_module("torch")
    except ImportError:
        raise ConfigError(TORCH_MISSING) from None


def _grid(args: argparse.Namespace, profile: Profile) -> GridSpec:
    base = (
        QUICK_GRID
        if args.quick
        else replace(FULL_GRID, max_batch_tokens=profile.kv_capacity_tokens)
    )
    overrides: dict[str, Any] = {
        "num_decodes": args.num_decodes,
        "short_tokens": args.short,
        "long_tokens": args.long,
        "num_long": args.num_long,
        "long_shares": args.long_shares,
        "prefills": args.prefills,
        "max_batch_tokens": args.max_batch_tokens,
    }
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def _profiles(text: str, user_dir: Path) -> list[Profile]:
    """The profiles to take head shapes from, one per distinct model."""
    seen: dict[str, Profile] = {}
    for name in (n.strip() for n in text.split(",") if n.strip()):
        p = load_profile(name, user_dir=user_dir)
        seen.setdefault(p.model.name, p)
    if not seen:
        raise ConfigError("--profiles is empty")
    return list(seen.values())


def model_stem(model_name: str) -> str:
    """``meta-llama/Llama-3.1-8B`` -> ``llama-3.1-8b``: the output file stem."""
    return model_name.rsplit("/", 1)[-1].lower()


def _alpha_table(title: str, fit: AlphaFit) -> Table:
    table = Table(title=title)
    for name in ("n", "alpha decode-only", "alpha with prefill"):
        table.add_column(name, justify="right")
    t = fit.table
    for n, a, b in zip(t.num_decodes, t.decode_only, t.with_prefill, strict=True):
        table.add_row(str(n), f"{a:.3f}", f"{b:.3f}")
    return table


def run_profile(args: argparse.Namespace, console: Console | None = None) -> int:
    """Run ``l4 profile-attention``: measure, write CSV + JSON per model, print the tables."""
    torch = _import_torch()
    if console is None:
        console = Console() if sys.stdout.isatty() else Console(width=160)
    err = Console(stderr=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device cuda: torch {torch.__version__} sees no CUDA GPU "
            "(use --device cpu --quick for a CPU smoke run)"
        )
    kernel = args.kernel
    if kernel == "auto":
        kernel = "varlen" if args.device == "cuda" else "sdpa"
    if kernel == "varlen" and args.device != "cuda":
        raise ConfigError("--kernel varlen (FlashAttention) needs --device cuda")
    page = args.page_size or (256 if kernel == "varlen" else 16)
    if page < 1 or args.kv_pool_gib <= 0:
        raise ConfigError("--page-size and --kv-pool-gib must be positive")
    # Imported here: these modules import torch at the top.
    from l4.profiler.measure import RunConfig, TimingConfig

    cfg = RunConfig(
        kernel=kernel,
        device=torch.device(args.device),
        dtype=torch.bfloat16 if args.device == "cuda" else torch.float32,
        page_tokens=page,
        max_pool_pages=1,  # per model, from its KV bytes per page
        timing=TimingConfig(
            warmup=args.warmup if args.warmup is not None else (1 if args.quick else 3),
            repeats=args.repeats if args.repeats is not None else (3 if args.quick else 15),
            flush_bytes=256 * 1024**2 if args.device == "cuda" else 0,
        ),
        seed=args.seed,
    )
    threads = torch.get_num_threads()
    if args.device == "cpu":
        # A CPU run is a smoke test; on one thread it does not stall in OpenMP spin-waits when
        # the cores are shared (CI runners, parallel jobs), which made it 20x slower there.
        torch.set_num_threads(1)
    try:
        for profile in _profiles(args.profiles, args.profiles_dir):
            _profile_model(args, profile, cfg, console, err)
    finally:
        torch.set_num_threads(threads)
    return 0


def _device_name(torch: Any, device: Any) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return str(name or platform.machine())


def _profile_model(
    args: argparse.Namespace, profile: Profile, base: RunConfig, console: Console, err: Console
) -> None:
    """Measure one model's head shape; write its CSV and JSON; print its alpha table."""
    import torch

    from l4.profiler.measure import profile_points

    head = HeadShape.from_model(profile.model)
    spec = _grid(args, profile)
    points = grid_points(spec)
    page_bytes = base.page_tokens * head.kv_bytes_per_token(base.dtype.itemsize)
    cfg = replace(base, max_pool_pages=max(1, int(args.kv_pool_gib * GIB // page_bytes)))
    stem = model_stem(profile.model.name)
    device_name = _device_name(torch, cfg.device)
    err.print(f"[dim]{stem}: {len(points)} grid points on {device_name} ({cfg.kernel})[/dim]")
    t0 = time.perf_counter()
    run = profile_points(head, points, cfg, progress=_progress(err, stem))
    wall_s = time.perf_counter() - t0
    csv_path = args.out / f"{stem}_skew.csv"
    write_skew_csv(csv_path, run.rows)
    fit = fit_alpha(read_skew_csv(csv_path))
    timing = cfg.timing
    meta = {
        "format": "l4-skew-profile",
        "version": 1,
        "model": {"name": profile.model.name, **asdict(head)},
        "profile": profile.name,
        "csv": csv_path.name,
        "points": len(run.rows),
        "measurement": {
            "device": device_name,
            "device_type": cfg.device.type,
            "torch": torch.__version__,
            "kernel": cfg.kernel,
            "dtype": str(cfg.dtype).removeprefix("torch."),
            "page_tokens": cfg.page_tokens,
            "kv_pool_pages": run.pool_pages,
            "warmup": timing.warmup,
            "repeats": timing.repeats,
            "timer": "cuda-events" if cfg.device.type == "cuda" else "perf_counter",
            "l2_flush_bytes": timing.flush_bytes,
            "kernel_check_max_abs_error": run.check_max_abs_error,
            "quick": bool(args.quick),
            "seed": cfg.seed,
            "wall_s": wall_s,
            "grid": _grid_dict(spec),
        },
        "alpha": fit.table_dict(),
        "fit_error": fit.errors,
    }
    meta_path = csv_path.with_suffix(".json")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    console.print(_alpha_table(f"{stem} on {device_name}: fitted alpha", fit))
    err.print(f"wrote {csv_path} and {meta_path} ({wall_s:.1f} s)")


def _grid_dict(spec: GridSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["prefills"] = [[p.chunk_tokens, p.prior_tokens] for p in spec.prefills]
    return d


def _progress(err: Console, stem: str) -> Callable[[int, int], None]:
    step = {"next": 0.1}

    def report(done: int, total: int) -> None:
        # a quick grid is done before anyone reads a progress line
        if total >= 50 and done / total >= step["next"] and done < total:
            err.print(f"[dim]{stem}: {done}/{total} points[/dim]")
            step["next"] += 0.1

    return report


def run_calibrate_alpha(args: argparse.Namespace, console: Console | None = None) -> int:
    """Run ``l4 calibrate-alpha``: print old and new tables; write with --write or --out."""
    if console is None:
        console = Console() if sys.stdout.isatty() else Console(width=160)
    if args.out is not None:
        check_output_file("--out", args.out)
    update = alpha_update(
        args.csv,
        args.profile,
        user_dir=args.profiles_dir,
        out=args.out,
        name=args.name,
        force=args.force,
    )
    old = update.old_alpha
    table = Table(title=f"alpha of {update.doc['name']}: current -> fitted from {args.csv.name}")
    for name in ("n", "decode-only", "with prefill"):
        table.add_column(name, justify="right")
    new = update.fit.table
    old_rows = zip(
        old.get("num_decodes", []),
        old.get("decode_only", []),
        old.get("with_prefill", []),
        strict=False,
    )
    old_at = {int(n): (float(a), float(b)) for n, a, b in old_rows}
    for n, a, b in zip(new.num_decodes, new.decode_only, new.with_prefill, strict=True):
        was = old_at.get(n)
        before = ("-", "-") if was is None else (f"{was[0]:.3f}", f"{was[1]:.3f}")
        table.add_row(str(n), f"{before[0]} -> {a:.3f}", f"{before[1]} -> {b:.3f}")
    console.print(table)
    for regime in ("pure", "mixed"):
        e = update.fit.errors[regime]
        console.print(
            f"{regime}: t_skew MAPE {e['alpha_0']['mape']:.1%} with alpha 0, "
            f"{e['alpha_table']['mape']:.1%} with the table ({e['alpha_table']['rows']} rows)"
        )
    name = update.doc["name"]
    if args.write or args.out is not None:
        write_update(update)
        console.print(f"wrote {update.target}: use it with --profile {name}", highlight=False)
    else:
        console.print(
            f"dry run: nothing written (--write saves it as {name} in {update.target})",
            highlight=False,
        )
    return 0
