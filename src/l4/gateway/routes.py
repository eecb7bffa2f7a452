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
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from l4 import __version__
from l4.errors import (
    BackendError,
    BackendRejectedError,
    ConfigError,
    UnavailableError,
    UnknownNameError,
)
from l4.gateway.protocol import ClientRequest, Endpoint, parse_request
from l4.gateway.relay import OPENED, Trip
from l4.gateway.render import Renderer
from l4.gateway.service import Gateway
from l4.gateway.streaming import (
    AccessLog,
    EventStream,
    collect_or_disconnect,
    first_or_disconnect,
    status_of,
)
from l4.http_edge import error_body

access_log = logging.getLogger("l4.gateway.access")
log = logging.getLogger("l4.gateway")
_T = TypeVar("_T")
Json = dict[str, Any]


def json_response(body: Json, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def error_response(status: int, message: str) -> Response:
    return json_response(error_body(status, message), status)


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


Handler = Callable[[Request], Awaitable[Response]]


class FrontDoor:
    """The routes over one `Gateway`, as a plain ASGI app.

    Not a Starlette application: its middleware stack wraps every `send`, which the relay calls
    once per streamed token. Routing is a dict lookup; 404 and 405 are JSON like every error.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        guard = self._guard
        self._routes: dict[str, dict[str, Handler]] = {
            "/v1/completions": {"POST": guard(self.completions)},
            "/v1/chat/completions": {"POST": guard(self.chat)},
            "/tokenize": {"POST": guard(self.tokenize)},
            "/detokenize": {"POST": guard(self.detokenize)},
            "/v1/models": {"GET": self.models},
            "/health": {"GET": self.health},
            "/metrics": {"GET": self.prometheus},
            "/l4/state": {"GET": self.state},
            "/version": {"GET": self.version},
        }

    def app(self) -> FrontDoor:
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        methods = self._routes.get(scope["path"])
        if methods is None:
            response = error_response(404, f"no route {scope['path']}")
        elif (handler := methods.get(scope["method"])) is None:
            response = error_response(405, f"{scope['method']} is not allowed here")
            response.headers["allow"] = ", ".join(methods)
        else:
            try:
                response = await handler(Request(scope, receive))
            except Exception:
                log.exception("unexpected error on %s", scope["path"])
                response = error_response(500, "internal error (logged by the gateway)")
        await response(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        try:
            if not self.gw.started:  # `l4 serve` starts it first, to fail in one line
                await self.gw.start()
        except Exception as exc:
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        try:
            async with asyncio.TaskGroup() as tg:
                loops = tg.create_task(self.gw.run())
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
                loops.cancel()
        finally:
            await self.gw.stop()
        await send({"type": "lifespan.shutdown.complete"})

    def _guard(self, handler: Handler) -> Handler:
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
        if not gw.config.engine_kind.replays:
            pinned = True
        length = len(ids) if ids is not None else gw.lengths.estimate(req)
        if pinned and req.pin_reason is None:
            req = _pinned(req, "no token ids")
        live = gw.relay.admit(req, ids or [], length)
        trip = Trip()
        rid = request.headers.get("x-request-id") or (
            f"{'chatcmpl' if req.chat else 'cmpl'}-{uuid.uuid4().hex}"
        )
        log = AccessLog(rid, endpoint, live, trip, t0, gw.clock, gw.metrics)
        if pinned:
            raw = gw.relay.passthrough(live, req, trip)
            try:
                await anext(raw)
            except BaseException as exc:
                log.write(status_of(exc))
                raise
            if req.stream:
                return EventStream(log.wrap_bytes(raw))
            body = await first_or_disconnect(raw, request.receive)
            await raw.aclose()
            log.write(200 if body is not None else 499)
            if body is None:
                return Response(status_code=499)
            return Response(body, media_type="application/json")
        journey = gw.relay.journey(live, req, trip)
        try:
            first = await anext(journey)
        except BaseException as exc:
            log.write(status_of(exc))
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
        if req.stream:
            return EventStream(log.sse(journey, renderer, req))
        collected = await collect_or_disconnect(journey, log, request.receive)
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
