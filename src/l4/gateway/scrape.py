"""Reading an engine's load from its Prometheus text: the few series a router needs.

Guarantees: `parse_load` reads only the families it knows and ignores everything else, sums a
family over its series (an engine process serving several data-parallel engines labels each with
`engine`), accepts a counter's `_total` spelling, and never raises on malformed lines (they are
skipped): a scrape that yields nothing usable returns `EngineLoad(recognized=False)`. Hand-written
rather than `prometheus_client.parser` because the gateway scrapes every backend several times a
second and a vLLM page holds hundreds of histogram lines it does not need.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Names per engine kind; the first of each tuple is the current one, later ones older spellings
# (vLLM renamed gpu_cache_usage_perc to kv_cache_usage_perc; routers broke on renames before).
RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs")
WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs")
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
CACHE_INFO = "vllm:cache_config_info"
SGLANG_MAX_TOKENS = "sglang:max_total_num_tokens"

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineLoad:
    recognized: bool = False
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0  # fraction of the KV cache in use, 0..1 (averaged over engines)
    num_kv_blocks: int | None = None  # from vllm:cache_config_info (summed over engines)
    block_size_tokens: int | None = None

    @property
    def kv_capacity_tokens(self) -> int | None:
        if self.num_kv_blocks is None or self.block_size_tokens is None:
            return None
        return self.num_kv_blocks * self.block_size_tokens


def _split(line: str) -> tuple[str, str, float] | None:
    """(name, label text, value) of one sample line, or None if it is not one."""
    brace = line.find("{")
    if brace >= 0:
        close = line.rfind("}")
        if close < brace:
            return None
        name, labels, rest = line[:brace], line[brace + 1 : close], line[close + 1 :]
    else:
        name, _, rest = line.partition(" ")
        labels = ""
    fields = rest.split()
    if not fields:
        return None
    try:
        return name.strip(), labels, float(fields[0])
    except ValueError:
        return None


def parse_load(text: str) -> EngineLoad:
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    blocks: int | None = None
    block_size: int | None = None
    wanted = (*RUNNING, *WAITING, *KV_USAGE, CACHE_INFO, SGLANG_MAX_TOKENS)
    for line in text.splitlines():
        if not line.startswith(wanted):
            continue
        sample = _split(line)
        if sample is None:
            continue
        name, labels, value = sample
        if name == CACHE_INFO:
            found = dict(_LABEL.findall(labels))
            try:
                blocks = (blocks or 0) + int(found["num_gpu_blocks"])
                block_size = int(found["block_size"])
            except (KeyError, ValueError):
                continue
            continue
        if name not in wanted:
            continue  # a longer name sharing the prefix (e.g. ..._by_reason)
        sums[name] = sums.get(name, 0.0) + value
        counts[name] = counts.get(name, 0) + 1

    def first(names: tuple[str, ...]) -> str | None:
        return next((n for n in names if n in sums), None)

    running, waiting, kv = first(RUNNING), first(WAITING), first(KV_USAGE)
    if running is None and waiting is None and kv is None:
        return EngineLoad()
    if blocks is None and SGLANG_MAX_TOKENS in sums:
        blocks, block_size = int(sums[SGLANG_MAX_TOKENS]), 1
    return EngineLoad(
        recognized=True,
        num_running=int(sums[running]) if running else 0,
        num_waiting=int(sums[waiting]) if waiting else 0,
        kv_usage=min(1.0, max(0.0, sums[kv] / counts[kv])) if kv else 0.0,
        num_kv_blocks=blocks,
        block_size_tokens=block_size,
    )
