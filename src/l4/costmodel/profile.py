"""Calibration profiles: hardware x model constants for the step-time model.

A profile is a JSON file under ``l4/costmodel/profiles/`` written by
``tools/calibrate_profiles.py`` from public measurements; it records where every number came from
(``provenance``) and how well the model reproduces the measurements (``fit_error``). This module
only reads and validates them; it never fits anything.

Users' own profiles (``l4 calibrate-alpha --write``) live in a user directory that the CLI passes
in as ``user_dir`` (this module reads no environment) or at an explicit path; ``--profile NAME``
finds a bundled name first, then ``<user_dir>/NAME.json``.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from l4.errors import ConfigError, UnknownNameError, ValidationError

PROFILE_PACKAGE = "l4.costmodel.profiles"


@dataclass(frozen=True, slots=True, kw_only=True)
class PiecewiseLinear:
    """y(x) by linear interpolation between points, extrapolated along the end segments."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.x) < 2 or len(self.x) != len(self.y):
            raise ValidationError("a piecewise-linear table needs >= 2 points and equal lengths")
        if any(b <= a for a, b in zip(self.x, self.x[1:], strict=False)):
            raise ValidationError("piecewise-linear x values must be strictly increasing")

    def __call__(self, x: float) -> float:
        xs, ys = self.x, self.y
        i = bisect.bisect_right(xs, x) - 1
        i = min(max(i, 0), len(xs) - 2)
        x0, x1 = xs[i], xs[i + 1]
        return ys[i] + (ys[i + 1] - ys[i]) * (x - x0) / (x1 - x0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConstants:
    name: str
    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    kv_bytes_per_token: int
    """KV bytes per token over all layers (K and V, bf16)."""
    max_context_tokens: int

    @property
    def kv_bytes_per_token_per_layer(self) -> float:
        return self.kv_bytes_per_token / self.num_layers


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodeAttention:
    """Per-layer decode attention of a uniform batch: u(n, l) = base + per_seq * n + n*l*B/bw."""

    base_s: float
    per_seq_s: float
    bytes_per_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefillAttention:
    """Per-layer attention of one prefill chunk of c tokens after `prior` cached tokens.

    t = base + per_token * c + per_token_context * c * (prior + (c + 1) / 2): the last term counts
    query-key pairs of causal attention, the FLOP-bound part.
    """

    base_s: float
    per_token_s: float
    per_token_context_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AlphaTable:
    """Heterogeneity coefficient alpha by number of decodes, with and without a prefill chunk.

    Interpolated linearly in log2(n) and clamped at the ends of the table.
    """

    num_decodes: tuple[int, ...]
    decode_only: tuple[float, ...]
    with_prefill: tuple[float, ...]
    _log_n: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.num_decodes)
        if n < 1 or len(self.decode_only) != n or len(self.with_prefill) != n:
            raise ValidationError("alpha table columns must have the same, non-zero length")
        if any(b <= a for a, b in zip(self.num_decodes, self.num_decodes[1:], strict=False)):
            raise ValidationError("alpha table num_decodes must be strictly increasing")
        if self.num_decodes[0] < 1:
            raise ValidationError("alpha table num_decodes must be >= 1")
        object.__setattr__(self, "_log_n", tuple(math.log2(v) for v in self.num_decodes))

    def __call__(self, num_decodes: int, has_prefill: bool) -> float:
        col = self.with_prefill if has_prefill else self.decode_only
        if num_decodes <= self.num_decodes[0]:
            return col[0]
        if num_decodes >= self.num_decodes[-1]:
            return col[-1]
        ln = math.log2(num_decodes)
        i = bisect.bisect_right(self._log_n, ln) - 1
        x0, x1 = self._log_n[i], self._log_n[i + 1]
        return col[i] + (col[i + 1] - col[i]) * (ln - x0) / (x1 - x0)

    def scaled(self, value: float) -> AlphaTable:
        """The same table with every entry replaced by ``value`` (``--alpha``)."""
        n = len(self.num_decodes)
        return replace(self, decode_only=(value,) * n, with_prefill=(value,) * n)


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """Everything the step-time model and the instance need for one hardware x model pair."""

    name: str
    description: str
    hardware: str
    engine: str
    model: ModelConstants
    kv_capacity_tokens: int
    default_max_num_seqs: int
    default_max_num_batched_tokens: int
    block_size_tokens: int
    step_fixed_s: float
    """Per step: scheduling, launch, sampling and lm_head floor."""
    step_per_seq_s: float
    """Per sequence in the step (input prep, sampling, lm_head row)."""
    linear: PiecewiseLinear
    """Non-attention time of all layers versus tokens in the step, seconds."""
    decode_attention: DecodeAttention
    prefill_attention: PrefillAttention
    alpha: AlphaTable
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)
    fit_error: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.kv_capacity_tokens < self.block_size_tokens:
            raise ValidationError(
                f"profile {self.name}: KV capacity {self.kv_capacity_tokens} tokens is below one "
                f"block of {self.block_size_tokens}"
            )
        if self.default_max_num_seqs < 1 or self.default_max_num_batched_tokens < 1:
            raise ValidationError(f"profile {self.name}: engine defaults must be positive")

    @property
    def num_kv_blocks(self) -> int:
        return self.kv_capacity_tokens // self.block_size_tokens

    def with_overrides(
        self, *, kv_capacity_tokens: int | None = None, alpha: float | None = None
    ) -> Profile:
        """A copy with the user's overrides applied (``--kv-capacity-tokens``, ``--alpha``)."""
        out = self
        if kv_capacity_tokens is not None:
            if kv_capacity_tokens <= 0:
                raise ValidationError("--kv-capacity-tokens must be positive")
            out = replace(out, kv_capacity_tokens=kv_capacity_tokens)
        if alpha is not None:
            if not 0.0 <= alpha <= 1.0:
                raise ValidationError("--alpha must be between 0 and 1")
            out = replace(out, alpha=out.alpha.scaled(alpha))
        return out


