"""`l4 profile-attention` and `l4 calibrate-alpha`: the I/O edge of the attention profiler.

``add_profile_parser(subparsers)`` / ``run_profile(args)`` and ``add_calibrate_alpha_parser`` /
``run_calibrate_alpha`` follow ``l4.planning_cli``: errors are raised as ``L4Error`` for the main
CLI to turn into exit codes. torch is imported only when ``profile-attention`` runs, so the rest
of ``l4`` works without it.

``profile-attention`` writes, per model, ``<out>/<model>_skew.csv`` (LLMServingSim's skew.csv
columns, see ``l4.costmodel.alpha_fit``) and ``<out>/<model>_skew.json`` (the measurement's
settings, the fitted alpha table and its errors); with ``--suite`` per model and kernel
``<model>_<kernel>_skew.csv``/``.json`` and ``<model>_<kernel>_uniform.csv``, plus ``suite.json``
(see ``l4.profiler.run``).

``main`` is ``python -m l4.profiler``: these two commands without the rest of the ``l4`` CLI,
whose engine and gateway need packages a bare GPU machine may lack (starlette, uvicorn).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from l4.cliargs import add_profile_options, check_output_file, default_profiles_dir, exit_status
from l4.costmodel.profile import Profile, load_profile
from l4.errors import ConfigError
from l4.profiler.calibrate import alpha_update, write_update
from l4.profiler.grid import FULL_GRID, QUICK_GRID, GridSpec, PrefillSpec

if TYPE_CHECKING:  # the suite module imports torch, which the CLI imports only when profiling
    from l4.profiler.suite import SuiteSpec

DEFAULT_PROFILES = "h100-llama-3.1-8b,h100-llama-3.2-3b"
DEFAULT_OUT = Path("out/profile-attention")
TORCH_MISSING = "install torch to profile: pip install torch"
KERNEL_CHOICES = ("flash", "triton", "sdpa")
"""= l4.profiler.kernels.KERNELS (that module imports torch)"""


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
        description="Time decode attention over a KV cache for mixed-length batches and "
        "for uniform batches at their mean and longest length; write a skew CSV and the "
        "fitted alpha table per model (see docs/profiler.md). --suite hopper runs the whole "
        "Hopper measurement (both kernel families, uniform throughput too) in one go.",
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
        choices=("auto", *KERNEL_CHOICES),
        default="auto",
        help="flash: one FlashAttention-2 launch per step (CUDA); triton: the vLLM-style paged "
        "split-KV Triton kernel; sdpa: a call per sequence (reference, any device); auto: "
        "flash on cuda, sdpa on cpu",
    )
    p.add_argument(
        "--flash-layout",
        choices=("auto", "paged", "windows"),
        default="auto",
        help="flash KV layout: paged needs a torch whose flash op takes a block table (2.13+); "
        "windows (a contiguous window per sequence) works with older ones; auto picks paged "
        "when available and falls back if it fails its check",
    )
    p.add_argument("--warmup", type=int, help="untimed runs per batch (default: 3; quick 1)")
    p.add_argument("--repeats", type=int, help="timed runs per batch (default: 15; quick 3)")
    s = p.add_argument_group("suite (one command for a whole measurement)")
    s.add_argument(
        "--suite",
        choices=("hopper",),
        help="hopper: issue 14's measurement, every model x --kernels, skew grid + uniform "
        "throughput, resumable (with --quick: the same pipeline on tiny shapes)",
    )
    s.add_argument(
        "--kernels",
        help="suite kernels, comma-separated (default: flash,triton on cuda; sdpa on cpu, where "
        "triton runs in Triton's interpreter: minutes even for --quick)",
    )
    s.add_argument("--archive", type=Path, help="keep a tar.gz of --out here after every part")
    s.add_argument(
        "--deadline-s",
        type=float,
        help="stop starting work after this many seconds; finished parts are kept, a rerun "
        "resumes the rest",
    )
    s.add_argument(
        "--estimate",
        action="store_true",
        help="print the run's estimated GPU time and exit (needs no GPU)",
    )
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
        help="tokens per KV page (default: 256 for flash, FlashAttention-2's minimum; else 16)",
    )
    k.add_argument(
        "--kv-pool-gib",
        type=float,
        help="at most this much KV per model; larger reference batches reuse pages "
        "(default: 8; hopper suite 16)",
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


GRID_OPTIONS = ("num_decodes", "short", "long", "num_long", "long_shares", "prefills")


def _grid(args: argparse.Namespace) -> GridSpec:
    """The single-measurement grid: full or quick, with the command line's overrides."""
    base = QUICK_GRID if args.quick else FULL_GRID
    overrides: dict[str, Any] = {
        "num_decodes": args.num_decodes,
        "short_tokens": args.short,
        "long_tokens": args.long,
        "num_long": args.num_long,
        "long_shares": args.long_shares,
        "prefills": args.prefills,
    }
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def _profiles(text: str, user_dir: Path) -> tuple[Profile, ...]:
    """The profiles to take head shapes from, one per distinct model."""
    seen: dict[str, Profile] = {}
    for name in (n.strip() for n in text.split(",") if n.strip()):
        p = load_profile(name, user_dir=user_dir)
        seen.setdefault(p.model.name, p)
    if not seen:
        raise ConfigError("--profiles is empty")
    return tuple(seen.values())


