"""The gateway's life: discovering the engines, building the policy, and the background loops.

`Gateway.start()` opens one pooled client per backend, asks every engine for its model and KV
capacity (waiting up to `startup_timeout_s` for at least one to answer), and builds the policy
from the same `PolicyContext` the simulator builds it from: the calibration profile's cost model,
vLLM's limits with the discovered KV capacity, the expected workload (`--workload`) or a pinned
plan, and token replay as the migration mechanism. `Gateway.run()` then keeps three kinds of
loops in one TaskGroup until cancelled: a scrape loop and a health loop per backend, and the
policy's tick (the L4 agents' balancing tick).

Guarantees: every network call has a timeout; a loop never dies of a backend's failure (it is
counted and retried); a policy error in a tick is logged and the next tick runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from prometheus_client import Histogram

from l4.core.grid import exponential_grid
from l4.core.migration import MigrationConfig, MigrationMechanism
from l4.core.summary import summarize_workload
from l4.costmodel.profile import load_profile
from l4.costmodel.step import StepCostModel
from l4.errors import BackendError, L4Error, UnavailableError, ValidationError
from l4.gateway.book import LiveCluster, LiveInstance
from l4.gateway.config import GatewayConfig
from l4.gateway.lengths import PromptLengths, load_tokenizer
from l4.gateway.metrics import GatewayMetrics
from l4.gateway.relay import Relay
from l4.gateway.scrape import EngineLoad
from l4.gateway.upstream import Backend, ModelInfo, Timeouts
from l4.instance.config import InstanceConfig
from l4.policies.base import Policy, StatsReporter, make_policy
from l4.views import PolicyContext
from l4.workload import WorkloadSpec, build_workload

R = TypeVar("R")

log = logging.getLogger("l4.gateway")
Clock = Callable[[], float]
# A backend must miss this many health checks in a row before it is taken out...
_HEALTH_MISSES = 3
# ...and stay out at least this long before a passing check brings it back (no flapping).
_MIN_OUT_S = 2.0


class PlanningThread:
    """Where the L4 runtime's refinement rounds and re-plans run (``l4.offload.Offload``).

    They take tenths of a second to a second of numpy, and the event loop relays every stream:
    solved there, each would stall them all that long. One worker, so rounds never overlap (the
    runtime waits for one before it starts the next). Threads share the GIL, but the interpreter
    hands it back to the waiting loop every switch interval (5 ms): on this project's 2-core VM
    (``benchmarks/planning_offload.py``) re-plans of 0.1-1.6 s held the loop's timers back by at
    most 12-23 ms with both cores busy, 2-4 ms on a quiet machine, against their whole length.
    """

    def __init__(self, seconds: Histogram) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="l4-planning")
        self._seconds = seconds

    def submit(self, fn: Callable[[], R], /) -> Future[R]:
        started = time.perf_counter()
        done = self._pool.submit(fn)
        done.add_done_callback(lambda _: self._seconds.observe(time.perf_counter() - started))
        return done

    def close(self) -> None:
        """Cancel what is queued; a round being solved finishes in its thread (it cannot be
        interrupted) and its result is dropped."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class Gateway:
    def __init__(self, config: GatewayConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        scale = config.time_scale

        def scaled() -> float:
            return time.monotonic() * scale

        if clock is None:
            clock = time.monotonic if scale == 1.0 else scaled
        self.clock: Clock = clock
        timeouts = Timeouts(connect_s=config.connect_timeout_s, read_s=config.read_timeout_s)
        self.backends = [
            Backend(url, timeouts=timeouts, max_connections=config.max_connections_per_backend)
            for url in config.backends
        ]
        self.metrics = GatewayMetrics(list(config.backends))
        self.planner = PlanningThread(self.metrics.planning)
        self.started_s = self.clock()
        self._out_since: dict[int, float] = {}
        self._stages_seen: list[dict[str, Any]] = []
        # Set by start():
        self.model = ""
        self.max_model_len = 0
        self.cluster: LiveCluster
        self.policy: Policy
        self.relay: Relay
        self.lengths: PromptLengths
        self._rr = 0
        self.started = False

    # ---- start and stop -----------------------------------------------------------------------
    async def start(self) -> None:
        """Discover the engines and build the policy; on failure nothing is left open."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        self.started = True

    async def _start(self) -> None:
        for b in self.backends:
            await b.start()
        infos, loads = await self._discover()
        answered = [i for i, info in enumerate(infos) if info is not None]
        names = {infos[i].name for i in answered if infos[i] is not None}  # type: ignore[union-attr]
        if len(names) > 1:
            raise ValidationError(f"the backends serve different models: {sorted(names)}")
        first = infos[answered[0]]
        assert first is not None
        self.model = first.name
        profile = load_profile(self.config.profile, user_dir=self.config.profiles_dir)
        lengths = [x.max_model_len for x in infos if x is not None and x.max_model_len]
        self.max_model_len = min(lengths) if lengths else profile.model.max_context_tokens
        instance_config = self._instance_config(profile, loads)
        self.cluster = LiveCluster(
            [
                LiveInstance(
                    i,
                    num_kv_blocks=instance_config.num_kv_blocks,
                    block_size_tokens=instance_config.block_size_tokens,
                    max_num_batched_tokens=instance_config.max_num_batched_tokens,
                    max_num_seqs=instance_config.max_num_seqs,
                )
                for i in range(len(self.backends))
            ],
            clock=self.clock,
        )
        for i, info in enumerate(infos):
            if info is None:
                self.cluster.instances[i].healthy = False
                self._out_since[i] = self.clock()
                self.metrics.healthy.labels(self.backends[i].url).set(0)
        self.policy = make_policy(self.config.policy, self._context(profile, instance_config))
        self.relay = Relay(
            cluster=self.cluster,
            backends=self.backends,
            policy=self.policy,
            model=self.model,
            max_model_len=self.max_model_len,
            metrics=self.metrics,
            clock=self.clock,
            migration_limit=self.config.migration_limit,
            failures_to_trip=self.config.failures_to_trip,
        )
        tokenizer = (
            load_tokenizer(self.config.tokenizer) if self.config.tokenizer is not None else None
        )
        self.lengths = PromptLengths(
            model=self.model,
            tokenizer=tokenizer,
            engine_tokenizes=self.config.engine_kind.replays,
        )
        self._update_gauges()
        log.info(
            "serving %s over %d backends (%d answered), policy %s, KV %d tokens per instance",
            self.model,
            len(self.backends),
            len(answered),
            self.config.policy,
            instance_config.kv_capacity_tokens,
        )

    async def stop(self) -> None:
        self.planner.close()
        for b in self.backends:
            await b.stop()

    async def _discover(self) -> tuple[list[ModelInfo | None], list[EngineLoad | None]]:
        """Every backend's model card and a first scrape; waits for at least one to answer."""
        deadline = self.clock() + self.config.startup_timeout_s
        while True:
            infos = await asyncio.gather(*(self._info(b) for b in self.backends))
            if any(x is not None for x in infos):
                loads = await asyncio.gather(*(self._scrape_once(b) for b in self.backends))
                return list(infos), list(loads)
            if self.clock() >= deadline:
                raise UnavailableError(
                    f"no backend answered GET /v1/models within {self.config.startup_timeout_s:g}"
                    f" s: {', '.join(self.config.backends)}"
                )
            await asyncio.sleep(0.25)

    @staticmethod
    async def _info(backend: Backend) -> ModelInfo | None:
        try:
            return await backend.model_info()
        except BackendError as exc:
            log.debug("discovery: %s", exc)
            return None

    @staticmethod
    async def _scrape_once(backend: Backend) -> EngineLoad | None:
        try:
            return await backend.scrape()
        except BackendError:
            return None

    def _instance_config(self, profile: Any, loads: list[EngineLoad | None]) -> InstanceConfig:
        base = InstanceConfig.from_profile(profile)
        capacity = [
            load for load in loads if load is not None and load.kv_capacity_tokens is not None
        ]
        if not capacity:
            return base
        smallest = min(capacity, key=lambda x: x.kv_capacity_tokens or 0)
        return InstanceConfig(
            max_num_seqs=base.max_num_seqs,
            max_num_batched_tokens=base.max_num_batched_tokens,
            num_kv_blocks=smallest.num_kv_blocks or base.num_kv_blocks,
            block_size_tokens=smallest.block_size_tokens or base.block_size_tokens,
        )

    def _context(self, profile: Any, instance_config: InstanceConfig) -> PolicyContext:
        workload = None
        if self.config.workload is not None:
            grid = exponential_grid(profile.model.max_context_tokens)
            spec = WorkloadSpec(
                trace=self.config.workload,
                max_context_tokens=profile.model.max_context_tokens,
                rate_scale=self.config.workload_rate_scale,
            )
            workload = summarize_workload(grid, build_workload(spec))
        return PolicyContext(
            num_instances=len(self.backends),
            profile=profile,
            cost=StepCostModel(profile),
            instance_config=instance_config,
            seed=self.config.seed,
            workload=workload,
            migration=MigrationConfig(mechanism=MigrationMechanism.REPLAY),
            static_plan=self.config.static_plan,
            offload=self.planner,
        )

    def tokenizing_backend(self) -> Backend:
        """A healthy backend for /tokenize (round robin: the calls are small)."""
        healthy = self.cluster.healthy_ids()
        if not healthy:
            raise UnavailableError("no healthy backend")
        self._rr += 1
        return self.backends[healthy[self._rr % len(healthy)]]

    # ---- loops --------------------------------------------------------------------------------
    async def run(self) -> None:
        """The background loops; returns only when cancelled."""
        async with asyncio.TaskGroup() as tg:
            for i in range(len(self.backends)):
                tg.create_task(self._scrape_loop(i))
                tg.create_task(self._health_loop(i))
            tg.create_task(self._tick_loop())

    async def _scrape_loop(self, i: int) -> None:
        backend = self.backends[i]
        inst = self.cluster.instances[i]
        while True:
            try:
                inst.observe(await backend.scrape(), self.clock())
            except BackendError as exc:
                log.debug("scrape: %s", exc)
            await asyncio.sleep(self.config.scrape_interval_s)

    async def _health_loop(self, i: int) -> None:
        backend = self.backends[i]
        inst = self.cluster.instances[i]
        misses = 0
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            ok = await backend.healthy()
            now = self.clock()
            if ok:
                misses = 0
                if not inst.healthy and now - self._out_since.get(i, now) >= _MIN_OUT_S:
                    self.relay.health.bring_back(i)
                continue
            misses += 1
            if inst.healthy and misses >= _HEALTH_MISSES:
                self._out_since[i] = now
                self.relay.health.take_out(i, f"{misses} health checks failed")
            elif not inst.healthy:
                self._out_since.setdefault(i, now)

    async def _tick_loop(self) -> None:
        tick = self.policy.tick_interval_s
        period = (tick if tick is not None else 1.0) / self.config.time_scale
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            now = loop.time()
            due = next_tick_s(due, now, period)
            await asyncio.sleep(due - now)
            for i, inst in enumerate(self.cluster.instances):
                if not inst.healthy and i not in self._out_since:
                    self._out_since[i] = self.clock()
            if tick is not None:
                started = time.perf_counter()
                try:
                    self.policy.on_tick(self.cluster, self.clock())
                except L4Error:
                    log.exception("the policy's tick failed; serving goes on")
                self.metrics.policy_tick.observe(time.perf_counter() - started)
            self._update_gauges()

    # ---- state --------------------------------------------------------------------------------
    def stages(self) -> list[dict[str, Any]]:
        groups = self.policy.groups()
        bounds: list[int] = []
        if isinstance(self.policy, StatsReporter):
            raw = self.policy.stats().get("boundaries_tokens")
            if isinstance(raw, list):
                bounds = [int(b) for b in raw]
        if len(bounds) != len(groups) - 1:
            bounds = []  # groups that are not length ranges (one pool, or a policy's own)
            groups = [sorted(i for g in groups for i in g)] if groups else []
        out = []
        for s, members in enumerate(groups):
            lo = 0 if s == 0 else bounds[s - 1]
            hi = bounds[s] if s < len(bounds) else None
            out.append({"stage": s, "lo_tokens": lo, "hi_tokens": hi, "instances": members})
        return out

    def _update_gauges(self) -> None:
        stages = self.stages()
        self._log_stage_change(stages)
        for st in stages:
            label = str(st["stage"])
            hi = st["hi_tokens"]
            self.metrics.boundary.labels(label).set(float("inf") if hi is None else hi)
            self.metrics.stage_instances.labels(label).set(len(st["instances"]))
        for b, inst in zip(self.backends, self.cluster.instances, strict=True):
            self.metrics.in_flight.labels(b.url).set(inst.in_flight)

    def _log_stage_change(self, stages: list[dict[str, Any]]) -> None:
        """One line when the stages change: INFO when instances change stage (a re-plan, an engine
        out or back), DEBUG when only a boundary moves (refinement does so every few seconds)."""
        before, self._stages_seen = self._stages_seen, stages
        if stages == before:
            return
        regrouped = [s["instances"] for s in stages] != [s["instances"] for s in before]
        log.log(
            logging.INFO if regrouped else logging.DEBUG,
            "stages: %s",
            "; ".join(
                f"[{s['lo_tokens']}, {'inf' if s['hi_tokens'] is None else s['hi_tokens']}) "
                f"on {','.join(map(str, s['instances']))}"
                for s in stages
            ),
        )

    def state(self) -> dict[str, Any]:
        """`GET /l4/state`: stages, instances and recent migrations."""
        instances = []
        for b, inst in zip(self.backends, self.cluster.instances, strict=True):
            n, total, longest = inst.decode_length_stats()
            instances.append(
                {
                    "id": inst.instance_id,
                    "url": b.url,
                    "healthy": inst.healthy,
                    "in_flight": inst.in_flight,
                    "waiting": len(inst.waiting()),
                    "decoding": n,
                    "decode_tokens": total,
                    "longest_tokens": longest,
                    "kv_usage": round(inst.kv_usage, 4),
                    "scraped": {
                        "running": inst.load.num_running,
                        "waiting": inst.load.num_waiting,
                        "kv_usage": inst.load.kv_usage,
                        "age_s": None
                        if inst.scraped_s is None
                        else round(self.clock() - inst.scraped_s, 3),
                    },
                }
            )
        stats = self.policy.stats() if isinstance(self.policy, StatsReporter) else {}
        return {
            "model": self.model,
            "max_model_len": self.max_model_len,
            "policy": self.config.policy,
            "uptime_s": round(self.clock() - self.started_s, 3),
            "in_flight": self.cluster.in_flight(),
            "stages": self.stages(),
            "instances": instances,
            "recent_migrations": list(self.relay.migration_log),
            "policy_stats": stats,
        }


def next_tick_s(last_s: float, now_s: float, period_s: float) -> float:
    """When the tick after the one due at ``last_s`` runs: on the grid ``last_s + k period``, as
    the simulator ticks, so a tick's own run time (a refinement or a re-plan can take a good part
    of a period) does not stretch the period; the first slot after ``now_s``, so a tick that
    overran skips ahead rather than running back to back."""
    return max(last_s + period_s, now_s + period_s - (now_s - last_s) % period_s)
