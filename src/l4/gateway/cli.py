"""`l4 serve`: the L4 gateway in front of OpenAI-compatible engines (vLLM, SGLang, ...).

`add_serve_parser(subparsers)` registers the sub-command; `run_serve(args)` validates every
option (one-line `ConfigError`s, before anything binds), binds the listening socket (a busy port
is one line too), optionally starts K emulated engines in a child process (`--emulate K`), and
serves until SIGINT/SIGTERM. Options come from the command line or a TOML `--config` file (the
command line wins).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
import uvloop

from l4.cliargs import default_profiles_dir
from l4.costmodel.profile import available_profiles, load_profile
from l4.engine.fleet import EngineFleet
from l4.engine.server import EngineConfig
from l4.errors import ConfigError, UnavailableError, ValidationError
from l4.gateway.config import (
    DEFAULT_PROFILE,
    EngineKind,
    GatewayConfig,
    parse_static_plan,
    read_config_file,
)
from l4.gateway.routes import FrontDoor
from l4.gateway.service import Gateway
from l4.instance.config import InstanceConfig
from l4.policies.base import policy_names

log = logging.getLogger("l4.gateway")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GatewayConfig)}


def add_serve_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the L4 gateway (OpenAI API) in front of vLLM / SGLang instances",
        description="Serve the OpenAI API in front of several identical engine instances, "
        "routing and moving requests with the same policy objects the simulator evaluates "
        "(L4 by default). Streams continue across moves and engine failures by token replay. "
        "Try it without a GPU: `l4 serve --emulate 4`.",
    )
    p.add_argument(
        "--backend",
        action="append",
        dest="backends",
        metavar="URL",
        help="an engine's base URL, e.g. http://10.0.0.5:8000 (repeat for each instance)",
    )
    p.add_argument("--config", type=Path, help="a TOML file with these options (dashes or _)")
    p.add_argument(
        "--engine-kind",
        choices=[k.value for k in EngineKind],
        help="vllm: token-id prompts and return_token_ids, every request can move; openai: any "
        "OpenAI-compatible server, requests never move (default: vllm)",
    )
    p.add_argument(
        "--policy",
        choices=policy_names(),
        help="the routing policy, any the simulator knows (default: l4)",
    )
    p.add_argument(
        "--profile",
        help=f"calibration profile for load estimates ({', '.join(available_profiles())} or "
        f"a JSON path; default: {DEFAULT_PROFILE})",
    )
    p.add_argument(
        "--profiles-dir",
        type=Path,
        default=default_profiles_dir(os.environ),
        help="directory of user profiles (default: $L4_PROFILES_DIR, else "
        "$XDG_DATA_HOME/l4/profiles, else ~/.local/share/l4/profiles)",
    )
    g = p.add_argument_group("stage plan")
    g.add_argument("--workload", help="a trace to plan the first stages from, as `l4 plan`")
    g.add_argument("--workload-rate-scale", type=float, help="multiply that trace's rate")
    g.add_argument("--boundaries", help="pin stage boundaries in tokens, e.g. 2048,16384")
    g.add_argument("--stage-sizes", help="instances per pinned stage, e.g. 4,2,2")
    p.add_argument(
        "--tokenizer",
        type=Path,
        help="a tokenizer.json to count text prompts locally (default: the engine's /tokenize)",
    )
    n = p.add_argument_group("network")
    n.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    n.add_argument("--port", type=int, help="port to listen on (default: 8000)")
    n.add_argument(
        "--scrape-interval",
        type=float,
        help=f"seconds between /metrics scrapes{_d('scrape_interval_s')}",
    )
    n.add_argument(
        "--health-interval",
        type=float,
        help=f"seconds between /health checks{_d('health_interval_s')}",
    )
    n.add_argument(
        "--connect-timeout",
        type=float,
        help=f"upstream connect timeout, s{_d('connect_timeout_s')}",
    )
    n.add_argument(
        "--read-timeout",
        type=float,
        help=f"seconds a stream may stay silent before it counts as failed{_d('read_timeout_s')}",
    )
    n.add_argument(
        "--startup-timeout",
        type=float,
        help=f"wait this long for a backend, s{_d('startup_timeout_s')}",
    )
    n.add_argument(
        "--migration-limit",
        type=int,
        help=f"failed engines a request survives{_d('migration_limit')}",
    )
    n.add_argument(
        "--failures-to-trip",
        type=int,
        help=f"errors in a row that take a backend out of service{_d('failures_to_trip')}",
    )
    n.add_argument(
        "--max-request-body-bytes",
        type=int,
        help=f"larger bodies get 413{_d('max_request_body_bytes')}",
    )
    n.add_argument(
        "--max-connections-per-backend",
        type=int,
        help=f"upstream connection pool size per engine{_d('max_connections_per_backend')}",
    )
    p.add_argument("--seed", type=int, help="seed of randomised policies (default: 0)")
    p.add_argument("--log-level", choices=LOG_LEVELS, help="default: info")
    e = p.add_argument_group("emulated engines (no GPU needed)")
    e.add_argument("--emulate", type=int, metavar="K", help="start K emulated vLLM instances")
    e.add_argument(
        "--time-scale",
        type=float,
        help="emulated engines' speed-up over real time; the policy's clock follows (default 1)",
    )
    e.add_argument("--kv-capacity-tokens", type=int, help="their KV cache size")


def _d(field: str) -> str:
    """`` (default: X)`` from GatewayConfig's own default, so help and behaviour agree."""
    return (
        f" (default: {_DEFAULTS[field]:g})"
        if isinstance(_DEFAULTS[field], float)
        else (f" (default: {_DEFAULTS[field]})")
    )


