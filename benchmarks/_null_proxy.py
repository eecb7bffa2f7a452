"""The least a Python proxy on the gateway's own stack does: the floor under `l4 serve`'s overhead.

A raw ASGI app on the same server stack as `l4 serve` (uvicorn with httptools on uvloop, one
pooled aiohttp client per backend) that sends request i to backend i mod K, its body as it came,
and relays the answer's bytes as they arrive: no parsing, no book, no policy, no metrics. What it
adds to TTFT and ITL over going direct is what any proxy on this stack and this machine adds; the
gateway's own logic is the difference between the two. Used by `gateway_overhead.py`, in a child
process (`NullProxy(urls)`, a `ServerProcess` like the gateway's: its URL and pid).
"""

from __future__ import annotations

import itertools
from multiprocessing.connection import Connection
from typing import Any

import aiohttp

from l4.gateway.process import ServerProcess, serve_until_stopped

Scope = dict[str, Any]
_HOST = "127.0.0.1"


class _App:
    def __init__(self, urls: list[str]) -> None:
        self._urls = urls
        self._next = itertools.cycle(range(len(urls)))
        self._sessions: list[aiohttp.ClientSession] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            self._sessions = [
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=4096, keepalive_timeout=2),
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=600),
                    auto_decompress=False,
                )
                for _ in self._urls
            ]
            await send({"type": "lifespan.startup.complete"})
            await receive()
            for s in self._sessions:
                await s.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        i = next(self._next)
        async with self._sessions[i].post(
            self._urls[i] + scope["path"],
            data=body,
            headers={"content-type": "application/json"},
        ) as resp:
            await send(
                {
                    "type": "http.response.start",
                    "status": resp.status,
                    "headers": [(b"content-type", resp.headers["content-type"].encode())],
                }
            )
            async for data in resp.content.iter_any():
                await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _serve(urls: list[str], conn: Connection) -> None:
    import uvloop

    uvloop.run(
        serve_until_stopped(
            _App(urls), host=_HOST, log_level="warning", conn=conn, what="the null proxy"
        )
    )


class NullProxy(ServerProcess):
    def __init__(self, urls: list[str]) -> None:
        super().__init__(_serve, (list(urls),), host=_HOST, what="the null proxy")
