"""The HTTP edge every L4 server shares (the emulated engine, the gateway): errors, limits, logs.

Guarantees:

* Every error a server answers has vLLM's (OpenAI's) body,
  `{"error": {"message", "type", "param", "code"}}`; Starlette's own 404 (no such route) and 405
  (wrong method, with its `Allow` header) become such bodies through `exception_handlers()`.
* `BodyLimit` refuses a request body above `max_bytes` with 413 without buffering it: a declared
  `Content-Length` above the limit is answered before any of the body is read; a body without one
  (chunked) is counted as it arrives and refused at the first chunk that crosses the limit, so at
  most the limit plus one chunk is ever held. The connection is then closed (the rest of the
  body is never read).
* `AccessLog` writes one line per request, after its response ended (a stream included), in
  the style of uvicorn's access log plus what the route filled into the request's
  `AccessRecord`: request id, token counts, TTFT and E2E.
* `bind_listening_socket` binds and listens, or raises `ConfigError` with one line naming the
  address and the reason (busy port, unknown host, address not on this machine, no permission),
  so a server says "serving on ..." only once it does.

Only Starlette and the standard library: nothing here knows about engines or gateways.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from l4.errors import ConfigError

# The type names vLLM's error bodies carry (the openai client maps the status, not the type).
_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestEntityTooLargeError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
ACCESS_SCOPE_KEY = "l4.access"


def error_type(status: int) -> str:
    """vLLM's error type for an HTTP status ("BadRequestError" for 400, ...)."""
    known = _ERROR_TYPES.get(status)
    if known is not None:
        return known
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "Error"
    return phrase.title().replace(" ", "").replace("-", "") + "Error"


def error_body(status: int, message: str, *, err_type: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": err_type or error_type(status),
            "param": None,
            "code": status,
        }
    }


def error_response(
    status: int,
    message: str,
    *,
    err_type: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An OpenAI-style JSON error response."""
    return JSONResponse(
        error_body(status, message, err_type=err_type), status_code=status, headers=headers
    )


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail
    if exc.status_code in (404, 405):
        message = f"{exc.detail}: {request.method} {request.url.path}"
    return error_response(exc.status_code, message, headers=exc.headers)


def exception_handlers() -> dict[Any, Callable[[Request, Exception], Any]]:
    """Starlette `exception_handlers` that give its 404, 405 (and 413) OpenAI-style bodies."""
    return {HTTPException: _http_exception}


# ---- request body limit --------------------------------------------------------------------
def _too_large_message(max_bytes: int) -> str:
    return f"the request body exceeds the limit of {max_bytes} bytes (--max-request-body-bytes)"


class BodyTooLarge(HTTPException):
    """Raised while reading a body that crossed the limit; answered 413, connection closed."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _too_large_message(max_bytes), headers={"connection": "close"})


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server's HTTP parser rejects it
    return None


class BodyLimit:
    """ASGI middleware: refuse request bodies above `max_bytes` with 413, reading incrementally."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_bytes < 1:
            raise ConfigError(f"the request body limit must be >= 1 byte, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            response = error_response(
                413, _too_large_message(limit), headers={"connection": "close"}
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


# ---- access log ----------------------------------------------------------------------------
@dataclass(slots=True)
class AccessRecord:
    """What a route adds to its access-log line; `details` is read once the response ended."""

    request_id: str | None = None
    details: Callable[[], Mapping[str, object]] | None = field(default=None)


def access_record(request: Request) -> AccessRecord | None:
    """The record `AccessLog` opened for this request (None when no AccessLog is installed)."""
    record = request.scope.get(ACCESS_SCOPE_KEY)
    return record if isinstance(record, AccessRecord) else None


def _field(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_access_line(
    *,
    client: str,
    method: str,
    path: str,
    http_version: str,
    status: int,
    wall_s: float,
    request_id: str | None = None,
    details: Mapping[str, object] | None = None,
) -> str:
    """`127.0.0.1:5123 "POST /v1/completions HTTP/1.1" 200 0.0123s id=cmpl-.. k=v ...`."""
    line = f'{client} "{method} {path} HTTP/{http_version}" {status} {wall_s:.4f}s'
    if request_id is not None:
        line += f" id={request_id}"
    for key, value in (details or {}).items():
        line += f" {key}={_field(value)}"
    return line


def _client(scope: Scope) -> str:
    client = scope.get("client")
    if not client:
        return "-"
    host, port = client
    return f"{host}:{port}"


class AccessLog:
    """ASGI middleware: one `logger.info` line per HTTP request, once its response ended."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        logger: logging.Logger,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.app = app
        self.logger = logger
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = AccessRecord()
        scope[ACCESS_SCOPE_KEY] = record
        status = 500  # what the server answers if the app raises before responding
        start = self.clock()

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            if self.logger.isEnabledFor(logging.INFO):
                query = scope.get("query_string", b"")
                path = scope.get("path", "")
                if query:
                    path += "?" + query.decode("latin-1")
                details = record.details() if record.details is not None else None
                self.logger.info(
                    "%s",
                    format_access_line(
                        client=_client(scope),
                        method=scope.get("method", "-"),
                        path=path,
                        http_version=scope.get("http_version", "1.1"),
                        status=status,
                        wall_s=self.clock() - start,
                        request_id=record.request_id,
                        details=details,
                    ),
                )


# ---- listening socket ----------------------------------------------------------------------
def bind_listening_socket(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """A TCP socket bound to (host, port) and listening, or `ConfigError` in one line."""
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    except (OverflowError, UnicodeError) as exc:
        raise ConfigError(f"cannot resolve host {host!r}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    # Explicitly TCP: asyncio sets TCP_NODELAY only on sockets whose proto says so, and without
    # it Nagle holds small response writes (SSE chunks) for the peer's delayed ACK.
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}") from None
    return sock
