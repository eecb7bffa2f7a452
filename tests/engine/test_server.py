"""The HTTP API in-process (httpx ASGITransport, the app's lifespan running the step loop)."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import json
import logging
import re
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from l4.engine.parsing import BodyParser
from l4.engine.server import EngineConfig, build_app
from l4.engine.tokenizer import Tokenizer

Client = httpx.AsyncClient


def with_client(config: EngineConfig, body: Callable[[Client], Awaitable[None]]) -> None:
    app = build_app(config)

    async def main() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://engine") as c:
                await body(c)

    asyncio.run(main())


def sse_events(text: str) -> list[Any]:
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    return [json.loads(e.removeprefix("data: ")) for e in events[:-1]]


def test_completion_non_streaming_is_well_formed(config: EngineConfig) -> None:
    async def body(c: Client) -> None:
        r = await c.post(
            "/v1/completions",
            json={"model": "test-model", "prompt": "Hello there", "max_tokens": 12,
                  "ignore_eos": True, "return_token_ids": True},
        )  # fmt: skip
        assert r.status_code == 200
        out = r.json()
        assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
        (choice,) = out["choices"]
        assert choice["finish_reason"] == "length"
        assert out["usage"] == {"prompt_tokens": 2, "completion_tokens": 12,
                                "total_tokens": 14, "prompt_tokens_details": None}  # fmt: skip
        assert len(choice["token_ids"]) == 12
        assert choice["prompt_token_ids"] == (await c.post("/tokenize", json={
            "prompt": "Hello there"})).json()["tokens"]  # fmt: skip
        detok = await c.post("/detokenize", json={"tokens": choice["token_ids"]})
        assert detok.json()["prompt"] == choice["text"]

    with_client(config, body)


def test_same_prompt_and_seed_give_the_same_answer(config: EngineConfig) -> None:
    async def body(c: Client) -> None:
        req = {"prompt": [1, 2, 3, 4], "max_tokens": 30}
        a, b = (
            (await c.post("/v1/completions", json=req)).json(),
            (await c.post("/v1/completions", json=req)).json(),
        )
        assert a["choices"][0]["text"] == b["choices"][0]["text"]
        assert a["usage"] == b["usage"]

    with_client(config, body)


def test_chat_streaming_with_usage(config: EngineConfig) -> None:
    async def body(c: Client) -> None:
        r = await c.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 8,
                  "ignore_eos": True, "stream": True,
                  "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
        )  # fmt: skip
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks = sse_events(r.text)
        *token_chunks, final = chunks
        assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
        assert token_chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert [ch["usage"]["completion_tokens"] for ch in token_chunks] == list(range(1, 9))
        assert token_chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert final["choices"] == [] and final["usage"]["completion_tokens"] == 8
        text = "".join(ch["choices"][0]["delta"]["content"] for ch in token_chunks)
        assert len(text.split()) == 8

    with_client(config, body)


def test_completion_streaming_matches_non_streaming(config: EngineConfig) -> None:
    async def body(c: Client) -> None:
        req: dict[str, Any] = {"prompt": "same prompt", "max_tokens": 10}
        full = (await c.post("/v1/completions", json=req)).json()
        r = await c.post("/v1/completions", json={**req, "stream": True})
        chunks = sse_events(r.text)
        assert "usage" not in chunks[-1]
        assert "".join(ch["choices"][0]["text"] for ch in chunks) == full["choices"][0]["text"]
        last = chunks[-1]["choices"][0]["finish_reason"]
        assert last == full["choices"][0]["finish_reason"]

    with_client(config, body)


def test_stop_string_ends_generation_before_it(config: EngineConfig) -> None:
    async def body(c: Client) -> None:
        req: dict[str, Any] = {"prompt": "x", "max_tokens": 40, "ignore_eos": True}
        text = (await c.post("/v1/completions", json=req)).json()["choices"][0]["text"]
        stop = text.split()[5]
        for stream in (False, True):
            r = await c.post("/v1/completions", json={**req, "stop": [stop], "stream": stream})
            if stream:
                chunks = sse_events(r.text)
                got = "".join(ch["choices"][0]["text"] for ch in chunks)
                choice = chunks[-1]["choices"][0]
            else:
                choice = r.json()["choices"][0]
                got = choice["text"]
            assert got == text[: text.index(stop)]
            assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", stop)

    with_client(config, body)


@pytest.mark.parametrize(
    ("path", "payload", "status", "needle"),
    [
        ("/v1/completions", {"prompt": "a", "n": 2}, 400, "'n' = 2"),
        ("/v1/completions", {"prompt": "a", "max_tokens": -1}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": ["a", "b"]}, 400, "batched prompts"),
        ("/v1/completions", {"prompt": ""}, 400, "empty"),
        ("/v1/completions", {"prompt": [1, 99999999]}, 400, "out of vocabulary"),
        ("/v1/completions", {"prompt": "a", "model": "other"}, 404, "unknown model"),
        ("/v1/completions", {"prompt": [1] * 131072, "max_tokens": 1}, 400, "context length"),
        ("/v1/completions", {"prompt": [-1] * 131073}, 400, "your prompt has 131073 tokens"),
        ("/v1/completions", {"prompt": "a", "max_tokens": "3"}, 400, "integer"),
        ("/v1/completions", {"prompt": "a", "max_tokens": 2, "min_tokens": 5}, 400, "min_tokens"),
        ("/v1/chat/completions", {"messages": []}, 400, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "x", "content": "a"}]}, 400, "role"),
        ("/v1/chat/completions", {"messages": [{"role": "user"}], "n": 3}, 400, "'n'"),
    ],
)
def test_client_mistakes_are_4xx_with_an_openai_error_body(
    config: EngineConfig, path: str, payload: Any, status: int, needle: str
) -> None:
    async def body(c: Client) -> None:
        r = await c.post(path, json=payload)
        assert r.status_code == status
        err = r.json()["error"]
        assert needle in err["message"]
        assert err["code"] == status and set(err) == {"message", "type", "param", "code"}

    with_client(config, body)


def test_invalid_json_is_400(config: EngineConfig) -> None:
    async def body(c: Client) -> None:
        r = await c.post("/v1/completions", content=b"{nope")
        assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]

    with_client(config, body)


def test_models_health_and_metrics(config: EngineConfig) -> None:
    async def body(c: Client) -> None:
        assert (await c.get("/health")).status_code == 200
        models = (await c.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["test-model"]
        await c.post("/v1/completions", json={"prompt": "a b c", "max_tokens": 5})
        text = (await c.get("/metrics")).text
        for name in (
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
            "vllm:time_to_first_token_seconds_bucket",
            "vllm:inter_token_latency_seconds_bucket",
            "vllm:e2e_request_latency_seconds_bucket",
            "vllm:prompt_tokens_total",
            "vllm:generation_tokens_total",
        ):
            assert f"{name}{{" in text
        assert 'vllm:prompt_tokens_total{engine="0",model_name="test-model"} 3.0' in text
        blocks = config.instance_config.num_kv_blocks
        assert (
            f'vllm:cache_config_info{{block_size="16",engine="0",'
            f'kv_cache_size_tokens="{blocks * 16}",num_gpu_blocks="{blocks}"}} 1.0'
        ) in text
        # Every series of every family carries vLLM's two labels (but the info gauge, as in vLLM).
        for line in text.splitlines():
            if line.startswith(("vllm:", "l4:")) and not line.startswith("vllm:cache_config"):
                assert 'engine="0"' in line and 'model_name="test-model"' in line, line

    with_client(config, body)


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("temperature", "hot", "'temperature' must be a number, got str"),
        ("temperature", -5, "'temperature' must be in [0, 2], got -5"),
        ("temperature", 2.5, "'temperature' must be in [0, 2], got 2.5"),
        ("temperature", True, "'temperature' must be a number, got bool"),
        ("top_p", 0, "'top_p' must be in (0, 1], got 0"),
        ("top_p", 1.01, "'top_p' must be in (0, 1], got 1.01"),
        ("top_k", -2, "'top_k' must be >= -1, got -2"),
        ("top_k", 1.5, "'top_k' must be an integer, got float"),
        ("top_k", "5", "'top_k' must be an integer, got str"),
        ("min_p", 1.5, "'min_p' must be in [0, 1], got 1.5"),
        ("presence_penalty", 2.5, "'presence_penalty' must be in [-2, 2], got 2.5"),
        ("frequency_penalty", -3, "'frequency_penalty' must be in [-2, 2], got -3"),
        ("repetition_penalty", 0, "'repetition_penalty' must be a finite number > 0, got 0"),
        ("repetition_penalty", -1.0, "'repetition_penalty' must be a finite number > 0"),
        ("seed", 1.5, "'seed' must be an integer, got float"),
        ("seed", "7", "'seed' must be an integer, got str"),
        ("seed", 2**63, "'seed' must fit in a signed 64-bit integer"),
        ("seed", -(2**63) - 1, "'seed' must fit in a signed 64-bit integer"),
    ],
)
def test_sampling_parameters_are_checked_as_vllm_checks_them(
    config: EngineConfig, field: str, value: Any, needle: str
) -> None:
    async def body(c: Client) -> None:
        for path, base in (
            ("/v1/completions", {"prompt": "a", "max_tokens": 2}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}]}),
        ):
            r = await c.post(path, json={**base, field: value})
            assert r.status_code == 400, (path, r.text)
            assert r.json()["error"]["message"].startswith(needle)

    with_client(config, body)


def test_non_finite_sampling_numbers_are_400(config: EngineConfig) -> None:
    async def body(c: Client) -> None:
        for raw in (b'{"prompt": "a", "temperature": 1e400}', b'{"prompt": "a", "top_p": NaN}'):
            r = await c.post("/v1/completions", content=raw)
            assert r.status_code == 400 and ("got inf" in r.text or "got nan" in r.text)

    with_client(config, body)


def test_sampling_parameters_in_range_are_accepted_and_change_nothing(
    config: EngineConfig,
) -> None:
    async def body(c: Client) -> None:
        req: dict[str, Any] = {"prompt": "same", "max_tokens": 6, "ignore_eos": True}
        plain = (await c.post("/v1/completions", json=req)).json()["choices"][0]["text"]
        knobs = [
            {"temperature": 0, "top_p": 1, "top_k": -1, "seed": -1},
            {"temperature": 2.0, "top_p": 0.01, "top_k": 0, "min_p": 1.0, "seed": 2**63 - 1},
            {"presence_penalty": -2, "frequency_penalty": 2, "repetition_penalty": 1e6},
            {"temperature": None, "top_p": None, "seed": None, "top_k": None},
        ]
        for extra in knobs:
            r = await c.post("/v1/completions", json={**req, **extra})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == plain

    with_client(config, body)


def test_version_route_reports_the_package_version(config: EngineConfig) -> None:
    async def body(c: Client) -> None:
        r = await c.get("/version")
        assert r.status_code == 200
        assert r.json() == {"version": importlib.metadata.version("l4-serve")}

    with_client(config, body)


def test_unknown_routes_and_methods_have_openai_error_bodies(config: EngineConfig) -> None:
    async def body(c: Client) -> None:
        r = await c.get("/v1/nothing")
        assert r.status_code == 404
        assert r.json()["error"] == {
            "message": "Not Found: GET /v1/nothing",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        }
        r = await c.get("/v1/completions")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        assert r.json()["error"]["code"] == 405

    with_client(config, body)


def test_a_body_above_the_limit_is_413_and_the_engine_serves_on(config: EngineConfig) -> None:
    small = dataclasses.replace(config, max_request_body_bytes=1000)

    async def body(c: Client) -> None:
        r = await c.post("/v1/completions", json={"prompt": "a " * 1000, "max_tokens": 2})
        assert r.status_code == 413
        assert r.json()["error"]["type"] == "RequestEntityTooLargeError"
        assert "1000 bytes" in r.json()["error"]["message"]
        ok = await c.post("/v1/completions", json={"prompt": "a " * 100, "max_tokens": 2})
        assert ok.status_code == 200

    with_client(small, body)


def test_large_bodies_are_parsed_in_a_worker_process_with_the_same_result(
    config: EngineConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where large bodies are spooled
    inline_app = build_app(config)
    worker_app = build_app(config, offload_bytes=0)  # every body goes to the worker
    prompt = "the quick brown fox jumps over the lazy dog " * 50
    requests: list[tuple[str, dict[str, Any]]] = [
        ("/v1/completions", {"prompt": prompt, "max_tokens": 8}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}]}),
        ("/tokenize", {"prompt": prompt, "return_token_strs": True}),
        ("/detokenize", {"tokens": [5, 6, 7, 400]}),
        ("/v1/completions", {"prompt": "a", "temperature": -1}),
        ("/v1/completions", {"prompt": "a", "model": "another"}),
    ]

    async def answers(app: Any) -> list[tuple[int, Any]]:
        out = []
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://engine") as c:
                for path, req in requests:
                    r = await c.post(path, json=req)
                    body = r.json()
                    for key in ("id", "created"):
                        body.pop(key, None)
                    out.append((r.status_code, body))
        return out

    inline = asyncio.run(answers(inline_app))
    offloaded = asyncio.run(answers(worker_app))
    assert offloaded == inline
    assert [s for s, _ in inline] == [200, 200, 200, 200, 400, 404]
    assert inline_app.state.engine.parser.num_offloaded == 0
    assert worker_app.state.engine.parser.num_offloaded == len(requests)
    assert not list(tmp_path.iterdir())  # every spooled body was deleted once parsed


def test_a_huge_text_prompt_is_refused_without_tokenising_all_of_it(
    config: EngineConfig,
) -> None:
    async def body(c: Client) -> None:
        huge = "word " * 2_000_000  # 10 MB, 2 million tokens
        r = await c.post("/v1/completions", json={"prompt": huge, "max_tokens": 1})
        assert r.status_code == 400
        limit = config.max_model_len
        assert r.json()["error"]["message"] == (
            f"This model's maximum context length is {limit} tokens. However, your prompt "
            f"has more than {limit} tokens; please reduce its length."
        )

    with_client(config, body)


def test_one_access_log_line_per_request(
    config: EngineConfig, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(c: Client) -> None:
        await c.post("/v1/completions", json={"prompt": "a b c", "max_tokens": 5,
                                              "ignore_eos": True})  # fmt: skip
        await c.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True,
            "ignore_eos": True})  # fmt: skip
        await c.post("/v1/completions", json={"prompt": "a", "n": 2})
        await c.get("/health")

    with caplog.at_level(logging.INFO, logger="l4.engine.access"):
        with_client(config, body)
    lines = [r.getMessage() for r in caplog.records if r.name == "l4.engine.access"]
    assert len(lines) == 4
    completion, chat, bad, health = lines
    assert re.fullmatch(
        r'127\.0\.0\.1:123 "POST /v1/completions HTTP/1\.1" 200 \d+\.\d{4}s id=cmpl-[0-9a-f]{32} '
        r"engine=0 prompt_tokens=3 generated_tokens=5 ttft_s=\d+\.\d{4} e2e_s=\d+\.\d{4}",
        completion,
    ), completion
    assert " id=chatcmpl-" in chat and "generated_tokens=4" in chat and '" 200 ' in chat
    assert '"POST /v1/completions HTTP/1.1" 400 ' in bad and "id=" not in bad
    assert '"GET /health HTTP/1.1" 200 ' in health


def test_a_started_parser_is_ready_once_warm() -> None:
    parser = BodyParser(Tokenizer())

    async def body() -> None:
        await parser.wait_warm()  # not started: nothing to wait for
        assert parser.num_offloaded == 0
        parser.start()
        await parser.wait_warm(timeout_s=120.0)
        pool = parser._pool
        assert pool is not None
        # The worker process exists and has finished its warm-up (the tokenizer loaded).
        workers = list(getattr(pool, "_processes", {}).values())
        assert len(workers) == 1 and workers[0].is_alive()

    try:
        asyncio.run(body())
    finally:
        parser.close()
