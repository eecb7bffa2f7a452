"""Emulated instances in a child process, on ports the OS picks: no port can be taken twice.

`EngineFleet(configs, host=...)` is a context manager (sync or async) that starts one child
process serving every config (one `EngineServer` each, one event loop: the child is the fleet's
own core), waits until each listens on a socket it bound to port 0, and yields their base URLs;
leaving it stops the child (gracefully, then by force). Used by `l4 serve --emulate K`, by the
gateway tests and by the gateway benchmarks. A child that fails to start raises
`UnavailableError` with its reason.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import multiprocessing as mp
import socket
from multiprocessing.connection import Connection
from types import TracebackType

from l4.costmodel.profile import Profile
from l4.engine.parsing import BodyParser
from l4.engine.server import EngineConfig
from l4.engine.serving import EngineServer
from l4.engine.tokenizer import Tokenizer
from l4.errors import UnavailableError
from l4.instance.config import InstanceConfig

_START_TIMEOUT_S = 60.0
_GRACE_S = 5.0  # below stop()'s join, so the child ends on its own


def _serve(configs: list[EngineConfig], host: str, conn: Connection) -> None:
    async def run() -> None:
        socks = []
        try:
            for _ in configs:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
                sock.bind((host, 0))
                socks.append(sock)
        except OSError as exc:
            conn.send(f"cannot bind on {host}: {exc.strerror}")
            return
        # One worker process parses every instance's large bodies, as under `l4 engine`; spawned
        # now and ready before the ports are announced, so the first large request (a long
        # prompt's token ids) does not wait for it: that cost ~0.8 s of TTFT to the first
        # requests of every benchmark run.
        parser = BodyParser(Tokenizer())
        parser.start()
        servers = [
            EngineServer(c, sock=s, parser=parser) for c, s in zip(configs, socks, strict=True)
        ]
        loop = asyncio.get_running_loop()
        stop = loop.run_in_executor(None, conn.recv)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(server.serve()) for server in servers]
                while not all(s.started for s in servers):
                    await asyncio.sleep(0.01)
                await parser.wait_warm()
                conn.send([s.getsockname()[1] for s in socks])
                with contextlib.suppress(EOFError):  # the parent died: stop all the same
                    await stop
                # Gracefully first: a forced uvicorn exit skips the lifespan shutdown, and the
                # cancelled lifespan task then prints a traceback. Open streams get a moment.
                for server in servers:
                    server.stop()
                _, pending = await asyncio.wait(tasks, timeout=_GRACE_S)
                for server in servers if pending else ():
                    server.stop(force=True)
        finally:
            parser.close()
            for sock in socks:
                sock.close()

    asyncio.run(run())


class EngineFleet:
    def __init__(self, configs: list[EngineConfig], *, host: str = "127.0.0.1") -> None:
        self._configs = configs
        self._host = host
        ctx = mp.get_context("spawn")  # a clean interpreter: no inherited loops or sockets
        self._parent, child = ctx.Pipe()
        # Not a daemon: it starts its own body-parser process, which daemons may not. It still
        # ends with this process: stop() runs at exit, and a parent that dies closes the pipe.
        self._proc = ctx.Process(target=_serve, args=(configs, host, child))
        self.urls: list[str] = []

    @classmethod
    def emulating(
        cls,
        count: int,
        *,
        profile: Profile,
        time_scale: float = 1.0,
        seed: int = 0,
        served_model_name: str | None = None,
        host: str = "127.0.0.1",
    ) -> EngineFleet:
        """``count`` identical instances of ``profile`` with vLLM's defaults for its GPU (the
        profile's KV capacity: override it with ``Profile.with_overrides``)."""
        icfg = InstanceConfig.from_profile(profile)
        configs = [
            EngineConfig(
                profile=profile,
                instance_config=icfg,
                served_model_name=served_model_name or profile.model.name,
                time_scale=time_scale,
                seed=seed,
                instance_id=i,
            )
            for i in range(count)
        ]
        return cls(configs, host=host)

    def start(self) -> list[str]:
        self._proc.start()
        atexit.register(self.stop)
        if not self._parent.poll(_START_TIMEOUT_S):
            self.stop()
            raise UnavailableError("the emulated engines did not start in time")
        answer = self._parent.recv()
        if isinstance(answer, str):
            self.stop()
            raise UnavailableError(f"the emulated engines did not start: {answer}")
        self.urls = [f"http://{self._host}:{port}" for port in answer]
        return self.urls

    def stop(self) -> None:
        atexit.unregister(self.stop)
        if self._proc.is_alive():
            with contextlib.suppress(OSError):
                self._parent.send("stop")
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()

    def __enter__(self) -> list[str]:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> list[str]:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)
