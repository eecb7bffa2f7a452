"""The effects benchmark switches off exactly the effect each environment names."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

from l4.costmodel import load_profile
from l4.instance import InstanceConfig


def _import(name: str) -> ModuleType:
    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module(name)


effects = _import("effects")


def _job(environment: str) -> object:
    return effects.Job(
        trace="azure-conv",
        profile="h100-llama-3.1-8b",
        instances=2,
        rate_scale=2.0,
        duration_s=20.0,
        window=1,
        environment=environment,
        policy="l4",
    )


@pytest.mark.parametrize("environment", effects.ENVIRONMENTS)
def test_each_environment_changes_only_its_own_setting(environment: str) -> None:
    cfg = effects._config(_job(environment))
    base = load_profile("h100-llama-3.1-8b")
    blocks = InstanceConfig.from_profile(base).num_kv_blocks
    everything = environment == "all three off"
    favourable = environment == effects.FAVOURABLE  # the paper's alpha, 8x KV, free migration
    alpha_off = everything or environment == "alpha=0"
    paper = favourable or environment == effects.PAPER
    kv_off = everything or favourable or environment == "KV x8"
    migration_off = everything or favourable or environment == "free migration"
    alpha = cfg.profile.alpha
    assert max(*alpha.decode_only, *alpha.with_prefill) > 0.0 or alpha_off
    if alpha_off:
        assert set(alpha.decode_only) | set(alpha.with_prefill) == {0.0}
    elif paper:
        assert set(alpha.decode_only) | set(alpha.with_prefill) == {0.0736}
    else:
        assert alpha == base.alpha
    assert cfg.instance_config.num_kv_blocks == (8 * blocks if kv_off else blocks)
    assert (cfg.migration.bandwidth_bytes_per_s > 1e15) is migration_off
    assert (cfg.migration.downtime_base_s == 0.0) is migration_off


def test_a_run_reports_every_length_class_it_saw() -> None:
    out = effects.run(_job("calibrated"))
    assert set(out) >= {"wall_s", "all"}
    overall = out["all"]
    assert isinstance(overall, dict) and overall["e2e_mean_s"] > 0
    assert 0.0 <= overall["slo_attainment"] <= 1.0
