"""Single-instance validation: simulated TTFT/TPOT/ITL/E2E/throughput next to public vLLM figures.

Replays, on one simulated instance, the workloads behind public vLLM measurements of Llama-3(.1)-8B
on one H100 (sources and caveats in docs/validation.md), a public saturated vLLM 0.19 run on an RTX
PRO 6000 request by request (``_saturated_run.py``: mean TTFT/TPOT/E2E against the issue's
5% / 3% / 3% targets), plus rate sweeps from light to saturated load on matched-length
(vLLM-bench ShareGPT-like) and bundled (Sarathi multi-turn ShareGPT) traces.
Deterministic (fixed seeds); takes well under a minute. Prints tables and writes
docs/validation.json. ``--quick`` runs a smoke-sized version (the small public runs, two rates of
a few requests) for tests; its figures are not the published ones. Usage:

    python benchmarks/validate_single_instance.py [--out docs/validation.json] [--quick]
    python benchmarks/validate_single_instance.py --import-saturated-run DIR  # re-copy the run
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from _saturated_run import import_run, print_saturated
from _saturated_run import validate as validate_saturated
from l4 import __version__
from l4.core.migration import MigrationConfig
from l4.costmodel import load_profile
from l4.costmodel.profile import Profile
from l4.instance import InstanceConfig
from l4.metrics import SloConfig
from l4.sim.runner import SimConfig, run_policy
from l4.workload import Workload, WorkloadSpec, build_workload

ROOT = Path(__file__).resolve().parents[1]
SEED = 0

# Per-request ShareGPT lengths (Llama-3 tokenizer, vLLM benchmark_serving sampling, seed 0) of the
# Lambda Labs run with 160 prompts: LambdaLabsML/vllm-benchmark @ a4f9f437,
# results/prompt_160/1xH100-80GB-SXM/Meta-Llama-3-8B-Instruct_tp1_len2048.json (input_lens,
# output_lens). The 10-prompt run used the first 10 prompts (its output_lens differ in one entry).
# Output 0 means the streamed text re-tokenised to nothing; replayed as 1 token.
LAMBDA_INPUT_LENS: tuple[int, ...] = (
    13, 25, 27, 10, 329, 29, 399, 328, 4, 205, 16, 372, 403, 9, 12, 770, 227, 8, 14, 390, 659, 59,
    76, 744, 619, 279, 344, 9, 10, 45, 11, 4, 80, 768, 317, 40, 619, 8, 298, 16, 17, 696, 575, 11,
    7, 281, 12, 147, 481, 770, 336, 6, 331, 9, 45, 222, 802, 481, 93, 641, 22, 15, 16, 77, 32, 689,
    178, 9, 628, 480, 42, 336, 24, 515, 761, 112, 113, 348, 82, 467, 245, 11, 24, 343, 13, 387, 258,
    32, 28, 225, 248, 35, 133, 98, 27, 23, 58, 363, 203, 140, 140, 230, 310, 521, 768, 317, 298,
    336, 491, 19, 10, 59, 48, 20, 20, 54, 107, 53, 72, 18, 10, 768, 7, 933, 239, 277, 26, 35, 462,
    386, 25, 23, 17, 20, 44, 661, 631, 349, 53, 71, 37, 10, 21, 37, 496, 8, 9, 353, 10, 595, 5, 49,
    286, 305, 56, 43, 52, 310, 35, 7,
)  # fmt: skip
LAMBDA_OUTPUT_LENS: tuple[int, ...] = (
    120, 425, 233, 194, 101, 741, 9, 3, 6, 31, 392, 84, 396, 45, 291, 9, 173, 277, 334, 37, 587,
    335, 36, 135, 26, 45, 450, 118, 226, 4, 5, 146, 59, 11, 567, 192, 478, 130, 13, 223, 188, 16,
    35, 276, 202, 492, 239, 129, 26, 79, 17, 204, 11, 207, 78, 340, 17, 9, 123, 6, 559, 5, 316, 26,
    417, 206, 151, 42, 25, 18, 159, 0, 25, 267, 19, 12, 768, 67, 628, 11, 218, 296, 382, 49, 125, 0,
    26, 237, 350, 13, 490, 408, 58, 29, 512, 413, 526, 16, 416, 434, 451, 17, 573, 0, 7, 8, 11, 22,
    0, 249, 281, 392, 611, 572, 23, 256, 31, 39, 300, 355, 340, 9, 172, 458, 147, 240, 154, 768, 0,
    141, 42, 26, 780, 334, 125, 4, 4, 721, 63, 24, 331, 482, 110, 216, 184, 99, 285, 22, 355, 40,
    150, 46, 0, 0, 574, 574, 214, 0, 419, 163,
)  # fmt: skip
LAMBDA_10_OUTPUT_LENS: tuple[int, ...] = (120, 429, 233, 194, 101, 741, 9, 3, 6, 31)

# Public measurements (ms, s, tok/s as named). See docs/validation.md for URLs and caveats.
SOURCES: dict[str, dict[str, object]] = {
    "lambda_burst_10": {
        "source": "LambdaLabsML/vllm-benchmark results/prompt_10/1xH100-80GB-SXM/"
        "Meta-Llama-3-8B-Instruct_tp1_len2048.json (2024-09-07)",
        "setup": "vLLM v0.6.0, num-scheduler-steps 10, no chunked prefill, max-num-seqs 256, "
        "max-model-len 2048, bf16, 1x H100 SXM; 10 ShareGPT prompts at rate inf",
        "ttft_mean_ms": 62.43,
        "tpot_mean_ms": 11.11,
        "tpot_p50_ms": 7.56,
        "e2e_mean_s": 1.432,
        "e2e_p50_s": 0.874,
        "output_tokens_per_s": 347.9,
        "duration_s": 5.37,
    },
    "lambda_burst_160": {
        "source": "LambdaLabsML/vllm-benchmark results/prompt_160/1xH100-80GB-SXM/"
        "Meta-Llama-3-8B-Instruct_tp1_len2048.json (2024-09-07)",
        "setup": "as lambda_burst_10; 160 ShareGPT prompts at rate inf",
        "ttft_mean_ms": 959.5,
        "ttft_p50_ms": 973.0,
        "tpot_mean_ms": 30.35,
        "tpot_p50_ms": 13.07,
        "e2e_mean_s": 3.375,
        "e2e_p50_s": 2.924,
        "output_tokens_per_s": 3922.4,
        "requests_per_s": 19.54,
        "duration_s": 8.19,
    },
    "lambda_burst_5000": {
        "source": "LambdaLabsML/vllm-benchmark benchmark_v0.md, 'Llama 3.1 8B' table",
        "setup": "vLLM v0.6.0, no chunked prefill, tp 1, max-num-seq 256, max-seq-len 2048, "
        "5000 ShareGPT prompts at rps inf (H100; weights dtype not stated)",
        "output_tokens_per_s": 8088.35,
        "tpot_p50_ms": 25.57,
        "output_tokens_per_s_step1": 3958.40,
        "tpot_p50_ms_step1": 196.24,
        "output_tokens_per_s_v054_chunked": 3032.04,
    },
    "vllm_ci_latency_b8": {
        "source": "vLLM performance-benchmark CI page (Buildkite), latency_llama8B_tp1",
        "setup": "vllm benchmark_latency, Llama-3.1-8B tp1, batch 8, 32 in / 128 out, one GPU of "
        "an 8xH100 node (vLLM version not shown in the page text)",
        "e2e_mean_s": 0.9975,
        "e2e_mean_s_h200": 0.8334,
    },
    "vllm_ci_throughput_200": {
        "source": "vLLM performance-benchmark CI page (Buildkite), throughput_llama8B_tp1",
        "setup": "vllm benchmark_throughput, Llama-3.1-8B tp1, 200 ShareGPT prompts, one GPU of "
        "an 8xH100 node",
        "requests_per_s": 19.50,
        "requests_per_s_h200": 22.57,
    },
    "vllm_pr18566_1000": {
        "source": "vllm-project/vllm PR #18566 description (2025-05-22)",
        "setup": "vllm serve meta-llama/Llama-3.1-8B-Instruct (V1 engine, defaults); vllm bench "
        "serve, ShareGPT (HF Aeala/ShareGPT_Vicuna_unfiltered), 1000 prompts at rate inf, "
        "chat endpoint; GPU NOT stated (not known to be an H100)",
        "mean_input_tokens": 229.7,
        "mean_output_tokens": 203.1,
        "ttft_mean_ms": 9626.13,
        "ttft_p50_ms": 9459.70,
        "tpot_mean_ms": 77.86,
        "tpot_p50_ms": 48.84,
        "itl_mean_ms": 38.13,
        "itl_p50_ms": 25.44,
        "output_tokens_per_s": 6582.87,
        "requests_per_s": 32.42,
        "duration_s": 30.85,
    },
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """One simulated replay: which profile, which requests, which engine limits."""

    name: str
    profile: str
    arrivals_s: tuple[float, ...]
    input_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]
    max_num_seqs: int | None = None  # None: the profile's vLLM default
    compare_to: str | None = None  # key in SOURCES


def _bootstrap_lengths(num_requests: int, seed: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Resample the Lambda ShareGPT (input, output) pairs: vLLM-bench-like chat lengths."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(LAMBDA_INPUT_LENS), size=num_requests)
    inputs = tuple(LAMBDA_INPUT_LENS[i] for i in idx)
    outputs = tuple(max(1, LAMBDA_OUTPUT_LENS[i]) for i in idx)
    return inputs, outputs


def _poisson_arrivals(num_requests: int, rate_rps: float, seed: int) -> tuple[float, ...]:
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate_rps, size=num_requests)
    gaps[0] = 0.0  # the first request opens the window, as vllm bench's first send does
    return tuple(float(t) for t in np.cumsum(gaps))


def _burst(name: str, profile: str, inputs: Sequence[int], outputs: Sequence[int]) -> Scenario:
    return Scenario(
        name=name,
        profile=profile,
        arrivals_s=(0.0,) * len(inputs),
        input_tokens=tuple(inputs),
        output_tokens=tuple(max(1, o) for o in outputs),
        max_num_seqs=256,  # Lambda's MAX_NUM_SEQ; also vLLM 0.6's default
        compare_to=name,
    )


def source_scenarios() -> list[Scenario]:
    """Replays of the public runs on h100-llama-3.1-8b."""
    p = "h100-llama-3.1-8b"
    b5000 = _bootstrap_lengths(5000, SEED)
    b200 = _bootstrap_lengths(200, SEED + 1)
    b1000 = _bootstrap_lengths(1000, SEED + 2)
    return [
        _burst("lambda_burst_10", p, LAMBDA_INPUT_LENS[:10], LAMBDA_10_OUTPUT_LENS),
        _burst("lambda_burst_160", p, LAMBDA_INPUT_LENS, LAMBDA_OUTPUT_LENS),
        _burst("lambda_burst_5000", p, *b5000),
        _burst("vllm_ci_latency_b8", p, (32,) * 8, (128,) * 8),
        _burst("vllm_ci_throughput_200", p, *b200),
        Scenario(
            name="vllm_pr18566_1000",
            profile=p,
            arrivals_s=(0.0,) * 1000,
            input_tokens=b1000[0],
            output_tokens=b1000[1],
            compare_to="vllm_pr18566_1000",
        ),
    ]


def sweep_scenarios(profile: str, rates_rps: Sequence[float], num_requests: int) -> list[Scenario]:
    """Matched-length (vLLM-bench ShareGPT-like, ~213 in / ~200 out) Poisson sweep."""
    inputs, outputs = _bootstrap_lengths(num_requests, SEED + 3)
    return [
        Scenario(
            name=f"matched_poisson_{rate:g}rps",
            profile=profile,
            arrivals_s=_poisson_arrivals(num_requests, rate, SEED + 4),
            input_tokens=inputs,
            output_tokens=outputs,
        )
        for rate in rates_rps
    ]


def _write_jsonl(path: Path, s: Scenario) -> None:
    with path.open("w") as f:
        for t, i, o in zip(s.arrivals_s, s.input_tokens, s.output_tokens, strict=True):
            f.write(json.dumps({"arrival_s": t, "input_tokens": i, "output_tokens": o}) + "\n")


def _sim_config(profile: Profile, max_num_seqs: int | None) -> SimConfig:
    return SimConfig(
        profile=profile,
        instance_config=InstanceConfig.from_profile(profile, max_num_seqs=max_num_seqs),
        num_instances=1,
        migration=MigrationConfig(),
        slo=SloConfig(),
        seed=SEED,
    )


def _figures(summary: dict[str, object], workload: Workload) -> dict[str, float | int | None]:
    """The metrics vllm bench prints, in its units (ms for latencies, s for E2E)."""

    def dist(key: str, stat: str, scale: float) -> float | None:
        d = summary[key]
        assert isinstance(d, dict)
        v = d.get(stat)
        return None if v is None else round(float(v) * scale, 4)

    tp = summary["throughput"]
    assert isinstance(tp, dict)
    described = workload.describe()
    return {
        "requests": len(workload.requests),
        "mean_input_tokens": round(float(str(described["input_tokens_mean"])), 1),
        "mean_output_tokens": round(float(str(described["output_tokens_mean"])), 1),
        "offered_rate_rps": round(workload.mean_rate_rps, 3) if workload.mean_rate_rps else None,
        "ttft_mean_ms": dist("ttft_s", "mean", 1e3),
        "ttft_p50_ms": dist("ttft_s", "p50", 1e3),
        "tpot_mean_ms": dist("tpot_s", "mean", 1e3),
        "tpot_p50_ms": dist("tpot_s", "p50", 1e3),
        "itl_mean_ms": dist("itl_s", "mean", 1e3),
        "itl_p50_ms": dist("itl_s", "p50", 1e3),
        "e2e_mean_s": dist("e2e_s", "mean", 1.0),
        "e2e_p50_s": dist("e2e_s", "p50", 1.0),
        "output_tokens_per_s": round(float(tp["output_tokens_per_s"]), 1),
        "requests_per_s": round(float(tp["requests_per_s"]), 3),
        "duration_s": round(float(str(summary["window_s"])), 3),
        "preemptions": int(str(summary["preemptions"])),
    }


def simulate(s: Scenario, tmp: Path) -> dict[str, float | int | None]:
    profile = load_profile(s.profile)
    path = tmp / f"{s.name}-{s.profile}.jsonl"
    _write_jsonl(path, s)
    workload = build_workload(
        WorkloadSpec(trace=str(path), max_context_tokens=profile.model.max_context_tokens)
    )
    run = run_policy(_sim_config(profile, s.max_num_seqs), workload, "round_robin")
    return _figures(run.summary, workload)


def simulate_bundled(profile_name: str, rate_rps: float, num_requests: int) -> dict[str, object]:
    """The bundled Sarathi ShareGPT trace (mean 2,340 in / 439 out), Poisson at ``rate_rps``."""
    profile = load_profile(profile_name)
    workload = build_workload(
        WorkloadSpec(
            trace="sharegpt",
            max_context_tokens=profile.model.max_context_tokens,
            rate_rps=rate_rps,
            num_requests=num_requests,
            seed=SEED,
        )
    )
    run = run_policy(_sim_config(profile, None), workload, "round_robin")
    return {"name": f"bundled_sharegpt_{rate_rps:g}rps", **_figures(run.summary, workload)}


def decode_floor(profile_name: str) -> dict[str, float | int | None]:
    """One request alone (128 in / 512 out): the batch-1 decode step the profile implies."""
    s = Scenario(
        name="batch1",
        profile=profile_name,
        arrivals_s=(0.0,),
        input_tokens=(128,),
        output_tokens=(512,),
    )
    with tempfile.TemporaryDirectory() as d:
        return simulate(s, Path(d))


def ratio(sim: object, real: object) -> float | None:
    if not isinstance(sim, int | float) or not isinstance(real, int | float) or real == 0:
        return None
    return round(float(sim) / float(real), 3)


COLUMNS = (
    ("ttft_mean_ms", "TTFT mean ms"),
    ("ttft_p50_ms", "TTFT p50 ms"),
    ("tpot_mean_ms", "TPOT mean ms"),
    ("tpot_p50_ms", "TPOT p50 ms"),
    ("itl_mean_ms", "ITL mean ms"),
    ("itl_p50_ms", "ITL p50 ms"),
    ("e2e_mean_s", "E2E mean s"),
    ("e2e_p50_s", "E2E p50 s"),
    ("output_tokens_per_s", "out tok/s"),
    ("requests_per_s", "req/s"),
    ("duration_s", "span s"),
)


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_table(title: str, rows: Sequence[dict[str, object]]) -> None:
    print(f"\n{title}")
    header = ["scenario", *(label for _, label in COLUMNS)]
    table = [header]
    for row in rows:
        table.append([str(row["name"]), *(_fmt(row.get(k)) for k, _ in COLUMNS)])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "validation.json")
    parser.add_argument("--quick", action="store_true", help="smoke size (for tests)")
    parser.add_argument(
        "--import-saturated-run",
        type=Path,
        metavar="DIR",
        help="re-make benchmarks/data's copy of the saturated run from its two originals",
    )
    args = parser.parse_args()
    if args.import_saturated_run is not None:
        import_run(args.import_saturated_run)
        return
    t0 = time.perf_counter()
    comparisons: list[dict[str, object]] = []
    sweeps: dict[str, list[dict[str, object]]] = {}
    sources = source_scenarios()
    matched_rates: tuple[float, ...] = (1, 2, 4, 8, 16, 24, 32, 48)
    bundled_rates: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0)
    matched_n, bundled_n = 1000, 500
    if args.quick:
        sources = [s for s in sources if len(s.input_tokens) <= 160]
        matched_rates, bundled_rates, matched_n, bundled_n = (1, 8), (1.0,), 40, 20
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for s in sources:
            sim = simulate(s, tmp)
            real = SOURCES[s.compare_to or s.name]
            ratios = {k: ratio(sim.get(k), real.get(k)) for k, _ in COLUMNS if k in real}
            comparisons.append(
                {"name": s.name, "profile": s.profile, "sim": sim, "real": real, "ratio": ratios}
            )
        for profile in ("h100-llama-3.1-8b", "h100-llama-3.2-3b"):
            rows: list[dict[str, object]] = []
            for s in sweep_scenarios(profile, matched_rates, matched_n):
                rows.append({"name": s.name, **simulate(s, tmp)})
            for rate in bundled_rates:
                rows.append(simulate_bundled(profile, rate, bundled_n))
            sweeps[profile] = rows
    floors = {p: decode_floor(p) for p in ("h100-llama-3.1-8b", "h100-llama-3.2-3b")}
    saturated = validate_saturated()

    sim_rows: list[dict[str, object]] = []
    for c in comparisons:
        sim_d = c["sim"]
        real_d = c["real"]
        ratio_d = c["ratio"]
        assert isinstance(sim_d, dict) and isinstance(real_d, dict) and isinstance(ratio_d, dict)
        sim_rows.append({"name": f"{c['name']} [sim]", **sim_d})
        sim_rows.append({"name": f"{c['name']} [vLLM]", **real_d})
        sim_rows.append({"name": f"{c['name']} [sim/vLLM]", **ratio_d})
    print_table("Public vLLM runs (Llama-3/3.1-8B, 1x H100) vs h100-llama-3.1-8b", sim_rows)
    for profile, rows in sweeps.items():
        print_table(f"Rate sweep, one instance of {profile}", rows)
    for profile, f in floors.items():
        print(
            f"\n{profile}: batch-1 decode (128 in / 512 out alone): TPOT {f['tpot_mean_ms']} ms, "
            f"TTFT {f['ttft_mean_ms']} ms"
        )
    print_saturated(saturated)
    elapsed = time.perf_counter() - t0
    report = {
        "generated_by": "benchmarks/validate_single_instance.py",
        "l4_version": __version__,
        "seed": SEED,
        "policy": "round_robin (one instance)",
        "comparisons": comparisons,
        "batch1_decode": floors,
        "saturated": saturated,
        "sweeps": sweeps,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {args.out} ({elapsed:.1f} s)")


if __name__ == "__main__":
    main()
