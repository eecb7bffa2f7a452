"""The `l4` command line: a thin edge that parses, runs, prints, and maps errors to exit codes."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from l4 import __version__
from l4.cliargs import (
    OneLineParser,
    Outputs,
    add_profile_options,
    exit_status,
    non_negative_float,
    output_paths,
    positive_float,
    positive_int,
    write_output,
)
from l4.core.migration import MigrationConfig, MigrationMechanism
from l4.costmodel.profile import Profile, load_profile
from l4.engine.cli import add_engine_parser, run_engine
from l4.errors import ValidationError
from l4.gateway.cli import add_serve_parser, run_serve
from l4.instance.config import InstanceConfig
from l4.metrics import SloConfig
from l4.planning_cli import add_plan_parser, run_plan
from l4.plots import SweepMarks, plot_latency_cdfs, plot_sweep
from l4.policies.base import parse_policy_list, policy_names
from l4.profiler.cli import (
    add_calibrate_alpha_parser,
    add_profile_parser,
    run_calibrate_alpha,
    run_profile,
)
from l4.report import (
    json_text,
    print_capacity,
    print_table,
    render_class_table,
    requests_jsonl_text,
)
from l4.runrate import DEMO_RATE_SCALE, RateChoice, choose_rate, rate_caption, rate_fields
from l4.sim.capacity import class_attainments, find_capacity
from l4.sim.runner import PolicyRun, SimConfig, run_policy
from l4.workload import Workload, WorkloadSpec, build_workload, bundled_traces

DEFAULT_TRACE = "mooncake"
DEFAULT_PROFILE = "h100-llama-3.2-3b"
DEFAULT_INSTANCES = 16
DEFAULT_POLICIES = "round_robin,least_load,random"
DEFAULT_DURATION_S = 1200.0
# What --out DIR receives.
REPORT_FILE = "report.json"
REQUESTS_FILE = "requests.jsonl"
CDF_FILE = "latency_cdf.png"
CAPACITY_FILE = "capacity.json"
SWEEP_FILE = "capacity_sweep.png"


def _add_workload_options(p: argparse.ArgumentParser) -> None:
    w = p.add_argument_group("workload")
    w.add_argument(
        "--trace",
        default=DEFAULT_TRACE,
        help=f"bundled workload ({', '.join(bundled_traces())}; servegen-* are generated "
        "per client from ServeGen's production statistics, azure-longdoc is Azure chat with 10%% "
        "long documents) or a JSONL/CSV path with arrival_s,input_tokens,output_tokens "
        "(default: %(default)s)",
    )
    w.add_argument("--rate", type=positive_float, help="mean arrival rate in requests/s")
    w.add_argument(
        "--rate-scale",
        type=positive_float,
        help="multiply the arrival rate (the trace's own, or --rate) by this factor (default: "
        f"x{DEMO_RATE_SCALE:g} for a bundled trace without --rate, else 1: a trace file is "
        "replayed at its recorded times)",
    )
    w.add_argument(
        "--duration",
        type=positive_float,
        help="keep arrivals in the first S seconds "
        f"(default: {DEFAULT_DURATION_S:g} unless --num-requests is given)",
    )
    w.add_argument("--num-requests", type=positive_int, help="keep the first N requests")
    w.add_argument(
        "--burstiness",
        type=positive_float,
        default=1.0,
        help="Gamma shape of generated inter-arrivals for traces without timestamps "
        "(1 = Poisson, <1 burstier; default: %(default)s)",
    )
    w.add_argument(
        "--offset",
        type=non_negative_float,
        default=0.0,
        help="start a timestamped trace S seconds into it (its own time, before --rate-scale) "
        "and wrap around at its end; windows of a trace are its independent samples. For the "
        "servegen-* workloads, the time of day to start at (50400 = 14:00) "
        "(default: %(default)s)",
    )
    w.add_argument("--seed", type=int, default=0, help="seed for arrivals and random choices")
    c = p.add_argument_group("cluster")
    add_profile_options(c, default=DEFAULT_PROFILE, environ=os.environ)
    c.add_argument("--instances", type=positive_int, default=DEFAULT_INSTANCES)
    c.add_argument(
        "--alpha",
        type=float,
        help="override the heterogeneity coefficient with a constant in [0, 1] "
        "(default: the profile's measured table)",
    )
    c.add_argument(
        "--migration",
        choices=[m.value for m in MigrationMechanism],
        default=MigrationMechanism.KV_TRANSFER.value,
        help="how policies move running requests (default: %(default)s)",
    )
    c.add_argument(
        "--kv-store-gbps",
        type=positive_float,
        help="with --migration replay: a shared KV store (LMCache-style) from which the "
        "destination loads a moved request's context at this many GB/s instead of recomputing it",
    )
    c.add_argument("--max-num-seqs", type=positive_int, help="vLLM max_num_seqs")
    c.add_argument("--max-num-batched-tokens", type=positive_int, help="vLLM token budget/step")
    c.add_argument("--kv-capacity-tokens", type=positive_int, help="KV cache size per instance")
    s = p.add_argument_group("service-level objectives")
    s.add_argument(
        "--slo-scale",
        type=positive_float,
        default=5.0,
        help="a request meets its SLOs within S x its unloaded TTFT and TPOT (default: 5)",
    )
    s.add_argument("--slo-ttft", type=positive_float, help="absolute TTFT SLO in seconds")
    s.add_argument("--slo-tpot", type=positive_float, help="absolute TPOT SLO in seconds")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="l4",
        description="L4: length-aware scheduling for multi-instance LLM serving.",
    )
    parser.add_argument("--version", action="version", version=f"l4 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser(
        "simulate",
        help="simulate a cluster under several policies and compare them",
        description="Replay a trace on a simulated cluster of vLLM-like instances, once per "
        "policy, and print TTFT/TPOT/ITL/E2E, throughput and goodput side by side.",
    )
    _add_workload_options(sim)
    sim.add_argument(
        "--policies",
        default=DEFAULT_POLICIES,
        help=f"comma-separated, from: {', '.join(policy_names())} (default: %(default)s)",
    )
    o = sim.add_argument_group(
        "output",
        "Paths are checked before the run. With --json - or --requests-out -, standard output "
        "carries only that data and the table goes to standard error.",
    )
    o.add_argument(
        "--out",
        type=Path,
        help=f"directory for {REPORT_FILE}, {REQUESTS_FILE} and {CDF_FILE} (created if missing)",
    )
    o.add_argument("--json", type=Path, help="write the JSON report here ('-': standard output)")
    o.add_argument(
        "--requests-out",
        type=Path,
        help="write one JSON line per request here ('-': standard output)",
    )
    cap = sub.add_parser(
        "capacity",
        help="find each policy's largest rate that keeps goodput at the target",
        description="Bisect the arrival-rate multiplier per policy for the largest rate whose "
        "SLO attainment (share of requests meeting TTFT and TPOT SLOs) stays >= the target.",
    )
    _add_workload_options(cap)
    cap.add_argument("--policies", default=DEFAULT_POLICIES, help="comma-separated policies")
    cap.add_argument(
        "--goodput-target",
        type=float,
        default=0.9,
        help="SLO attainment a rate must keep, overall and in every length class "
        "(default: %(default)s)",
    )
    cap.add_argument(
        "--overall-only",
        action="store_true",
        help="judge overall SLO attainment only, not each length class (< 2K, 2K-8K, 8K-32K, "
        ">= 32K total tokens; classes under 20 requests are never judged)",
    )
    cap.add_argument("--iterations", type=positive_int, default=6, help="bisection steps")
    cap.add_argument(
        "--json",
        type=Path,
        help="write the JSON result here ('-': standard output, and the table to standard error)",
    )
    cap.add_argument(
        "--out",
        type=Path,
        help=f"directory for {CAPACITY_FILE} and {SWEEP_FILE} (created if missing)",
    )
    add_plan_parser(sub)
    add_engine_parser(sub)
    add_serve_parser(sub)
    add_profile_parser(sub)
    add_calibrate_alpha_parser(sub)
    return parser


def _profile(args: argparse.Namespace) -> Profile:
    return load_profile(args.profile, user_dir=args.profiles_dir).with_overrides(
        kv_capacity_tokens=args.kv_capacity_tokens, alpha=args.alpha
    )


def _sim_config(args: argparse.Namespace, profile: Profile) -> SimConfig:
    return SimConfig(
        profile=profile,
        instance_config=InstanceConfig.from_profile(
            profile,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
        ),
        num_instances=args.instances,
        migration=MigrationConfig(
            mechanism=MigrationMechanism(args.migration),
            kv_store_bandwidth_bytes_per_s=(
                None if args.kv_store_gbps is None else args.kv_store_gbps * 1e9
            ),
        ),
        slo=SloConfig(scale=args.slo_scale, ttft_s=args.slo_ttft, tpot_s=args.slo_tpot),
        seed=args.seed,
    )


def _rate(args: argparse.Namespace) -> RateChoice:
    return choose_rate(args.trace, rate_rps=args.rate, rate_scale=args.rate_scale)


def _workload(args: argparse.Namespace, profile: Profile, rate_scale: float) -> Workload:
    duration = args.duration
    if duration is None and args.num_requests is None:
        duration = DEFAULT_DURATION_S
    return build_workload(
        WorkloadSpec(
            trace=args.trace,
            max_context_tokens=profile.model.max_context_tokens,
            rate_rps=args.rate,
            rate_scale=rate_scale,
            duration_s=duration,
            num_requests=args.num_requests,
            seed=args.seed,
            burstiness=args.burstiness,
            offset_s=args.offset,
        )
    )


def _config(
    args: argparse.Namespace, cfg: SimConfig, rate: RateChoice, workload: Workload
) -> dict[str, object]:
    described = workload.describe()
    return {
        "trace": args.trace,
        **rate_fields(rate, workload),
        "instances": cfg.num_instances,
        "profile": cfg.profile.name,
        "alpha": "profile" if args.alpha is None else args.alpha,
        "seed": cfg.seed,
        "offset_s": args.offset,
        "duration": described.get("duration_s"),
        "requests": len(workload.requests),
        "migration": cfg.migration.label,
        "max_num_seqs": cfg.instance_config.max_num_seqs,
        "max_num_batched_tokens": cfg.instance_config.max_num_batched_tokens,
        "kv_capacity_tokens": cfg.instance_config.kv_capacity_tokens,
        "slo": {"scale": cfg.slo.scale, "ttft_s": cfg.slo.ttft_s, "tpot_s": cfg.slo.tpot_s},
        "workload": described,
        "l4_version": __version__,
    }


def _caption(config: dict[str, object]) -> dict[str, object]:
    keys = ("trace", "rate", "instances", "profile", "alpha", "seed", "duration", "migration")
    out = {k: config[k] for k in keys}
    out["rate"] = rate_caption(config)
    duration = config["duration"]
    out["duration"] = f"{duration:.0f} s" if isinstance(duration, float) else duration
    return out


class _Progress:
    """A progress bar on a terminal; one line per finished run elsewhere."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )

    def context(self) -> AbstractContextManager[Any]:
        return self.bar if self.console.is_terminal else nullcontext()

    def task(self, label: str) -> Callable[[float], None]:
        task_id = self.bar.add_task(label, total=1.0)

        def update(fraction: float) -> None:
            self.bar.update(task_id, completed=fraction)

        return update

    def done(self, label: str, seconds: float) -> None:
        self.console.print(f"[dim]{label}: {seconds:.1f} s[/dim]")


