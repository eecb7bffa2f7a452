"""The gateway's HTTP front door: OpenAI's routes, health, metrics and state.

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (SSE or one JSON body, with
`stream_options.include_usage` / `continuous_usage_stats`), `POST /tokenize` and `/detokenize`
(forwarded), `GET /v1/models`, `GET /health` (200 while at least one backend is in service),
`GET /metrics`, `GET /l4/state`, `GET /version`.

Only here do errors become status codes: a body over the limit is 413; a client mistake
(`ValidationError`) 400; an unknown model 404; an engine's own 4xx goes back as the engine wrote
it; no engine able to serve is 503 (before the stream starts) or an error event then `[DONE]`
(after). Every body is OpenAI's `{"error": {"message", "type", "param", "code"}}`. A client that
disconnects aborts its upstream request, streaming or not. One access-log line per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, TypeVar

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from l4 import __version__
from l4.errors import (
    BackendError,
    BackendRejectedError,
    ConfigError,
    UnavailableError,
    UnknownNameError,
)
from l4.gateway.book import LiveRequest
from l4.gateway.config import EngineKind
from l4.gateway.protocol import ClientRequest, Endpoint, parse_request
from l4.gateway.relay import OPENED, Trip
from l4.gateway.render import Piece, Renderer
from l4.gateway.service import Gateway

access_log = logging.getLogger("l4.gateway.access")
_T = TypeVar("_T")
Json = dict[str, Any]
_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    405: "MethodNotAllowed",
    413: "RequestEntityTooLarge",
    499: "ClientClosedRequest",
    503: "ServiceUnavailableError",
}


def json_response(body: Json, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def error_response(status: int, message: str) -> Response:
    err = {
        "message": message,
        "type": _ERROR_TYPES.get(status, "InternalServerError"),
        "param": None,
        "code": status,
    }
    return json_response({"error": err}, status)


class _BodyTooLargeError(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLargeError
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLargeError
        chunks.append(chunk)
    return b"".join(chunks)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _EventStream(StreamingResponse):
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
                watching = tg.create_task(_until_disconnect(receive))
                await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
                streaming.cancel()
                watching.cancel()
        except* OSError:
            pass  # the client went away in the middle of a send


class FrontDoor:
    """The routes over one `Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            if not self.gw.started:  # `l4 serve` starts it first, to fail in one line
                await self.gw.start()
            try:
                async with asyncio.TaskGroup() as tg:
                    loops = tg.create_task(self.gw.run())
                    try:
                        yield
                    finally:
                        loops.cancel()
            finally:
                await self.gw.stop()

        routes = [
            Route("/v1/completions", self._guard(self.completions), methods=["POST"]),
            Route("/v1/chat/completions", self._guard(self.chat), methods=["POST"]),
            Route("/tokenize", self._guard(self.tokenize), methods=["POST"]),
            Route("/detokenize", self._guard(self.detokenize), methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/l4/state", self.state, methods=["GET"]),
            Route("/version", self.version, methods=["GET"]),
        ]

        async def http_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)
            return error_response(exc.status_code, exc.detail)

        return Starlette(
            routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error}
        )

    def _guard(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """The only place where the project's errors become HTTP answers."""

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except _BodyTooLargeError:
                limit = self.gw.config.max_request_body_bytes
                return error_response(413, f"the request body exceeds {limit} bytes")
            except UnknownNameError as exc:
                return error_response(404, str(exc))
            except ConfigError as exc:
                return error_response(400, str(exc))
            except BackendRejectedError as exc:
                return Response(exc.body, status_code=exc.status, media_type=exc.content_type)
            except (UnavailableError, BackendError) as exc:
                return error_response(503, str(exc))

        return guarded

    async def _json(self, request: Request) -> Any:
        raw = await _read_body(request, self.gw.config.max_request_body_bytes)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"the request body is not valid JSON ({exc})") from None

    # ---- simple routes ------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        up = len(self.gw.cluster.healthy_ids())
        return Response(status_code=200 if up else 503)

    async def models(self, request: Request) -> Response:
        card = {
            "id": self.gw.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "l4",
            "root": self.gw.model,
            "parent": None,
            "max_model_len": self.gw.max_model_len,
            "permission": [],
        }
        return json_response({"object": "list", "data": [card]})

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(self.gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def state(self, request: Request) -> Response:
        return json_response(self.gw.state())

    async def version(self, request: Request) -> Response:
        return json_response({"version": __version__})

    async def tokenize(self, request: Request) -> Response:
        return await self._forward(request, "/tokenize")

    async def detokenize(self, request: Request) -> Response:
        return await self._forward(request, "/detokenize")

    async def _forward(self, request: Request, path: str) -> Response:
        body = await self._json(request)
        if not isinstance(body, dict):
            raise ConfigError("the request body must be a JSON object")
        self._check_model(body.get("model"))
        answer = await self.gw.tokenizing_backend().post_json(path, body)
        return json_response(answer)

    def _check_model(self, model: object) -> None:
        if model is not None and model != self.gw.model:
            raise UnknownNameError("model", str(model), [self.gw.model])

    # ---- generation ---------------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        return await self._generate(request, Endpoint.COMPLETIONS)

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, Endpoint.CHAT)

    async def _generate(self, request: Request, endpoint: Endpoint) -> Response:
        t0 = self.gw.clock()
        req = parse_request(endpoint, await self._json(request))
        self._check_model(req.model)
        gw = self.gw
        ids = await gw.lengths.ids(req, gw.tokenizing_backend())
        pinned = req.pin_reason is not None or ids is None
        if gw.config.engine_kind is EngineKind.OPENAI:
            pinned = True
        length = len(ids) if ids is not None else gw.lengths.estimate(req)
        if pinned and req.pin_reason is None:
            req = _pinned(req, "no token ids")
        live = gw.relay.admit(req, ids or [], length)
        trip = Trip()
        rid = request.headers.get("x-request-id") or (
            f"{'chatcmpl' if req.chat else 'cmpl'}-{uuid.uuid4().hex}"
        )
        log = _AccessLog(rid, endpoint, live, trip, t0, self)
        if pinned:
            raw = gw.relay.passthrough(live, req, trip)
            try:
                await anext(raw)
            except BaseException as exc:
                log.write(_status_of(exc))
                raise
            if req.stream:
                return _EventStream(log.wrap_bytes(raw))
            body = await _first_or_disconnect(raw, request.receive)
            await raw.aclose()
            log.write(200 if body is not None else 499)
            if body is None:
                return Response(status_code=499)
            return Response(body, media_type="application/json")
        journey = gw.relay.journey(live, req, trip)
        try:
            first = await anext(journey)
        except BaseException as exc:
            log.write(_status_of(exc))
            raise
        assert first is OPENED
        renderer = Renderer(
            request_id=rid,
            created=int(time.time()),
            model=gw.model,
            chat=req.chat,
            prompt_ids=live.prompt_ids,
            return_token_ids=req.return_token_ids,
            continuous_usage=req.continuous_usage,
        )
        pieces = _pieces(journey, log)
        if req.stream:
            return _EventStream(log.sse(pieces, renderer, req))
        collected = await _collect_or_disconnect(pieces, request.receive)
        if collected is None:
            log.write(499)
            return Response(status_code=499)
        if isinstance(collected, UnavailableError):
            log.write(503)
            return error_response(503, str(collected))
        log.write(200)
        return json_response(renderer.body(collected))


def _pinned(req: ClientRequest, why: str) -> ClientRequest:
    return replace(req, pin_reason=why)


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, BackendRejectedError):
        return exc.status
    if isinstance(exc, UnavailableError | BackendError):
        return 503
    if isinstance(exc, ConfigError):
        return 400
    return 499


async def _pieces(journey: AsyncGenerator[Any, None], log: _AccessLog) -> AsyncIterator[Piece]:
    try:
        async for item in journey:
            if isinstance(item, Piece):
                log.token_written()
                yield item
    finally:
        await journey.aclose()  # an outer generator's close does not reach the inner one


async def _collect_or_disconnect(
    pieces: AsyncIterator[Piece], receive: Receive
) -> list[Piece] | UnavailableError | None:
    """All pieces of a non-streaming request; None if the client left first."""

    async def collect() -> list[Piece] | UnavailableError:
        out: list[Piece] = []
        try:
            async for p in pieces:
                out.append(p)
        except UnavailableError as exc:
            return exc
        return out

    return await _race(collect(), receive)


async def _first_or_disconnect(raw: AsyncIterator[Any], receive: Receive) -> bytes | None:
    async def first() -> bytes:
        item = await anext(raw)
        assert isinstance(item, bytes)
        return item

    return await _race(first(), receive)


async def _race(work: Awaitable[_T], receive: Receive) -> _T | None:
    async with asyncio.TaskGroup() as tg:
        doing = tg.create_task(_as_coro(work))
        watching = tg.create_task(_until_disconnect(receive))
        await asyncio.wait({doing, watching}, return_when=asyncio.FIRST_COMPLETED)
        watching.cancel()
        if not doing.done():
            doing.cancel()
    if doing.cancelled():
        return None
    return doing.result()


async def _as_coro(work: Awaitable[_T]) -> _T:
    return await work


class _AccessLog:
    """One structured line per request, and the gateway-side latency metrics."""

    def __init__(
        self,
        rid: str,
        endpoint: Endpoint,
        live: LiveRequest,
        trip: Trip,
        t0: float,
        door: FrontDoor,
    ) -> None:
        self.rid = rid
        self.endpoint = endpoint
        self.live = live
        self.trip = trip
        self.t0 = t0
        self.door = door
        self.first_s: float | None = None
        self.last_s: float | None = None
        self.written = False

    def token_written(self) -> None:
        now = self.door.gw.clock()
        m = self.door.gw.metrics
        if self.first_s is None:
            self.first_s = now
            m.ttft.observe(now - self.t0)
        elif self.last_s is not None:
            m.itl.observe(now - self.last_s)
        self.last_s = now

    async def sse(
        self, pieces: AsyncIterator[Piece], renderer: Renderer, req: ClientRequest
    ) -> AsyncIterator[bytes]:
        status = 499
        generated = 0
        try:
            opening = renderer.opening()
            if opening:
                yield opening
            first = True
            async for piece in pieces:
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
            await pieces.aclose()  # type: ignore[attr-defined]
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
        gw = self.door.gw
        now = gw.clock()
        seq = self.live.seq
        gw.metrics.requests.labels(self.endpoint.value, str(status)).inc()
        if status == 200:
            gw.metrics.e2e.observe(now - self.t0)
            gw.metrics.prompt_tokens.inc(seq.spec.input_tokens)
            gw.metrics.generation_tokens.inc(seq.generated_tokens)
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
