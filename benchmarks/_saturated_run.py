"""A public saturated vLLM run, replayed on one simulated instance (validate_single_instance.py).

The run: LLMServingSim 2.0's `bench` example (casys-kaist/LLMServingSim @ 5daddb2,
`bench/examples/RTXPRO6000/Llama-3.1-8B/`): vLLM 0.19.0 (AsyncLLM, V1 engine) serving
Llama-3.1-8B bf16 on one RTX PRO 6000 Blackwell, max_num_seqs 128, max_num_batched_tokens 2048,
300 ShareGPT requests arriving at ~10 req/s (Poisson), each output pinned to its length
(min_tokens = max_tokens, ignore_eos). The queue builds to ~20 s: a saturated instance. The copy in
`benchmarks/data/` keeps, per request, the arrival, the lengths, the first and last token times
(vLLM's own request-state timestamps) and the prompt tokens a prefix cache could reuse
(LICENSES.md there says how each column was made).

Metrics as LLMServingSim's `bench validate` defines them, on both sides: TTFT = first token -
arrival (queueing included), TPOT = (last - first) / (output - 1), E2E = last token - arrival.
Our simulator does not model prefix caching (vLLM 0.19 turns it on by default): the replay is run
as is, and once with every prompt shortened by its cacheable prefix (the prefill it saves; the
decode contexts shrink too, so that bounds the saving from above).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from l4.core.migration import MigrationConfig
from l4.costmodel import load_profile
from l4.costmodel.profile import Profile
from l4.instance import InstanceConfig
from l4.metrics import SloConfig
from l4.sim.runner import SimConfig, run_policy
from l4.workload import WorkloadSpec, build_workload

DATA = Path(__file__).resolve().parent / "data" / "llmss_rtxpro6000_llama31_8b_sharegpt300.csv.gz"
PROFILE = "rtxpro6000-llama-3.1-8b"
MAX_NUM_SEQS = 128
MAX_NUM_BATCHED_TOKENS = 2048
BLOCK_TOKENS = 16  # vLLM's KV block: the prefix cache reuses whole blocks
ORIGINALS = {
    "requests.jsonl": "0175b31b0ddc02b97eb6da1410dc80fc5900b8785c988e90cacee1021d644682",
    "sharegpt-llama-3.1-8b-300-sps10.jsonl": (
        "05e48b32da530d4a3dd77f3d47c6fe694ac8308d611aa088e38bb10fba2b3b3a"
    ),
}
COLUMNS = (
    "request",
    "arrival_s",
    "input_tokens",
    "output_tokens",
    "cacheable_prefix_tokens",
    "first_token_s",
    "last_token_s",
)
# (key, what it is, relative error target): issue 12's targets for a saturated run.
TARGETS = (("ttft_s", "TTFT", 0.05), ("tpot_s", "TPOT", 0.03), ("e2e_s", "E2E", 0.03))


@dataclass(frozen=True, slots=True, kw_only=True)
class MeasuredRequest:
    arrival_s: float
    input_tokens: int
    output_tokens: int
    cacheable_prefix_tokens: int
    first_token_s: float
    last_token_s: float


def cacheable_prefixes(prompts: Sequence[Sequence[int]]) -> list[int]:
    """Per prompt, the tokens of whole 16-token blocks an earlier prompt already computed.

    vLLM's prefix cache reuses the longest chain of full blocks seen before and always computes
    the last prompt token itself, so at most ``(len - 1) // 16`` blocks.
    """
    seen: set[tuple[int, ...]] = set()
    out = []
    for ids in prompts:
        hit, most = 0, (len(ids) - 1) // BLOCK_TOKENS
        while hit < most and tuple(ids[: (hit + 1) * BLOCK_TOKENS]) in seen:
            hit += 1
        seen.update(tuple(ids[: (b + 1) * BLOCK_TOKENS]) for b in range(len(ids) // BLOCK_TOKENS))
        out.append(hit * BLOCK_TOKENS)
    return out


def import_run(source_dir: Path, dest: Path = DATA) -> None:
    """Reduce the two originals (checked by SHA-256) in ``source_dir`` to the copy in ``dest``."""
    raw = {}
    for name, digest in ORIGINALS.items():
        data = (source_dir / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise SystemExit(f"{name}: not the pinned original (sha256 {digest})")
        raw[name] = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    requests = sorted(raw["requests.jsonl"], key=lambda r: int(r["request_id"].split("-")[1]))
    dataset = raw["sharegpt-llama-3.1-8b-300-sps10.jsonl"]
    cached = cacheable_prefixes([d["input_tok_ids"] for d in dataset])
    origin = min(r["queued_ts"] for r in requests)  # vLLM's monotonic clock, as first/last
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for i, (r, d, hit) in enumerate(zip(requests, dataset, cached, strict=True)):
        if (r["input_toks"], r["output_toks"]) != (d["input_toks"], d["output_toks"]):
            raise SystemExit(f"request {i}: lengths differ between the run and its dataset")
        writer.writerow(
            [
                i,
                f"{r['queued_ts'] - origin:.6f}",
                r["input_toks"],
                r["output_toks"],
                hit,
                f"{r['first_token_ts'] - origin:.6f}",
                f"{r['last_token_ts'] - origin:.6f}",
            ]
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as fh, gzip.GzipFile("", "wb", 9, fh, mtime=0) as gz:
        gz.write(out.getvalue().encode())


def load_run(path: Path = DATA) -> list[MeasuredRequest]:
    with gzip.open(path, "rt", newline="") as fh:
        return [
            MeasuredRequest(
                arrival_s=float(row["arrival_s"]),
                input_tokens=int(row["input_tokens"]),
                output_tokens=int(row["output_tokens"]),
                cacheable_prefix_tokens=int(row["cacheable_prefix_tokens"]),
                first_token_s=float(row["first_token_s"]),
                last_token_s=float(row["last_token_s"]),
            )
            for row in csv.DictReader(fh)
        ]


def _stats(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
    }


def measured_figures(run: Sequence[MeasuredRequest]) -> dict[str, dict[str, float]]:
    return {
        "ttft_s": _stats([r.first_token_s - r.arrival_s for r in run]),
        "tpot_s": _stats(
            [(r.last_token_s - r.first_token_s) / max(1, r.output_tokens - 1) for r in run]
        ),
        "e2e_s": _stats([r.last_token_s - r.arrival_s for r in run]),
    }


def simulated_figures(
    run: Sequence[MeasuredRequest], profile: Profile, *, skip_cached: bool
) -> dict[str, dict[str, float]]:
    """Replay ``run`` on one instance with the run's engine limits; the same metrics."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "run.jsonl"
        with path.open("w") as f:
            for r in sorted(run, key=lambda r: r.arrival_s):
                skip = r.cacheable_prefix_tokens if skip_cached else 0
                row = {
                    "arrival_s": r.arrival_s,
                    "input_tokens": r.input_tokens - skip,
                    "output_tokens": r.output_tokens,
                }
                f.write(json.dumps(row) + "\n")
        workload = build_workload(
            WorkloadSpec(trace=str(path), max_context_tokens=profile.model.max_context_tokens)
        )
    cfg = SimConfig(
        profile=profile,
        instance_config=InstanceConfig.from_profile(
            profile, max_num_seqs=MAX_NUM_SEQS, max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS
        ),
        num_instances=1,
        migration=MigrationConfig(),
        slo=SloConfig(),
        seed=0,
    )
    summary = run_policy(cfg, workload, "round_robin").summary
    out: dict[str, dict[str, float]] = {}
    for key, _, _ in TARGETS:
        dist = summary[key]
        assert isinstance(dist, dict)
        out[key] = {stat: float(dist[stat]) for stat in ("mean", "p50", "p90")}
    return out