def _outputs(
    args: argparse.Namespace, *, json_name: str, plot_name: str, requests_name: str | None = None
) -> Outputs:
    return output_paths(
        out=args.out,
        json=args.json,
        requests=getattr(args, "requests_out", None),
        json_name=json_name,
        plot_name=plot_name,
        requests_name=requests_name,
    )


def _write(path: Path, text: str, err: Console) -> None:
    if write_output(path, text):
        err.print(f"wrote {path}")


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _percent(value: object) -> str:
    share = _float(value)
    return "-" if share is None else f"{share:.1%}"


def _plot_title(what: str, config: dict[str, object], *, rate_word: str = "at") -> str:
    """A plot title that names the run: trace, rate, cluster, profile and alpha."""
    return (
        f"{what}: {config['trace']} {rate_word} {config['rate']:.3g} req/s "
        f"(x{config['rate_scale']:g}), {config['instances']} x {config['profile']}, "
        f"alpha={config['alpha']}"
    )


def cmd_simulate(args: argparse.Namespace, console: Console, err: Console) -> int:
    profile = _profile(args)
    policies = parse_policy_list(args.policies)
    cfg = _sim_config(args, profile)
    outputs = _outputs(args, json_name=REPORT_FILE, plot_name=CDF_FILE, requests_name=REQUESTS_FILE)
    if outputs.uses_stdout:
        console = err  # standard output carries the data; people read the table on stderr
    rate = _rate(args)
    workload = _workload(args, profile, rate.rate_scale)
    config = _config(args, cfg, rate, workload)
    if workload.clipped_requests:
        err.print(
            f"note: {workload.clipped_requests} requests clipped to the model's context "
            f"({profile.model.max_context_tokens} tokens)"
        )
    progress = _Progress(err)
    runs: list[PolicyRun] = []
    with progress.context():
        for name in policies:
            t0 = time.perf_counter()
            runs.append(run_policy(cfg, workload, name, progress=progress.task(name)))
            progress.done(f"simulated {name}", time.perf_counter() - t0)
    results = {r.policy: r.summary for r in runs}
    print_table(console, results, _caption(config), slo=cfg.slo)
    console.print(render_class_table(results, _caption(config)))
    records = {r.policy: r.outcome.records for r in runs}
    if outputs.json:
        _write(outputs.json, json_text({"config": config, "results": results}), err)
    if outputs.requests:
        _write(outputs.requests, requests_jsonl_text(records), err)
    if outputs.plot:
        plot_latency_cdfs(outputs.plot, records, title=_plot_title("Latency CDFs", config))
        err.print(f"wrote {outputs.plot}")
    return 0


