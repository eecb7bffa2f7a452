"""Helpers of the gateway tests: emulated engines and a gateway on free ports, one event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace

from engine.sockets import serving_engine
from l4.costmodel.profile import load_profile
from l4.engine.faults import FaultConfig
from l4.engine.fleet import EngineFleet
from l4.engine.server import EngineConfig
from l4.engine.serving import EngineServer
from l4.gateway.cli import uvicorn_server
from l4.gateway.config import GatewayConfig
from l4.gateway.routes import FrontDoor
from l4.gateway.service import Gateway
from l4.instance import InstanceConfig

MODEL = "test-model"


def engine_config(
    instance_id: int = 0, *, time_scale: float = 20.0, faults: FaultConfig | None = None,
    **overrides: int,
) -> EngineConfig:  # fmt: skip
    profile = load_profile("h100-llama-3.2-3b")
    return EngineConfig(
        profile=profile,
        instance_config=InstanceConfig.from_profile(profile, **overrides),
        served_model_name=MODEL,
        time_scale=time_scale,
        seed=7,
        instance_id=instance_id,
        faults=faults or FaultConfig(),
    )


@dataclass
class Running:
    url: str
    gateway: Gateway
    engines: list[EngineServer]
    engine_urls: list[str]


def _listening() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def gateway_over(engines: list[EngineConfig], **options: object) -> AsyncIterator[Running]:
    """Emulated engines and a gateway over them (options: GatewayConfig fields)."""
    async with AsyncExitStack() as stack:
        urls: list[str] = []
        servers: list[EngineServer] = []
        for cfg in engines:
            url, server = await stack.enter_async_context(serving_engine(cfg))
            urls.append(url)
            servers.append(server)
        time_scale = engines[0].time_scale if engines else 1.0
        defaults: dict[str, object] = {
            "backends": tuple(urls),
            "time_scale": time_scale,
            "scrape_interval_s": 0.05,
            "health_interval_s": 0.2,
            "startup_timeout_s": 5.0,
            "log_level": "warning",
        }
        config = GatewayConfig(**{**defaults, **options})  # type: ignore[arg-type]
        gateway = Gateway(config)
        sock = _listening()
        stack.callback(sock.close)
        port = sock.getsockname()[1]
        server = uvicorn_server(FrontDoor(gateway).app(), "warning")
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            async with asyncio.timeout(10):
                while not server.started:
                    if serving.done():
                        serving.result()  # raises what stopped it
                    await asyncio.sleep(0.01)
            yield Running(f"http://127.0.0.1:{port}", gateway, servers, urls)
        finally:
            # A graceful stop even when the test failed: the lifespan closes the clients.
            server.should_exit = True
            try:
                async with asyncio.timeout(10):
                    await serving
            except TimeoutError:
                serving.cancel()


def with_faults(cfg: EngineConfig, faults: FaultConfig) -> EngineConfig:
    return replace(cfg, faults=faults)


def engine_process(instances: int, time_scale: float) -> EngineFleet:
    """K emulated instances in a child process (its own core), on ports the OS picked."""
    return EngineFleet([engine_config(i, time_scale=time_scale) for i in range(instances)])


@asynccontextmanager
async def gateway_over_urls(urls: list[str], **options: object) -> AsyncIterator[Running]:
    """A gateway in this process over engines served elsewhere."""
    defaults: dict[str, object] = {
        "backends": tuple(urls),
        "scrape_interval_s": 0.05,
        "health_interval_s": 0.2,
        "startup_timeout_s": 20.0,
        "log_level": "warning",
    }
    gateway = Gateway(GatewayConfig(**{**defaults, **options}))  # type: ignore[arg-type]
    with _listening() as sock:
        port = sock.getsockname()[1]
        server = uvicorn_server(FrontDoor(gateway).app(), "warning")
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            async with asyncio.timeout(20):
                while not server.started:
                    if serving.done():
                        serving.result()
                    await asyncio.sleep(0.01)
            yield Running(f"http://127.0.0.1:{port}", gateway, [], urls)
        finally:
            server.should_exit = True
            try:
                async with asyncio.timeout(10):
                    await serving
            except TimeoutError:
                serving.cancel()
