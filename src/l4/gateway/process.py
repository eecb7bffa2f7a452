"""The gateway in a child process, on a port the OS picks: for benchmarks and end-to-end tests.

`GatewayProcess(config)` is a context manager yielding the gateway's base URL and its pid (for
CPU accounting); the child serves with uvloop exactly as `l4 serve` does and stops when the
context exits. `config.port` is ignored: the child binds port 0 and reports what it got.

`ServerProcess` is the same lifecycle for any ASGI app on the gateway's server stack (the
benchmarks' null proxy uses it): the child calls `serve_until_stopped` with its end of the pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import socket
from collections.abc import Callable
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from l4.errors import UnavailableError
from l4.gateway.config import GatewayConfig

_START_TIMEOUT_S = 120.0


async def serve_until_stopped(
    app: Any, *, host: str, log_level: str, conn: Connection, what: str
) -> None:
    """Serve ``app`` (uvicorn as `l4 serve` runs it) on a port the OS picks, report the port
    (or why it did not start) through ``conn``, and stop when the parent sends anything."""
    from l4.gateway.cli import tune_gc, uvicorn_server

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind((host, 0))
    server = uvicorn_server(app, log_level)
    loop = asyncio.get_running_loop()
    stop = loop.run_in_executor(None, conn.recv)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            conn.send(f"{what} did not start: {serving.exception()!r}")
            return
        await asyncio.sleep(0.01)
    tune_gc()
    conn.send(sock.getsockname()[1])
    await stop
    server.should_exit = True
    await serving
    sock.close()


def _serve(config: GatewayConfig, conn: Connection) -> None:
    import uvloop

    from l4.cliargs import configure_logging
    from l4.gateway.routes import FrontDoor
    from l4.gateway.service import Gateway

    configure_logging(config.log_level)
    app = FrontDoor(Gateway(config)).app()
    uvloop.run(
        serve_until_stopped(
            app, host=config.host, log_level=config.log_level, conn=conn, what="the gateway"
        )
    )


class ServerProcess:
    """``target(*args, conn)`` in a spawned child that reports its port through ``conn``."""

    def __init__(
        self, target: Callable[..., None], args: tuple[Any, ...], *, host: str, what: str
    ) -> None:
        ctx = mp.get_context("spawn")
        self._parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=target, args=(*args, child), daemon=True)
        self._host = host
        self._what = what
        self.url = ""

    @property
    def pid(self) -> int:
        return self._proc.pid or 0

    def __enter__(self) -> ServerProcess:
        self._proc.start()
        if not self._parent.poll(_START_TIMEOUT_S):
            self.__exit__(None, None, None)
            raise UnavailableError(f"{self._what} did not start in time")
        answer = self._parent.recv()
        if isinstance(answer, str):
            self.__exit__(None, None, None)
            raise UnavailableError(answer)
        self.url = f"http://{self._host}:{answer}"
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


class GatewayProcess(ServerProcess):
    def __init__(self, config: GatewayConfig) -> None:
        super().__init__(_serve, (config,), host=config.host, what="the gateway")
