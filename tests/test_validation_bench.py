"""The command docs/validation.md gives to reproduce its figures runs (smoke size)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "validate_single_instance.py"


def test_validate_single_instance_runs_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "validation.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    names = {c["name"] for c in report["comparisons"]}
    # The public runs at rate inf arrive at one instant (no arrival rate): they must run.
    assert {"lambda_burst_10", "lambda_burst_160", "vllm_ci_latency_b8"} <= names
    for c in report["comparisons"]:
        assert c["sim"]["requests"] > 0 and c["sim"]["e2e_mean_s"] > 0
        assert all(r is None or r > 0 for r in c["ratio"].values())
    assert set(report["sweeps"]) == {"h100-llama-3.1-8b", "h100-llama-3.2-3b"}
    saturated = report["saturated"]
    assert saturated["requests"] == 300
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        assert saturated["measured"][key]["mean"] > 0
        assert set(saturated["mean_error"]["replay"]) == {"ttft_s", "tpot_s", "e2e_s"}
    assert "wrote" in done.stdout


def test_cacheable_prefixes_count_whole_blocks_seen_before() -> None:
    import importlib
    import sys

    bench = str(SCRIPT.parent)
    if bench not in sys.path:
        sys.path.insert(0, bench)
    run = importlib.import_module("_saturated_run")
    a = list(range(40))  # 2 whole blocks of 16 (+ 8 tokens)
    b = [*range(35), 99]  # shares a's first 35 tokens: 2 whole blocks
    c = list(range(16)) + [7] * 17  # shares one block
    d = list(range(32))  # all of it seen, but the last token is always computed: 1 block
    assert run.cacheable_prefixes([a, b, c, d, [5] * 20]) == [0, 32, 16, 16, 0]
