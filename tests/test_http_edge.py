"""The shared HTTP edge: error bodies, the body limit, the access log, binding a port."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from l4.errors import ConfigError
from l4.http_edge import (
    AccessLog,
    BodyLimit,
    access_record,
    bind_listening_socket,
    error_body,
    error_type,
    exception_handlers,
    format_access_line,
)

LOGGER = logging.getLogger("tests.http_edge.access")


async def echo(request: Request) -> Response:
    body = await request.body()
    record = access_record(request)
    if record is not None:
        record.request_id = "req-1"
        record.details = lambda: {"bytes": len(body), "ttft_s": 0.25}
    return JSONResponse({"length": len(body)})


async def stream(request: Request) -> Response:
    record = access_record(request)
    sent = []

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            sent.append(i)
            yield b"x"

    if record is not None:
        record.details = lambda: {"chunks": len(sent)}  # read once the stream ended
    return StreamingResponse(chunks())


def edge_app(max_bytes: int = 100) -> Starlette:
    return Starlette(
        routes=[
            Route("/echo", echo, methods=["POST"]),
            Route("/stream", stream, methods=["GET"]),
        ],
        middleware=[
            Middleware(AccessLog, logger=LOGGER),
            Middleware(BodyLimit, max_bytes=max_bytes),
        ],
        exception_handlers=exception_handlers(),
    )


def with_client(body: Callable[[httpx.AsyncClient], Awaitable[None]], max_bytes: int = 100) -> None:
    async def main() -> None:
        transport = httpx.ASGITransport(app=edge_app(max_bytes))
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as c:
            await body(c)

    asyncio.run(main())


def test_error_types_are_vllms_names() -> None:
    assert [error_type(s) for s in (400, 404, 405, 413, 500, 503)] == [
        "BadRequestError",
        "NotFoundError",
        "MethodNotAllowedError",
        "RequestEntityTooLargeError",
        "InternalServerError",
        "ServiceUnavailableError",
    ]
    assert error_type(429) == "TooManyRequestsError"
    assert error_body(400, "bad") == {
        "error": {"message": "bad", "type": "BadRequestError", "param": None, "code": 400}
    }


def test_unknown_route_and_wrong_method_have_json_bodies() -> None:
    async def body(c: httpx.AsyncClient) -> None:
        r = await c.get("/nope")
        assert r.status_code == 404
        assert r.json() == {
            "error": {
                "message": "Not Found: GET /nope",
                "type": "NotFoundError",
                "param": None,
                "code": 404,
            }
        }
        r = await c.get("/echo")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        assert r.json()["error"]["type"] == "MethodNotAllowedError"
        assert r.json()["error"]["message"] == "Method Not Allowed: GET /echo"

    with_client(body)


def test_bodies_up_to_the_limit_pass_and_larger_ones_are_413() -> None:
    async def body(c: httpx.AsyncClient) -> None:
        ok = await c.post("/echo", content=b"a" * 100)
        assert ok.status_code == 200 and ok.json() == {"length": 100}
        declared = await c.post("/echo", content=b"a" * 101)  # with a Content-Length
        assert declared.status_code == 413
        assert declared.headers["connection"] == "close"
        err = declared.json()["error"]
        assert err["code"] == 413 and err["type"] == "RequestEntityTooLargeError"
        assert "limit of 100 bytes" in err["message"]

    with_client(body)


def test_a_chunked_body_is_refused_at_the_chunk_that_crosses_the_limit() -> None:
    pulled: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(10):
            pulled.append(i)
            yield b"b" * 40

    async def body(c: httpx.AsyncClient) -> None:
        r = await c.post("/echo", content=chunks())  # no Content-Length: chunked
        assert r.status_code == 413
        assert r.json()["error"]["code"] == 413

    with_client(body)
    # 40, 80, 120 > 100: refused at the third chunk; the transport read no further.
    assert len(pulled) <= 4


def test_access_log_has_one_line_per_request_after_the_response(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body(c: httpx.AsyncClient) -> None:
        await c.post("/echo?x=1", content=b"abc")
        await c.get("/stream")
        await c.get("/missing")

    with caplog.at_level(logging.INFO, logger=LOGGER.name):
        with_client(body)
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER.name]
    assert len(lines) == 3
    assert lines[0].startswith('127.0.0.1:123 "POST /echo?x=1 HTTP/1.1" 200 ')
    assert lines[0].endswith(" id=req-1 bytes=3 ttft_s=0.2500")
    assert lines[1].startswith('127.0.0.1:123 "GET /stream HTTP/1.1" 200 ')
    assert lines[1].endswith(" chunks=3")
    assert '"GET /missing HTTP/1.1" 404 ' in lines[2]


def test_format_access_line() -> None:
    line = format_access_line(
        client="10.0.0.1:4000",
        method="POST",
        path="/v1/completions",
        http_version="1.1",
        status=200,
        wall_s=1.5,
        request_id="cmpl-1",
        details={"prompt_tokens": 12, "e2e_s": 1.25},
    )
    assert line == (
        '10.0.0.1:4000 "POST /v1/completions HTTP/1.1" 200 1.5000s id=cmpl-1 '
        "prompt_tokens=12 e2e_s=1.2500"
    )


# ---- binding ------------------------------------------------------------------------------
def test_a_busy_port_is_one_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            bind_listening_socket("127.0.0.1", port)
    message = str(info.value)
    assert message.startswith(f"cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in message and "\n" not in message


@pytest.mark.parametrize(
    ("host", "needle"),
    [
        ("no-such-host.invalid", "cannot resolve host 'no-such-host.invalid'"),
        ("300.1.2.3", "cannot resolve host '300.1.2.3'"),
        # TEST-NET-1 (RFC 5737): a valid address that is on no interface of this machine
        ("192.0.2.1", "cannot listen on 192.0.2.1:"),
    ],
)
def test_a_bad_host_is_one_line(host: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        bind_listening_socket(host, 8000)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_the_bound_socket_listens_and_is_tcp() -> None:
    sock = bind_listening_socket("127.0.0.1", 0)
    with sock, socket.create_connection(sock.getsockname(), timeout=2):
        assert sock.proto == socket.IPPROTO_TCP  # asyncio sets TCP_NODELAY only then
        conn, _ = sock.accept()  # listening: the connection was queued before accept
        conn.close()


def test_413_over_a_real_socket_before_the_body_is_sent() -> None:
    """A declared body above the limit is answered at once; the client never sends it."""
    sock = bind_listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(edge_app(max_bytes=1000), log_config=None, log_level="warning")
    )

    async def main() -> bytes:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(server.serve(sockets=[sock]))
            try:
                while not server.started:
                    await asyncio.sleep(0.005)
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(
                    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 50000000\r\n\r\n"
                )
                await writer.drain()
                async with asyncio.timeout(5):
                    answer = await reader.read()  # until the server closes the connection
                writer.close()
                return answer
            finally:
                server.should_exit = True

    answer = asyncio.run(main())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == 413
