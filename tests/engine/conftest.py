"""Shared fixtures of the engine tests: a fake clock and engine configs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from l4.costmodel.profile import load_profile
from l4.engine.server import EngineConfig
from l4.instance import InstanceConfig


class FakeClock:
    """Emulated wall clock: only `sleep` moves it, and each sleep yields once to other tasks."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, delay_s: float) -> None:
        self.t += delay_s
        await asyncio.sleep(0)


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def new_clock() -> type[FakeClock]:
    """The FakeClock class, for tests that need more than one clock."""
    return FakeClock


def engine_config(time_scale: float = 1000.0, **overrides: int) -> EngineConfig:
    profile = load_profile("h100-llama-3.2-3b")
    return EngineConfig(
        profile=profile,
        instance_config=InstanceConfig.from_profile(profile, **overrides),
        served_model_name="test-model",
        time_scale=time_scale,
        seed=7,
    )


@pytest.fixture
def config() -> EngineConfig:
    return engine_config()


@pytest.fixture
def make_config() -> Callable[..., EngineConfig]:
    return engine_config
