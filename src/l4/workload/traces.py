"""Bundled traces (package data) and resolution of a ``--trace`` argument to parsed columns.

The bundled files under ``data/`` are written by ``tools/pack_traces.py`` from public traces; their
origin and licences are in ``data/LICENSES.md``. Parsing a bundled trace is cached (it is a pure
function of the name and the installed package), so a rate sweep parses each trace once.

Resolution order for a ``--trace`` value: a bundled name, then an existing file, then an error:
``WorkloadError`` when the value looks like a path, ``UnknownNameError`` otherwise.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from l4.errors import UnknownNameError
from l4.workload.formats import TraceData, parse_csv, read_trace_file


@dataclass(frozen=True, slots=True, kw_only=True)
class BundledTrace:
    """A trace shipped with L4.

    ``default_rate_rps`` is the mean arrival rate used when the trace has no timestamps and the
    user gives no ``--rate``; None for timestamped traces, whose own timestamps set the rate.
    """

    name: str
    description: str
    timestamped: bool
    default_rate_rps: float | None

    @property
    def file_name(self) -> str:
        return f"{self.name}.csv.gz"


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
    """Parsed columns of a bundled trace (cached; the arrays are read-only)."""
    trace = bundled_trace(name)
    blob = resources.files("l4.workload").joinpath("data", trace.file_name).read_bytes()
    return parse_csv(gzip.decompress(blob).decode("ascii"), f"bundled trace {name!r}")


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or Path(value).suffix != ""


def resolve_trace(value: str) -> tuple[BundledTrace | None, TraceData]:
    """Resolve a ``--trace`` value: (bundled metadata or None for a file, parsed columns)."""
    if value in bundled_traces():
        return bundled_trace(value), load_bundled(value)
    path = Path(value)
    if path.exists() or _looks_like_path(value):
        # read_trace_file raises WorkloadError("trace file not found: ...") for a missing path.
        return None, read_trace_file(path)
    raise UnknownNameError("trace", value, bundled_traces())
