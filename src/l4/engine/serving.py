"""One emulated engine behind uvicorn, with the crash fault acting like a dead vLLM process.

Guarantees:

* `EngineServer.serve()` serves one `EmulatedEngine` on a socket already bound (`l4 engine` binds
  every port before it says it serves; tests bind port 0), or binds host and port itself first,
  raising `ConfigError` in one line when it cannot, until `stop()` or an injected crash.
* Logging is left to whoever configures it (`l4 engine --log-level`): uvicorn's own loggers stay
  at `log_level` (default warning: no second "running on" line), its access log is off (the
  engine writes its own, `l4.engine.access`).
* It leaves signals alone (uvicorn's own server would install SIGINT/SIGTERM handlers per
  instance and restore them as each stops): whoever runs it decides, as `l4 engine` does.
* On a crash (`--crash-after-tokens`) it behaves as vLLM's API server does when its engine core
  dies, minus the error events: the listening socket closes at once (new connections are
  refused); responses in flight finish writing what the engine emitted before the crash (bounded
  by `drain_timeout_s`), then every connection is closed, streams without their `[DONE]`; then
  `serve()` returns. Other engines in the same process are untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from l4.engine.parsing import BodyParser
from l4.engine.server import EmulatedEngine, EngineConfig
from l4.http_edge import bind_listening_socket


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class EngineServer:
    """Serve one emulated instance over HTTP; `engine` is its EmulatedEngine."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sock: socket.socket | None = None,
        log_level: str = "warning",
        drain_timeout_s: float = 1.0,
        parser: BodyParser | None = None,
    ) -> None:
        """`parser`: a body parser shared with other engines (see `EmulatedEngine`)."""
        self.engine = EmulatedEngine(config, parser=parser)
        self._sock = sock
        self._host = host
        self._port = port
        self._drain_timeout_s = drain_timeout_s
        self.server = _Server(
            uvicorn.Config(
                self.engine.app(),
                host=host,
                port=port,
                log_config=None,
                log_level=log_level,
                access_log=False,
                lifespan="on",
            )
        )

    @property
    def started(self) -> bool:
        return bool(self.server.started)

    @property
    def crashed(self) -> bool:
        return self.engine.core.crashed

    def stop(self, *, force: bool = False) -> None:
        """Shut down; gracefully (waiting for responses in flight) unless `force`."""
        self.server.should_exit = True
        if force:
            self.server.force_exit = True

    async def serve(self) -> None:
        sock = (
            self._sock if self._sock is not None else bind_listening_socket(self._host, self._port)
        )
        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(self._die_with_the_engine())
            try:
                await self.server.serve(sockets=[sock])
            finally:
                watcher.cancel()

    async def _die_with_the_engine(self) -> None:
        await self.engine.core.wait_crashed()
        for listener in getattr(self.server, "servers", ()):
            listener.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._drain_timeout_s):
                await self.engine.wait_quiet()
        connections: set[Any] = self.server.server_state.connections
        for connection in list(connections):
            transport = getattr(connection, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.close()  # flushes what was written, then closes
        self.server.should_exit = True
