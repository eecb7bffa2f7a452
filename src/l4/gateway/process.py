"""The gateway in a child process, on a port the OS picks: for benchmarks and end-to-end tests.

`GatewayProcess(config)` is a context manager yielding the gateway's base URL and its pid (for
CPU accounting); the child serves with uvloop exactly as `l4 serve` does and stops when the
context exits. `config.port` is ignored: the child binds port 0 and reports what it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import socket
from multiprocessing.connection import Connection
from types import TracebackType

from l4.errors import UnavailableError
from l4.gateway.config import GatewayConfig

_START_TIMEOUT_S = 120.0


def _serve(config: GatewayConfig, conn: Connection) -> None:
    import uvloop

    from l4.gateway.cli import configure_logging, uvicorn_server
    from l4.gateway.routes import FrontDoor
    from l4.gateway.service import Gateway

    configure_logging(config.log_level)

    async def run() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind((config.host, 0))
        server = uvicorn_server(FrontDoor(Gateway(config)).app(), config.log_level)
        loop = asyncio.get_running_loop()
        stop = loop.run_in_executor(None, conn.recv)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                conn.send(f"the gateway did not start: {serving.exception()!r}")
                return
            await asyncio.sleep(0.01)
        conn.send(sock.getsockname()[1])
        await stop
        server.should_exit = True
        await serving
        sock.close()

    uvloop.run(run())


class GatewayProcess:
    def __init__(self, config: GatewayConfig) -> None:
        ctx = mp.get_context("spawn")
        self._parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(config, child), daemon=True)
        self._host = config.host
        self.url = ""

    @property
    def pid(self) -> int:
        return self._proc.pid or 0

    def __enter__(self) -> GatewayProcess:
        self._proc.start()
        if not self._parent.poll(_START_TIMEOUT_S):
            self.__exit__(None, None, None)
            raise UnavailableError("the gateway did not start in time")
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