def validate() -> dict[str, object]:
    """Measured vs simulated figures and errors: as is, prefix cache, and the summed model."""
    run = load_run()
    profile = load_profile(PROFILE)
    real = measured_figures(run)
    variants = {
        "replay": simulated_figures(run, profile, skip_cached=False),
        "replay_cacheable_prefixes_skipped": simulated_figures(run, profile, skip_cached=True),
        # The previous model (prefill and decode kernels summed), for comparison only.
        "replay_summed_kernels": simulated_figures(
            run, replace(profile, mixed_attention=None), skip_cached=False
        ),
    }
    errors = {
        name: {key: sim[key]["mean"] / real[key]["mean"] - 1.0 for key, _, _ in TARGETS}
        for name, sim in variants.items()
    }
    return {
        "source": "casys-kaist/LLMServingSim @ 5daddb2, bench/examples/RTXPRO6000/Llama-3.1-8B",
        "setup": (
            "vLLM 0.19.0 (AsyncLLM, V1), Llama-3.1-8B bf16, 1x RTX PRO 6000 Blackwell, TP 1, "
            f"max_num_seqs {MAX_NUM_SEQS}, max_num_batched_tokens {MAX_NUM_BATCHED_TOKENS}; "
            f"{len(run)} ShareGPT requests at ~10 req/s, outputs pinned"
        ),
        "profile": PROFILE,
        "requests": len(run),
        "mean_input_tokens": float(np.mean([r.input_tokens for r in run])),
        "mean_output_tokens": float(np.mean([r.output_tokens for r in run])),
        "cacheable_prefix_tokens": int(sum(r.cacheable_prefix_tokens for r in run)),
        "targets": {key: target for key, _, target in TARGETS},
        "measured": real,
        "simulated": variants,
        "mean_error": errors,
    }


def print_saturated(report: dict[str, object]) -> None:
    real = report["measured"]
    sims = report["simulated"]
    errors = report["mean_error"]
    assert isinstance(real, dict) and isinstance(sims, dict) and isinstance(errors, dict)
    print(f"\nSaturated run: {report['setup']}")
    print(f"{'':40}" + "".join(f"{label:>22}" for _, label, _ in TARGETS))
    row = "".join(f"{real[k]['mean'] * 1e3:>19.1f} ms" for k, _, _ in TARGETS)
    print(f"{'vLLM (measured), mean':40}{row}")
    for name, sim in sims.items():
        cells = "".join(
            f"{sim[k]['mean'] * 1e3:>12.1f} ms {errors[name][k]:+6.1%}" for k, _, _ in TARGETS
        )
        print(f"{'sim ' + name:40}{cells}")
    print("targets: " + ", ".join(f"{label} within {t:.0%}" for _, label, t in TARGETS))
