"""The gateway's side of one engine: a pooled HTTP client and the calls it makes.

One `aiohttp.ClientSession` per backend, its connection pool sized explicitly (aiohttp's default
of 100 connections silently caps concurrency; httpx's async pool is slow under many concurrent
streams, encode/httpx#3215). Every call has a timeout. Failures are sorted at this edge:

* the engine refused the connection, timed out, answered 5xx or cut a stream -> `BackendError`
  (the request may continue on another instance);
* the engine answered 4xx -> `BackendRejectedError` with its status and body (the client's
  mistake, relayed as it is).

`UpstreamStream.close()` drops the connection rather than returning it to the pool: vLLM aborts a
request whose client disconnects and frees its KV, and that is the portable abort (vLLM has no
abort route outside dev mode).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from l4.errors import BackendError, BackendRejectedError
from l4.gateway.scrape import EngineLoad, parse_load

Json = dict[str, Any]
_DONE = b"[DONE]"


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    connect_s: float = 5.0
    # Silence on an open stream (no token, no keep-alive) after which the engine counts as failed.
    # Queueing for a long prefill can take minutes under load, hence the generous default.
    read_s: float = 600.0
    # Short calls: /metrics, /health, /tokenize, /v1/models.
    control_s: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelInfo:
    name: str
    max_model_len: int | None


class UpstreamStream:
    """An open streaming response: parsed server-sent events until `[DONE]`."""

    def __init__(self, backend: str, response: aiohttp.ClientResponse) -> None:
        self._backend = backend
        self._response = response
        self.done = False  # saw `[DONE]`

    def close(self) -> None:
        self._response.close()

    async def events(self) -> AsyncIterator[Json]:
        async for payload in self.payloads():
            try:
                parsed = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise BackendError(self._backend, f"bad event: {exc}") from None
            if isinstance(parsed, dict):
                yield parsed

    async def payloads(self) -> AsyncIterator[bytes]:
        """The raw `data:` payloads of the stream, until `[DONE]` (not yielded)."""
        buf = b""
        try:
            async for data in self._response.content.iter_any():
                buf += data
                while True:
                    end = buf.find(b"\n\n")
                    if end < 0:
                        break
                    event, buf = buf[:end], buf[end + 2 :]
                    for line in event.split(b"\n"):
                        if not line.startswith(b"data:"):
                            continue  # comments (keep-alives) and other fields
                        payload = line[5:].strip()
                        if payload == _DONE:
                            self.done = True
                            return
                        yield payload
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise BackendError(self._backend, f"stream broke: {exc!r}") from None

    async def read_body(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise BackendError(self._backend, f"response broke: {exc!r}") from None

    @property
    def content_type(self) -> str:
        return self._response.headers.get("content-type", "application/json")


class Backend:
    """One engine's base URL and its pooled client; open with `start`, close with `stop`."""

    def __init__(self, url: str, *, timeouts: Timeouts, max_connections: int) -> None:
        self.url = url.rstrip("/")
        self.timeouts = timeouts
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=self._max_connections,
            keepalive_timeout=30,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.timeouts.connect_s, sock_read=self.timeouts.read_s
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise BackendError(self.url, "the client is not started")
        return self._session

    # ---- short calls --------------------------------------------------------------------------
    async def _get(self, path: str) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(self.timeouts.control_s):
                async with self.session.get(self.url + path) as resp:
                    return resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise BackendError(self.url, f"GET {path} failed: {exc!r}") from None

    async def post_json(self, path: str, body: Json) -> Json:
        """POST a small JSON body and return the JSON answer (4xx: BackendRejectedError)."""
        try:
            async with asyncio.timeout(self.timeouts.control_s):
                async with self.session.post(
                    self.url + path,
                    data=orjson.dumps(body),
                    headers={"content-type": "application/json"},
                ) as resp:
                    data = await resp.read()
                    _raise_for_status(self.url, resp, data)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise BackendError(self.url, f"POST {path} failed: {exc!r}") from None
        try:
            out = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise BackendError(self.url, f"POST {path}: answer is not JSON ({exc})") from None
        if not isinstance(out, dict):
            raise BackendError(self.url, f"POST {path}: answer is not a JSON object")
        return out

    async def healthy(self) -> bool:
        try:
            status, _ = await self._get("/health")
        except BackendError:
            return False
        return status == 200

    async def scrape(self) -> EngineLoad:
        status, body = await self._get("/metrics")
        if status != 200:
            raise BackendError(self.url, f"GET /metrics answered {status}")
        return parse_load(body.decode("utf-8", "replace"))

    async def model_info(self) -> ModelInfo:
        status, body = await self._get("/v1/models")
        if status != 200:
            raise BackendError(self.url, f"GET /v1/models answered {status}")
        try:
            cards = orjson.loads(body)["data"]
            card = cards[0]
            length = card.get("max_model_len")
            return ModelInfo(
                name=str(card["id"]), max_model_len=length if isinstance(length, int) else None
            )
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise BackendError(self.url, f"GET /v1/models: unexpected answer ({exc!r})") from None

    # ---- streams ------------------------------------------------------------------------------
    async def open_stream(
        self, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> UpstreamStream:
        """POST ``body`` and return the open response once the engine accepted it (2xx)."""
        hdrs = {"content-type": "application/json", **(headers or {})}
        try:
            async with asyncio.timeout(self.timeouts.read_s):
                resp = await self.session.post(self.url + path, data=body, headers=hdrs)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise BackendError(self.url, f"POST {path} failed: {exc!r}") from None
        if resp.status >= 300:
            try:
                data = await resp.read()
            except (aiohttp.ClientError, OSError):
                data = b""
            finally:
                resp.close()
            _raise_for_status(self.url, resp, data)
        return UpstreamStream(self.url, resp)


def _raise_for_status(url: str, resp: aiohttp.ClientResponse, data: bytes) -> None:
    if resp.status < 300:
        return
    kind = resp.headers.get("content-type", "application/json")
    if 400 <= resp.status < 500 and resp.status not in (408, 429):
        raise BackendRejectedError(resp.status, data, kind)
    text = data[:200].decode("utf-8", "replace")
    raise BackendError(url, f"answered {resp.status}: {text}")
