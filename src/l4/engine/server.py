"""The emulated engine's HTTP API: vLLM's OpenAI-compatible routes over one `EngineCore`.

Guarantees:

* Routes: POST /v1/completions, POST /v1/chat/completions (SSE streaming or not), POST /tokenize,
  POST /detokenize, GET /v1/models, GET /health, GET /version, GET /metrics (vLLM metric names, a
  registry of this app's own).
* A client mistake is never a 500: `ConfigError` (bad JSON, a field out of range, a prompt too long
  for the context, n > 1, ...) becomes 400, an unknown model 404 (as in vLLM), an unknown route
  404, a wrong method 405, a body above `max_request_body_bytes` 413, each with an OpenAI-style
  body {"error": {"message", "type", "param", "code"}} (`l4.http_edge`).
* Bodies above `offload_bytes` are decoded and tokenised in a worker process (`parsing`), so a huge
  request never stalls the step loop; one access-log line per request goes to the logger
  `l4.engine.access` (TTFT and E2E there in emulated seconds, like the metrics).
* A client that disconnects, streaming or not, aborts its request: the sequence leaves the
  instance (and frees its KV) at the next step boundary.
* The step loop runs as one task of a TaskGroup opened in the app's lifespan and stopped on exit.
* Faults (`EngineConfig.faults`, all off by default): a seeded fraction of valid generation
  requests is answered with a 500 or 503 error body; a crash after N emitted tokens makes the
  engine stop answering (streams in flight get the tokens emitted before the crash and are never
  completed, other requests are never answered, /health is 503; `serving.EngineServer` then
  closes the port and drops every connection); a slow-down multiplies every step time.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from l4 import __version__
from l4.costmodel.profile import Profile
from l4.engine.core import Clock, EngineCore, Handle, Sleep
from l4.engine.faults import ERROR_TYPES, ErrorDraws, FaultConfig, step_cost
from l4.engine.generation import OutputModel, request_key
from l4.engine.metrics import EngineMetrics
from l4.engine.output import Delta, deltas
from l4.engine.parsing import DEFAULT_OFFLOAD_BYTES, BodyParser, Kind
from l4.engine.protocol import GenerateRequest, TokenizerAnswer, context_error
from l4.engine.tokenizer import Tokenizer
from l4.errors import ConfigError, UnknownNameError, ValidationError
from l4.http_edge import (
    DEFAULT_MAX_BODY_BYTES,
    AccessLog,
    BodyLimit,
    access_record,
    error_response,
    exception_handlers,
)
from l4.instance import Instance, InstanceConfig

Json = dict[str, Any]

# Spin (yield) for the last millisecond before a step deadline: asyncio's timers wake up to 1 ms
# late (epoll's resolution), which a high time scale would magnify into the token timings.
WAKE_SPIN_S = 0.001
_DONE_EVENT = "data: [DONE]\n\n"
ACCESS_LOGGER = logging.getLogger("l4.engine.access")


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    """One emulated instance: what `l4 engine` options describe."""

    profile: Profile
    instance_config: InstanceConfig
    served_model_name: str
    time_scale: float = 1.0
    seed: int = 0
    instance_id: int = 0
    faults: FaultConfig = field(default_factory=FaultConfig)
    max_request_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        if self.max_request_body_bytes < 1:
            raise ValidationError(
                f"--max-request-body-bytes must be >= 1, got {self.max_request_body_bytes}"
            )

    @property
    def max_model_len(self) -> int:
        return min(self.profile.model.max_context_tokens, self.instance_config.kv_capacity_tokens)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _Liveness:
    """Whether the engine still answers, and how many responses are still being written."""

    def __init__(self, core: EngineCore) -> None:
        self._core = core
        self._writing = 0
        self._quiet = asyncio.Event()

    @property
    def dead(self) -> bool:
        return self._core.crashed

    @contextmanager
    def writing(self) -> Iterator[None]:
        self._writing += 1
        try:
            yield
        finally:
            self._writing -= 1
            self._settle()

    def _settle(self) -> None:
        if self.dead and self._writing == 0:
            self._quiet.set()

    async def wait_quiet(self) -> None:
        """Return once the engine crashed and every response wrote what it ever will."""
        await self._core.wait_crashed()
        self._settle()
        await self._quiet.wait()


class _EventStream(StreamingResponse):
    """Server-sent events from an async generator, closed (so it aborts) if the client leaves.

    Unlike Starlette's own, it always listens for the disconnect while streaming (ASGI 2.4
    servers would otherwise only notice at the next send, which may be far off for a queued
    request) and always closes the generator. A stream the engine's crash cut short (no
    `[DONE]`) never ends its body: it waits for the server to drop the connection.
    """

    def __init__(self, events: AsyncGenerator[str, None], live: _Liveness) -> None:
        super().__init__(
            events, media_type="text/event-stream", headers={"cache-control": "no-cache"}
        )
        self._events = events
        self._live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> bool:
            with self._live.writing():
                await send(
                    {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                )
                last = ""
                async for event in self._events:
                    last = event
                    await send(
                        {"type": "http.response.body", "body": event.encode(), "more_body": True}
                    )
                if last != _DONE_EVENT:
                    return False
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True

        try:
            async with asyncio.TaskGroup() as tg:
                streaming = tg.create_task(pump())
                watching = tg.create_task(_until_disconnect(receive))
                await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
                cut = (
                    streaming.done()
                    and not streaming.cancelled()
                    and streaming.exception() is None
                    and streaming.result() is False
                )
                if cut:
                    await watching
                streaming.cancel()
                watching.cancel()
        except* OSError:
            pass  # the client went away in the middle of a send
        finally:
            await self._events.aclose()


def _usage(prompt: int, completion: int) -> Json:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": None,
    }


class EmulatedEngine:
    """Tokenizer, output model, metrics, instance and step loop of one emulated vLLM server."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        spin_s: float = WAKE_SPIN_S,
        offload_bytes: int = DEFAULT_OFFLOAD_BYTES,
        parser: BodyParser | None = None,
    ) -> None:
        """`spin_s`: see `EngineCore`; pass 0 with a fake clock. Bodies larger than
        `offload_bytes` are parsed in a worker process: `parser`'s if given (shared by several
        engines, closed by its owner), else one of this engine's own, spawned on first use."""
        self.config = config
        self.tokenizer = Tokenizer()
        self.outputs = OutputModel(self.tokenizer)
        self._owns_parser = parser is None
        self.parser = parser or BodyParser(self.tokenizer, offload_bytes=offload_bytes)
        self.metrics = EngineMetrics(
            config.served_model_name,
            config.instance_id,
            num_gpu_blocks=config.instance_config.num_kv_blocks,
            block_size_tokens=config.instance_config.block_size_tokens,
            max_model_len=config.max_model_len,
        )
        faults = config.faults
        instance = Instance(
            config.instance_id, config.instance_config, step_cost(config.profile, faults)
        )
        self.core = EngineCore(
            instance,
            time_scale=config.time_scale,
            clock=clock,
            sleep=sleep,
            metrics=self.metrics,
            spin_s=spin_s,
            crash_after_tokens=faults.crash_after_tokens,
        )
        self._errors = ErrorDraws(
            faults.error_rate, seed=config.seed, instance_id=config.instance_id
        )
        self._live = _Liveness(self.core)

    # ---- app ----------------------------------------------------------------------------------
    def app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self.core.run())
                    try:
                        yield
                    finally:
                        self.core.stop()
            finally:
                if self._owns_parser:
                    self.parser.close()

        routes = [
            Route("/v1/completions", self._guard(self.completions), methods=["POST"]),
            Route("/v1/chat/completions", self._guard(self.chat_completions), methods=["POST"]),
            Route("/tokenize", self._guard(self.tokenize), methods=["POST"]),
            Route("/detokenize", self._guard(self.detokenize), methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/version", self.version, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
        ]
        middleware = [
            Middleware(AccessLog, logger=ACCESS_LOGGER),
            Middleware(BodyLimit, max_bytes=self.config.max_request_body_bytes),
        ]
        app = Starlette(
            routes=routes,
            lifespan=lifespan,
            middleware=middleware,
            exception_handlers=exception_handlers(),
        )
        app.state.engine = self
        return app

    async def wait_quiet(self) -> None:
        """Return once the engine crashed and every response wrote what it ever will."""
        await self._live.wait_quiet()

    def _guard(
        self,
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        """Map the project's errors to HTTP errors; only here do errors become status codes."""

        async def guarded(request: Request) -> Response:
            if self._live.dead:
                return await _never_answer(request)
            try:
                return await handler(request)
            except UnknownNameError as exc:
                return error_response(404, str(exc))
            except ConfigError as exc:
                return error_response(400, str(exc))
            except ClientDisconnect:
                return Response(status_code=499)  # gone while sending its body

        return guarded

    async def _parse(self, request: Request, kind: Kind) -> Any:
        return await self.parser.parse(
            kind, request.stream(), max_prompt_tokens=self.config.max_model_len
        )

    # ---- simple routes ------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        # vLLM answers 503 once its engine core is dead.
        return Response(status_code=503 if self._live.dead else 200)

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": __version__})

    async def models(self, request: Request) -> Response:
        name = self.config.served_model_name
        card = {
            "id": name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "l4",
            "root": name,
            "parent": None,
            "max_model_len": self.config.max_model_len,
            "permission": [],
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def prometheus(self, request: Request) -> Response:
        # Rendering the page takes ~10 ms of Python; on the step loop's thread that would stall
        # emulated steps every scrape (a gateway scrapes several times a second), which a real
        # vLLM does not suffer: its API server renders metrics beside the engine core.
        page = await asyncio.to_thread(generate_latest, self.metrics.registry)
        return Response(page, media_type=CONTENT_TYPE_LATEST)

    async def tokenize(self, request: Request) -> Response:
        return await self._tokenizer_route(request, "tokenize")

    async def detokenize(self, request: Request) -> Response:
        return await self._tokenizer_route(request, "detokenize")

    async def _tokenizer_route(self, request: Request, kind: Kind) -> Response:
        answer = await self._parse(request, kind)
        assert isinstance(answer, TokenizerAnswer)
        self._check_model(answer.model)
        return Response(answer.body, media_type="application/json")

    # ---- generation ---------------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        req = await self._parse(request, "completion")
        assert isinstance(req, GenerateRequest)
        return await self._generate(request, req, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        req = await self._parse(request, "chat")
        assert isinstance(req, GenerateRequest)
        return await self._generate(request, req, chat=True)

    def _check_model(self, model: object) -> None:
        name = self.config.served_model_name
        if model is not None and model != name:
            raise UnknownNameError("model", str(model), [name])

    def _max_tokens(self, req: GenerateRequest) -> int:
        limit = self.config.max_model_len
        p = len(req.prompt_ids)
        if req.max_tokens is None:
            if p >= limit:
                raise context_error(limit, p)
            return limit - p
        if p + req.max_tokens > limit:
            raise ValidationError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{p + req.max_tokens} tokens ({p} in the prompt, {req.max_tokens} in the "
                "completion). Please reduce the length of the prompt or completion."
            )
        return req.max_tokens

    async def _generate(self, request: Request, req: GenerateRequest, *, chat: bool) -> Response:
        self._check_model(req.model)
        max_tokens = self._max_tokens(req)
        if req.min_tokens > max_tokens:
            raise ValidationError(f"'min_tokens' ({req.min_tokens}) exceeds the tokens left")
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        record = access_record(request)
        if record is not None:
            record.request_id = rid
        if self._errors.fail_next():
            status = self.config.faults.error_status
            return error_response(
                status,
                f"injected failure (l4 engine --error-rate {self.config.faults.error_rate:g})",
                err_type=ERROR_TYPES[status],
            )
        key = request_key(self.config.seed, req.prompt_ids)
        plan = self.outputs.plan(
            key, max_tokens=max_tokens, min_tokens=req.min_tokens, ignore_eos=req.ignore_eos
        )
        handle = self.core.submit(
            prompt_tokens=len(req.prompt_ids),
            output_tokens=plan.output_tokens,
            finish_reason=plan.finish_reason,
        )
        if record is not None:
            record.details = functools.partial(_access_details, handle, self.config.instance_id)
        stream = deltas(
            core=self.core,
            handle=handle,
            plan=plan,
            outputs=self.outputs,
            tokenizer=self.tokenizer,
            key=key,
            stop=req.stop,
            min_tokens=req.min_tokens,
        )
        obj = "chat.completion" if chat else "text_completion"
        if chat and req.stream:
            obj = "chat.completion.chunk"
        head: Json = {
            "id": rid,
            "object": obj,
            "created": int(time.time()),
            "model": self.config.served_model_name,
        }
        if req.stream:
            return _EventStream(_sse(stream, req, head, chat=chat), self._live)
        with self._live.writing():
            try:
                async with asyncio.TaskGroup() as tg:
                    collecting = tg.create_task(_collect(stream))
                    watching = tg.create_task(_until_disconnect(request.receive))
                    await asyncio.wait({collecting, watching}, return_when=asyncio.FIRST_COMPLETED)
                    collecting.cancel()
                    watching.cancel()
            finally:
                await stream.aclose()
        if collecting.cancelled():
            return Response(status_code=499)  # nobody is listening; nginx's "client closed"
        parts = collecting.result()
        if not parts or parts[-1].finish_reason is None:
            return await _never_answer(request)  # the engine crashed under this request
        return JSONResponse(_full_response(parts, req, head, chat=chat))


def _access_details(handle: Handle, instance_id: int) -> dict[str, object]:
    """The access-log fields of a generation request (times in emulated seconds)."""
    details: dict[str, object] = {
        "engine": instance_id,
        "prompt_tokens": handle.seq.spec.input_tokens,
        "generated_tokens": handle.produced,
    }
    if handle.produced:
        details["ttft_s"] = handle.first_seen_s - handle.arrival_s
        details["e2e_s"] = handle.last_seen_s - handle.arrival_s
    return details


async def _never_answer(request: Request) -> Response:
    """A dead engine's answer: none. Wait until the client (or the server) drops the connection."""
    await _until_disconnect(request.receive)
    return Response(status_code=499)


async def _collect(stream: AsyncGenerator[Delta, None]) -> list[Delta]:
    return [d async for d in stream]


def _choice(d: Delta, req: GenerateRequest, *, chat: bool, first: bool) -> Json:
    choice: Json = {"index": 0}
    if chat:
        delta: Json = {"role": "assistant", "content": d.text} if first else {"content": d.text}
        choice["delta"] = delta
    else:
        choice["text"] = d.text
    choice.update(logprobs=None, finish_reason=d.finish_reason, stop_reason=d.stop_reason)
    if req.return_token_ids:
        choice["token_ids"] = list(d.token_ids)
        if first and not chat:
            choice["prompt_token_ids"] = list(req.prompt_ids)
    return choice


async def _sse(
    stream: AsyncGenerator[Delta, None], req: GenerateRequest, head: Json, *, chat: bool
) -> AsyncGenerator[str, None]:
    p = len(req.prompt_ids)
    generated = 0
    first = True
    finish: str | None = None
    async with aclosing(stream) as deltas_:
        async for d in deltas_:
            finish = d.finish_reason
            chunk: Json = {
                **head,
                "choices": [_choice(d, req, chat=chat, first=first)],
            }
            if first and chat and req.return_token_ids:
                chunk["prompt_token_ids"] = list(req.prompt_ids)
            if req.continuous_usage:
                chunk["usage"] = _usage(p, d.num_generated)
            first = False
            generated = d.num_generated
            yield f"data: {json.dumps(chunk)}\n\n"
    if finish is None:
        return  # the engine crashed: no usage, no [DONE]
    if req.include_usage:
        final = {**head, "choices": [], "usage": _usage(p, generated)}
        yield f"data: {json.dumps(final)}\n\n"
    yield "data: [DONE]\n\n"


def _full_response(parts: list[Delta], req: GenerateRequest, head: Json, *, chat: bool) -> Json:
    text = "".join(d.text for d in parts)
    last = parts[-1]
    ids = [t for d in parts for t in d.token_ids]
    choice: Json = {"index": 0}
    if chat:
        choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
    else:
        choice["text"] = text
    choice.update(logprobs=None, finish_reason=last.finish_reason, stop_reason=last.stop_reason)
    out: Json = dict(head)
    if req.return_token_ids:
        choice["token_ids"] = ids
        if chat:
            out["prompt_token_ids"] = list(req.prompt_ids)
        else:
            choice["prompt_token_ids"] = list(req.prompt_ids)
    out["choices"] = [choice]
    out["usage"] = _usage(len(req.prompt_ids), last.num_generated)
    return out


def build_app(
    config: EngineConfig,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    spin_s: float = WAKE_SPIN_S,
    offload_bytes: int = DEFAULT_OFFLOAD_BYTES,
) -> Starlette:
    """A Starlette app serving one emulated instance; `app.state.engine` is the EmulatedEngine."""
    engine = EmulatedEngine(
        config, clock=clock, sleep=sleep, spin_s=spin_s, offload_bytes=offload_bytes
    )
    return engine.app()
