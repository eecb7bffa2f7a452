"""The step loop against a fake clock: exact pacing, batch-composition effects, aborts."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from l4.costmodel.profile import load_profile
from l4.costmodel.step import StepCostModel
from l4.engine.core import EngineCore, Handle
from l4.engine.faults import SlowedStepCost
from l4.engine.metrics import EngineMetrics
from l4.instance import Instance, InstanceConfig, Sequence
from l4.request import RequestSpec

PROFILE = load_profile("h100-llama-3.2-3b")
COST = StepCostModel(PROFILE)
CONFIG = InstanceConfig.from_profile(PROFILE)


def make_core(clock: Any, *, time_scale: float = 1.0, **options: Any) -> EngineCore:
    cost = options.pop("cost", COST)
    instance = Instance(0, CONFIG, cost)
    metrics = EngineMetrics("m")
    return EngineCore(
        instance, time_scale=time_scale, clock=clock, sleep=clock.sleep, metrics=metrics, **options
    )


async def token_times(handle: Handle) -> list[float]:
    """Emulated time of every token of `handle`, as the step loop delivered them."""
    times: list[float] = []
    have = 0
    while not handle.done:
        n = await handle.wait_beyond(have)
        times += [handle.last_token_s] * (n - have)
        have = n
    return times


def run_with_core(
    clock: Any,
    body: Callable[[EngineCore], Awaitable[None]],
    *,
    time_scale: float = 1.0,
    **options: Any,
) -> EngineCore:
    core = make_core(clock, time_scale=time_scale, **options)

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(core.run())
            try:
                await body(core)
            finally:
                core.stop()

    asyncio.run(main())
    return core


def reference_times(input_tokens: int, output_tokens: int) -> list[float]:
    """Token times of a lone request, stepping the instance offline as the simulator would."""
    inst = Instance(0, CONFIG, COST)
    inst.admit(Sequence(RequestSpec(request_id=0, arrival_s=0.0, input_tokens=input_tokens,
                                    output_tokens=output_tokens)))  # fmt: skip
    t, out = 0.0, []
    while (plan := inst.plan(t, 1)) is not None:
        t = plan.end_s
        inst.complete(t)
        out.append(t)
    return out


@pytest.mark.parametrize("time_scale", [1.0, 250.0])
def test_tokens_arrive_at_the_cost_models_step_ends(fake_clock: Any, time_scale: float) -> None:
    seen: list[float] = []

    async def body(core: EngineCore) -> None:
        seen.extend(await token_times(core.submit(prompt_tokens=300, output_tokens=40)))

    core = run_with_core(fake_clock, body, time_scale=time_scale)
    expected = reference_times(300, 40)
    assert seen == pytest.approx(expected, rel=1e-9)
    # Wall time is emulated time divided by the time scale.
    assert fake_clock.t == pytest.approx(expected[-1] / time_scale, rel=1e-9)
    assert core.lateness_s == pytest.approx(0.0, abs=1e-9)
    m = core._metrics
    assert m is not None
    itl_sum = m.registry.get_sample_value(
        "vllm:inter_token_latency_seconds_sum", {"model_name": "m", "engine": "0"}
    )
    assert itl_sum == pytest.approx(expected[-1] - expected[0], rel=1e-9)


def mean_itl(times: list[float]) -> float:
    return (times[-1] - times[0]) / (len(times) - 1)


def test_itl_grows_when_a_long_context_request_shares_the_instance(
    fake_clock: Any, new_clock: Any
) -> None:
    alone: list[float] = []
    shared: list[float] = []

    async def lone(core: EngineCore) -> None:
        alone.extend(await token_times(core.submit(prompt_tokens=200, output_tokens=60)))

    async def with_long(core: EngineCore) -> None:
        long = core.submit(prompt_tokens=100_000, output_tokens=400)
        while long.produced == 0:  # the long prompt is prefilled; now it decodes beside us
            await long.wait_beyond(0)
        shared.extend(await token_times(core.submit(prompt_tokens=200, output_tokens=60)))
        core.abort(long)

    run_with_core(fake_clock, lone)
    run_with_core(new_clock(), with_long)
    assert mean_itl(shared) > 1.4 * mean_itl(alone)


def test_abort_removes_the_sequence_and_frees_its_kv(fake_clock: Any) -> None:
    async def body(core: EngineCore) -> None:
        handle = core.submit(prompt_tokens=5000, output_tokens=1000)
        await handle.wait_beyond(3)
        assert core.instance.kv_usage > 0
        core.abort(handle)
        other = core.submit(prompt_tokens=10, output_tokens=2)
        await token_times(other)
        assert core.num_tracked == 0
        assert core.instance.num_running == 0 and core.instance.num_waiting == 0
        assert core.instance.kv_usage == 0

    run_with_core(fake_clock, body)


def test_stop_ends_waiting_requests_as_aborted(fake_clock: Any) -> None:
    handles: list[Handle] = []

    async def body(core: EngineCore) -> None:
        handles.append(core.submit(prompt_tokens=10, output_tokens=10_000))
        await handles[0].wait_beyond(0)

    run_with_core(fake_clock, body)
    assert handles[0].aborted and not handles[0].finished


@pytest.mark.parametrize("time_scale", [1.0, 250.0])
def test_every_step_is_logged_on_time_against_a_fake_clock(
    fake_clock: Any, time_scale: float
) -> None:
    async def body(core: EngineCore) -> None:
        await token_times(core.submit(prompt_tokens=300, output_tokens=40))

    core = run_with_core(fake_clock, body, time_scale=time_scale)
    ends = reference_times(300, 40)
    steps = list(core.step_log)
    assert len(steps) == core.num_steps == len(ends)
    durations = [ends[0]] + [b - a for a, b in itertools.pairwise(ends)]
    assert [s.predicted_s for s in steps] == pytest.approx(
        [d / time_scale for d in durations], rel=1e-9
    )
    assert [s.measured_s for s in steps] == pytest.approx([s.predicted_s for s in steps])
    assert all(s.late_s == pytest.approx(0.0, abs=1e-12) and s.num_seqs == 1 for s in steps)
    assert core.num_resyncs == 0


def test_slowdown_multiplies_every_token_time(fake_clock: Any) -> None:
    seen: list[float] = []

    async def body(core: EngineCore) -> None:
        seen.extend(await token_times(core.submit(prompt_tokens=300, output_tokens=40)))

    run_with_core(fake_clock, body, cost=SlowedStepCost(PROFILE, 2.5))
    assert seen == pytest.approx([2.5 * t for t in reference_times(300, 40)], rel=1e-9)


@pytest.mark.parametrize("limit", [1, 7, 61, 89])
def test_crash_emits_exactly_n_tokens_then_stops(fake_clock: Any, limit: int) -> None:
    handles: list[Handle] = []

    async def body(core: EngineCore) -> None:
        handles.extend(core.submit(prompt_tokens=50 + 10 * i, output_tokens=30) for i in range(3))
        await core.wait_crashed()

    core = run_with_core(fake_clock, body, crash_after_tokens=limit)
    assert core.crashed and core.tokens_emitted == limit
    assert sum(h.produced for h in handles) == limit
    # A request whose every token came out finished; every other one crashed, without finishing.
    for h in handles:
        assert h.finished != h.crashed
        assert h.finished == (h.produced == 30)
    assert any(h.crashed for h in handles)


def sample(core: EngineCore, name: str, **labels: str) -> float:
    m = core._metrics
    assert m is not None
    value = m.registry.get_sample_value(name, {"model_name": "m", "engine": "0", **labels})
    assert value is not None, name
    return value


def test_request_metrics_split_a_request_as_vllm_does(fake_clock: Any) -> None:
    async def body(core: EngineCore) -> None:
        await token_times(core.submit(prompt_tokens=300, output_tokens=40))

    core = run_with_core(fake_clock, body)
    ends = reference_times(300, 40)  # the prompt fits one step: its first token ends step 1
    assert sample(core, "vllm:request_success_total", finished_reason="length") == 1
    for reason in ("stop", "abort", "error", "repetition"):
        assert sample(core, "vllm:request_success_total", finished_reason=reason) == 0
    # Submitted to an idle loop: scheduled at once, first token at the end of the first step.
    assert sample(core, "vllm:request_queue_time_seconds_sum") == 0.0
    assert sample(core, "vllm:request_prefill_time_seconds_sum") == pytest.approx(ends[0])
    assert sample(core, "vllm:request_decode_time_seconds_sum") == pytest.approx(ends[-1] - ends[0])
    assert sample(core, "vllm:request_inference_time_seconds_sum") == pytest.approx(ends[-1])
    assert sample(core, "vllm:e2e_request_latency_seconds_sum") == pytest.approx(ends[-1])
    assert sample(core, "vllm:request_time_per_output_token_seconds_sum") == pytest.approx(
        (ends[-1] - ends[0]) / 39
    )
    assert sample(core, "vllm:request_prompt_tokens_sum") == 300
    assert sample(core, "vllm:request_generation_tokens_sum") == 40
    # One observation per step: the whole prompt with its first token, then one token a step.
    assert sample(core, "vllm:iteration_tokens_total_count") == len(ends) == 40
    assert sample(core, "vllm:iteration_tokens_total_sum") == 300 + 40
    assert sample(core, "vllm:iteration_tokens_total_bucket", le="1.0") == 39
    assert sample(core, "vllm:num_preemptions_total") == 0


def test_a_stop_string_finishes_and_a_client_abort_abandons(fake_clock: Any) -> None:
    async def body(core: EngineCore) -> None:
        eos = core.submit(prompt_tokens=20, output_tokens=5, finish_reason="stop")
        await token_times(eos)
        cut = core.submit(prompt_tokens=20, output_tokens=500)
        await cut.wait_beyond(3)
        core.abort(cut, finish_reason="stop")
        left = core.submit(prompt_tokens=20, output_tokens=500)
        await left.wait_beyond(3)
        core.abort(left)

    core = run_with_core(fake_clock, body)
    assert sample(core, "vllm:request_success_total", finished_reason="stop") == 2
    assert sample(core, "vllm:request_success_total", finished_reason="abort") == 1
    assert sample(core, "vllm:request_success_total", finished_reason="length") == 0
    # The abandoned request is in no per-request histogram; the other two are.
    assert sample(core, "vllm:e2e_request_latency_seconds_count") == 2
    assert sample(core, "vllm:request_generation_tokens_sum") == 5 + 4


def test_preemptions_are_counted(fake_clock: Any) -> None:
    # 8 blocks of 16 tokens; each request peaks at 16 + 48 = 64 tokens (4 blocks): two fit, the
    # third is preempted (recomputed) whenever the others' decodes need its blocks.
    small = InstanceConfig(max_num_seqs=8, max_num_batched_tokens=2048, num_kv_blocks=8)
    instance = Instance(0, small, COST)
    core = EngineCore(
        instance, time_scale=1.0, clock=fake_clock, sleep=fake_clock.sleep,
        metrics=EngineMetrics("m"),
    )  # fmt: skip

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(core.run())
            handles = [core.submit(prompt_tokens=16, output_tokens=48) for _ in range(3)]
            for h in handles:
                await token_times(h)
            core.stop()
        assert all(h.finished and h.produced == 48 for h in handles)

    asyncio.run(main())
    assert instance.num_preemptions > 0
    assert sample(core, "vllm:num_preemptions_total") == instance.num_preemptions
