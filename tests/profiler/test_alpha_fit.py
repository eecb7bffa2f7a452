"""The skew CSV format and the alpha fit: recovery of a known alpha, strict reading."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l4.costmodel import load_profile
from l4.costmodel.alpha_fit import (
    SKEW_COLUMNS,
    SkewRow,
    SkewShape,
    fit_alpha,
    read_skew_csv,
    write_skew_csv,
)
from l4.errors import ConfigError

NS = (2, 4, 8, 16, 32, 64, 128, 256)


def _row(n: int, alpha: float, t_mean_s: float, gap_s: float, prefill: bool, nb: int) -> SkewRow:
    shape = SkewShape(
        num_decodes=n,
        num_long=min(nb, n),
        short_tokens=256,
        long_tokens=4096,
        prefill_chunk_tokens=128 if prefill else 0,
    )
    return SkewRow(
        shape=shape,
        t_mean_s=t_mean_s,
        t_max_s=t_mean_s + gap_s,
        t_skew_s=t_mean_s + alpha * gap_s,
    )


@settings(max_examples=30, deadline=None)
@given(
    truth=st.dictionaries(
        st.tuples(st.sampled_from(NS), st.booleans()),
        st.floats(0.0, 1.0),
        min_size=1,
    ),
    outlier=st.floats(-0.5, 3.0),
    t_mean_us=st.floats(100.0, 50_000.0),
    gap_share=st.floats(0.05, 1.0),
)
def test_fit_recovers_known_alpha_through_the_csv(
    tmp_path_factory: pytest.TempPathFactory,
    truth: dict[tuple[int, bool], float],
    outlier: float,
    t_mean_us: float,
    gap_share: float,
) -> None:
    gap_us = gap_share * t_mean_us
    # Three rows at the true alpha and one outlier per (n, regime): the median ignores it.
    for prefill in (False, True):  # both regimes must exist for a fit
        if not any(p == prefill for _, p in truth):
            truth[(NS[0], prefill)] = 0.5
    rows = [
        _row(n, a, t_mean_us * 1e-6 * (1 + k), gap_us * 1e-6 * (1 + k), prefill, nb=1 + k)
        for (n, prefill), a in truth.items()
        for k in range(3)
    ]
    rows += [_row(n, outlier, t_mean_us * 1e-6, gap_us * 1e-6, p, 1) for (n, p) in truth]
    path = tmp_path_factory.mktemp("fit") / "skew.csv"
    write_skew_csv(path, rows)
    fit = fit_alpha(read_skew_csv(path))
    assert fit.table.num_decodes == tuple(sorted({n for n, _ in truth}))
    for (n, prefill), a in truth.items():
        # times carry 3 decimals of a microsecond and alpha 4 decimals: that is the tolerance
        assert fit.table(n, prefill) == pytest.approx(a, abs=2e-3)


def test_fit_errors_measure_the_prediction_of_t_skew() -> None:
    rows = [_row(n, 0.6, 1e-4 * n, 5e-5 * n, p, 1).record() for n in (2, 4) for p in (False, True)]
    fit = fit_alpha(rows)
    for regime in ("pure", "mixed"):
        assert fit.errors[regime]["alpha_table"]["max"] < 1e-5
        # alpha 0 predicts t_mean: off by 0.6 x 5e-5 / (1e-4 + 0.6 x 5e-5) = 23%
        assert fit.errors[regime]["alpha_0"]["mape"] == pytest.approx(0.03 / 0.13, rel=1e-3)
        assert fit.errors[regime]["alpha_0"]["rows"] == 2


def test_missing_n_repeats_the_neighbour() -> None:
    rows = [
        _row(2, 0.9, 1e-4, 5e-5, True, 1).record(),
        _row(8, 0.3, 1e-4, 5e-5, True, 1).record(),
        _row(4, 0.2, 1e-4, 5e-5, False, 1).record(),
    ]
    fit = fit_alpha(rows, num_decodes=(2, 4, 8, 16))
    assert fit.table.with_prefill == pytest.approx((0.9, 0.9, 0.3, 0.3))
    assert fit.table.decode_only == pytest.approx((0.2, 0.2, 0.2, 0.2))


def test_alpha_is_clipped_and_rows_without_alpha_skipped() -> None:
    rows = [
        _row(2, 1.7, 1e-4, 5e-5, True, 1).record(),
        _row(2, -0.4, 1e-4, 5e-5, False, 1).record(),
        _row(2, 0.5, 1e-4, -1e-5, False, 1).record(),  # t_max < t_mean: no alpha
    ]
    assert rows[2]["alpha"] == ""
    fit = fit_alpha(rows)
    assert fit.table.with_prefill == (1.0,) and fit.table.decode_only == (0.0,)
    assert fit.errors["rows_without_alpha_skipped"] == 1


def test_a_regime_without_rows_cannot_be_fitted() -> None:
    with pytest.raises(ConfigError, match="no mixed row"):
        fit_alpha([_row(2, 0.5, 1e-4, 5e-5, False, 1).record()])


def _write(path: Path, records: list[dict[str, str]], columns: tuple[str, ...]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(records)
    return path


GOOD = _row(4, 0.25, 2e-4, 1e-4, True, 1).record()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"t_skew_us": "fast"}, "expected a number"),
        ({"n": "4.5"}, "whole number"),
        ({"regime": "pure"}, "regime"),
        ({"alpha": "0.9"}, "disagrees with the times"),
        ({"alpha": ""}, "alpha is empty"),
        ({"t_max_us": "150.0", "alpha": "0.1"}, "must be empty"),
        ({"kv_mean": "4096"}, "kv_mean"),
        ({"nb": "9"}, "nb must be in"),
        ({"t_mean_us": "-1"}, "> 0"),
        ({"t_mean_us": "nan"}, "not finite"),
    ],
)
def test_malformed_rows_are_rejected_with_their_line(
    tmp_path: Path, change: dict[str, str], message: str
) -> None:
    path = _write(tmp_path / "bad.csv", [GOOD, {**GOOD, **change}], SKEW_COLUMNS)
    with pytest.raises(ConfigError, match=message) as info:
        read_skew_csv(path)
    assert "line 3" in str(info.value) and "\n" not in str(info.value)


def test_malformed_files_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing columns kv_mean"):
        read_skew_csv(
            _write(tmp_path / "a.csv", [GOOD], tuple(c for c in SKEW_COLUMNS if c != "kv_mean"))
        )
    with pytest.raises(ConfigError, match="no rows"):
        read_skew_csv(_write(tmp_path / "b.csv", [], SKEW_COLUMNS))
    (tmp_path / "c.csv").write_text("")
    with pytest.raises(ConfigError, match="empty file"):
        read_skew_csv(tmp_path / "c.csv")
    with pytest.raises(ConfigError, match="cannot read"):
        read_skew_csv(tmp_path / "missing.csv")
    short = ",".join(GOOD[c] for c in SKEW_COLUMNS[:-3])
    (tmp_path / "d.csv").write_text(",".join(SKEW_COLUMNS) + "\n" + short + "\n")
    with pytest.raises(ConfigError, match="too few fields"):
        read_skew_csv(tmp_path / "d.csv")


def test_the_bundled_rtx_table_is_this_fit_of_its_source() -> None:
    # the refactor's contract: tools/calibrate_profiles.py gets its tables from fit_alpha
    source = Path(__file__).resolve().parents[2] / "tools" / "calibration_sources"
    with gzip.open(source / "rtxpro6000_llama31_8b_tp1_skew.csv.gz", "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    fit = fit_alpha(rows, num_decodes=NS)
    bundled = load_profile("rtxpro6000-llama-3.1-8b")
    assert fit.table.num_decodes == bundled.alpha.num_decodes
    assert fit.table.decode_only == pytest.approx(bundled.alpha.decode_only, rel=1e-5)
    assert fit.table.with_prefill == pytest.approx(bundled.alpha.with_prefill, rel=1e-5)
    assert fit.errors["rows_without_alpha_skipped"] == 25
