"""`l4 plan` (parser and runner, before it is wired into the main CLI)."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from l4.errors import ConfigError
from l4.planning_cli import add_plan_parser, compute_plan, run_plan


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="l4")
    add_plan_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["plan", *argv])


def test_plan_json_shape(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    args = _parse(
        [
            *("--trace", "mooncake", "--instances", "4", "--duration", "300"),
            *("--rate-scale", "1", "--json", str(out)),
        ]
    )
    buf = io.StringIO()
    assert run_plan(args, Console(file=buf, width=160)) == 0
    doc = json.loads(out.read_text())
    assert set(doc) == {"config", "planning_time_s", "cost", "stages"}
    config = doc["config"]
    assert (config["trace"], config["histogram"], config["instances"]) == ("mooncake", None, 4)
    assert (config["rate_scale"], config["rate_source"]) == (
        1.0,
        "trace timestamps x1 (--rate-scale)",
    )
    assert doc["planning_time_s"] > 0 and doc["cost"] > 0
    stages = doc["stages"]
    assert all(
        set(s) == {"lo_tokens", "hi_tokens", "instances", "ttft_s", "tpot_s"} for s in stages
    )
    assert stages[0]["lo_tokens"] == 0 and stages[-1]["hi_tokens"] is None
    assert sum(s["instances"] for s in stages) == 4
    text = buf.getvalue()
    assert "L4 stage plan" in text and "planned in" in text
    assert f"planned for mooncake at {config['rate']:.3g} req/s = trace timestamps x1" in text


def test_plan_from_histogram(tmp_path: Path) -> None:
    hist = tmp_path / "h.json"
    hist.write_text(
        json.dumps(
            {
                "format": "l4-length-histogram",
                "version": 1,
                "rate_rps": 5.0,
                "bins": [
                    {"input_tokens": 500, "output_tokens": 200, "count": 10},
                    {"input_tokens": 60000, "output_tokens": 300, "count": 1},
                ],
            }
        )
    )
    out = tmp_path / "plan.json"
    args = _parse(["--histogram", str(hist), "--instances", "3", "--json", str(out)])
    assert run_plan(args, Console(file=io.StringIO())) == 0
    doc = json.loads(out.read_text())
    assert sum(s["instances"] for s in doc["stages"]) == 3
    assert doc["config"]["rate"] == pytest.approx(5.0)
    assert doc["config"]["rate_source"] == "histogram rate_rps x1 (default)"
    args = _parse(["--histogram", str(hist), "--instances", "3", "--rate-scale", "2"])
    _plan, config = compute_plan(args)
    assert config["rate"] == pytest.approx(10.0)


def test_plan_errors_are_l4_errors() -> None:
    with pytest.raises(ConfigError):
        run_plan(_parse(["--instances", "0"]), Console(file=io.StringIO()))
    with pytest.raises(ConfigError):
        run_plan(_parse(["--profile", "nope"]), Console(file=io.StringIO()))


def test_plan_defaults_follow_simulate_for_bundled_traces() -> None:
    _plan, config = compute_plan(_parse(["--trace", "azure-conv", "--duration", "60"]))
    assert config["rate_scale"] == 4.0
    assert str(config["rate_source"]).startswith("trace timestamps x4 (default for bundled")
