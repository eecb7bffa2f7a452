"""Bundled traces (package data) and resolution of a ``--trace`` argument to parsed columns.

Three kinds of bundled workloads:

* ``csv``: a public trace's requests (``data/<name>.csv.gz``, written by ``tools/pack_traces.py``);
* ``servegen``: ServeGen's per-client description of production traffic
  (``data/<name>.json.gz``, written by ``tools/pack_servegen.py``; generated per seed by
  ``l4.workload.servegen``, ``--offset`` picking the time of day);
* ``mix``: a ``csv`` trace whose requests are, with probability ``share`` each (drawn from the
  seed), given the lengths of a random long request of another trace (``LongDocMix``) — chat
  traffic with long documents, keeping the chat trace's timestamps.

Origin and licences are in ``data/LICENSES.md``. Parsing a bundled file is cached (a pure function
of the name and the installed package), so a rate sweep parses each trace once.

Resolution order for a ``--trace`` value: a bundled name, then an existing file, then an error:
``WorkloadError`` when the value looks like a path, ``UnknownNameError`` otherwise.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

from l4.errors import UnknownNameError, ValidationError
from l4.workload.formats import TraceData, parse_csv, read_trace_file

CSV, SERVEGEN, MIX = "csv", "servegen", "mix"


@dataclass(frozen=True, slots=True, kw_only=True)
class LongDocMix:
    """``base``'s requests, a ``share`` of them given the lengths of ``source``'s requests whose
    prompt is at least ``min_prompt_tokens`` (drawn uniformly, from the seed)."""

    base: str
    source: str
    share: float
    min_prompt_tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BundledTrace:
    """A workload shipped with L4.

    ``default_rate_rps`` is the mean arrival rate used when the trace has no timestamps and the
    user gives no ``--rate``; None for timestamped traces, whose own timestamps set the rate.
    """

    name: str
    description: str
    timestamped: bool
    default_rate_rps: float | None
    kind: str = CSV
    mix: LongDocMix | None = None

    @property
    def file_name(self) -> str:
        return f"{self.name}.json.gz" if self.kind == SERVEGEN else f"{self.name}.csv.gz"


# Default rates for a 16-instance cluster of 7-8B models on H100: a moderate load, well below
# saturation, so that --rate-scale sweeps go up from it. They put the length-only traces in the
# token throughput range of the timestamped ones (Azure 5.5 req/s ~ 6.4k prompt + 1.2k output
# tokens/s; Mooncake 3.4 req/s ~ 41k prompt + 1.2k output tokens/s):
#   sharegpt 8 req/s x (2,340 in, 439 out) ~ 18.7k prompt + 3.5k output tokens/s (~220 per instance)
#   arxiv    4 req/s x (2,588 in, 291 out) ~ 10.4k prompt + 1.2k output tokens/s
BUNDLED: tuple[BundledTrace, ...] = (
    BundledTrace(
        name="mooncake",
        description=(
            "Mooncake FAST'25 conversation trace: 12,031 requests over 59 min (3.4 req/s), "
            "long prompts (p50 6.9K, p99 85K, max 126K tokens)"
        ),
        timestamped=True,
        default_rate_rps=None,
    ),
    BundledTrace(
        name="azure-conv",
        description=(
            "Azure LLM inference 2023 conversation trace (Splitwise): 19,366 requests over "
            "58 min (5.5 req/s), short chat (prompt p50 1,020, output p50 129 tokens)"
        ),
        timestamped=True,
        default_rate_rps=None,
    ),
    BundledTrace(
        name="sharegpt",
        description=(
            "ShareGPT multi-turn lengths (Sarathi-Serve, Llama-2 tokenizer, 8K filtered): "
            "30,731 requests, no timestamps (prompt mean 2,340, output mean 439 tokens)"
        ),
        timestamped=False,
        default_rate_rps=8.0,
    ),
    BundledTrace(
        name="arxiv",
        description=(
            "arXiv summarization lengths (Vidur, Llama-2 tokenizer, 4K filtered): 28,257 "
            "requests, no timestamps (prompt mean 2,588, output mean 291 tokens)"
        ),
        timestamped=False,
        default_rate_rps=4.0,
    ),
    BundledTrace(
        name="servegen-r1",
        description=(
            "ServeGen DeepSeek-R1 reasoning traffic (Alibaba Cloud Model Studio, 37 clients, one "
            "day): bursty per-client arrivals, long bimodal outputs (mean 0.8-2.7K, p99 ~18K "
            "tokens); --offset picks the time of day, the seed draws arrivals and lengths"
        ),
        timestamped=False,
        default_rate_rps=2.0,
        kind=SERVEGEN,
    ),
    BundledTrace(
        name="servegen-mmid",
        description=(
            "ServeGen language traffic of a mid-size model (52 clients with traffic, first of 14 "
            "days): bursty (inter-arrival CV up to ~7), mixes shifting over the day, prompt p50 "
            "~300 with tails beyond 80K tokens, short outputs; --offset picks the time of day"
        ),
        timestamped=False,
        default_rate_rps=8.0,
        kind=SERVEGEN,
    ),
    BundledTrace(
        name="azure-longdoc",
        description=(
            "Azure conversation trace (its timestamps) with 10% of the requests turned into long "
            "documents: the lengths of a random Mooncake request with a prompt of 16K tokens or "
            "more (drawn from the seed)"
        ),
        timestamped=True,
        default_rate_rps=None,
        kind=MIX,
        mix=LongDocMix(base="azure-conv", source="mooncake", share=0.1, min_prompt_tokens=16384),
    ),
)


def bundled_traces() -> list[str]:
    """Names of the bundled traces, sorted."""
    return sorted(trace.name for trace in BUNDLED)


def bundled_trace(name: str) -> BundledTrace:
    """The bundled trace called ``name``; ``UnknownNameError`` if there is none."""
    for trace in BUNDLED:
        if trace.name == name:
            return trace
    raise UnknownNameError("trace", name, bundled_traces())


@functools.lru_cache(maxsize=len(BUNDLED))
def load_bundled(name: str) -> TraceData:
    """Parsed columns of a bundled ``csv`` trace (cached; the arrays are read-only)."""
    trace = bundled_trace(name)
    if trace.kind != CSV:
        raise ValidationError(f"bundled trace {name!r} is generated ({trace.kind}), not a file")
    blob = resources.files("l4.workload").joinpath("data", trace.file_name).read_bytes()
    return parse_csv(gzip.decompress(blob).decode("ascii"), f"bundled trace {name!r}")


def _frozen(a: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=16)
def mixed_trace(name: str, seed: int) -> TraceData:
    """The columns of a ``mix`` trace for ``seed`` (cached; read-only arrays)."""
    trace = bundled_trace(name)
    if trace.mix is None:
        raise ValidationError(f"bundled trace {name!r} is not a mix")
    mix = trace.mix
    base, source = load_bundled(mix.base), load_bundled(mix.source)
    pool = np.flatnonzero(source.input_tokens >= mix.min_prompt_tokens)
    rng = np.random.default_rng([seed, 0x10D0C])
    chosen = rng.random(base.num_requests) < mix.share
    picks = pool[rng.integers(0, len(pool), size=int(chosen.sum()))]
    inputs = base.input_tokens.copy()
    outputs = base.output_tokens.copy()
    inputs[chosen] = source.input_tokens[picks]
    outputs[chosen] = source.output_tokens[picks]
    return TraceData(
        arrival_s=base.arrival_s,
        input_tokens=_frozen(inputs),
        output_tokens=_frozen(outputs),
    )


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or Path(value).suffix != ""


def resolve_trace(value: str, seed: int = 0) -> tuple[BundledTrace | None, TraceData]:
    """Resolve a ``--trace`` value: (bundled metadata or None for a file, parsed columns);
    ``seed`` draws a mix's long documents. ServeGen workloads have no fixed columns: build them
    with ``l4.workload.build_workload``."""
    if value in bundled_traces():
        trace = bundled_trace(value)
        if trace.kind == MIX:
            return trace, mixed_trace(value, seed)
        return trace, load_bundled(value)
    path = Path(value)
    if path.exists() or _looks_like_path(value):
        # read_trace_file raises WorkloadError("trace file not found: ...") for a missing path.
        return None, read_trace_file(path)
    raise UnknownNameError("trace", value, bundled_traces())
