"""The gateway's HTTP edge over real sockets: errors, aborts, passthrough, state and scale."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import aiohttp
import orjson

from gateway.harness import MODEL, engine_config, engine_process, gateway_over, gateway_over_urls
from l4.engine.tokenizer import Tokenizer
from l4.gateway.config import EngineKind
from l4.views import StaticPlan


async def post(url: str, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(url + path, json=body, **kw) as r:
        raw = await r.read()
        try:
            return r.status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return r.status, raw


async def sse(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/completions", json=body) as r:
        assert r.status == 200
        async for line in r.content:
            if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                out.append(orjson.loads(line[6:]))
    return out


def test_bad_inputs_get_openai_shaped_4xx() -> None:
    async def main() -> None:
        async with gateway_over([engine_config(0)], max_request_body_bytes=4096) as run:
            u = run.url
            cases = [
                ("/v1/completions", {"prompt": "a", "max_tokens": -1}, 400),
                ("/v1/completions", {"prompt": "a", "model": "other"}, 404),
                ("/v1/chat/completions", {"messages": "hi"}, 400),
                ("/v1/completions", {"prompt": "x " * 5000}, 413),
                # The engine's own refusal (the prompt exceeds the context) comes back as it is.
                ("/v1/completions", {"prompt": [1] * 10, "max_tokens": 10**7}, 400),
            ]
            for path, body, status in cases:
                got, answer = await post(u, path, body)
                assert got == status, (body, answer)
                assert set(answer["error"]) >= {"message", "type", "code"}
            async with aiohttp.ClientSession() as s:
                async with s.post(u + "/v1/completions", data=b"{not json") as r:
                    assert r.status == 400 and "JSON" in (await r.json())["error"]["message"]
                async with s.get(u + "/v1/completions") as r:
                    assert r.status == 405 and (await r.json())["error"]["code"] == 405
                async with s.get(u + "/nowhere") as r:
                    assert r.status == 404 and "error" in await r.json()
            # Nothing of these reached the book.
            assert run.gateway.cluster.in_flight() == 0

    asyncio.run(main())


def test_a_client_that_leaves_aborts_its_upstream_request() -> None:
    async def main() -> None:
        async with gateway_over([engine_config(0, time_scale=1.0)]) as run:
            body = {"prompt": "go", "max_tokens": 5000, "ignore_eos": True, "stream": True}
            async with (
                aiohttp.ClientSession() as s,
                s.post(run.url + "/v1/completions", json=body) as r,
            ):
                await r.content.readline()
                assert run.gateway.cluster.in_flight() == 1
            engine = run.engines[0].engine.core
            async with asyncio.timeout(5):
                while run.gateway.cluster.in_flight() or engine.instance.num_running:
                    await asyncio.sleep(0.02)

    asyncio.run(main())


def test_stop_strings_and_token_ids_as_the_engine_gives_them() -> None:
    async def main() -> None:
        async with gateway_over([engine_config(0)]) as run:
            base = {"prompt": "tell me", "max_tokens": 40, "ignore_eos": True, "stream": True}
            plain = await sse(run.url, base)
            text = "".join(c["choices"][0]["text"] for c in plain)
            stop = text[12:15]  # a string that occurs in the answer
            cut = text[: text.find(stop)]
            got = await sse(run.url, {**base, "stop": [stop], "return_token_ids": True})
            assert "".join(c["choices"][0]["text"] for c in got) == cut
            last = got[-1]["choices"][0]
            assert last["finish_reason"] == "stop" and last["stop_reason"] == stop
            assert got[0]["choices"][0]["prompt_token_ids"]
            # The same through the engine itself.
            direct = await sse(run.engine_urls[0], {**base, "stop": [stop]})
            assert "".join(c["choices"][0]["text"] for c in direct) == cut

    asyncio.run(main())


def test_a_pinned_request_is_relayed_as_the_engine_wrote_it() -> None:
    async def main() -> None:
        async with gateway_over([engine_config(0), engine_config(1)]) as run:
            body = {
                "prompt": "hi", "max_tokens": 6, "ignore_eos": True, "stream": True,
                "structured_outputs": {"regex": "[a-z ]+"},
            }  # fmt: skip
            chunks = await sse(run.url, body)
            assert len([c for c in chunks if c["choices"]]) == 6
            assert chunks[0]["id"].startswith("cmpl-")
            status, full = await post(run.url, "/v1/completions", {**body, "stream": False})
            assert status == 200 and full["usage"]["completion_tokens"] == 6
            state = run.gateway.state()
            assert state["in_flight"] == 0

    asyncio.run(main())


def test_a_non_streaming_request_moves_too() -> None:
    async def main() -> None:
        engines = [engine_config(i) for i in range(2)]
        plan = StaticPlan(boundaries_tokens=(64,), stage_sizes=(1, 1))
        async with gateway_over(engines, static_plan=plan) as run:
            body = {"prompt": [5] * 10, "max_tokens": 200, "ignore_eos": True}
            status, full = await post(run.url, "/v1/completions", body)
            assert status == 200 and full["usage"] == {
                "prompt_tokens": 10, "completion_tokens": 200, "total_tokens": 210,
                "prompt_tokens_details": None,
            }  # fmt: skip
            assert full["choices"][0]["finish_reason"] == "length"
            moves = run.gateway.state()["recent_migrations"]
            assert [(m["src"], m["dst"], m["reason"]) for m in moves] == [(0, 1, "cascade")]

    asyncio.run(main())


def test_health_state_models_and_metrics() -> None:
    async def main() -> None:
        async with gateway_over([engine_config(0), engine_config(1)]) as run:
            async with aiohttp.ClientSession() as s:
                async with s.get(run.url + "/health") as r:
                    assert r.status == 200
                async with s.get(run.url + "/v1/models") as r:
                    card = (await r.json())["data"][0]
                    assert card["id"] == MODEL and card["max_model_len"] > 0
                async with s.get(run.url + "/version") as r:
                    assert "version" in await r.json()
                async with s.post(run.url + "/tokenize", json={"prompt": "a b"}) as r:
                    assert (await r.json())["count"] == len(Tokenizer().tokenize("a b"))
            await sse(run.url, {"prompt": "x", "max_tokens": 3, "stream": True})
            async with aiohttp.ClientSession() as s:
                async with s.get(run.url + "/metrics") as r:
                    text = await r.text()
                async with s.get(run.url + "/l4/state") as r:
                    state = await r.json()
            for name in (
                'l4_requests_total{route="/v1/completions",status="200"} 1.0',
                "l4_time_to_first_token_seconds_bucket",
                "l4_inter_token_latency_seconds_bucket",
                "l4_e2e_request_latency_seconds_bucket",
                "l4_policy_tick_seconds_bucket",
                'l4_backend_healthy{backend="' + run.engine_urls[0] + '"} 1.0',
                'l4_stage_instances{stage="0"} 2.0',
                'l4_stage_boundary_tokens{stage="0"} +Inf',
                'l4_migrations_total{outcome="ok",reason="cascade"} 0.0',
                "l4_generation_tokens_total 3.0",
            ):
                assert name in text, name
            assert [i["healthy"] for i in state["instances"]] == [True, True]
            assert state["stages"] == [
                {"stage": 0, "lo_tokens": 0, "hi_tokens": None, "instances": [0, 1]}
            ]

    asyncio.run(main())


def test_re_plans_are_solved_in_the_planning_thread_while_streams_flow() -> None:
    # No expected workload: one stage until the first re-plan (30 s of the engines' time, 1.5 s
    # here at 20x), whose round runs in the planning thread and is timed in /metrics.
    async def main() -> None:
        async with gateway_over([engine_config(0), engine_config(1)]) as run:
            body = {"prompt": "x " * 300, "max_tokens": 200, "ignore_eos": True, "stream": True}

            async def client() -> None:
                while True:
                    assert len(await sse(run.url, body)) > 0

            async def rounds() -> float:
                async with aiohttp.ClientSession() as s, s.get(run.url + "/metrics") as r:
                    text = await r.text()
                count = "l4_planning_seconds_count "
                return float(next(x for x in text.splitlines() if x.startswith(count)).split()[1])

            async with asyncio.timeout(30), asyncio.TaskGroup() as tg:
                clients = [tg.create_task(client()) for _ in range(6)]
                while await rounds() < 1:
                    await asyncio.sleep(0.1)
                for c in clients:
                    c.cancel()
            stats = run.gateway.state()["policy_stats"]
            assert stats["messages"]["LengthReport"] > 0

    asyncio.run(main())


def test_no_healthy_engine_is_503_and_health_fails() -> None:
    async def main() -> None:
        async with gateway_over([engine_config(0)]) as run:
            run.engines[0].stop(force=True)
            async with asyncio.timeout(10):
                while run.gateway.cluster.instances[0].healthy:
                    await asyncio.sleep(0.05)
            status, body = await post(run.url, "/v1/completions", {"prompt": "a"})
            assert status == 503 and body["error"]["type"] == "ServiceUnavailableError"
            async with aiohttp.ClientSession() as s, s.get(run.url + "/health") as r:
                assert r.status == 503

    asyncio.run(main())


def test_a_change_of_stages_is_logged_once(caplog: Any) -> None:
    """The ranges at start and each regrouping at INFO, one line each; nothing, not even at DEBUG,
    while they stay as they are."""
    plan = StaticPlan(boundaries_tokens=(300,), stage_sizes=(1, 1))

    def lines() -> list[str]:
        return [
            f"{r.levelname} {r.getMessage()}"
            for r in caplog.records
            if r.name == "l4.gateway" and r.getMessage().startswith("stages: ")
        ]

    async def main() -> None:
        async with gateway_over([engine_config(0), engine_config(1)], static_plan=plan) as run:
            async with asyncio.timeout(10):
                while not lines():
                    await asyncio.sleep(0.05)
            assert lines() == ["INFO stages: [0, 300) on 0; [300, inf) on 1"]
            await asyncio.sleep(0.5)  # ticks without a change write nothing
            assert len(lines()) == 1
            run.engines[1].stop(force=True)
            async with asyncio.timeout(10):
                while len(lines()) < 2:
                    await asyncio.sleep(0.05)
            assert lines()[1] == "INFO stages: [0, inf) on 0"

    with caplog.at_level("DEBUG", logger="l4.gateway"):
        asyncio.run(main())


def _thousand_streams(url: str, streams: int, max_tokens: int) -> list[int | str]:
    """The client, in its own process: S streams ramped over a second; tokens each received."""

    async def main() -> list[int | str]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as s:

            async def one(i: int) -> int | str:
                await asyncio.sleep(i / streams)  # ramp up over a second, as clients do
                body = {
                    "prompt": [7] * (10 + i % 50), "max_tokens": max_tokens, "ignore_eos": True,
                    "stream": True, "stream_options": {"include_usage": True},
                }  # fmt: skip
                async with s.post(url + "/v1/completions", json=body) as r:
                    if r.status != 200:
                        return f"{r.status}: {await r.text()}"
                    used: int | str = -1
                    async for line in r.content:
                        if line.startswith(b'data: {"id"'):
                            chunk = orjson.loads(line[6:])
                            if chunk.get("usage"):
                                used = chunk["usage"]["completion_tokens"]
                        elif line.startswith(b'data: {"error"'):
                            used = line.decode()
                    return used

            return await asyncio.gather(*(one(i) for i in range(streams)))

    return asyncio.run(main())


def test_a_thousand_concurrent_streams_complete_without_errors() -> None:
    async def main() -> None:
        # Engines in one child process and the client in another, slowed down (0.01x) so that
        # 1,000 streams of 40 tokens stay open together for seconds; this process is the gateway.
        # A generous connect timeout: on a machine shared with other jobs, the burst of 1,000
        # upstream connects can lag this process past the 5 s default (which then fails over).
        async with (
            engine_process(4, time_scale=0.01) as urls,
            gateway_over_urls(urls, connect_timeout_s=60.0) as run,
        ):
            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, run.gateway.cluster.in_flight())
                    await asyncio.sleep(0.05)

            watcher = asyncio.create_task(watch())
            loop = asyncio.get_running_loop()
            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
                used = await loop.run_in_executor(pool, _thousand_streams, run.url, 1000, 40)
            watcher.cancel()
            assert used == [40] * 1000
            assert peak == 1000  # all open at once
            assert run.gateway.cluster.in_flight() == 0

    asyncio.run(main())


def test_a_local_tokenizer_file_counts_text_prompts(tmp_path: Any) -> None:
    from tokenizers import Tokenizer as HfTokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[UNK]": 0, "hello": 11, "world": 12}
    tok = HfTokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()  # type: ignore[assignment]
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))

    async def main() -> None:
        async with gateway_over([engine_config(0)], tokenizer=path) as run:
            body = {"prompt": "hello world hello", "max_tokens": 3, "stream": True,
                    "return_token_ids": True}  # fmt: skip
            chunks = await sse(run.url, body)
            assert chunks[0]["choices"][0]["prompt_token_ids"] == [11, 12, 11]
            status, full = await post(
                run.url, "/v1/completions", {"prompt": "world world", "max_tokens": 2}
            )
            assert status == 200 and full["usage"]["prompt_tokens"] == 2

    asyncio.run(main())


def test_an_engine_without_token_ids_is_routed_but_never_moved() -> None:
    async def main() -> None:
        engines = [engine_config(i) for i in range(2)]
        plan = StaticPlan(boundaries_tokens=(64,), stage_sizes=(1, 1))
        async with gateway_over(engines, static_plan=plan, engine_kind=EngineKind.OPENAI) as run:
            body = {"prompt": "x " * 20, "max_tokens": 200, "ignore_eos": True, "stream": True}
            chunks = await sse(run.url, body)
            assert sum(1 for c in chunks if c["choices"]) == 200  # relayed as the engine wrote
            # The prompt (10 tokens by the four-characters rule) entered stage 0; it grew past
            # the 64-token boundary there, and stayed: nothing can be replayed.
            assert run.gateway.state()["recent_migrations"] == []
            status, full = await post(run.url, "/v1/completions", {**body, "stream": False})
            assert status == 200 and full["usage"]["completion_tokens"] == 200

    asyncio.run(main())