def cmd_capacity(args: argparse.Namespace, console: Console, err: Console) -> int:
    profile = _profile(args)
    policies = parse_policy_list(args.policies)
    cfg = _sim_config(args, profile)
    outputs = _outputs(args, json_name=CAPACITY_FILE, plot_name=SWEEP_FILE)
    if outputs.uses_stdout:
        console = err  # standard output carries the JSON; people read the table on stderr
    rate = _rate(args)
    base_scale = rate.rate_scale
    base = _workload(args, profile, base_scale)
    config = _config(args, cfg, rate, base)
    config["goodput_target"] = args.goodput_target
    config["capacity_rule"] = "overall" if args.overall_only else "overall and every length class"
    results: dict[str, dict[str, object]] = {}
    sweep: dict[str, list[tuple[float, dict[str, object]]]] = {}
    for name in policies:
        t0 = time.perf_counter()

        def probe(scale: float, name: str = name) -> dict[str, object]:
            workload = _workload(args, profile, base_scale * scale)
            summary = run_policy(cfg, workload, name).summary
            summary["requests_per_s"] = workload.mean_rate_rps
            err.print(
                f"[dim]{name}: x{base_scale * scale:.3g} ({workload.mean_rate_rps:.3g} req/s) "
                f"SLO attainment {_percent(summary.get('slo_attainment'))}[/dim]"
            )
            return summary

        found = find_capacity(
            probe,
            target=args.goodput_target,
            iterations=args.iterations,
            per_class=not args.overall_only,
        )
        sweep[name] = [(float(str(s["requests_per_s"])), dict(s)) for _, s in found.probes]
        found_summary = found.summary or {}
        results[name] = {
            "rate_scale": None if found.rate_scale is None else base_scale * found.rate_scale,
            "requests_per_s": _float(found_summary.get("requests_per_s")),
            "goodput_requests_per_s": _float(found_summary.get("goodput_requests_per_s")),
            "slo_attainment": _float(found_summary.get("slo_attainment")),
            # Per-class attainment at the capacity found: what the rule judged.
            "classes": None
            if found.summary is None
            else {
                cls: {
                    "requests": c.requests,
                    "slo_attainment": c.slo_attainment,
                    "judged": c.judged,
                }
                for cls, c in class_attainments(found.summary).items()
            },
        }
        err.print(f"[dim]{name}: capacity search took {time.perf_counter() - t0:.1f} s[/dim]")
    print_capacity(console, results, _caption(config), target=args.goodput_target, slo=cfg.slo)
    for name, r in results.items():
        console.print(
            f"{name}: SLO attainment at capacity {_attainments_text(r)} "
            f"({config['capacity_rule']})",
            highlight=False,
        )
    if outputs.json:
        _write(outputs.json, json_text({"config": config, "results": results}), err)
    if outputs.plot:
        capacities = {name: _float(r["requests_per_s"]) for name, r in results.items()}
        plot_sweep(
            outputs.plot,
            sweep,
            title=_plot_title("Capacity search", config, rate_word="from"),
            marks=SweepMarks(goodput_target=args.goodput_target, capacities=capacities),
        )
        err.print(f"wrote {outputs.plot}")
    return 0


