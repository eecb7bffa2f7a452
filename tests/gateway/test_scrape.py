"""Reading engine load from Prometheus text, as vLLM and SGLang write it."""

from __future__ import annotations

from l4.gateway.scrape import EngineLoad, parse_load

VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:num_requests_waiting{engine="1",model_name="m"} 0.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 99.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="1000"} 1.0
vllm:cache_config_info{block_size="16",engine="1",num_gpu_blocks="1000"} 1.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="m"} 7.0
"""


def test_vllm_families_are_summed_over_engines() -> None:
    load = parse_load(VLLM)
    assert load == EngineLoad(
        recognized=True,
        num_running=5,
        num_waiting=4,  # the longer `_by_reason` family is not the waiting gauge
        kv_usage=0.375,  # the mean over engines
        num_kv_blocks=2000,
        block_size_tokens=16,
    )
    assert load.kv_capacity_tokens == 32000


def test_the_old_cache_usage_name_still_counts() -> None:
    text = 'vllm:gpu_cache_usage_perc{model_name="m"} 0.8\nvllm:num_requests_running 1\n'
    load = parse_load(text)
    assert load.recognized and load.kv_usage == 0.8 and load.num_running == 1
    assert load.kv_capacity_tokens is None


def test_sglang_names() -> None:
    text = "sglang:num_running_reqs 7\nsglang:num_queue_reqs 2\nsglang:token_usage 0.1\n"
    text += "sglang:max_total_num_tokens 50000\n"
    load = parse_load(text)
    assert (load.num_running, load.num_waiting, load.kv_usage) == (7, 2, 0.1)
    assert load.kv_capacity_tokens == 50000


def test_garbage_is_skipped_never_raised() -> None:
    assert parse_load("") == EngineLoad()
    assert parse_load("vllm:num_requests_running{engine=\n{}} nope\nhello world") == EngineLoad()
    bad_info = 'vllm:cache_config_info{block_size="x"} 1\nvllm:num_requests_running 2\n'
    assert parse_load(bad_info).num_kv_blocks is None
