"""The command line: reports are deterministic, bad input gives one clear line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from l4.cli import main

SMALL = ["--trace", "azure-conv", "--num-requests", "300", "--instances", "2"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "l4", *args], capture_output=True, text=True, timeout=120
    )


def _strip_wall(report: dict[str, object]) -> dict[str, object]:
    results = report["results"]
    assert isinstance(results, dict)
    for summary in results.values():
        summary.pop("sim_wall_s")
    return report


def test_same_seed_same_json(tmp_path: Path) -> None:
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for p in paths:
        assert main(["simulate", *SMALL, "--seed", "3", "--json", str(p)]) == 0
    a, b = (_strip_wall(json.loads(p.read_text())) for p in paths)
    assert a == b
    assert set(a["results"]) == {"round_robin", "least_load", "random"}  # type: ignore[arg-type]


def test_report_has_the_contract_keys(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["simulate", *SMALL, "--policies", "least_load", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    summary = report["results"]["least_load"]
    for key in ("completed", "unfinished", "migrations", "preemptions", "output_tokens_cv"):
        assert key in summary
    for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        assert set(summary[key]) >= {"mean", "p50", "p90", "p99"}
    assert set(summary["throughput"]) == {"requests_per_s", "output_tokens_per_s"}
    assert summary["completed"] == 300
    lines = (out / "requests.jsonl").read_text().splitlines()
    assert len(lines) == 300
    row = json.loads(lines[0])
    assert {"arrival_s", "first_token_s", "finish_s", "instances", "migrations"} <= set(row)
    assert (out / "latency_cdf.png").stat().st_size > 1000


def test_capacity_json_shape(tmp_path: Path) -> None:
    path = tmp_path / "cap.json"
    args = ["capacity", *SMALL, "--policies", "round_robin", "--iterations", "2"]
    assert main([*args, "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    result = report["results"]["round_robin"]
    assert set(result) == {
        "rate_scale",
        "requests_per_s",
        "goodput_requests_per_s",
        "slo_attainment",
        "classes",
    }
    assert result["rate_scale"] is not None and result["rate_scale"] > 0
    assert set(result["classes"]) == {"<2K", "2K-8K", "8K-32K", ">=32K"}
    for c in result["classes"].values():
        assert c["judged"] == (c["requests"] >= 20)
        if c["judged"]:
            assert c["slo_attainment"] >= 0.9
    assert report["config"]["capacity_rule"] == "overall and every length class"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--trace", "/nonexistent/trace.jsonl"], "not found"),
        (["--profile", "tpu-v9-giant"], "unknown profile"),
        (["--policies", "round_robin,magic"], "unknown policy"),
        (["--kv-capacity-tokens", "1000"], "KV cache"),
        (["--alpha", "3"], "--alpha"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    proc = run_cli("simulate", "--num-requests", "5", *args)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert needle in err[0]
    assert "Traceback" not in proc.stderr


def test_malformed_rows_are_reported_with_their_line(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"arrival_s": 0, "input_tokens": 10, "output_tokens": 5}\n{"arrival_s": 1}\n')
    proc = run_cli("simulate", "--trace", str(trace))
    assert proc.returncode == 2
    assert f"{trace}:2" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_negative_rate_is_refused_by_the_parser() -> None:
    proc = run_cli("simulate", "--rate", "-1")
    assert proc.returncode == 2
    assert "must be > 0" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_engine_command_is_wired_and_validates() -> None:
    proc = run_cli("engine", "--profile", "no-such-gpu", "--port", "18000")
    assert proc.returncode == 2
    assert "unknown profile" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