def _kernels(args: argparse.Namespace) -> tuple[str, ...]:
    cuda = args.device == "cuda"
    if args.suite is None:
        if args.kernels is not None:
            raise ConfigError("--kernels is for --suite; give one --kernel")
        kernel = args.kernel
        if kernel == "auto":
            kernel = "flash" if cuda else "sdpa"
        return (kernel,)
    if args.kernels is None:
        # Triton's CPU interpreter needs minutes even for the quick shapes: opt in on a CPU
        return ("flash", "triton") if cuda else ("sdpa",)
    names = tuple(dict.fromkeys(k.strip() for k in args.kernels.split(",") if k.strip()))
    unknown = [k for k in names if k not in KERNEL_CHOICES]
    if unknown or not names:
        raise ConfigError(
            f"--kernels: expected some of {', '.join(KERNEL_CHOICES)}, got {args.kernels!r}"
        )
    return names


def _suite_spec(args: argparse.Namespace) -> SuiteSpec:
    """The SuiteSpec of this command line (imported lazily: the suite module imports torch)."""
    from l4.profiler.suite import HOPPER_SUITE, QUICK_SUITE, SuiteSpec

    if args.suite is not None:
        if any(getattr(args, o) is not None for o in GRID_OPTIONS):
            raise ConfigError("the grid options apply without --suite (the suite has its own)")
        spec = QUICK_SUITE if args.quick else HOPPER_SUITE
    else:
        spec = SuiteSpec(
            name="quick" if args.quick else "full",
            grids=(_grid(args),),
            warmup=1 if args.quick else 3,
            repeats=3 if args.quick else 15,
            kernel_in_file_names=False,
        )
    overrides = {"warmup": args.warmup, "repeats": args.repeats, "kv_pool_gib": args.kv_pool_gib}
    return replace(spec, **{k: v for k, v in overrides.items() if v is not None})


def _alpha_table(title: str, table_doc: dict[str, Any]) -> Table:
    table = Table(title=title)
    for name in ("n", "alpha decode-only", "alpha with prefill"):
        table.add_column(name, justify="right")
    rows = zip(
        table_doc["num_decodes"], table_doc["decode_only"], table_doc["with_prefill"], strict=True
    )
    for n, a, b in rows:
        table.add_row(str(n), f"{a:.3f}", f"{b:.3f}")
    return table


def run_profile(args: argparse.Namespace, console: Console | None = None) -> int:
    """Run ``l4 profile-attention``: measure every part, write CSV + JSON, print the tables.

    Returns 0 when every part is measured (or was earlier), 1 when a suite left parts failed
    or unfinished (their reasons are in ``suite.json`` and on stderr)."""
    torch = _import_torch()
    if console is None:
        console = Console() if sys.stdout.isatty() else Console(width=160)
    err = Console(stderr=True)
    # Imported here: these modules import torch at the top.
    from l4.profiler.run import run_suite
    from l4.profiler.suite import RunSettings, estimate_s, model_stem

    if (args.warmup is not None and args.warmup < 0) or (
        args.repeats is not None and args.repeats < 1
    ):
        raise ConfigError("--warmup must be >= 0 and --repeats >= 1")
    if args.kv_pool_gib is not None and args.kv_pool_gib <= 0:
        raise ConfigError("--kv-pool-gib must be positive")
    cuda = args.device == "cuda"
    settings = RunSettings(
        suite=_suite_spec(args),
        kernels=_kernels(args),
        profiles=_profiles(args.profiles, args.profiles_dir),
        device=torch.device(args.device),
        dtype=torch.bfloat16 if cuda else torch.float32,
        page_size=args.page_size,
        flash_layout=args.flash_layout,
        flush_bytes=256 * 1024**2 if cuda else 0,
        seed=args.seed,
        quick=bool(args.quick),
        out=args.out,
        archive=args.archive,
        deadline_s=args.deadline_s,
        max_batch_tokens=args.max_batch_tokens,
        keep_going=args.suite is not None,
    )
    if args.estimate:
        console.print(f"estimated GPU time: {estimate_s(settings):.0f} s (an H100; see docs)")
        return 0
    if cuda and not torch.cuda.is_available():
        raise ConfigError(
            f"--device cuda: torch {torch.__version__} sees no CUDA GPU "
            "(use --device cpu --quick for a CPU smoke run)"
        )
    if "flash" in settings.kernels and not cuda:
        raise ConfigError("the flash kernel (FlashAttention) needs --device cuda")
    threads = torch.get_num_threads()
    if not cuda:
        # A CPU run is a smoke test; on one thread it does not stall in OpenMP spin-waits when
        # the cores are shared (CI runners, parallel jobs), which made it 20x slower there.
        torch.set_num_threads(1)
    try:
        report = run_suite(settings, err)
    finally:
        torch.set_num_threads(threads)
    for part in report.parts:
        if part.alpha is not None:
            title = f"{model_stem(part.model)} {part.kernel} ({part.status}): fitted alpha"
            console.print(_alpha_table(title, part.alpha))
    err.print(f"wrote {', '.join(f for p in report.parts for f in p.files)} in {args.out}")
    if not report.complete:
        err.print(f"incomplete: see {report.summary_path}; rerun the same command to resume")
        return 1
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m l4.profiler``: the two profiler commands alone."""
    parser = argparse.ArgumentParser(
        prog="python -m l4.profiler",
        description="The attention profiler's commands of l4, runnable where only torch, "
        "numpy and rich are installed.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_profile_parser(sub)
    add_calibrate_alpha_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m l4.profiler profile-attention|calibrate-alpha ...`` (exit codes as ``l4``)."""
    args = build_parser().parse_args(argv)
    run = run_profile if args.command == "profile-attention" else run_calibrate_alpha
    return exit_status(lambda: run(args))
