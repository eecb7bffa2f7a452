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
    # Short calls: /metrics, /tokenize, /v1/models.
    control_s: float = 5.0
    health_s: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelInfo:
    name: str
    max_model_len: int | None


class EventSplitter:
    """Server-sent events out of the bytes of a stream, as they arrive: each complete event's
    `data:` payload, until `[DONE]`. An engine writes one `data: {...}` line per event, which is
    the fast path; comments (keep-alives) and other fields are skipped."""

    def __init__(self) -> None:
        self._rest = b""
        self.done = False  # saw `[DONE]`

    def feed(self, data: bytes) -> list[bytes]:
        if self.done:
            return []
        events = (self._rest + data if self._rest else data).split(b"\n\n")
        self._rest = events.pop()  # an incomplete event, or b""
        out: list[bytes] = []
        for event in events:
            if event.startswith(b"data: ") and b"\n" not in event:
                lines = [event]
            else:
                lines = [line for line in event.split(b"\n") if line.startswith(b"data:")]
            for line in lines:
                payload = line[5:].strip()
                if payload == _DONE:
                    self.done = True
                    self._rest = b""
                    return out
                out.append(payload)
        return out


class UpstreamStream:
    """An open streaming response: parsed server-sent events until `[DONE]`."""

    def __init__(self, backend: str, response: aiohttp.ClientResponse) -> None:
        self.backend = backend
        self._response = response
        self._events = EventSplitter()
        self.done = False  # saw `[DONE]`

    def close(self) -> None:
        """Drop the connection: the engine sees its client leave and aborts the request."""
        self._response.close()

    async def release(self) -> None:
        """After the finish: read on to `[DONE]` and the response's end, and give the connection
        back to the pool (a new TCP connection per request costs both sides more than parsing
        the request). A stream that does not end promptly is closed instead."""
        try:
            async with asyncio.timeout(1.0):
                if not self.done:
                    async for _ in self.payloads():
                        pass
                await self._response.read()
        except (TimeoutError, BackendError, aiohttp.ClientError, OSError):
            self._response.close()
            return
        self._response.release()

    async def next_payloads(self) -> list[bytes]:
        """The raw `data:` payloads that the next read completes, in order; an empty list once
        the stream is over (`[DONE]`, not returned, sets `done`; or the engine closed it).

        A coroutine per read rather than an async generator per event: this is the relay's hot
        path, and every generator layer a token passes through costs a resumption."""
        if self.done:
            return []
        content = self._response.content
        try:
            while True:
                data = await content.readany()
                if not data:
                    return []  # closed by the engine; `done` tells whether it had finished
                payloads = self._events.feed(data)
                if payloads or self._events.done:
                    self.done = self._events.done
                    return payloads
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _broken(self.backend, "stream broke", exc, streaming=True) from None

    async def payloads(self) -> AsyncIterator[bytes]:
        """The raw `data:` payloads of the stream, until `[DONE]` (not yielded)."""
        while payloads := await self.next_payloads():
            for payload in payloads:
                yield payload

    async def read_body(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _broken(self.backend, "response broke", exc) from None

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
        self._fresh: aiohttp.ClientSession | None = None  # one connection per request: retries

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=self._max_connections,
            # Well below the engines' own idle timeout (uvicorn's and vLLM's default: 5 s), so
            # that the pool rarely writes a request into a connection the engine is closing.
            keepalive_timeout=2,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.timeouts.connect_s, sock_read=self.timeouts.read_s
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        self._fresh = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.timeouts.connect_s, sock_read=self.timeouts.read_s
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def stop(self) -> None:
        for session in (self._session, self._fresh):
            if session is not None:
                await session.close()
        self._session = self._fresh = None

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
            raise _broken(self.url, f"GET {path} failed", exc) from None

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
            raise _broken(self.url, f"POST {path} failed", exc) from None
        try:
            out = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise BackendError(self.url, f"POST {path}: answer is not JSON ({exc})") from None
        if not isinstance(out, dict):
            raise BackendError(self.url, f"POST {path}: answer is not a JSON object")
        return out

    async def healthy(self) -> bool:
        """GET /health on a new connection: a probe must not fail for a pooled connection that
        the engine closed while idle (a false "down" would take a healthy engine out). Its
        timeout is long (`health_s`): under a burst the gateway's own loop may answer late."""
        session = self._fresh or self.session
        try:
            async with asyncio.timeout(self.timeouts.health_s):
                async with session.get(self.url + "/health") as resp:
                    await resp.read()
                    return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

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
        """POST ``body`` and return the open response once the engine accepted it (2xx).

        A pooled keep-alive connection can be closed by the engine just as it is reused; a
        request that broke that way (written into a closing connection, or disconnected before
        any answer) is sent once more on a new connection, which is safe: an engine aborts what
        it got from a connection that dropped.
        """
        hdrs = {"content-type": "application/json", **(headers or {})}
        for attempt in (1, 2):
            session = self.session if attempt == 1 or self._fresh is None else self._fresh
            try:
                async with asyncio.timeout(self.timeouts.read_s):
                    resp = await session.post(self.url + path, data=body, headers=hdrs)
                break
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
                if attempt == 2 or isinstance(exc, aiohttp.ClientConnectorError):
                    raise _broken(self.url, f"POST {path} failed", exc) from None
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise _broken(self.url, f"POST {path} failed", exc) from None
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


def _broken(url: str, what: str, exc: BaseException, *, streaming: bool = False) -> BackendError:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        kind = "timeout"
    elif isinstance(exc, aiohttp.ClientConnectorError) or streaming:
        kind = "gone"  # refused or unreachable; or a stream cut by the engine
    else:
        kind = "error"  # e.g. a write on a keep-alive connection the engine had just closed
    return BackendError(url, f"{what}: {exc!r}", kind=kind)
