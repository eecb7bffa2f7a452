"""Replay a workload against an OpenAI-compatible server, in (scaled) real time.

Works against `l4 engine`, a real vLLM or anything that speaks vLLM's completions API.

Guarantees:

* Request i is sent at `arrival_s / time_scale` wall seconds after the start (or as soon after
  as the client can), as a streaming `/v1/completions` call whose prompt is `input_tokens` token
  ids and whose output is exactly `output_tokens` tokens (`max_tokens` + `ignore_eos`), so that
  the lengths of the trace replay exactly on a vLLM-compatible server.
* Timings follow `vllm bench serve`: TTFT from the moment the request is sent to the first
  streamed token, the end at the chunk that completes the last token. They come back as
  `RequestRecord`s in emulated seconds (wall seconds times `time_scale`), with `arrival_s` the
  actual send time, so `l4.metrics.latency_samples` gives TTFT, TPOT and E2E exactly as it does
  for the simulator. A request that fails (an HTTP error, a cut stream, fewer tokens than
  asked) is a record without a first token or without a finish.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from l4.errors import ValidationError
from l4.metrics import RequestRecord
from l4.request import RequestSpec

# Any id of the shipped tokenizer's vocabulary: prompts are token ids, so their length is exact.
PROMPT_TOKEN_ID = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayConfig:
    base_url: str  # e.g. http://127.0.0.1:8001 (without /v1)
    time_scale: float = 1.0
    model: str | None = None
    timeout_s: float = 600.0  # wall seconds, per request
    # Connections opened before the clock starts, so that the first requests do not pay for a
    # TCP handshake the later ones do not (a long-running client keeps its connections warm).
    warm_connections: int = 32

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise ValidationError(f"time scale must be > 0, got {self.time_scale}")
        parts = urlsplit(self.base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValidationError(f"base URL must be http://host:port, got {self.base_url!r}")


class _Pool:
    """Keep-alive HTTP/1.1 connections to one server, reused one request at a time.

    A hand-written client rather than httpx: at a high time scale every 100 us of client CPU per
    request or per streamed chunk shows in the latencies, multiplied by the time scale.
    """

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        assert parts.hostname is not None  # checked by ReplayConfig
        self.host = parts.hostname
        self.port = parts.port or 80
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self._idle:
            reader, writer = self._idle.pop()
            if not writer.is_closing() and not reader.at_eof():
                return reader, writer
        return await asyncio.open_connection(self.host, self.port)

    async def warm(self, count: int) -> None:
        conns = await asyncio.gather(
            *(asyncio.open_connection(self.host, self.port) for _ in range(count))
        )
        self._idle.extend(conns)

    def put(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self._idle.append(conn)

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    status = int((await reader.readuntil(b"\r\n")).split()[1])
    headers: dict[bytes, bytes] = {}
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


class _Progress:
    """Token count and wall times of one streamed response."""

    __slots__ = ("first", "generated", "last")

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None
        self.generated = 0

    def event(self, data: bytes) -> None:
        if not data.startswith(b"data: {"):
            return
        usage = json.loads(data[6:]).get("usage")
        if usage and usage["completion_tokens"] > self.generated:
            now = time.perf_counter()
            self.first = now if self.first is None else self.first
            self.last = now
            self.generated = usage["completion_tokens"]


async def _stream(
    pool: _Pool, body: bytes, progress: _Progress
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """POST a streaming completion; feed its events to `progress`. The connection, if reusable."""
    reader, writer = await pool.get()
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % (pool.host.encode(), len(body)) + body
    )
    status, headers = await _read_head(reader)
    reusable = headers.get(b"connection", b"").lower() != b"close"
    if headers.get(b"transfer-encoding", b"").lower() != b"chunked":
        await reader.readexactly(int(headers.get(b"content-length", b"0")))
        return (reader, writer) if reusable else None
    pending = b""
    while (size := int((await reader.readuntil(b"\r\n"))[:-2], 16)) > 0:
        pending += (await reader.readexactly(size + 2))[:-2]
        *events, pending = pending.split(b"\n\n")
        if status == 200:
            for event in events:
                progress.event(event)
    await reader.readuntil(b"\r\n")  # the empty trailer
    return (reader, writer) if reusable else None


def _payload(spec: RequestSpec, cfg: ReplayConfig) -> bytes:
    body: dict[str, object] = {
        "prompt": [PROMPT_TOKEN_ID] * spec.input_tokens,
        "max_tokens": spec.output_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    if cfg.model is not None:
        body["model"] = cfg.model
    return json.dumps(body).encode()


async def _one(
    pool: _Pool, spec: RequestSpec, payload: bytes, cfg: ReplayConfig, start_wall: float
) -> RequestRecord:
    delay = start_wall + spec.arrival_s / cfg.time_scale - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    sent = time.perf_counter()
    progress = _Progress()
    try:
        async with asyncio.timeout(cfg.timeout_s):
            conn = await _stream(pool, payload, progress)
        if conn is not None:
            pool.put(conn)
    except (OSError, EOFError, ValueError, IndexError, TimeoutError, asyncio.LimitOverrunError):
        pass  # a dropped, malformed or timed-out response: the request stays unfinished

    def emulated(t: float | None) -> float | None:
        return None if t is None else (t - start_wall) * cfg.time_scale

    done = progress.generated >= spec.output_tokens
    return RequestRecord(
        request_id=spec.request_id,
        arrival_s=(sent - start_wall) * cfg.time_scale,
        input_tokens=spec.input_tokens,
        output_tokens=spec.output_tokens,
        generated_tokens=progress.generated,
        first_token_s=emulated(progress.first),
        finish_s=emulated(progress.last) if done else None,
        instances=(),
        migrations=0,
        preemptions=0,
    )


async def replay(requests: Sequence[RequestSpec], cfg: ReplayConfig) -> tuple[RequestRecord, ...]:
    """Send every request at its scaled arrival time; return one record per request, in order."""
    pool = _Pool(cfg.base_url)
    try:
        await pool.warm(min(cfg.warm_connections, len(requests)))
        # Every body is encoded before the clock starts: encoded in each request's task, a long
        # trace's prompts (~5M token ids for 60 s of Mooncake x2) held the loop ~1 s at the
        # start, and the first burst went out with the second.
        payloads = [_payload(spec, cfg) for spec in requests]
        first_s = min((r.arrival_s for r in requests), default=0.0)
        start_wall = time.perf_counter() - first_s / cfg.time_scale
        tasks = [
            asyncio.create_task(_one(pool, spec, payload, cfg, start_wall))
            for spec, payload in zip(requests, payloads, strict=True)
        ]
        return tuple(await asyncio.gather(*tasks))
    finally:
        pool.close()
