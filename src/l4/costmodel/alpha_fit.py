"""The skew-sweep CSV and the heterogeneity coefficient alpha fitted from it (L4.md section 8).

One skew row times one batch shape three ways: ``t_skew`` for the mixed batch (``nb`` decodes at
``kv_big`` tokens, ``n - nb`` at ``kvs``, plus a prefill chunk of ``pc`` tokens after ``kp``
cached ones in the ``mixed`` regime), ``t_mean`` with every decode at the mean length and
``t_max`` with every decode at ``kv_big`` (the same prefill chunk in both). Then
``alpha = (t_skew - t_mean) / (t_max - t_mean)`` says where the mixed batch falls between the two
uniform ones, and the step-time model charges ``u(n, l_mean) + alpha * (u(n, l_max) - u(n,
l_mean))``.

The CSV is LLMServingSim 2.0's ``skew.csv`` (columns ``SKEW_COLUMNS``, times in microseconds,
``alpha`` empty when ``t_max <= t_mean``). ``fit_alpha`` is the one fit of the alpha table: the
bundled profiles (``tools/calibrate_profiles.py``) and ``l4 calibrate-alpha`` both call it.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from l4.costmodel.profile import AlphaTable
from l4.errors import ConfigError, ValidationError

SKEW_COLUMNS = (
    "regime",
    "n",
    "nb",
    "ratio",
    "skew",
    "pc",
    "kp",
    "kvs",
    "kv_big",
    "kv_mean",
    "t_mean_us",
    "t_max_us",
    "t_skew_us",
    "alpha",
)
FIT_COLUMNS = ("regime", "n", "t_mean_us", "t_max_us", "t_skew_us", "alpha")
"""The columns ``fit_alpha`` reads (the reduced calibration sources keep only these)."""
PURE, MIXED = "pure", "mixed"
REGIMES = (PURE, MIXED)
US = 1e-6

Array = npt.NDArray[np.float64]


def rel_error(pred: Array, y: Array) -> dict[str, float | int]:
    """MAPE, p90, max relative error and row count: the ``fit_error`` entries of a profile."""
    e = np.abs(pred - y) / y
    return {
        "mape": float(e.mean()),
        "p90": float(np.percentile(e, 90)),
        "max": float(e.max()),
        "rows": len(y),
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class SkewShape:
    """One heterogeneous batch: ``num_long`` decodes at ``long_tokens``, the rest at
    ``short_tokens``, and a prefill chunk when ``prefill_chunk_tokens > 0``."""

    num_decodes: int
    num_long: int
    short_tokens: int
    long_tokens: int
    prefill_chunk_tokens: int = 0
    prefill_prior_tokens: int = 0

    def __post_init__(self) -> None:
        if self.num_decodes < 1:
            raise ValidationError(f"skew shape: n must be >= 1, got {self.num_decodes}")
        if not 1 <= self.num_long <= self.num_decodes:
            raise ValidationError(f"skew shape: nb must be in [1, n], got {self.num_long}")
        if not 1 <= self.short_tokens <= self.long_tokens:
            raise ValidationError(
                f"skew shape: need 1 <= kvs <= kv_big, got {self.short_tokens}, {self.long_tokens}"
            )
        if self.prefill_chunk_tokens < 0 or self.prefill_prior_tokens < 0:
            raise ValidationError("skew shape: pc and kp must be >= 0")
        if self.prefill_prior_tokens and not self.prefill_chunk_tokens:
            raise ValidationError("skew shape: kp > 0 needs a prefill chunk (pc > 0)")

    @property
    def regime(self) -> str:
        return MIXED if self.prefill_chunk_tokens else PURE

    @property
    def mean_tokens(self) -> int:
        """The uniform reference length (rounded down, as in LLMServingSim's sweep)."""
        n, nb = self.num_decodes, self.num_long
        return (nb * self.long_tokens + (n - nb) * self.short_tokens) // n


@dataclass(frozen=True, slots=True, kw_only=True)
class SkewRow:
    """A measured skew shape: medians of the three batch times, seconds."""

    shape: SkewShape
    t_mean_s: float
    t_max_s: float
    t_skew_s: float

    def record(self) -> dict[str, str]:
        """The CSV record. alpha comes from the rounded times so the file is self-consistent."""
        s = self.shape
        t_mean, t_max, t_skew = (
            round(t / US, 3) for t in (self.t_mean_s, self.t_max_s, self.t_skew_s)
        )
        alpha = "" if t_max <= t_mean else str(round((t_skew - t_mean) / (t_max - t_mean), 4))
        return {
            "regime": s.regime,
            "n": str(s.num_decodes),
            "nb": str(s.num_long),
            "ratio": str(round(s.num_long / s.num_decodes, 4)),
            "skew": str(round(s.long_tokens / s.short_tokens, 4)),
            "pc": str(s.prefill_chunk_tokens),
            "kp": str(s.prefill_prior_tokens),
            "kvs": str(s.short_tokens),
            "kv_big": str(s.long_tokens),
            "kv_mean": str(s.mean_tokens),
            "t_mean_us": str(t_mean),
            "t_max_us": str(t_max),
            "t_skew_us": str(t_skew),
            "alpha": alpha,
        }


def write_skew_csv(path: Path, rows: Iterable[SkewRow]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SKEW_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row.record())


def _int(record: Mapping[str, str], key: str) -> int:
    try:
        return int(record[key])
    except ValueError:
        raise ConfigError(f"column {key}: expected a whole number, got {record[key]!r}") from None


def _float(record: Mapping[str, str], key: str) -> float:
    try:
        value = float(record[key])
    except ValueError:
        raise ConfigError(f"column {key}: expected a number, got {record[key]!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"column {key}: not finite ({record[key]!r})")
    return value


def _check_record(record: Mapping[str, str]) -> None:
    """Raise ConfigError unless the record is a consistent skew measurement."""
    try:
        shape = SkewShape(
            num_decodes=_int(record, "n"),
            num_long=_int(record, "nb"),
            short_tokens=_int(record, "kvs"),
            long_tokens=_int(record, "kv_big"),
            prefill_chunk_tokens=_int(record, "pc"),
            prefill_prior_tokens=_int(record, "kp"),
        )
    except ValidationError as exc:
        raise ConfigError(str(exc)) from None
    if record["regime"] != shape.regime:
        raise ConfigError(f"regime {record['regime']!r} but pc = {shape.prefill_chunk_tokens}")
    # The derived columns must agree with the shape: a shifted or swapped column shows up here.
    if abs(_int(record, "kv_mean") - shape.mean_tokens) > 1:
        raise ConfigError(f"kv_mean {record['kv_mean']} != mean length {shape.mean_tokens}")
    if abs(_float(record, "ratio") - shape.num_long / shape.num_decodes) > 1e-3:
        raise ConfigError(f"ratio {record['ratio']} != nb / n")
    if abs(_float(record, "skew") / (shape.long_tokens / shape.short_tokens) - 1) > 1e-3:
        raise ConfigError(f"skew {record['skew']} != kv_big / kvs")
    t_mean, t_max, t_skew = (_float(record, k) for k in ("t_mean_us", "t_max_us", "t_skew_us"))
    if min(t_mean, t_max, t_skew) <= 0:
        raise ConfigError("times must be > 0")
    if t_max <= t_mean:
        if record["alpha"] != "":
            raise ConfigError("alpha must be empty when t_max_us <= t_mean_us")
        return
    if record["alpha"] == "":
        raise ConfigError("alpha is empty although t_max_us > t_mean_us")
    alpha = _float(record, "alpha")
    implied = (t_skew - t_mean) / (t_max - t_mean)
    # times carry 3 decimals, alpha 4: allow that rounding, amplified by a small t_max - t_mean
    if abs(alpha - implied) > 1e-3 + 2e-3 / (t_max - t_mean):
        raise ConfigError(f"alpha {alpha} disagrees with the times (which give {implied:.4f})")


def read_skew_csv(path: Path) -> list[dict[str, str]]:
    """Read and validate a skew CSV; every problem is a one-line ConfigError naming the line."""
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames
            records = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"cannot read skew CSV {path}: {exc}") from exc
    if not header:
        raise ConfigError(f"skew CSV {path}: empty file (expected header {','.join(SKEW_COLUMNS)})")
    missing = [c for c in SKEW_COLUMNS if c not in header]
    if missing:
        raise ConfigError(f"skew CSV {path}: missing columns {', '.join(missing)}")
    if not records:
        raise ConfigError(f"skew CSV {path}: no rows")
    for line, record in enumerate(records, start=2):
        if any(record.get(c) is None for c in SKEW_COLUMNS):
            raise ConfigError(f"skew CSV {path} line {line}: too few fields")
        try:
            _check_record(record)
        except ConfigError as exc:
            raise ConfigError(f"skew CSV {path} line {line}: {exc}") from None
    return [{c: r[c] for c in SKEW_COLUMNS} for r in records]


@dataclass(frozen=True, slots=True, kw_only=True)
class AlphaFit:
    """The fitted table and how well ``t_mean + alpha (t_max - t_mean)`` predicts ``t_skew``."""

    table: AlphaTable
    errors: dict[str, Any]
    """Per regime ``alpha_0`` and ``alpha_table`` (``rel_error`` of t_skew), and
    ``rows_without_alpha_skipped``."""

    def table_dict(self) -> dict[str, Any]:
        """The ``alpha`` entry of a profile JSON."""
        return {
            "num_decodes": list(self.table.num_decodes),
            "decode_only": list(self.table.decode_only),
            "with_prefill": list(self.table.with_prefill),
        }


def _filled(medians: dict[int, float], num_decodes: Sequence[int]) -> list[float]:
    """Medians on the grid; an n without rows repeats the previous n (or, first, the next)."""
    col: list[float] = []
    for n in num_decodes:
        if n in medians:
            col.append(medians[n])
        elif col:
            col.append(col[-1])
        else:
            col.append(medians[min(medians)])
    return col


def fit_alpha(
    rows: Sequence[Mapping[str, str]], num_decodes: Sequence[int] | None = None
) -> AlphaFit:
    """Median alpha per (regime, n), clipped to [0, 1], on ``num_decodes`` (default: every n with
    a usable row). Rows without alpha (``t_max <= t_mean``: the ratio is undefined) are skipped.

    ``rows`` are CSV records with at least ``FIT_COLUMNS``. The medians are robust to the odd
    noisy shape; clipping keeps the model between the two uniform batches it interpolates.
    """
    try:
        usable = [r for r in rows if r["alpha"] != ""]
        parsed = [(r["regime"], _int(r, "n"), _float(r, "alpha")) for r in usable]
    except KeyError as exc:
        raise ConfigError(f"skew rows: missing column {exc}") from None
    by: dict[tuple[str, int], list[float]] = defaultdict(list)
    for regime, n, alpha in parsed:
        if regime not in REGIMES:
            raise ConfigError(f"skew rows: unknown regime {regime!r} (expected pure or mixed)")
        by[(regime, n)].append(alpha)
    grid = (
        tuple(num_decodes) if num_decodes is not None else tuple(sorted({n for _, n, _ in parsed}))
    )
    cols: dict[str, list[float]] = {}
    for regime in REGIMES:
        medians = {
            n: float(np.clip(np.median(vals), 0.0, 1.0))
            for (g, n), vals in by.items()
            if g == regime
        }
        if not medians:
            raise ConfigError(f"skew rows: no {regime} row with an alpha; cannot fit {regime}")
        cols[regime] = _filled(medians, grid)
    table = AlphaTable(
        num_decodes=grid, decode_only=tuple(cols[PURE]), with_prefill=tuple(cols[MIXED])
    )
    errors: dict[str, Any] = {}
    for regime in REGIMES:
        sel = [r for r in usable if r["regime"] == regime]
        t_mean = np.array([_float(r, "t_mean_us") for r in sel])
        t_max = np.array([_float(r, "t_max_us") for r in sel])
        t_skew = np.array([_float(r, "t_skew_us") for r in sel])
        a = np.array([table(_int(r, "n"), regime == MIXED) for r in sel])
        errors[regime] = {
            "alpha_0": rel_error(t_mean, t_skew),
            "alpha_table": rel_error(t_mean + a * (t_max - t_mean), t_skew),
        }
    errors["rows_without_alpha_skipped"] = len(rows) - len(usable)
    return AlphaFit(table=table, errors=errors)