def _attainments_text(result: dict[str, object]) -> str:
    """``93% overall; <2K 95%, 2K-8K 91%`` (judged classes only) for the capacity table."""
    overall = result.get("slo_attainment")
    if not isinstance(overall, int | float):
        return "-"
    classes = result.get("classes")
    parts = []
    if isinstance(classes, dict):
        for cls, c in classes.items():
            share = c.get("slo_attainment") if isinstance(c, dict) else None
            if isinstance(c, dict) and c.get("judged") and isinstance(share, int | float):
                parts.append(f"{cls} {share:.0%}")
    return f"{overall:.0%} overall; {', '.join(parts)}" if parts else f"{overall:.0%} overall"


def cmd_engine(args: argparse.Namespace, console: Console, err: Console) -> int:
    return run_engine(args)


def cmd_serve(args: argparse.Namespace, console: Console, err: Console) -> int:
    return run_serve(args)


def cmd_plan(args: argparse.Namespace, console: Console, err: Console) -> int:
    return run_plan(args, console)


def cmd_profile_attention(args: argparse.Namespace, console: Console, err: Console) -> int:
    return run_profile(args, console)


def cmd_calibrate_alpha(args: argparse.Namespace, console: Console, err: Console) -> int:
    return run_calibrate_alpha(args, console)


COMMANDS = {
    "profile-attention": cmd_profile_attention,
    "calibrate-alpha": cmd_calibrate_alpha,
    "simulate": cmd_simulate,
    "capacity": cmd_capacity,
    "plan": cmd_plan,
    "engine": cmd_engine,
    "serve": cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Off a terminal rich would assume 80 columns; a log file has room for more, unless the
    # caller says otherwise with COLUMNS.
    wide = sys.stdout.isatty() or "COLUMNS" in os.environ
    console = Console() if wide else Console(width=160)
    err = Console(stderr=True)
    return exit_status(lambda: COMMANDS[args.command](args, console, err))


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["ValidationError", "main"]
