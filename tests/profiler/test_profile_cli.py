"""`l4 profile-attention` on a CPU and `l4 calibrate-alpha`.

torch is optional (the `profile` extra): without it the tests that run the profiler skip, and the
others (the message that says how to install it, calibrate-alpha on given measurements) still run.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from l4.costmodel import AlphaTable, load_profile
from l4.costmodel.alpha_fit import (
    SKEW_COLUMNS,
    SkewRow,
    SkewShape,
    fit_alpha,
    read_skew_csv,
    write_skew_csv,
)
from l4.errors import ConfigError
from l4.profiler.cli import (
    TORCH_MISSING,
    build_parser,
    run_calibrate_alpha,
    run_profile,
)
from l4.profiler.grid import QUICK_GRID, HeadShape, grid_points

try:
    import torch
    import torch.nn.functional as F  # noqa: N812

    from l4.profiler import kernels
except ImportError:  # the profile extra is not installed
    torch = None  # type: ignore[assignment]

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (l4-serve[profile])")
CPU = torch.device("cpu") if torch is not None else None
PROFILES = Path(__file__).resolve().parents[2] / "src" / "l4" / "costmodel" / "profiles"


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=160)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if torch is None:
        pytest.skip("torch is not installed (l4-serve[profile])")
    out = tmp_path_factory.mktemp("profile")
    quick = ["profile-attention", "--device", "cpu", "--quick"]
    args = _parse([*quick, "--profiles", "h100-llama-3.1-8b", "--out", str(out)])
    assert run_profile(args, _quiet()) == 0
    return out


def test_quick_cpu_run_writes_the_skew_csv_and_alpha_table(quick_run: Path) -> None:
    csv_path = quick_run / "llama-3.1-8b_skew.csv"
    with csv_path.open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == SKEW_COLUMNS
        rows = list(reader)
    assert len(rows) == len(grid_points(QUICK_GRID))
    assert {r["regime"] for r in rows} == {"pure", "mixed"}
    for r in rows:
        assert min(float(r[k]) for k in ("t_mean_us", "t_max_us", "t_skew_us")) > 0
    read_skew_csv(csv_path)  # the file passes the strict reader
    meta = json.loads((quick_run / "llama-3.1-8b_skew.json").read_text())
    assert meta["model"] == {
        "name": "meta-llama/Llama-3.1-8B",
        "num_q_heads": 32,
        "num_kv_heads": 8,
        "head_dim": 128,
    }
    m = meta["measurement"]
    assert m["quick"] is True and m["device_type"] == "cpu" and m["kernel"] == "sdpa"
    assert m["kernel_check_max_abs_error"] < 1e-4
    alpha = meta["alpha"]
    table = AlphaTable(
        num_decodes=tuple(alpha["num_decodes"]),
        decode_only=tuple(alpha["decode_only"]),
        with_prefill=tuple(alpha["with_prefill"]),
    )
    assert table.num_decodes == tuple(QUICK_GRID.num_decodes)
    assert all(0.0 <= v <= 1.0 for v in (*table.decode_only, *table.with_prefill))
    assert alpha == fit_alpha(read_skew_csv(csv_path)).table_dict()


def _pool(head: HeadShape) -> kernels.KvPool:
    return kernels.allocate_pool(
        head, num_pages=96, page_tokens=16, device=torch.device("cpu"), dtype=torch.float32, seed=3
    )


@needs_torch
def test_sdpa_kernel_matches_the_reference_and_a_wrong_kernel_is_refused() -> None:
    head = HeadShape(num_q_heads=6, num_kv_heads=2, head_dim=16)
    pool = _pool(head)
    sdpa = kernels.resolve_kernel("sdpa", CPU, page_tokens=16)
    assert kernels.check_kernel(sdpa, head, pool, seed=1) < 1e-4
    # the same kernel over contiguous windows (the layout of flash without block tables)
    windows = replace(sdpa, paged=False)
    assert kernels.check_kernel(windows, head, pool, seed=1) < 1e-4

    def top_left_causal(batch: kernels.DeviceBatch, p: kernels.KvPool) -> kernels.Attention:
        # the classic mistake: SDPA's is_causal aligns to the top left, so a decode's one query
        # sees only the first key instead of its whole context
        def run() -> torch.Tensor:
            outs = []
            for i, q in enumerate(kernels._queries(batch)):
                k, v = kernels._sequence_kv(batch, p, i)
                o = F.scaled_dot_product_attention(
                    q[None], k[None], v[None], is_causal=True, enable_gqa=True
                )
                outs.append(o[0].transpose(0, 1))
            return torch.cat(outs)

        return run

    with pytest.raises(ConfigError, match="disagrees with the reference"):
        kernels.check_kernel(replace(sdpa, prepare=top_left_causal), head, pool, seed=1)


@needs_torch
def test_flash_kernel_needs_cuda() -> None:
    with pytest.raises(ConfigError, match="needs --device cuda"):
        kernels.resolve_kernel("flash", CPU, page_tokens=256)
    args = _parse(["profile-attention", "--device", "cpu", "--kernel", "flash", "--quick"])
    with pytest.raises(ConfigError, match="needs --device cuda"):
        run_profile(args, _quiet())


@needs_torch
def test_cuda_without_a_gpu_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = _parse(["profile-attention", "--device", "cuda", "--out", str(tmp_path)])
    with pytest.raises(ConfigError) as info:
        run_profile(args, _quiet())
    assert "CUDA" in str(info.value) and "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())


def test_missing_torch_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    args = _parse(["profile-attention", "--device", "cpu", "--quick", "--out", str(tmp_path)])
    with pytest.raises(ConfigError) as info:
        run_profile(args, _quiet())
    assert str(info.value) == TORCH_MISSING == "install torch to profile: pip install torch"


def test_the_cli_module_does_not_import_torch() -> None:
    code = "import sys, l4.profiler.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def _copy_profile(tmp_path: Path) -> Path:
    target = tmp_path / "h100-llama-3.1-8b.json"
    shutil.copy(PROFILES / "h100-llama-3.1-8b.json", target)
    return target


def test_calibrate_alpha_rewrites_a_copy_of_a_profile(quick_run: Path, tmp_path: Path) -> None:
    csv_path = quick_run / "llama-3.1-8b_skew.csv"
    target = _copy_profile(tmp_path)
    before = json.loads(target.read_text())
    base = ["calibrate-alpha", "--csv", str(csv_path), "--profile", str(target)]
    # a --quick CPU run is a pipeline test: refused unless forced
    with pytest.raises(ConfigError, match="--force"):
        run_calibrate_alpha(_parse([*base, "--write"]), _quiet())
    # dry run: nothing written
    assert run_calibrate_alpha(_parse([*base, "--force"]), _quiet()) == 0
    assert json.loads(target.read_text()) == before
    assert run_calibrate_alpha(_parse([*base, "--force", "--write"]), _quiet()) == 0
    after = json.loads(target.read_text())
    fitted = fit_alpha(read_skew_csv(csv_path)).table_dict()
    assert after["alpha"]["num_decodes"] == fitted["num_decodes"]
    for col in ("decode_only", "with_prefill"):
        assert after["alpha"][col] == pytest.approx(fitted[col], abs=1e-6)
    assert after["alpha"] != before["alpha"]
    assert "profile-attention" in after["provenance"]["alpha"]
    assert after["provenance"]["alpha_source"]["rows"] == len(read_skew_csv(csv_path))
    assert after["fit_error"]["skew_t_skew"]["pure"]["alpha_table"]["rows"] > 0
    untouched = set(before) - {"alpha", "provenance", "fit_error"}
    assert {k: after[k] for k in untouched} == {k: before[k] for k in untouched}
    profile = load_profile(str(target))
    assert profile.alpha.num_decodes == tuple(QUICK_GRID.num_decodes)
    assert profile.alpha(2, True) == pytest.approx(fitted["with_prefill"][0], abs=1e-6)


def test_calibrate_alpha_rejects_a_malformed_csv(quick_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad_skew.csv"
    lines = (quick_run / "llama-3.1-8b_skew.csv").read_text().splitlines()
    lines[3] = lines[3].replace("pure", "mixed", 1)
    bad.write_text("\n".join(lines) + "\n")
    target = _copy_profile(tmp_path)
    before = target.read_text()
    args = _parse(["calibrate-alpha", "--csv", str(bad), "--profile", str(target), "--write"])
    with pytest.raises(ConfigError, match="line 4"):
        run_calibrate_alpha(args, _quiet())
    assert target.read_text() == before


def test_calibrate_alpha_refuses_another_models_measurement(
    quick_run: Path, tmp_path: Path
) -> None:
    shutil.copy(PROFILES / "h100-llama-3.2-3b.json", tmp_path / "3b.json")
    csv_path = quick_run / "llama-3.1-8b_skew.csv"
    args = _parse(
        [
            *("calibrate-alpha", "--csv", str(csv_path), "--profile", str(tmp_path / "3b.json")),
            "--force",
            "--write",
        ]
    )
    with pytest.raises(ConfigError, match=r"Llama-3\.2-3B"):
        run_calibrate_alpha(args, _quiet())


def _synthetic_csv(tmp_path: Path) -> Path:
    """A skew CSV without measurement metadata: alpha 0.1 / 0.8 at n = 2, 0 / 0.05 at n = 64."""
    rows = [
        SkewRow(
            shape=SkewShape(
                num_decodes=n,
                num_long=1,
                short_tokens=512,
                long_tokens=65536,
                prefill_chunk_tokens=chunk,
            ),
            t_mean_s=1e-3,
            t_max_s=2e-3,
            t_skew_s=1e-3 + alpha * 1e-3,
        )
        for n, chunk, alpha in ((2, 0, 0.1), (2, 128, 0.8), (64, 0, 0.0), (64, 128, 0.05))
    ]
    csv_path = tmp_path / "h100_skew.csv"
    write_skew_csv(csv_path, rows)
    return csv_path


def test_calibrate_alpha_dry_run_on_a_bundled_profile_writes_nothing(tmp_path: Path) -> None:
    csv_path = _synthetic_csv(tmp_path)
    bundled = PROFILES / "h100-llama-3.1-8b.json"
    before = bundled.read_text()
    buf = io.StringIO()
    user_dir = tmp_path / "profiles"
    args = _parse(
        [
            *("calibrate-alpha", "--csv", str(csv_path), "--profile", "h100-llama-3.1-8b"),
            *("--profiles-dir", str(user_dir)),
        ]
    )
    assert run_calibrate_alpha(args, Console(file=buf, width=300)) == 0
    assert bundled.read_text() == before
    assert not user_dir.exists()
    text = buf.getvalue()
    target = user_dir / "h100-llama-3.1-8b-calibrated.json"
    assert (
        f"dry run: nothing written (--write saves it as h100-llama-3.1-8b-calibrated in {target})"
        in text
    )
    current = json.loads(before)["alpha"]  # n = 2: the bundled value -> the synthetic fit
    assert f"{current['decode_only'][0]:.3f} -> 0.100" in text
    assert f"{current['with_prefill'][0]:.3f} -> 0.800" in text


def test_calibrate_alpha_write_keeps_the_package_and_saves_a_user_profile(tmp_path: Path) -> None:
    csv_path = _synthetic_csv(tmp_path)
    bundled = PROFILES / "h100-llama-3.1-8b.json"
    before = bundled.read_bytes()
    user_dir = tmp_path / "profiles"
    base = ["calibrate-alpha", "--csv", str(csv_path), "--profiles-dir", str(user_dir)]
    buf = io.StringIO()
    args = _parse([*base, "--profile", "h100-llama-3.1-8b", "--write"])
    assert run_calibrate_alpha(args, Console(file=buf, width=300)) == 0
    assert bundled.read_bytes() == before
    saved = user_dir / "h100-llama-3.1-8b-calibrated.json"
    assert f"wrote {saved}: use it with --profile h100-llama-3.1-8b-calibrated" in buf.getvalue()
    doc = json.loads(saved.read_text())
    assert doc["name"] == "h100-llama-3.1-8b-calibrated"
    assert doc["provenance"]["calibrated_from"] == "h100-llama-3.1-8b"
    profile = load_profile("h100-llama-3.1-8b-calibrated", user_dir=user_dir)
    assert profile.alpha(2, False) == pytest.approx(0.1) and profile.alpha(2, True) == 0.8
    bundled_alpha = json.loads(before)["alpha"]["with_prefill"][0]
    assert load_profile("h100-llama-3.1-8b").alpha(2, True) == pytest.approx(bundled_alpha)
    # a user profile is rewritten where it is, under its own name
    again = _parse([*base, "--profile", "h100-llama-3.1-8b-calibrated", "--write"])
    assert run_calibrate_alpha(again, _quiet()) == 0
    assert sorted(p.name for p in user_dir.iterdir()) == ["h100-llama-3.1-8b-calibrated.json"]
    assert json.loads(saved.read_text())["provenance"]["calibrated_from"] == "h100-llama-3.1-8b"
    # --name saves a copy under another name
    named = _parse([*base, "--profile", "h100-llama-3.1-8b", "--write", "--name", "lab-h100"])
    assert run_calibrate_alpha(named, _quiet()) == 0
    assert load_profile("lab-h100", user_dir=user_dir).name == "lab-h100"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--write", "--name", "h100-llama-3.2-3b"], "bundled profile's name"),
        (["--write", "--name", "a/b"], "not a path"),
        (["--out", str(PROFILES / "h100-llama-3.1-8b.json")], "inside the installed package"),
        (["--out", "."], "is a directory, expected a file name"),
    ],
)
def test_calibrate_alpha_refuses_to_write_where_it_would_be_lost_or_harmful(
    tmp_path: Path, extra: list[str], needle: str
) -> None:
    csv_path = _synthetic_csv(tmp_path)
    before = (PROFILES / "h100-llama-3.1-8b.json").read_bytes()
    args = _parse(
        [
            *("calibrate-alpha", "--csv", str(csv_path), "--profile", "h100-llama-3.1-8b"),
            *("--profiles-dir", str(tmp_path / "p"), *extra),
        ]
    )
    with pytest.raises(ConfigError, match=needle):
        run_calibrate_alpha(args, _quiet())
    assert (PROFILES / "h100-llama-3.1-8b.json").read_bytes() == before
    assert not (tmp_path / "p").exists()
