"""`l4 profile-attention --suite hopper`: the one-command measurement, run on a CPU (--quick)."""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

torch = pytest.importorskip("torch")  # the profiler's extra; CI may run without it

from l4.costmodel import load_profile  # noqa: E402
from l4.costmodel.alpha_fit import read_skew_csv  # noqa: E402
from l4.profiler import provenance, suite  # noqa: E402
from l4.profiler import run as profile_run  # noqa: E402
from l4.profiler.cli import (  # noqa: E402
    build_parser,
    run_calibrate_alpha,
)
from l4.profiler.cli import run_profile as cli_run_profile  # noqa: E402
from l4.profiler.grid import NO_PREFILL, GridSpec  # noqa: E402
from l4.profiler.uniform import UNIFORM_COLUMNS, UniformShape  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
QUICK = ["profile-attention", "--suite", "hopper", "--quick", "--device", "cpu"]


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def run_profile(argv: list[str]) -> int:
    return cli_run_profile(_parse(argv), Console(file=io.StringIO(), width=160))


def _summary(out: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((out / "suite.json").read_text())
    return doc


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("suite")
    argv = [*QUICK, "--profiles", "h100-llama-3.1-8b", "--out", str(out / "run")]
    assert run_profile([*argv, "--archive", str(out / "ret" / "hopper.tar.gz")]) == 0
    return out


def test_quick_suite_writes_every_file_of_a_part(quick_suite: Path) -> None:
    run = quick_suite / "run"
    stem = "llama-3.1-8b_sdpa"
    skew = read_skew_csv(run / f"{stem}_skew.csv")
    points = suite.suite_points(_settings(), load_profile("h100-llama-3.1-8b"))
    assert len(skew) == len(points) > 0
    assert {r["regime"] for r in skew} == {"pure", "mixed"}
    with (run / f"{stem}_uniform.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == UNIFORM_COLUMNS
        rows = list(reader)
    assert [(int(r["n"]), int(r["context"]), int(r["chunk"]), int(r["prior"])) for r in rows] == [
        (u.num_decodes, u.context_tokens, u.chunk_tokens, u.prior_tokens)
        for u in suite.QUICK_SUITE.uniform
    ]
    meta = json.loads((run / f"{stem}_skew.json").read_text())
    m = meta["measurement"]
    assert m["kernel"] == "sdpa" and m["quick"] is True and m["device_type"] == "cpu"
    assert m["kernel_check_max_abs_error"] < 1e-4
    assert meta["run"]["suite"] == "hopper-quick"
    assert meta["uniform"]["csv"] == f"{stem}_uniform.csv"
    assert set(meta["uniform"]["fit"]) <= {"decode", "prefill"}
    summary = _summary(run)
    assert [(p["kernel"], p["status"]) for p in summary["parts"]] == [("sdpa", "done")]
    assert summary["environment"]["torch"] == torch.__version__


def test_the_archive_holds_the_folder_within_the_device_tool_limits(quick_suite: Path) -> None:
    ret = quick_suite / "ret"
    assert [p.name for p in ret.iterdir()] == ["hopper.tar.gz"]
    with tarfile.open(ret / "hopper.tar.gz") as tar:
        names = sorted(tar.getnames())
    assert names == sorted(f"run/{p.name}" for p in (quick_suite / "run").iterdir())


def test_a_rerun_keeps_finished_parts_and_other_settings_measure_again(
    quick_suite: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(quick_suite / "run", run)
    csv_path = run / "llama-3.1-8b_sdpa_skew.csv"
    before = csv_path.read_bytes()
    argv = [*QUICK, "--profiles", "h100-llama-3.1-8b", "--out", str(run)]
    assert run_profile(argv) == 0
    assert _summary(run)["parts"][0]["status"] == "done-earlier"
    assert csv_path.read_bytes() == before
    assert run_profile([*argv, "--seed", "1"]) == 0
    assert _summary(run)["parts"][0]["status"] == "done"


def test_a_failing_part_is_recorded_and_the_others_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = profile_run.Bench

    def bench(head: Any, cfg: Any, layouts: Any) -> Any:
        if head.num_q_heads == 24:  # Llama-3.2-3B
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(head, cfg, layouts)

    monkeypatch.setattr(profile_run, "Bench", bench)
    argv = [*QUICK, "--profiles", "h100-llama-3.2-3b,h100-llama-3.1-8b", "--out", str(tmp_path)]
    assert run_profile(argv) == 1
    parts = {p["model"]: p for p in _summary(tmp_path)["parts"]}
    assert parts["meta-llama/Llama-3.2-3B"]["status"] == "failed"
    assert "illegal memory access" in parts["meta-llama/Llama-3.2-3B"]["error"]
    assert parts["meta-llama/Llama-3.1-8B"]["status"] == "done"
    assert (tmp_path / "llama-3.1-8b_sdpa_skew.json").exists()
    assert not (tmp_path / "llama-3.2-3b_sdpa_skew.json").exists()


def test_a_deadline_stops_the_run_and_a_rerun_finishes_it(tmp_path: Path) -> None:
    argv = [*QUICK, "--profiles", "h100-llama-3.2-3b,h100-llama-3.1-8b", "--out", str(tmp_path)]
    assert run_profile([*argv, "--deadline-s", "0"]) == 1
    assert [p["status"] for p in _summary(tmp_path)["parts"]] == ["deadline", "not-started"]
    assert not list(tmp_path.glob("*_skew.json"))
    assert run_profile(argv) == 0
    assert [p["status"] for p in _summary(tmp_path)["parts"]] == ["done", "done"]


def _settings(**over: Any) -> suite.RunSettings:
    base: dict[str, Any] = {
        "suite": suite.QUICK_SUITE,
        "kernels": ("sdpa",),
        "profiles": (load_profile("h100-llama-3.1-8b"),),
        "device": torch.device("cpu"),
        "dtype": torch.float32,
        "page_size": None,
        "flash_layout": "auto",
        "flush_bytes": 0,
        "seed": 0,
        "quick": True,
        "out": Path("unused"),
    }
    return suite.RunSettings(**(base | over))


def test_the_estimate_adds_bytes_flops_overheads_and_setup() -> None:
    one_point = suite.SuiteSpec(
        name="t",
        grids=(
            GridSpec(
                num_decodes=(2,),
                short_tokens=(1000,),
                long_tokens=(3000,),
                num_long=(1,),
                prefills=(NO_PREFILL,),
            ),
        ),
        uniform=(UniformShape(chunk_tokens=100, prior_tokens=0),),
        warmup=1,
        repeats=2,
    )
    a = suite.CostAssumptions(
        kv_bytes_per_s=1e12,
        flops_per_s=1e14,
        run_overhead_s=1e-4,
        point_setup_s=0.01,
        part_setup_s=5.0,
        run_setup_s=10.0,
    )
    settings = _settings(suite=one_point, kernels=("flash",), quick=False)
    # by hand: the point's three batches hold 4000 + 2 x 2000 + 2 x 3000 KV tokens of 4096 B
    # (8 KV heads x 128 x bf16 x K and V): 57.344 us at 1 TB/s, plus 3 x 100 us overhead; the
    # chunk reads 100 tokens (0.4096 us) and does 4 x 100 x 50.5 x 32 x 128 FLOPs (0.827392 us
    # at 100 TFLOP/s), plus 100 us; three runs each; setup 10 + 5 + 0.01 x 2
    per_repeat_us = 57.344 + 300 + 0.4096 + 0.827392 + 100
    flash_s = suite.estimate_s(settings, a)
    assert flash_s == pytest.approx(15.02 + 3 * per_repeat_us * 1e-6)
    # the Triton kernel's prefill is costed at its own rate: 10 TFLOP/s makes it 8.27392 us
    slow = replace(a, triton_flops_per_s=1e13)
    triton_s = suite.estimate_s(replace(settings, kernels=("triton",)), slow)
    assert triton_s - flash_s == pytest.approx(3 * (8.27392 - 0.827392) * 1e-6)


def test_kernel_names_come_from_torchs_profiler() -> None:
    names = provenance.kernel_names(lambda: torch.ones(4) @ torch.ones(4), torch.device("cpu"))
    assert "aten::matmul" in names


def test_the_hopper_suite_covers_issue_14_within_8_minutes() -> None:
    h100 = load_profile("h100-llama-3.1-8b")
    hopper = _settings(
        suite=suite.HOPPER_SUITE,
        kernels=("flash", "triton"),
        profiles=(load_profile("h100-llama-3.2-3b"), h100),
        quick=False,
    )
    points = suite.suite_points(hopper, h100)
    assert {p.num_decodes for p in points} == {2, 4, 8, 16, 32, 64, 128, 256}
    assert {(p.prefill_chunk_tokens, p.prefill_prior_tokens) for p in points} == {
        (0, 0),
        (128, 0),
        (2048, 8192),
    }
    # one 64K (and one 128K) request among short ones, at every n
    for long in (65536, 131072):
        ns = {p.num_decodes for p in points if p.long_tokens == long and p.num_long == 1}
        assert ns == {2, 4, 8, 16, 32, 64, 128, 256}
    # the public table's skew-4 shapes at its shares
    assert {p.num_long for p in points if (p.num_decodes, p.short_tokens) == (64, 256)} >= {
        1,
        8,
        16,
        32,
        48,
    }
    assert max(p.long_tokens for p in points) == 131072
    uniform = suite.HOPPER_SUITE.uniform
    assert {u.num_decodes for u in uniform if u.kind == "decode"} == {1, 4, 16, 64, 256}
    assert max(u.prior_tokens + u.chunk_tokens for u in uniform) == 131072
    assert suite.estimate_s(hopper) < 8 * 60


def test_the_profiler_module_runs_without_the_engine_packages() -> None:
    # the GPU machine has torch, numpy and rich but not starlette or uvicorn
    code = (
        "import sys, runpy; sys.modules['starlette'] = sys.modules['uvicorn'] = None; "
        "sys.argv = ['l4.profiler', 'profile-attention', '--suite', 'hopper', '--estimate']; "
        "runpy.run_module('l4.profiler', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "estimated GPU time" in done.stdout


def test_the_device_script_returns_at_most_three_files(tmp_path: Path) -> None:
    ret = tmp_path / "ret"
    env = {
        **os.environ,
        "OUT": str(ret),
        "L4_PROFILE_DIR": str(tmp_path / "work"),
        "PYTHON": sys.executable,
    }
    args = ["--quick", "--device", "cpu", "--profiles", "h100-llama-3.1-8b"]
    done = subprocess.run(
        ["bash", str(REPO / "tools" / "hopper_profile.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in ret.iterdir()) == [
        "hopper-profile.tar.gz",
        "log.txt",
        "suite.json",
    ]
    log = (ret / "log.txt").read_text()
    assert "[1/1] llama-3.1-8b sdpa: done" in log and "exit 0" in log


def test_calibrate_alpha_reads_a_suite_measurement(quick_suite: Path, tmp_path: Path) -> None:
    target = tmp_path / "h100-llama-3.1-8b.json"
    shutil.copy(REPO / "src/l4/costmodel/profiles/h100-llama-3.1-8b.json", target)
    csv_path = quick_suite / "run" / "llama-3.1-8b_sdpa_skew.csv"
    argv = ["calibrate-alpha", "--csv", str(csv_path), "--profile", str(target), "--force"]
    args = _parse([*argv, "--write"])
    assert run_calibrate_alpha(args, Console(file=io.StringIO())) == 0
    prov = json.loads(target.read_text())["provenance"]
    assert "sdpa kernel" in prov["alpha"] and f"torch {torch.__version__}" in prov["alpha"]
    assert prov["alpha_source"]["measurement"]["kernel_implementation"].startswith("torch.nn")


def _calibrate_tool() -> Any:
    tools = str(REPO / "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)
    return importlib.import_module("calibrate_profiles")


def test_a_committed_hopper_measurement_feeds_the_bundled_profiles(
    quick_suite: Path, tmp_path: Path
) -> None:
    tool = _calibrate_tool()
    assert tool.measured_alpha_source("llama-3.1-8b", tmp_path) is None  # nothing committed
    run = quick_suite / "run"
    with gzip.open(tmp_path / "hopper_llama-3.1-8b_skew.csv.gz", "wb") as fh:
        fh.write((run / "llama-3.1-8b_sdpa_skew.csv").read_bytes())
    with pytest.raises(SystemExit, match="needs its measurement record"):
        tool.measured_alpha_source("llama-3.1-8b", tmp_path)
    meta = json.loads((run / "llama-3.1-8b_sdpa_skew.json").read_text())
    sidecar = tmp_path / "hopper_llama-3.1-8b_skew.json"
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match="not a GPU measurement"):  # a CPU pipeline test
        tool.measured_alpha_source("llama-3.1-8b", tmp_path)
    gpu = {"device": "NVIDIA H200", "device_type": "cuda", "quick": False, "driver": "580.1"}
    meta["measurement"] |= gpu | {"triton": "3.6.0", "cuda": "13.0"}
    sidecar.write_text(json.dumps(meta))
    name, measurement = tool.measured_alpha_source("llama-3.1-8b", tmp_path)
    assert name == "hopper_llama-3.1-8b_skew.csv.gz"
    text = tool.measured_alpha_provenance(name, measurement)
    assert "measured on NVIDIA H200 (driver 580.1; torch" in text
    assert "Triton 3.6.0" in text and name in text
