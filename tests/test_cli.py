"""The command line: reports are deterministic, bad input gives one clear line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _user_trace(tmp_path: Path) -> Path:
    trace = tmp_path / "mine.jsonl"
    trace.write_text(
        "".join(
            json.dumps({"arrival_s": t, "input_tokens": 100, "output_tokens": 10}) + "\n"
            for t in (0, 10, 20)
        )
    )
    return trace


def _simulate(tmp_path: Path, *args: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    report, requests = tmp_path / "r.json", tmp_path / "q.jsonl"
    argv = ["simulate", "--policies", "round_robin", "--instances", "2", *args]
    assert main([*argv, "--json", str(report), "--requests-out", str(requests)]) == 0
    rows = [json.loads(line) for line in requests.read_text().splitlines()]
    return json.loads(report.read_text()), rows


def test_a_user_trace_is_replayed_at_its_recorded_times(tmp_path: Path) -> None:
    report, rows = _simulate(tmp_path, "--trace", str(_user_trace(tmp_path)))
    assert [r["arrival_s"] for r in rows] == [0.0, 10.0, 20.0]
    config = report["config"]
    assert (config["rate"], config["rate_scale"]) == (0.15, 1.0)
    assert config["rate_source"] == "trace timestamps x1 (recorded times)"
    report, rows = _simulate(tmp_path, "--trace", str(_user_trace(tmp_path)), "--rate-scale", "2")
    assert [r["arrival_s"] for r in rows] == [0.0, 5.0, 10.0]
    assert report["config"]["rate_source"] == "trace timestamps x2 (--rate-scale)"


def test_the_bundled_default_keeps_its_demo_rate(tmp_path: Path) -> None:
    report, _rows = _simulate(tmp_path, "--trace", "azure-conv", "--num-requests", "50")
    assert report["config"]["rate_scale"] == 4.0
    assert report["config"]["rate_source"].startswith("trace timestamps x4 (default for bundled")


def test_the_table_states_the_rate_and_its_source(tmp_path: Path) -> None:
    proc = run_cli("simulate", "--trace", str(_user_trace(tmp_path)), "--policies", "random")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "rate=0.15 req/s = trace timestamps x1 (recorded times)" in text
    assert "goodput counts requests that met TTFT <= 5x unloaded and TPOT <= 5x unloaded" in text
    assert "CV: coefficient of variation" in text
    assert "overloaded" not in text


def test_plan_and_simulate_agree_on_the_rate(tmp_path: Path) -> None:
    for trace in (str(_user_trace(tmp_path)), "mooncake"):
        sim, _rows = _simulate(tmp_path, "--trace", trace, "--duration", "60")
        plan = tmp_path / "plan.json"
        argv = ["plan", "--trace", trace, "--duration", "60", "--instances", "2"]
        assert main([*argv, "--json", str(plan)]) == 0
        planned = json.loads(plan.read_text())["config"]
        for key in ("rate", "rate_scale", "rate_source"):
            assert planned[key] == sim["config"][key], (trace, key)


def test_an_overloaded_run_says_so() -> None:
    proc = run_cli(
        "simulate", *SMALL, "--instances", "1", "--rate-scale", "40", "--policies", "round_robin"
    )
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "warning: overloaded at this rate" in text
    assert "requests mostly wait in queues" in text


@pytest.mark.parametrize(
    ("command", "option", "make", "needle"),
    [
        ("simulate", "--out", "file", "is a file, expected a directory"),
        ("simulate", "--json", "under-file", "is a file, not a directory"),
        ("simulate", "--json", "dir", "is a directory, expected a file name"),
        ("simulate", "--requests-out", "under-file", "is a file, not a directory"),
        ("capacity", "--out", "file", "is a file, expected a directory"),
        ("capacity", "--json", "under-file", "is a file, not a directory"),
        ("plan", "--json", "under-file", "is a file, not a directory"),
    ],
)
def test_unwritable_outputs_fail_before_the_run(
    tmp_path: Path, command: str, option: str, make: str, needle: str
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    path = {"file": a_file, "under-file": a_file / "x.json", "dir": tmp_path}[make]
    # A whole hour of the bundled trace: were it simulated first, this would take minutes.
    args = [] if command == "plan" else ["--duration", "3600", "--policies", "round_robin"]
    proc = run_cli(command, *args, option, str(path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"l4: error: {option} ") and needle in lines[0]
    assert "simulated" not in proc.stderr and proc.stdout == ""
    assert a_file.read_text() == "keep me"


def test_only_one_output_can_be_standard_output() -> None:
    proc = run_cli("simulate", *SMALL[2:], "--json", "-", "--requests-out", "-")
    assert proc.returncode == 2
    assert "only one of --json and --requests-out" in proc.stderr


@pytest.mark.parametrize("command", ["simulate", "capacity", "plan"])
def test_json_dash_writes_the_report_to_standard_output(command: str) -> None:
    extra = {
        "simulate": ["--policies", "round_robin"],
        "capacity": ["--policies", "round_robin", "--iterations", "1"],
        "plan": [],
    }[command]
    small = SMALL if command != "plan" else ["--trace", "azure-conv", "--instances", "2"]
    proc = run_cli(command, *small, *extra, "--json", "-")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # nothing but the JSON on standard output
    assert report["config"]["rate_source"]
    title = {"simulate": "L4 simulation", "capacity": "L4 capacity", "plan": "L4 stage plan"}
    assert title[command] in proc.stderr  # the table went to standard error


def test_help_names_the_files_out_writes(tmp_path: Path) -> None:
    out = tmp_path / "cap"
    args = ["capacity", *SMALL, "--policies", "round_robin", "--iterations", "1"]
    assert main([*args, "--out", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["capacity.json", "capacity_sweep.png"]
    for command, files in (
        ("capacity", written),
        ("simulate", ["report.json", "requests.jsonl", "latency_cdf.png"]),
    ):
        help_text = " ".join(run_cli(command, "--help").stdout.split())
        for name in files:
            assert name in help_text, (command, name)


def test_a_user_profile_is_found_by_name(tmp_path: Path) -> None:
    from importlib import resources

    doc = json.loads(
        resources.files("l4.costmodel.profiles").joinpath("h100-llama-3.2-3b.json").read_text()
    )
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "lab-gpu.json").write_text(json.dumps({**doc, "name": "lab-gpu"}))
    env = {**os.environ, "L4_PROFILES_DIR": str(profiles)}
    argv = [sys.executable, "-m", "l4", "simulate", "--trace", "azure-conv", "--num-requests", "20"]
    proc = subprocess.run(
        [*argv, "--profile", "lab-gpu", "--json", "-"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["config"]["profile"] == "lab-gpu"
    proc = run_cli("simulate", "--profile", "lab-gpu", "--profiles-dir", str(tmp_path / "none"))
    assert proc.returncode == 2 and "unknown profile 'lab-gpu'" in proc.stderr


def test_one_version_string_from_the_package_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import importlib.metadata

    import l4

    installed = importlib.metadata.version("l4-serve")
    assert run_cli("--version").stdout == f"l4 {installed}\n"
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.8.7")
    try:
        assert importlib.reload(l4).__version__ == "9.8.7"  # read from the metadata, not a copy
    finally:
        monkeypatch.undo()
        importlib.reload(l4)
    assert l4.__version__ == installed