def available_profiles() -> list[str]:
    """Names of the bundled profiles, sorted."""
    files = resources.files(PROFILE_PACKAGE).iterdir()
    return sorted(f.name.removesuffix(".json") for f in files if f.name.endswith(".json"))


def user_profiles(user_dir: Path | None) -> list[str]:
    """Names of the profiles (``<name>.json``) in a user directory, sorted; none if it is absent."""
    if user_dir is None or not user_dir.is_dir():
        return []
    return sorted(f.stem for f in user_dir.glob("*.json") if f.is_file())


def _is_name(value: str) -> bool:
    """A profile name, as opposed to a path: no directory part and no .json suffix."""
    return "/" not in value and "\\" not in value and not value.endswith(".json")


def bundled_profile_dir() -> Path | None:
    """The installed package's profile directory, or None when it is inside an archive."""
    root = resources.files(PROFILE_PACKAGE)
    return Path(str(root)) if isinstance(root, Path) else None


def is_bundled_file(path: Path) -> bool:
    """Whether ``path`` is one of the installed package's own profile files."""
    root = bundled_profile_dir()
    return root is not None and path.resolve().parent == root.resolve()


def profile_source(name_or_path: str, *, user_dir: Path | None = None) -> Path | None:
    """Where a ``--profile`` value lives: None for a bundled name, else the file.

    Resolution order: a bundled name; then ``<user_dir>/<name>.json``; then a JSON path. A name
    in the user directory never shadows a bundled one, so a bundled name always means the same
    numbers. Unknown names raise ``UnknownNameError`` listing bundled and user profiles.
    """
    if name_or_path in available_profiles():
        return None
    if _is_name(name_or_path):
        candidate = None if user_dir is None else user_dir / f"{name_or_path}.json"
        if candidate is not None and candidate.is_file():
            return candidate
        raise UnknownNameError(
            "profile", name_or_path, [*available_profiles(), *user_profiles(user_dir)]
        )
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"profile file {path} not found")
    return path


def load_profile(name_or_path: str, *, user_dir: Path | None = None) -> Profile:
    """Load a bundled profile by name, a profile in ``user_dir`` by name, or a JSON file by path
    (``profile_source`` gives the order)."""
    source = profile_source(name_or_path, user_dir=user_dir)
    try:
        if source is None:
            text = resources.files(PROFILE_PACKAGE).joinpath(f"{name_or_path}.json").read_text()
        else:
            text = source.read_text()
    except OSError as exc:
        raise ConfigError(f"profile {name_or_path}: cannot read it ({exc})") from exc
    try:
        return profile_from_dict(json.loads(text))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"profile {name_or_path}: malformed ({exc})") from exc


def profile_from_dict(d: dict[str, Any]) -> Profile:
    m = d["model"]
    alpha = d["alpha"]
    return Profile(
        name=str(d["name"]),
        description=str(d["description"]),
        hardware=str(d["hardware"]),
        engine=str(d["engine"]),
        model=ModelConstants(
            name=str(m["name"]),
            num_layers=int(m["num_layers"]),
            num_q_heads=int(m["num_q_heads"]),
            num_kv_heads=int(m["num_kv_heads"]),
            head_dim=int(m["head_dim"]),
            kv_bytes_per_token=int(m["kv_bytes_per_token"]),
            max_context_tokens=int(m["max_context_tokens"]),
        ),
        kv_capacity_tokens=int(d["kv_capacity_tokens"]),
        default_max_num_seqs=int(d["default_max_num_seqs"]),
        default_max_num_batched_tokens=int(d["default_max_num_batched_tokens"]),
        block_size_tokens=int(d["block_size_tokens"]),
        step_fixed_s=float(d["step_fixed_s"]),
        step_per_seq_s=float(d["step_per_seq_s"]),
        linear=PiecewiseLinear(
            x=tuple(float(v) for v in d["linear"]["tokens"]),
            y=tuple(float(v) for v in d["linear"]["time_s"]),
        ),
        decode_attention=DecodeAttention(**{k: float(v) for k, v in d["decode_attention"].items()}),
        prefill_attention=PrefillAttention(
            **{k: float(v) for k, v in d["prefill_attention"].items()}
        ),
        alpha=AlphaTable(
            num_decodes=tuple(int(v) for v in alpha["num_decodes"]),
            decode_only=tuple(float(v) for v in alpha["decode_only"]),
            with_prefill=tuple(float(v) for v in alpha["with_prefill"]),
        ),
        provenance=dict(d.get("provenance", {})),
        fit_error=dict(d.get("fit_error", {})),
    )
