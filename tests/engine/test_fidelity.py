"""Fidelity: the engine's step loop on a trace gives the simulator's latencies, in virtual time.

The engine's real-time loop is driven by a virtual clock (time jumps to the earliest pending
wake-up once every task waits, as Trio's ``MockClock`` with autojump): arrivals are submitted at
their trace times and every request's delivered first and last token times must equal the
simulator's, request by request. Nothing here depends on how busy the machine is; how closely the
real-time engine keeps to this timeline over a socket is measured by
``benchmarks/engine_fidelity.py`` (docs/benchmarks/engine_fidelity.md), not asserted in a test.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

import pytest

from l4.core.migration import MigrationConfig
from l4.costmodel.profile import load_profile
from l4.costmodel.step import StepCostModel
from l4.engine.core import EngineCore, Handle
from l4.engine.metrics import EngineMetrics
from l4.instance import Instance, InstanceConfig
from l4.metrics import SloConfig
from l4.request import RequestSpec
from l4.sim.runner import SimConfig, run_policy
from l4.workload import WorkloadSpec, build_workload

PROFILE = load_profile("rtxpro6000-llama-3.1-8b")
ICFG = InstanceConfig.from_profile(PROFILE)


class VirtualClock:
    """Shared virtual time for several sleepers; ``advance`` wakes them in time order."""

    def __init__(self) -> None:
        self.t = 0.0
        self._wakes: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.t

    async def sleep(self, delay_s: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._wakes, (self.t + max(delay_s, 0.0), next(self._order), future))
        await future

    async def run_until(self, done: Callable[[], bool]) -> None:
        while True:
            for _ in range(50):  # let every runnable task go on until it waits
                await asyncio.sleep(0)
            if done():
                return
            assert self._wakes, "every task waits on something other than the clock"
            t, _, future = heapq.heappop(self._wakes)
            self.t = max(self.t, t)
            future.set_result(None)


def _engine_run(requests: tuple[RequestSpec, ...], time_scale: float) -> dict[int, Handle]:
    clock = VirtualClock()
    metrics = EngineMetrics("m")
    core = EngineCore(
        Instance(0, ICFG, StepCostModel(PROFILE)),
        time_scale=time_scale,
        clock=clock,
        sleep=clock.sleep,
        metrics=metrics,
    )
    handles: dict[int, Handle] = {}

    async def arrive(spec: RequestSpec) -> None:
        await clock.sleep(spec.arrival_s / time_scale)
        handles[spec.request_id] = core.submit(
            prompt_tokens=spec.input_tokens, output_tokens=spec.output_tokens
        )

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(core.run())
            for spec in requests:
                tg.create_task(arrive(spec))
            try:
                await clock.run_until(
                    lambda: len(handles) == len(requests) and all(h.done for h in handles.values())
                )
            finally:
                core.stop()

    asyncio.run(main())
    assert core.num_resyncs == 0  # virtual time: the loop is never late
    return handles


@pytest.mark.parametrize("time_scale", [1.0, 20.0])
def test_engine_step_loop_equals_the_simulator_request_by_request(time_scale: float) -> None:
    workload = build_workload(
        WorkloadSpec(
            trace="azure-conv",
            max_context_tokens=PROFILE.model.max_context_tokens,
            num_requests=40,
            rate_scale=4.0,
        )
    )
    sim_cfg = SimConfig(profile=PROFILE, instance_config=ICFG, num_instances=1,
                        migration=MigrationConfig(), slo=SloConfig(), seed=0)  # fmt: skip
    sim = run_policy(sim_cfg, workload, "round_robin").outcome.records
    handles = _engine_run(workload.requests, time_scale)
    assert len(sim) == len(handles) == 40
    for rec in sim:
        h = handles[rec.request_id]
        assert h.finished and h.produced == rec.output_tokens == rec.generated_tokens
        assert rec.first_token_s is not None and rec.finish_s is not None
        assert h.arrival_s == pytest.approx(rec.arrival_s, abs=1e-9)
        assert h.first_seen_s == pytest.approx(rec.first_token_s, rel=1e-9, abs=1e-9)
        assert h.last_seen_s == pytest.approx(rec.finish_s, rel=1e-9, abs=1e-9)
