"""The migration parameters shared by the simulator and the planner: defaults and validation."""

from __future__ import annotations

import pytest

from l4.core.migration import MigrationConfig, MigrationMechanism
from l4.errors import ValidationError


def test_defaults_are_kv_transfer_at_25_gb_per_s() -> None:
    c = MigrationConfig()
    assert c.mechanism is MigrationMechanism.KV_TRANSFER
    assert (c.bandwidth_bytes_per_s, c.downtime_base_s, c.replay_overhead_s) == (25e9, 0.005, 0.002)
    assert c.headroom_tokens == 256
    assert MigrationMechanism("replay") is MigrationMechanism.REPLAY
    assert MigrationMechanism.KV_TRANSFER.value == "kv-transfer"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"bandwidth_bytes_per_s": 0.0}, "migration bandwidth must be > 0"),
        ({"downtime_base_s": -1e-9}, "migration overheads must be >= 0"),
        ({"replay_overhead_s": -1e-9}, "migration overheads must be >= 0"),
        ({"headroom_tokens": -1}, "migration overheads must be >= 0"),
    ],
)
def test_bad_values_are_refused(bad: dict[str, float], message: str) -> None:
    with pytest.raises(ValidationError, match=f"^{message}$"):
        MigrationConfig(**bad)  # type: ignore[arg-type]


def test_zero_overheads_are_allowed() -> None:
    MigrationConfig(downtime_base_s=0.0, replay_overhead_s=0.0, headroom_tokens=0)
