"""The replay client: exact lengths, emulated-time records, failures as unfinished records."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from engine.sockets import serving
from l4.engine import replay as replay_module
from l4.engine.faults import ErrorDraws, FaultConfig
from l4.engine.replay import ReplayConfig, replay
from l4.engine.server import EngineConfig
from l4.errors import ValidationError
from l4.request import RequestSpec

REQUESTS = tuple(
    RequestSpec(request_id=i, arrival_s=0.01 * i, input_tokens=5 + 7 * i, output_tokens=3 + i)
    for i in range(12)
)


def test_records_follow_the_trace_and_failures_stay_unfinished(
    make_config: Callable[..., EngineConfig],
) -> None:
    config = replace(make_config(time_scale=100.0), faults=FaultConfig(error_rate=0.4))
    draws = ErrorDraws(0.4, seed=config.seed, instance_id=0)

    async def main() -> None:
        async with serving(config) as url:
            records = await replay(REQUESTS, ReplayConfig(base_url=url, time_scale=100.0))
        # The engine draws in the order requests reach it, which close arrivals may swap: the
        # seed fixes how many fail, not necessarily which.
        failed = {r.request_id for r in records if r.first_token_s is None}
        assert len(failed) == sum(draws.fail_next() for _ in REQUESTS)
        for spec, rec in zip(REQUESTS, records, strict=True):
            assert rec.request_id == spec.request_id and rec.input_tokens == spec.input_tokens
            if rec.request_id in failed:
                assert rec.finish_s is None and rec.generated_tokens == 0
                continue
            assert rec.generated_tokens == spec.output_tokens and rec.finish_s is not None
            assert rec.first_token_s is not None
            assert rec.arrival_s < rec.first_token_s <= rec.finish_s
            # Sent no earlier than the trace says (emulated seconds from the first arrival).
            assert rec.arrival_s >= spec.arrival_s - 1e-6

    asyncio.run(main())


def test_encoding_the_bodies_does_not_delay_the_first_arrivals(
    make_config: Callable[..., EngineConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bodies that take 50 ms each to encode (a long trace's prompts do, in total): encoded in
    # each request's own task they held the loop at the start, and the requests of the first
    # 0.1 s went out ~0.5 s late. Encoded before the clock starts, each leaves on time.
    encode = replay_module._payload

    def slow(spec: RequestSpec, cfg: ReplayConfig) -> bytes:
        time.sleep(0.05)
        return encode(spec, cfg)

    monkeypatch.setattr(replay_module, "_payload", slow)

    async def main() -> None:
        async with serving(make_config(time_scale=1.0)) as url:
            records = await replay(REQUESTS, ReplayConfig(base_url=url))
        pairs = zip(REQUESTS, records, strict=True)
        late = max(rec.arrival_s - spec.arrival_s for spec, rec in pairs)
        assert late < 0.2

    asyncio.run(main())


@pytest.mark.parametrize(
    "kwargs", [{"time_scale": 0.0}, {"base_url": "https://x:1"}, {"base_url": "nope"}]
)
def test_bad_replay_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ReplayConfig(**{"base_url": "http://127.0.0.1:1", **kwargs})  # type: ignore[arg-type]
