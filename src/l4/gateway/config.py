"""What `l4 serve` is told: backends, policy, plan, limits and timeouts, in one frozen value.

The same options come from the command line or from a TOML file (`--config`); the CLI merges
them (command line wins) and this module validates the result, raising `ValidationError` with a
one-line message naming the option.
"""

from __future__ import annotations

import enum
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from l4.errors import ValidationError
from l4.views import StaticPlan

DEFAULT_PROFILE = "h100-llama-3.2-3b"


class EngineKind(enum.Enum):
    """How token ids are obtained and sent (`--engine-kind`)."""

    VLLM = "vllm"  # /tokenize, token-id prompts, return_token_ids: every request can move
    OPENAI = "openai"  # any OpenAI-compatible server: no token ids, so requests never move


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    backends: tuple[str, ...]
    engine_kind: EngineKind = EngineKind.VLLM
    policy: str = "l4"
    profile: str = DEFAULT_PROFILE
    profiles_dir: Path | None = None  # user profiles (`l4 calibrate-alpha --write`)
    workload: str | None = None  # a trace to plan the first stages from (as `l4 plan --trace`)
    workload_rate_scale: float | None = None
    static_plan: StaticPlan | None = None
    tokenizer: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    scrape_interval_s: float = 0.2
    health_interval_s: float = 1.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0
    startup_timeout_s: float = 60.0
    migration_limit: int = 3
    failures_to_trip: int = 3
    max_request_body_bytes: int = 32 * 1024 * 1024
    max_connections_per_backend: int = 4096
    seed: int = 0
    log_level: str = "info"
    # Emulated engines run faster than real time; the policy's clock (and the gateway's latency
    # metrics) then run in emulated seconds too, so ticks keep their meaning.
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.backends:
            raise ValidationError("no backend: give --backend URL (repeatable) or --emulate K")
        for url in self.backends:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValidationError(f"--backend {url!r} is not an http(s) URL")
        if len(set(self.backends)) != len(self.backends):
            raise ValidationError("a backend is listed twice")
        if not 0 <= self.port <= 65535:
            raise ValidationError(f"--port must be in 0..65535, got {self.port}")
        if not 0.01 <= self.scrape_interval_s <= 60:
            raise ValidationError("--scrape-interval must be between 0.01 and 60 s")
        for name in ("health_interval_s", "connect_timeout_s", "read_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValidationError(f"--{_flag(name)} must be > 0")
        if self.migration_limit < 0 or self.failures_to_trip < 1:
            raise ValidationError("--migration-limit must be >= 0 and --failures-to-trip >= 1")
        if self.max_request_body_bytes < 1024:
            raise ValidationError("--max-request-body-bytes must be >= 1024")
        if not self.time_scale > 0:
            raise ValidationError(f"--time-scale must be > 0, got {self.time_scale}")
        if self.max_connections_per_backend < 1:
            raise ValidationError("--max-connections-per-backend must be >= 1")
        plan = self.static_plan
        if plan is not None and plan.num_instances != len(self.backends):
            raise ValidationError(
                f"--stage-sizes {','.join(map(str, plan.stage_sizes))} add up to "
                f"{plan.num_instances} instances, but there are {len(self.backends)} backends"
            )


def _flag(field_name: str) -> str:
    name = field_name.removesuffix("_s").replace("_", "-")
    return name


def parse_static_plan(boundaries: str | None, sizes: str | None) -> StaticPlan | None:
    """``--boundaries B1,B2,... --stage-sizes n1,n2,...`` (both or neither)."""
    if boundaries is None and sizes is None:
        return None
    if boundaries is None or sizes is None:
        raise ValidationError("--boundaries and --stage-sizes go together")
    try:
        b = tuple(int(x) for x in boundaries.split(",") if x.strip())
        n = tuple(int(x) for x in sizes.split(","))
    except ValueError:
        raise ValidationError(
            "--boundaries and --stage-sizes take comma-separated integers"
        ) from None
    return StaticPlan(boundaries_tokens=b, stage_sizes=n)


CONFIG_KEYS = frozenset(f.name for f in fields(GatewayConfig)) | {"boundaries", "stage_sizes"}


def read_config_file(path: Path) -> dict[str, Any]:
    """A TOML file of the same options (dashes or underscores, `_s` suffixes optional)."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ValidationError(f"cannot read --config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError(f"--config {path} is not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = key.replace("-", "_")
        if name not in CONFIG_KEYS and f"{name}_s" in CONFIG_KEYS:
            name = f"{name}_s"
        if name not in CONFIG_KEYS:
            raise ValidationError(f"--config {path}: unknown option {key!r}")
        out[name] = value
    return out
