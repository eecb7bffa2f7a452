"""Pack the public traces of ``shared/sim_data/traces`` into L4's bundled workload data.

Writes ``src/l4/workload/data/<name>.csv.gz`` (header ``arrival_s,input_tokens,output_tokens``, or
``input_tokens,output_tokens`` for traces without timestamps) and ``LICENSES.md`` beside them.

Guarantees: the sources are checked against pinned SHA-256 sums before anything is written; row
order is the trace's own; arrival times are exact decimal seconds from the earliest request
(integer arithmetic, no float rounding); the gzip files carry mtime 0 and no file name, so running
the script twice gives byte-identical output.

    python tools/pack_traces.py [--source DIR] [--dest DIR]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "sim_data" / "traces"
DEFAULT_DEST = REPO_ROOT / "src" / "l4" / "workload" / "data"

SERVEGEN_MARKER = "<!-- servegen: written by tools/pack_servegen.py -->"

Row = tuple[str | None, int, int]  # arrival in exact decimal seconds (or None), input, output


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """One public trace and everything LICENSES.md must say about it."""

    name: str
    file_name: str
    sha256: str
    origin: str
    licence: str
    citation: str
    kept: str
    dropped: str
    convert: Callable[[str], list[Row]]


def _decimal_seconds(ticks: int, ticks_per_s: int, digits: int) -> str:
    """Exact decimal rendering of ticks / ticks_per_s, trailing zeros removed."""
    whole, frac = divmod(ticks, ticks_per_s)
    text = f"{whole}.{frac:0{digits}d}".rstrip("0")
    return text[:-1] if text.endswith(".") else text


def _mooncake(text: str) -> list[Row]:
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    start_ms = min(int(r["timestamp"]) for r in records)
    return [
        (
            _decimal_seconds(int(r["timestamp"]) - start_ms, 1000, 3),
            int(r["input_length"]),
            int(r["output_length"]),
        )
        for r in records
    ]


def _azure_ticks(stamp: str) -> int:
    """'2023-11-16 18:15:46.6805900' -> 100 ns ticks since the epoch (exact, no float)."""
    base, _, frac = stamp.partition(".")
    # Read as UTC so the offsets never depend on the packing machine's time zone or DST.
    naive = datetime.strptime(base, "%Y-%m-%d %H:%M:%S")
    seconds = int(naive.replace(tzinfo=UTC).timestamp())
    return seconds * 10_000_000 + int((frac + "0000000")[:7])


def _azure(text: str) -> list[Row]:
    rows = list(csv.DictReader(io.StringIO(text)))
    ticks = [_azure_ticks(r["TIMESTAMP"]) for r in rows]
    start = min(ticks)
    return [
        (
            _decimal_seconds(t - start, 10_000_000, 7),
            int(r["ContextTokens"]),
            int(r["GeneratedTokens"]),
        )
        for t, r in zip(ticks, rows, strict=True)
    ]


def _lengths_only(text: str) -> list[Row]:
    rows = csv.DictReader(io.StringIO(text))
    return [(None, int(r["num_prefill_tokens"]), int(r["num_decode_tokens"])) for r in rows]


SOURCES = (
    Source(
        name="mooncake",
        file_name="mooncake_fast25_conversation_trace.jsonl",
        sha256="b8cbb061a85206d729d91cdc2981f43c9e0d99209dce588d3af5f7934408b9df",
        origin="kvcache-ai/Mooncake @ 3b5a5941, `FAST25-release/traces/conversation_trace.jsonl`",
        licence="Apache-2.0",
        citation=(
            "Ruoyu Qin et al., *Mooncake: Trading More Storage for Less Computation — A "
            "KVCache-centric Architecture for Serving LLM Chatbot*, USENIX FAST '25."
        ),
        kept=(
            "`timestamp` (ms) → `arrival_s`, `input_length` → `input_tokens`, "
            "`output_length` → `output_tokens`"
        ),
        dropped="`hash_ids` (512-token prefix-block ids; the workload model has no prefix sharing)",
        convert=_mooncake,
    ),
    Source(
        name="azure-conv",
        file_name="azure_llm_2023_conv.csv",
        sha256="2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8",
        origin="Azure/AzurePublicDataset @ b469a113, `data/AzureLLMInferenceTrace_conv.csv`",
        licence="CC-BY-4.0",
        citation=(
            "Pratyush Patel et al., *Splitwise: Efficient Generative LLM Inference Using Phase "
            "Splitting*, ISCA '24."
        ),
        kept=(
            "`TIMESTAMP` (datetime, 100 ns) → `arrival_s`, `ContextTokens` → `input_tokens`, "
            "`GeneratedTokens` → `output_tokens`"
        ),
        dropped="the absolute date and time of day (only offsets from the first request are kept)",
        convert=_azure,
    ),
    Source(
        name="sharegpt",
        file_name="sarathi_sharegpt_8k_filtered_lengths_llama2tok.csv",
        sha256="6d6c296302a853e2669a674a96f269283e60c57e60363bd450588a1066919f9f",
        origin=(
            "microsoft/sarathi-serve @ 72339db5 (removed in later commits), "
            "`data/processed_traces/sharegpt_8k_filtered_stats_llama2_tokenizer.csv`"
        ),
        licence="Apache-2.0 (repository licence)",
        citation=(
            "Amey Agrawal et al., *Taming Throughput-Latency Tradeoff in LLM Inference with "
            "Sarathi-Serve*, USENIX OSDI '24. Lengths of ShareGPT conversations, Llama-2 tokenizer."
        ),
        kept="`num_prefill_tokens` → `input_tokens`, `num_decode_tokens` → `output_tokens`",
        dropped="`num_total_tokens`, `pd_ratio` (derived from the kept columns)",
        convert=_lengths_only,
    ),
    Source(
        name="arxiv",
        file_name="vidur_arxiv_summarization_lengths.csv",
        sha256="9d3580538d915ca75e4aaaa54590b42dbb17abc6d74c8913310cf07c232adcdc",
        origin=(
            "microsoft/vidur @ 7d475133, "
            "`data/processed_traces/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv`"
        ),
        licence="MIT",
        citation=(
            "Amey Agrawal et al., *Vidur: A Large-Scale Simulation Framework for LLM Inference*, "
            "MLSys '24. Lengths of the arXiv summarization dataset (Cohan et al., NAACL '18), "
            "Llama-2 tokenizer, filtered to a 4K context."
        ),
        kept="`num_prefill_tokens` → `input_tokens`, `num_decode_tokens` → `output_tokens`",
        dropped="`num_total_tokens`, `pd_ratio` (derived from the kept columns)",
        convert=_lengths_only,
    ),
)


def render_csv(rows: list[Row]) -> bytes:
    """The bundled CSV text; arrival_s only when the trace has timestamps."""
    timestamped = rows[0][0] is not None
    lines = [
        "arrival_s,input_tokens,output_tokens" if timestamped else "input_tokens,output_tokens"
    ]
    for arrival, inp, out in rows:
        lines.append(f"{arrival},{inp},{out}" if timestamped else f"{inp},{out}")
    return ("\n".join(lines) + "\n").encode("ascii")


def render_licences(packed: list[tuple[Source, int, str]]) -> str:
    """LICENSES.md: origin, licence, citation and changes for every bundled file."""
    out = [
        "# Bundled traces: origin and licences",
        "",
        "Written by `tools/pack_traces.py` from `shared/sim_data/traces` (copies of the public",
        "files below); do not edit by hand. Every file is a gzip CSV with only the columns L4",
        "uses, in the trace's own row order. Timestamps, where the trace has them, are converted",
        "to seconds from the earliest request (`arrival_s`). Token counts are unchanged.",
        "",
    ]
    for src, num_rows, digest in packed:
        out += [
            f"## `{src.name}.csv.gz` ({num_rows:,} requests)",
            "",
            f"* Source: {src.origin} (`{src.file_name}`, sha256 `{src.sha256}`)",
            f"* Licence: {src.licence}",
            f"* Cite: {src.citation}",
            f"* Kept: {src.kept}",
            f"* Dropped: {src.dropped}",
            f"* Packed file sha256: `{digest}`",
            "",
        ]
    out += [
        "Licences: Mooncake Apache-2.0; Sarathi-Serve Apache-2.0; Vidur MIT; Azure Public Dataset",
        "CC-BY-4.0 (attribution above; the changes made are the ones listed under Kept/Dropped).",
        "",
    ]
    return "\n".join(out)


def pack(source_dir: Path, dest_dir: Path) -> list[tuple[Source, int, str]]:
    """Convert every source, write the gzip files and LICENSES.md; return (source, rows, sha)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    packed = []
    for src in SOURCES:
        raw = (source_dir / src.file_name).read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if digest != src.sha256:
            raise SystemExit(f"{src.file_name}: sha256 {digest} != pinned {src.sha256}")
        rows = src.convert(raw.decode("utf-8"))
        # mtime=0 and no embedded file name: byte-identical output on every run.
        blob = gzip.compress(render_csv(rows), compresslevel=9, mtime=0)
        (dest_dir / f"{src.name}.csv.gz").write_bytes(blob)
        packed.append((src, len(rows), hashlib.sha256(blob).hexdigest()))
    licences = dest_dir / "LICENSES.md"
    # tools/pack_servegen.py owns the section from its marker on: keep it.
    kept = ""
    if licences.exists():
        old = licences.read_text(encoding="utf-8")
        if SERVEGEN_MARKER in old:
            kept = "\n" + SERVEGEN_MARKER + old.split(SERVEGEN_MARKER, 1)[1]
    licences.write_text(render_licences(packed) + kept, encoding="utf-8")
    return packed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    args = parser.parse_args()
    for src, num_rows, _ in pack(args.source, args.dest):
        size = (args.dest / f"{src.name}.csv.gz").stat().st_size
        print(f"{src.name:<12} {num_rows:>7,} rows  {size / 1024:>7.1f} KiB")


if __name__ == "__main__":
    main()
