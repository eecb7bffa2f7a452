"""The least a Python proxy on the gateway's own stack does: the floor under `l4 serve`'s overhead.

A raw ASGI app on the same server stack as `l4 serve` (uvicorn with httptools on uvloop, one
pooled aiohttp client per backend) that sends request i to backend i mod K, its body as it came,
and relays the answer's bytes as they arrive: no parsing, no book, no policy, no metrics. What it
adds to TTFT and ITL over going direct is what any proxy on this stack and this machine adds; the
gateway's own logic is the difference between the two. Used by `gateway_overhead.py`, in a child
process (`NullProxy(urls)` as a context manager yields its URL and pid).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing as mp
import socket
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

import aiohttp

Scope = dict[str, Any]
_START_TIMEOUT_S = 60.0


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
    import uvicorn
    import uvloop

    from l4.gateway.cli import tune_gc

    async def run() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            _App(urls),
            loop="none",
            http="httptools",
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=30,
            backlog=2048,
        )
        server = uvicorn.Server(config)
        loop = asyncio.get_running_loop()
        stop = loop.run_in_executor(None, conn.recv)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                conn.send(f"the null proxy did not start: {serving.exception()!r}")
                return
            await asyncio.sleep(0.01)
        tune_gc()
        conn.send(sock.getsockname()[1])
        await stop
        server.should_exit = True
        await serving

    uvloop.run(run())


class NullProxy:
    def __init__(self, urls: list[str]) -> None:
        ctx = mp.get_context("spawn")
        self._parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(list(urls), child), daemon=True)
        self.url = ""

    @property
    def pid(self) -> int:
        return self._proc.pid or 0

    def __enter__(self) -> NullProxy:
        self._proc.start()
        if not self._parent.poll(_START_TIMEOUT_S):
            self.__exit__(None, None, None)
            raise RuntimeError("the null proxy did not start in time")
        answer = self._parent.recv()
        if isinstance(answer, str):
            self.__exit__(None, None, None)
            raise RuntimeError(answer)
        self.url = f"http://127.0.0.1:{answer}"
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(OSError):
                self._parent.send("stop")
            self._proc.join(15)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
