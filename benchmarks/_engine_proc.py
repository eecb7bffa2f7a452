"""An engine serving in a benchmark's child process, driven over a pipe."""

from __future__ import annotations

import asyncio
import socket
from multiprocessing.connection import Connection

from l4.engine.serving import EngineServer


async def serve_until_told(server: EngineServer, sock: socket.socket, conn: Connection) -> None:
    """Serve on `sock`; send its port once serving; stop (gracefully) when `conn` says so."""
    stop = asyncio.get_running_loop().run_in_executor(None, conn.recv)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    conn.send(sock.getsockname()[1])
    await stop
    server.stop()
    await serving