_CLI_TO_CONFIG = {
    "backends": "backends",
    "engine_kind": "engine_kind",
    "policy": "policy",
    "profile": "profile",
    "profiles_dir": "profiles_dir",
    "workload": "workload",
    "workload_rate_scale": "workload_rate_scale",
    "tokenizer": "tokenizer",
    "host": "host",
    "port": "port",
    "scrape_interval": "scrape_interval_s",
    "health_interval": "health_interval_s",
    "connect_timeout": "connect_timeout_s",
    "read_timeout": "read_timeout_s",
    "startup_timeout": "startup_timeout_s",
    "migration_limit": "migration_limit",
    "failures_to_trip": "failures_to_trip",
    "max_request_body_bytes": "max_request_body_bytes",
    "max_connections_per_backend": "max_connections_per_backend",
    "seed": "seed",
    "log_level": "log_level",
    "time_scale": "time_scale",
}


def merged_options(args: argparse.Namespace) -> dict[str, Any]:
    """The TOML file's options, then the command line's over them (by GatewayConfig name)."""
    values: dict[str, Any] = read_config_file(args.config) if args.config is not None else {}
    for flag, name in _CLI_TO_CONFIG.items():
        value = getattr(args, flag, None)
        if value is not None:
            values[name] = value
    return values


def build_config(
    args: argparse.Namespace, extra_backends: list[str] | None = None
) -> GatewayConfig:
    """The options merged and validated; ``extra_backends`` (emulated ones) join the list."""
    values = merged_options(args)
    if extra_backends:
        values["backends"] = [*values.get("backends", []), *extra_backends]
    boundaries = args.boundaries if args.boundaries is not None else values.pop("boundaries", None)
    sizes = args.stage_sizes if args.stage_sizes is not None else values.pop("stage_sizes", None)
    values.pop("boundaries", None)
    values.pop("stage_sizes", None)
    if isinstance(boundaries, list):
        boundaries = ",".join(map(str, boundaries))
    if isinstance(sizes, list):
        sizes = ",".join(map(str, sizes))
    values["static_plan"] = parse_static_plan(boundaries, sizes)
    values["backends"] = tuple(values.get("backends") or ())
    # Fail on a bad profile now, not after waiting for the backends.
    load_profile(values.get("profile", DEFAULT_PROFILE), user_dir=values.get("profiles_dir"))
    if "engine_kind" in values:
        try:
            values["engine_kind"] = EngineKind(values["engine_kind"])
        except ValueError:
            kinds = ", ".join(k.value for k in EngineKind)
            raise ValidationError(f"--engine-kind must be one of {kinds}") from None
    for name in ("tokenizer", "profiles_dir"):
        if name in values:
            values[name] = Path(values[name])
    if values.get("policy", "l4") not in policy_names():
        raise ValidationError(f"unknown policy {values['policy']!r}; known: {policy_names()}")
    try:
        return GatewayConfig(**values)
    except TypeError as exc:  # a TOML value of the wrong type
        raise ValidationError(f"bad option in --config: {exc}") from None


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or one clear line saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # signals are ours (serve_forever installs them)


def uvicorn_server(app: Any, log_level: str) -> _Server:
    config = uvicorn.Config(
        app,
        loop="none",  # the running loop (uvloop from run_serve)
        http="httptools",
        lifespan="on",
        log_level=log_level,
        access_log=False,  # one structured line per request is ours
        timeout_keep_alive=30,
        backlog=2048,
    )
    return _Server(config)


def emulated_fleet(count: int, *, host: str, args: argparse.Namespace) -> EngineFleet:
    """K `l4 engine` instances in a child process, on ports the OS picks."""
    profile = load_profile(
        args.profile or DEFAULT_PROFILE, user_dir=args.profiles_dir
    ).with_overrides(kv_capacity_tokens=args.kv_capacity_tokens)
    icfg = InstanceConfig.from_profile(profile)
    configs = [
        EngineConfig(
            profile=profile,
            instance_config=icfg,
            served_model_name=profile.model.name,
            time_scale=args.time_scale or 1.0,
            seed=args.seed or 0,
            instance_id=i,
        )
        for i in range(count)
    ]
    return EngineFleet(configs, host=host)


async def serve_forever(config: GatewayConfig, sock: socket.socket) -> None:
    gateway = Gateway(config)
    await gateway.start()  # no backend, different models, ...: one line, before serving
    host, port = sock.getsockname()[:2]
    log.info("l4 serve: listening on http://%s:%d (policy %s)", host, port, config.policy)
    server = uvicorn_server(FrontDoor(gateway).app(), config.log_level)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        server.force_exit = server.should_exit
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        await server.serve(sockets=[sock])
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if not server.started:
        raise UnavailableError("the gateway did not start (see the log above)")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _main(args: argparse.Namespace) -> None:
    if args.emulate is not None:
        if args.emulate < 1:
            raise ValidationError(f"--emulate must be >= 1, got {args.emulate}")
        values = merged_options(args)
        host = str(values.get("host", "127.0.0.1"))
        port = int(values.get("port", 8000))
        sock = bind(host, port)
        async with emulated_fleet(args.emulate, host="127.0.0.1", args=args) as u:
            config = build_config(args, extra_backends=u)
            log.info("emulated engines: %s", ", ".join(u))
            await serve_forever(config, sock)
        return
    config = build_config(args)
    sock = bind(config.host, config.port)
    await serve_forever(config, sock)


def run_serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level or "info")
    uvloop.run(_main(args))
    return 0
