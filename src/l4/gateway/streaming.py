"""The client's side of a response in flight: server-sent events, disconnects, the access log.

Guarantees: a client that leaves cancels what is producing its response (so the upstream request
is aborted), whether it was streaming or waiting for one JSON body, and even while nothing is
being written (a long queue); every request writes exactly one access-log line and its metrics,
whatever way it ended (200, an error status, 499 when the client left).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from l4.errors import BackendError, BackendRejectedError, ConfigError, UnavailableError
from l4.gateway.book import LiveRequest
from l4.gateway.metrics import GatewayMetrics
from l4.gateway.protocol import ClientRequest, Endpoint
from l4.gateway.relay import Trip
from l4.gateway.render import Piece, Renderer

access_log = logging.getLogger("l4.gateway.access")
_T = TypeVar("_T")


async def until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream(StreamingResponse):
    """Server-sent events from an async iterator; the client leaving cancels the iterator (so the
    upstream request is aborted) even while nothing is being written, e.g. in a long queue."""

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        super().__init__(
            events, media_type="text/event-stream", headers={"cache-control": "no-cache"}
        )
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for event in self._events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            async with asyncio.TaskGroup() as tg:
                streaming = tg.create_task(pump())
                watching = tg.create_task(until_disconnect(receive))
                await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
                streaming.cancel()
                watching.cancel()
        except* OSError:
            pass  # the client went away in the middle of a send


def status_of(exc: BaseException) -> int:
    if isinstance(exc, BackendRejectedError):
        return exc.status
    if isinstance(exc, UnavailableError | BackendError):
        return 503
    if isinstance(exc, ConfigError):
        return 400
    return 499


async def collect_or_disconnect(
    journey: AsyncGenerator[Any, None], log: AccessLog, receive: Receive
) -> list[Piece] | UnavailableError | None:
    """All pieces of a non-streaming request; None if the client left first."""

    async def collect() -> list[Piece] | UnavailableError:
        out: list[Piece] = []
        try:
            async for item in journey:
                if isinstance(item, Piece):
                    log.token_written()
                    out.append(item)
        except UnavailableError as exc:
            return exc
        finally:
            await journey.aclose()
        return out

    return await _race(collect(), receive)


async def first_or_disconnect(raw: AsyncIterator[Any], receive: Receive) -> bytes | None:
    async def first() -> bytes:
        item = await anext(raw)
        assert isinstance(item, bytes)
        return item

    return await _race(first(), receive)


async def _race(work: Awaitable[_T], receive: Receive) -> _T | None:
    async with asyncio.TaskGroup() as tg:
        doing = tg.create_task(_as_coro(work))
        watching = tg.create_task(until_disconnect(receive))
        await asyncio.wait({doing, watching}, return_when=asyncio.FIRST_COMPLETED)
        watching.cancel()
        if not doing.done():
            doing.cancel()
    if doing.cancelled():
        return None
    return doing.result()


async def _as_coro(work: Awaitable[_T]) -> _T:
    return await work


class AccessLog:
    """One structured line per request, and the gateway-side latency metrics."""

    def __init__(
        self,
        rid: str,
        endpoint: Endpoint,
        live: LiveRequest,
        trip: Trip,
        t0: float,
        clock: Callable[[], float],
        metrics: GatewayMetrics,
    ) -> None:
        self.rid = rid
        self.endpoint = endpoint
        self.live = live
        self.trip = trip
        self.t0 = t0
        self._clock = clock
        self._metrics = metrics
        self.first_s: float | None = None
        self.last_s: float | None = None
        self.written = False

    def token_written(self) -> None:
        now = self._clock()
        m = self._metrics
        if self.first_s is None:
            self.first_s = now
            m.ttft.observe(now - self.t0)
        elif self.last_s is not None:
            m.itl.observe(now - self.last_s)
        self.last_s = now

    async def sse(
        self, journey: AsyncGenerator[Any, None], renderer: Renderer, req: ClientRequest
    ) -> AsyncIterator[bytes]:
        """The client's events: one pass over the journey (each generator layer a token passes
        through costs a resumption, and this is the hot path)."""
        status = 499
        generated = 0
        try:
            opening = renderer.opening()
            if opening:
                yield opening
            first = True
            async for piece in journey:
                if not isinstance(piece, Piece):
                    continue
                self.token_written()
                generated = piece.num_generated
                yield renderer.chunk(piece, first=first)
                first = False
            if req.include_usage:
                yield renderer.final_usage(generated)
            yield renderer.done()
            status = 200
        except UnavailableError as exc:
            yield renderer.error_event(str(exc), 503)
            yield renderer.done()
            status = 503
        finally:
            await journey.aclose()
            self.write(status)

    async def wrap_bytes(self, raw: AsyncGenerator[Any, None]) -> AsyncIterator[bytes]:
        status = 499
        try:
            async for item in raw:
                if isinstance(item, bytes):
                    yield item
            status = 200
        except UnavailableError as exc:
            yield Renderer.error_event(str(exc), 503)
            yield Renderer.done()
            status = 503
        finally:
            await raw.aclose()
            self.write(status)

    def write(self, status: int) -> None:
        if self.written:
            return
        self.written = True
        now = self._clock()
        seq = self.live.seq
        m = self._metrics
        m.requests.labels(self.endpoint.value, str(status)).inc()
        if status == 200:
            m.e2e.observe(now - self.t0)
            m.prompt_tokens.inc(seq.spec.input_tokens)
            m.generation_tokens.inc(seq.generated_tokens)
        ttft = "-" if self.first_s is None else f"{self.first_s - self.t0:.4f}"
        access_log.info(
            "id=%s route=%s status=%d prompt_tokens=%d generated_tokens=%d hops=%d "
            "failures=%d backends=%s ttft_s=%s e2e_s=%.4f%s",
            self.rid,
            self.endpoint.value,
            status,
            seq.spec.input_tokens,
            seq.generated_tokens,
            self.trip.hops,
            self.trip.failures,
            ",".join(self.trip.backends) or "-",
            ttft,
            now - self.t0,
            "" if not self.live.pinned else " pinned=1",
        )
