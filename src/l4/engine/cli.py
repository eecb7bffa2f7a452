"""`l4 engine`: serve one or more emulated vLLM instances over HTTP (uvicorn, one process).

`add_engine_parser(subparsers)` registers the sub-command; `run_engine(args)` runs it until
interrupted, or until every instance crashed (`--crash-after-tokens`). Bad options raise
`ConfigError`/`ValidationError` (one line) before anything binds; every port is bound (a busy
port, an unknown or foreign `--host`: one line, nothing served) before the first "serving on".
Messages go through `logging` (`--log-level`), never bare prints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
from dataclasses import dataclass
from typing import Any

from l4.cliargs import add_log_level_option, add_profile_options, configure_logging
from l4.costmodel.profile import load_profile
from l4.engine.faults import FaultConfig
from l4.engine.parsing import BodyParser
from l4.engine.server import EngineConfig
from l4.engine.serving import EngineServer
from l4.engine.tokenizer import Tokenizer
from l4.errors import ValidationError
from l4.http_edge import DEFAULT_MAX_BODY_BYTES, bind_listening_socket
from l4.instance.config import InstanceConfig

DEFAULT_PROFILE = "h100-llama-3.2-3b"
logger = logging.getLogger("l4.engine")


def add_engine_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "engine",
        help="serve emulated vLLM instances (OpenAI API, real-time pacing from the cost model)",
        description="Serve K emulated vLLM instances: the simulator's scheduler steps in real "
        "time and each step sleeps the cost model's predicted time divided by --time-scale.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument(
        "--port", type=int, help="port of the (single) instance; 0: any free port (printed)"
    )
    p.add_argument("--instances", type=int, default=1, help="instances to serve (default: 1)")
    p.add_argument(
        "--base-port",
        type=int,
        help="port of instance 0; instance i uses base + i; 0: any free port each (printed)",
    )
    add_profile_options(p, default=DEFAULT_PROFILE, environ=os.environ)
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="run this many times faster than real time (default: %(default)s)",
    )
    p.add_argument("--max-num-seqs", type=int, help="vLLM max_num_seqs")
    p.add_argument("--max-num-batched-tokens", type=int, help="vLLM token budget per step")
    p.add_argument("--kv-capacity-tokens", type=int, help="KV cache size per instance")
    p.add_argument("--served-model-name", help="model name in the API (default: the profile's)")
    p.add_argument("--seed", type=int, default=0, help="seed of output lengths, text and faults")
    p.add_argument(
        "--max-request-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="answer request bodies larger than this with 413, reading no more of them "
        "(default: %(default)s, 32 MiB)",
    )
    add_log_level_option(p)
    f = p.add_argument_group("fault injection (for testing clients and gateways)")
    f.add_argument(
        "--error-rate",
        type=float,
        default=0.0,
        help="fraction of valid generation requests answered with an HTTP error, drawn from "
        "--seed (default: %(default)s)",
    )
    f.add_argument(
        "--error-status",
        type=int,
        default=500,
        choices=(500, 503),
        help="status code of those errors (default: %(default)s)",
    )
    f.add_argument(
        "--crash-after-tokens",
        type=int,
        help="crash once the instance emitted this many tokens in total: streams are cut, "
        "connections dropped, the port closed (/health fails)",
    )
    f.add_argument(
        "--slowdown",
        type=float,
        default=1.0,
        help="multiply every step time by this factor (default: %(default)s)",
    )
    f.add_argument(
        "--fault-instances",
        help="comma-separated instance indices the faults apply to (default: all)",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeTarget:
    host: str
    port: int
    config: EngineConfig


def _check_port(port: int, what: str) -> None:
    if not 0 <= port < 65536:
        raise ValidationError(f"{what} must be between 0 (any free port) and 65535, got {port}")


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise ValidationError(f"{flag} must be >= 1, got {value}")


def _fault_instances(value: str | None, instances: int) -> set[int]:
    if value is None:
        return set(range(instances))
    try:
        chosen = {int(v) for v in value.split(",")}
    except ValueError:
        raise ValidationError(
            f"--fault-instances must be comma-separated indices, got {value!r}"
        ) from None
    bad = sorted(i for i in chosen if not 0 <= i < instances)
    if bad:
        raise ValidationError(f"--fault-instances {bad} out of range 0..{instances - 1}")
    return chosen


def engine_targets(args: argparse.Namespace) -> list[ServeTarget]:
    """Validate the options and build one EngineConfig (and port) per instance."""
    if args.instances < 1:
        raise ValidationError(f"--instances must be >= 1, got {args.instances}")
    if not args.time_scale > 0:
        raise ValidationError(f"--time-scale must be > 0, got {args.time_scale}")
    for flag in (
        "max_num_seqs",
        "max_num_batched_tokens",
        "kv_capacity_tokens",
        "max_request_body_bytes",
    ):
        _positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.instances == 1 and args.base_port is None:
        if args.port is None:
            raise ValidationError("give --port (or --instances K --base-port P)")
        ports = [args.port]
        _check_port(args.port, "--port")
    else:
        if args.port is not None:
            raise ValidationError("with --instances K, give --base-port instead of --port")
        if args.base_port is None:
            raise ValidationError("--instances K needs --base-port P (ports P .. P+K-1)")
        _check_port(args.base_port, "--base-port")
        _check_port(args.base_port + args.instances - 1, "the last port")
        # Base 0: the OS picks a free port for each instance (no race between choosing and binding).
        step = 1 if args.base_port else 0
        ports = [args.base_port + step * i for i in range(args.instances)]
    profile = load_profile(args.profile, user_dir=args.profiles_dir).with_overrides(
        kv_capacity_tokens=args.kv_capacity_tokens
    )
    icfg = InstanceConfig.from_profile(
        profile,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )
    name = args.served_model_name or profile.model.name
    faults = FaultConfig(
        error_rate=args.error_rate,
        error_status=args.error_status,
        crash_after_tokens=args.crash_after_tokens,
        slowdown=args.slowdown,
    )
    faulty = _fault_instances(args.fault_instances, args.instances)
    return [
        ServeTarget(
            host=args.host,
            port=port,
            config=EngineConfig(
                profile=profile,
                instance_config=icfg,
                served_model_name=name,
                time_scale=args.time_scale,
                seed=args.seed,
                instance_id=i,
                faults=faults if i in faulty else FaultConfig(),
                max_request_body_bytes=args.max_request_body_bytes,
            ),
        )
        for i, port in enumerate(ports)
    ]


def bind_all(targets: list[ServeTarget]) -> list[socket.socket]:
    """One listening socket per target, or `ConfigError` (and none left open)."""
    sockets: list[socket.socket] = []
    try:
        for t in targets:
            sockets.append(bind_listening_socket(t.host, t.port))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def serve(targets: list[ServeTarget], sockets: list[socket.socket]) -> None:
    """Serve every target on its bound socket until all stop (interrupted or crashed).

    ``socks``: bound sockets, one per target (see ``listen``); None binds ``target.port``.
    The first SIGINT/SIGTERM stops every instance gracefully, a second one at once.
    """
    # One worker process parses the large bodies of every instance, spawned now so that the
    # first large request does not wait for it.
    parser = BodyParser(Tokenizer())
    parser.start()
    await parser.wait_warm()  # before serving: the first large body must not wait for it
    servers = [
        EngineServer(t.config, host=t.host, port=t.port, sock=sock, parser=parser)
        for t, sock in zip(targets, sockets, strict=True)
    ]
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        for server in servers:
            server.stop(force=signals > 1)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    async def one(target: ServeTarget, server: EngineServer) -> None:
        await server.serve()
        if server.crashed:
            logger.error(
                "instance %d crashed after %d tokens (--crash-after-tokens)",
                target.config.instance_id,
                server.engine.core.tokens_emitted,
            )

    try:
        async with asyncio.TaskGroup() as tg:
            for target, server in zip(targets, servers, strict=True):
                tg.create_task(one(target, server))
    finally:
        parser.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_engine(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    targets = engine_targets(args)
    sockets = bind_all(targets)
    with contextlib.ExitStack() as stack:
        for sock in sockets:
            stack.enter_context(sock)
        for t, sock in zip(targets, sockets, strict=True):
            note = " with faults" if t.config.faults.active else ""
            host = f"[{t.host}]" if ":" in t.host else t.host
            logger.info(
                "instance %d (%s, x%g%s) serving on http://%s:%d",
                t.config.instance_id,
                t.config.profile.name,
                t.config.time_scale,
                note,
                host,
                sock.getsockname()[1],  # the port bound: the OS's pick for port 0
            )
        asyncio.run(serve(targets, sockets))
    return 0
