"""The experiment suite's machinery: scenarios, run keys, the run cache, parallel execution,
capacity searches and aggregation over seeds. The report itself is written by experiments.py.

Guarantees:

* One run is a pure function of its ``RunSpec``: the same spec gives the same summary (apart from
  ``sim_wall_s``). The spec's key names everything the result depends on (scenario parameters,
  policy, rate multiplier, seed, alpha, migration mechanism, duration cut, SLO scale) plus the code
  version (a hash of ``src/l4`` and ``HARNESS_VERSION``), so a cached result is reused only for an
  identical run of identical code.
* Results are appended to a JSON-lines cache as each run finishes, by the parent process only; an
  interrupted suite resumes where it stopped. A run that raised is cached with its error (the same
  code fails the same way); one stopped by the wall-clock limit is retried when the limit grows.
* Capacity searches are ``l4.sim.capacity.find_capacity`` driven from threads whose probes are
  ordinary runs: they share the worker pool, the cache and the de-duplication with the sweeps.
  A probe stopped by the wall-clock limit counts as missing the target (only deeply overloaded
  runs are that slow); any other failed probe fails the search.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from l4.core.migration import MigrationConfig, MigrationMechanism
from l4.costmodel.profile import Profile, load_profile
from l4.errors import L4Error, ValidationError
from l4.instance.config import InstanceConfig
from l4.metrics import SloConfig
from l4.sim.capacity import attainment, failing_classes, find_capacity
from l4.sim.runner import SimConfig, run_policy
from l4.workload import WorkloadSpec, build_workload
from l4.workload.traces import bundled_trace, bundled_traces, resolve_trace

ROOT = Path(__file__).resolve().parents[1]
# Bump when the way a run is built from its spec changes (the key then changes with it).
HARNESS_VERSION = 3
# Seeds of a timestamped trace replay different windows of it (``WorkloadSpec.offset_s``):
# seed k starts at fraction k * WINDOW_STRIDE (mod 1) of the trace's span. The golden-section
# stride spreads any number of seeds over the trace, and adding seeds leaves earlier ones alone.
WINDOW_STRIDE = 0.381966
DAY_S = 86_400.0

KV_TRANSFER = MigrationMechanism.KV_TRANSFER.value
REPLAY = MigrationMechanism.REPLAY.value

Record = dict[str, object]


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """One deployment and workload of EVALUATION.md, with its rate sweep.

    Rates are multipliers of the trace's own mean rate (its timestamps, or the bundled default
    rate for traces without them). ``capacity_start_scale`` is where the capacity bisection starts
    (it doubles or halves from there), a guess near the baselines' capacity that saves probes; it
    does not bound the result. ``duration_s`` is the arrival window of every run: long enough for
    a few thousand requests at capacity (the high-rate traces need less time for that).
    ``premise``: decode batches mix short and long contexts (L4 should win clearly there); those
    scenarios also run the heterogeneity curve. ``ablations``: the L4 ablations run here.
    ``reduced``: a second profile of a scenario measured in full elsewhere.
    """

    name: str
    title: str
    trace: str
    profile: str
    num_instances: int
    rate_scales: tuple[float, ...]
    quick_rate_scales: tuple[float, ...]
    capacity_start_scale: float
    duration_s: float = 300.0
    premise: bool = False
    ablations: bool = False
    # a second profile of a scenario already measured in full: the main baselines, l4 and
    # l4_bids with kv-transfer only
    reduced: bool = False


# Rates from `l4 capacity` of least_prefill (seed 0, 300 s unless stated, calibrated alpha, the
# per-class rule): mooncake 3B x5.7 (the best baseline, length_buckets, x6.2 in the last suite),
# azure-longdoc x8.7 (150 s), servegen-r1 x17.4, azure-conv 3B about x64-x90 (60 s), sharegpt 3B
# x16-x32 (120 s), servegen-mmid beyond x16 (120 s). Each sweep starts well below and ends past
# the better baselines' capacity; the report states where the measured capacities fall in it.
SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="mooncake-3b",
        title="Long prompts, short outputs: Mooncake on 16 x Llama-3.2-3B (H100)",
        trace="mooncake",
        profile="h100-llama-3.2-3b",
        num_instances=16,
        rate_scales=(2.0, 6.0),
        quick_rate_scales=(2.0, 6.0),
        capacity_start_scale=4.0,
        duration_s=200.0,
        ablations=True,
    ),
    Scenario(
        name="azure-longdoc-3b",
        title="Chat with 10% long documents: Azure chat + Mooncake documents on 16 x Llama-3.2-3B",
        trace="azure-longdoc",
        profile="h100-llama-3.2-3b",
        num_instances=16,
        rate_scales=(4.0, 8.0),
        quick_rate_scales=(4.0, 8.0),
        capacity_start_scale=8.0,
        duration_s=120.0,
        premise=True,
    ),
    Scenario(
        name="servegen-r1-3b",
        title="Reasoning: ServeGen DeepSeek-R1 clients on 16 x Llama-3.2-3B",
        trace="servegen-r1",
        profile="h100-llama-3.2-3b",
        num_instances=16,
        rate_scales=(8.0, 16.0),
        quick_rate_scales=(8.0, 16.0),
        capacity_start_scale=16.0,
        duration_s=240.0,
        premise=True,
    ),
    Scenario(
        name="azure-conv-3b",
        title="Short chat: Azure LLM 2023 conversation trace on 16 x Llama-3.2-3B",
        trace="azure-conv",
        profile="h100-llama-3.2-3b",
        num_instances=16,
        rate_scales=(16.0, 64.0),
        quick_rate_scales=(16.0, 64.0),
        capacity_start_scale=64.0,
        duration_s=30.0,
    ),
    Scenario(
        name="sharegpt-3b",
        title="Medium: ShareGPT lengths, Poisson arrivals, on 16 x Llama-3.2-3B",
        trace="sharegpt",
        profile="h100-llama-3.2-3b",
        num_instances=16,
        rate_scales=(4.0, 16.0),
        quick_rate_scales=(4.0, 16.0),
        capacity_start_scale=16.0,
        duration_s=60.0,
    ),
    Scenario(
        name="servegen-mmid-3b",
        title="Production language traffic: ServeGen m-mid clients on 16 x Llama-3.2-3B",
        trace="servegen-mmid",
        profile="h100-llama-3.2-3b",
        num_instances=16,
        rate_scales=(16.0, 64.0),
        quick_rate_scales=(16.0, 64.0),
        capacity_start_scale=64.0,
        duration_s=30.0,
    ),
    Scenario(
        name="mooncake-8b",
        title="Long prompts, short outputs: Mooncake on 16 x Llama-3.1-8B (H100)",
        trace="mooncake",
        profile="h100-llama-3.1-8b",
        num_instances=16,
        rate_scales=(1.0, 3.0),
        quick_rate_scales=(1.0, 3.0),
        capacity_start_scale=3.0,
        duration_s=200.0,
        reduced=True,
    ),
)

BASELINES: tuple[str, ...] = (
    "round_robin",
    "least_load",
    "least_prefill",
    "llumnix",
    "length_buckets",
    "pd_disagg",
)
# Fixed prefill/decode splits besides pd_disagg's own sizing: capacity only, the best reported.
PD_SPLITS: tuple[str, ...] = ("pd_disagg:4", "pd_disagg:12")
L4_POLICIES: tuple[str, ...] = ("l4", "l4_static", "l4_bids")
ABLATIONS: tuple[str, ...] = (
    "random",
    "l4_count",
    "l4_memory",
    "l4_rr",
    "l4_meanlat",
    "l4_nospill",
    "l4_nooverflow",
)
# alpha = None is the profile's measured table. The heterogeneity curve adds constants: 0 and the
# one that makes a 1 x 64K + 15 x 100-token decode batch's attention twice as slow as a uniform
# batch of the same tokens (the paper's premise; PAPER_ALPHA).
PAPER_ALPHA = 0.0736
ALPHAS: tuple[float | None, ...] = (None,)
CURVE_ALPHAS: tuple[float, ...] = (0.0, PAPER_ALPHA)
# A shared KV store (LMCache-style) in host memory: what replay+store loads contexts at.
STORE_BANDWIDTH_BYTES_PER_S = 10e9


@dataclass(frozen=True, slots=True, kw_only=True)
class Roles:
    """Which policies each comparison of the report uses (L4.md sections 6-7)."""

    subject: str = "l4"
    baselines: tuple[str, ...] = (*BASELINES, *PD_SPLITS)
    # capacity only (no sweep): the fixed prefill/decode splits
    capacity_only: tuple[str, ...] = PD_SPLITS
    l4: tuple[str, ...] = L4_POLICIES
    ablations: tuple[str, ...] = ABLATIONS  # only in scenarios with ablations=True
    # (bid-ask, round robin inside groups): the output-token CV comparison
    balance_pair: tuple[str, str] = ("l4", "l4_rr")
    # QoE-driven refinement first, then its ablations
    refinement: tuple[str, ...] = ("l4", "l4_static", "l4_count", "l4_memory")
    # staging itself: L4 against one stage of all instances with the same bids
    staging: tuple[str, ...] = ("l4", "l4_bids")
    # the planner's objective, spill and overflow, each switched off
    objective: tuple[str, ...] = ("l4", "l4_meanlat", "l4_nospill", "l4_nooverflow")
    # also run with token replay, and with replay from a shared KV store
    # (llumnix is left out: with abundant KV it migrates only when memory runs out, so its
    # replay runs would repeat its kv-transfer ones at twice the cost)
    replay: tuple[str, ...] = ("l4", "pd_disagg")
    store: tuple[str, ...] = ("l4", "pd_disagg")  # capacity only
    # the heterogeneity curve (capacity only, premise scenarios)
    curve: tuple[str, ...] = ("l4", "least_prefill", "pd_disagg")
    # no capacity search outside the ablation scenario
    sweep_only: tuple[str, ...] = ("l4_static", "l4_rr", "l4_nospill", "l4_nooverflow")
    # the policies of a reduced scenario (besides the subject)
    reduced: tuple[str, ...] = (*BASELINES, "l4_bids")
    # policies that move running requests (for the mechanism tables)
    migrating: tuple[str, ...] = ("llumnix", "pd_disagg", *L4_POLICIES)

    def wanted(self) -> tuple[str, ...]:
        names = (*self.baselines, self.subject, *self.l4, *self.ablations)
        return tuple(dict.fromkeys(names))


def alpha_label(alpha: float | None) -> str:
    return "calibrated" if alpha is None else f"{alpha:g}"


STORE = "replay+store"


def migration_config(label: str) -> MigrationConfig:
    """The MigrationConfig of a mechanism label of the suite (kv-transfer, replay, replay+store)."""
    if label == STORE:
        return MigrationConfig(
            mechanism=MigrationMechanism.REPLAY,
            kv_store_bandwidth_bytes_per_s=STORE_BANDWIDTH_BYTES_PER_S,
        )
    return MigrationConfig(mechanism=MigrationMechanism(label))


def rate_key(scale: float) -> float:
    """Rate multipliers as keys: bisection midpoints rounded so that equal rates compare equal."""
    return float(f"{scale:.6g}")


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of every file under src/l4 (code, profiles, bundled traces) and the harness version."""
    digest = hashlib.sha256(f"harness-{HARNESS_VERSION}".encode())
    src = ROOT / "src" / "l4"
    for path in sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(src)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def git_describe() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class Cell:
    """Everything but the rate and the seed: one line of a sweep, one capacity per seed."""

    scenario: Scenario
    alpha: float | None
    mechanism: str
    policy: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSpec:
    cell: Cell
    rate_scale: float
    seed: int
    duration_s: float
    slo_scale: float
    code: str

    def key(self) -> dict[str, object]:
        sc = self.cell.scenario
        return {
            "code": self.code,
            "scenario": sc.name,
            "trace": sc.trace,
            "profile": sc.profile,
            "instances": sc.num_instances,
            "policy": self.cell.policy,
            "rate_scale": self.rate_scale,
            "seed": self.seed,
            "alpha": self.cell.alpha,
            "mechanism": self.cell.mechanism,
            "duration_s": self.duration_s,
            "slo_scale": self.slo_scale,
        }

    def key_id(self) -> str:
        text = json.dumps(self.key(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def label(self) -> str:
        c = self.cell
        return (
            f"{c.scenario.name} {c.policy} x{self.rate_scale:g} seed={self.seed} "
            f"alpha={alpha_label(c.alpha)} {c.mechanism}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What the suite runs. ``policies`` are the registered (and selected) ones, in report order.

    Per scenario: every policy at the calibrated alpha with kv-transfer (sweep and capacity; the
    fixed prefill/decode splits capacity only), the ablations where the scenario asks for them,
    token replay and replay from a shared KV store for ``roles.replay`` / ``roles.store``, and in
    premise scenarios the heterogeneity curve: ``roles.curve`` at ``curve_alphas``, capacity
    only. ``duration_s`` overrides every scenario's own window when set.
    """

    scenarios: tuple[Scenario, ...]
    policies: tuple[str, ...]
    missing_policies: tuple[str, ...]
    roles: Roles
    seeds: tuple[int, ...]
    alphas: tuple[float | None, ...]
    duration_s: float | None
    quick: bool
    capacity: bool
    capacity_iterations: int
    goodput_target: float
    slo_scale: float
    code: str
    curve_alphas: tuple[float, ...] = CURVE_ALPHAS
    mechanisms_extra: bool = True  # replay and replay+store runs

    def __post_init__(self) -> None:
        if not self.scenarios:
            raise ValidationError("no scenario to run")
        if not self.policies:
            raise ValidationError("no registered policy to run")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise ValidationError(f"seeds must be >= 0 and at least one, got {self.seeds}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValidationError(f"duration must be > 0 s, got {self.duration_s}")
        if not 0.0 < self.goodput_target <= 1.0:
            raise ValidationError(f"goodput target must be in (0, 1], got {self.goodput_target}")

    def rates(self, scenario: Scenario) -> tuple[float, ...]:
        return scenario.quick_rate_scales if self.quick else scenario.rate_scales

    def duration(self, scenario: Scenario) -> float:
        if self.duration_s is not None:
            return self.duration_s
        return scenario.duration_s / 2 if self.quick else scenario.duration_s

    def scenario_alphas(self, scenario: Scenario) -> tuple[float | None, ...]:
        extra = self.curve_alphas if scenario.premise and self.capacity else ()
        return tuple(dict.fromkeys((*self.alphas, *extra)))

    def scenario_policies(self, scenario: Scenario, alpha: float | None) -> tuple[str, ...]:
        roles = self.roles
        if alpha not in self.alphas:  # a curve point
            names: tuple[str, ...] = roles.curve
        elif scenario.reduced:
            names = (*roles.reduced, roles.subject)
        else:
            names = (*roles.baselines, roles.subject, *roles.l4)
            if scenario.ablations:
                names += roles.ablations
        return tuple(p for p in self.policies if p in names)

    def mechanisms(
        self, scenario: Scenario, policy: str, alpha: float | None = None
    ) -> tuple[str, ...]:
        if not self.mechanisms_extra or alpha not in self.alphas or scenario.reduced:
            return (KV_TRANSFER,)
        out = [KV_TRANSFER]
        if policy in self.roles.replay:
            out.append(REPLAY)
        if policy in self.roles.store:
            out.append(STORE)
        return tuple(out)

    def cells(self) -> list[Cell]:
        return [
            Cell(scenario=sc, alpha=alpha, mechanism=mech, policy=policy)
            for sc in self.scenarios
            for alpha in self.scenario_alphas(sc)
            for policy in self.scenario_policies(sc, alpha)
            for mech in self.mechanisms(sc, policy, alpha)
        ]

    def swept(self, cell: Cell) -> bool:
        """Whether the cell runs the rate sweep (curve points and fixed splits: capacity only)."""
        if cell.alpha not in self.alphas or cell.policy in self.roles.capacity_only:
            return False
        if cell.mechanism == STORE:
            return False
        return not (cell.mechanism == REPLAY and cell.policy != self.roles.subject)

    def searched(self, cell: Cell) -> bool:
        """Whether the cell's capacity is bisected: not for ``roles.sweep_only`` (l4_static answers
        "is a re-plan ever worse than the initial plan" in the sweep; l4_rr the balance and
        l4_nospill and l4_nooverflow the spill and overflow comparisons at the sweep's rates)."""
        return cell.policy not in self.roles.sweep_only

    def spec(self, cell: Cell, rate_scale: float, seed: int) -> RunSpec:
        return RunSpec(
            cell=cell,
            rate_scale=rate_key(rate_scale),
            seed=seed,
            duration_s=self.duration(cell.scenario),
            slo_scale=self.slo_scale,
            code=self.code,
        )

    def sweep_specs(self) -> list[RunSpec]:
        return [
            self.spec(cell, rate, seed)
            for cell in self.cells()
            if self.swept(cell)
            for rate in self.rates(cell.scenario)
            for seed in self.seeds
        ]


# ----------------------------------------------------------------------------- one run


@lru_cache(maxsize=16)
def window_offset_s(trace: str, seed: int) -> float:
    """Where in a timestamped trace (its own seconds) seed ``seed`` starts, or at what time of
    day a ServeGen workload does (whole minutes); 0 for traces without timestamps, whose seed
    draws the arrivals instead."""
    if trace in bundled_traces() and bundled_trace(trace).kind == "servegen":
        return 60.0 * round(DAY_S * ((seed * WINDOW_STRIDE) % 1.0) / 60.0)
    arrival_s = resolve_trace(trace)[1].arrival_s
    if arrival_s is None or len(arrival_s) < 2:
        return 0.0
    span_s = float(arrival_s[-1] - arrival_s[0])
    return span_s * ((seed * WINDOW_STRIDE) % 1.0)


@lru_cache(maxsize=16)
def _profile(name: str, alpha: float | None) -> Profile:
    return load_profile(name).with_overrides(alpha=alpha)


class RunTooSlowError(L4Error):
    """A run went past the suite's wall-clock limit per run."""


def run_spec(spec: RunSpec, timeout_s: float | None = None) -> Record:
    """Simulate one spec (in a worker process). Errors come back as a record with ``error``;
    a run stopped after ``timeout_s`` of wall time also carries ``timeout_s``."""
    t0 = time.perf_counter()
    cell, sc = spec.cell, spec.cell.scenario
    record: Record = {"key_id": spec.key_id(), "key": spec.key()}

    def watchdog(_fraction: float) -> None:
        # The simulator reports progress every few hundred events: a cheap place to give up.
        if timeout_s is not None and time.perf_counter() - t0 > timeout_s:
            raise RunTooSlowError(f"stopped after {timeout_s:g} s of wall time (--run-timeout)")

    try:
        profile = _profile(sc.profile, cell.alpha)
        workload = build_workload(
            WorkloadSpec(
                trace=sc.trace,
                max_context_tokens=profile.model.max_context_tokens,
                rate_scale=spec.rate_scale,
                duration_s=spec.duration_s,
                seed=spec.seed,
                offset_s=window_offset_s(sc.trace, spec.seed),
            )
        )
        cfg = SimConfig(
            profile=profile,
            instance_config=InstanceConfig.from_profile(profile),
            num_instances=sc.num_instances,
            migration=migration_config(cell.mechanism),
            slo=SloConfig(scale=spec.slo_scale),
            seed=spec.seed,
        )
        summary = run_policy(cfg, workload, cell.policy, progress=watchdog).summary
    except Exception as exc:  # a policy still being written must not take the suite down
        record["error"] = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, RunTooSlowError):
            record["timeout_s"] = timeout_s
        record["wall_s"] = time.perf_counter() - t0
        return record
    record["summary"] = summary
    record["workload"] = {
        "requests": len(workload.requests),
        "mean_rate_rps": workload.mean_rate_rps,
        "span_s": workload.requests[-1].arrival_s,
        "clipped_requests": workload.clipped_requests,
        "timestamped": workload.timestamped,
    }
    record["wall_s"] = time.perf_counter() - t0
    return record


# ----------------------------------------------------------------------------- cache


class RunCache:
    """Finished runs by key id, mirrored to an append-only JSON-lines file (None: memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: dict[str, Record] = {}
        self.skipped_lines = 0
        self._lock = threading.Lock()
        if path is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by an interrupted write
                    self.skipped_lines += 1
                    continue
                if isinstance(record, dict) and isinstance(record.get("key_id"), str):
                    self.records[record["key_id"]] = record
        self.loaded = len(self.records)

    def get(self, key_id: str) -> Record | None:
        with self._lock:
            return self.records.get(key_id)

    def put(self, record: Record) -> None:
        line = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
        with self._lock:
            self.records[str(record["key_id"])] = record
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(line + "\n")


# ----------------------------------------------------------------------------- execution

OnRecord = Callable[[RunSpec, Record, bool], None]  # (spec, record, from_cache)


class RunFailedError(L4Error):
    """A run needed by a capacity search failed; the search is reported as failed."""


class Scheduler:
    """Submits runs to a pool once each: cache hits and in-flight duplicates share one future."""

    def __init__(
        self,
        pool: Executor,
        cache: RunCache,
        on_record: OnRecord,
        *,
        timeout_s: float | None = None,
    ) -> None:
        self._pool = pool
        self._timeout_s = timeout_s
        self._cache = cache
        self._on_record = on_record
        self._futures: dict[str, tuple[RunSpec, Future[Record]]] = {}
        self._lock = threading.Lock()
        self.simulated = 0

    def submit(self, spec: RunSpec) -> Future[Record]:
        key_id = spec.key_id()
        with self._lock:
            known = self._futures.get(key_id)
            if known is not None:
                return known[1]
            cached = self._cache.get(key_id)
            if cached is not None and not self._still_valid(cached):
                cached = None
            future: Future[Record]
            if cached is not None:
                future = Future()
                future.set_result(cached)
            else:
                future = self._pool.submit(run_spec, spec, self._timeout_s)
            self._futures[key_id] = (spec, future)
        if cached is not None:
            self._on_record(spec, cached, True)
        else:
            future.add_done_callback(lambda f: self._finished(spec, f))
        return future

    def _still_valid(self, record: Record) -> bool:
        """A cached timeout stands only while the limit is not larger than the one it hit."""
        hit = record.get("timeout_s")
        if not isinstance(hit, int | float):
            return True
        return self._timeout_s is not None and self._timeout_s <= hit

    def finished(self) -> list[tuple[RunSpec, Record]]:
        """Every submitted run that completed, in submission order."""
        with self._lock:
            entries = list(self._futures.values())
        return [(spec, f.result()) for spec, f in entries if f.done() and not f.cancelled()]

    def _finished(self, spec: RunSpec, future: Future[Record]) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # the caller sees it on result()
        record = future.result()
        self._cache.put(record)
        with self._lock:
            self.simulated += 1
        self._on_record(spec, record, False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacityFound:
    rate_scale: float | None  # None: missed the target even at the lowest probe
    requests_per_s: float | None
    # (rate multiplier, SLO attainment, judged length classes below the target)
    probes: tuple[tuple[float, float, tuple[str, ...]], ...]
    error: str | None = None

    def capped_by(self) -> tuple[str, ...]:
        """What failed at the lowest probe above the capacity: "overall" and/or class names."""
        above = [p for p in self.probes if self.rate_scale is None or p[0] > self.rate_scale]
        if not above:
            return ()
        return above[0][2]


def search_capacity(
    scheduler: Scheduler, plan: Plan, cell: Cell, seed: int, *, iterations: int
) -> CapacityFound:
    """``find_capacity`` on the rate multiplier, starting at the scenario's guess."""
    start = cell.scenario.capacity_start_scale

    def probe(scale: float) -> dict[str, object]:
        record = scheduler.submit(plan.spec(cell, start * scale, seed)).result()
        if "error" in record and isinstance(record.get("timeout_s"), int | float):
            # Stopped by the wall-clock limit: queues that deep miss the target (the
            # simulation's cost grows with its backlog); counted as not sustained.
            return {"slo_attainment": 0.0, "timed_out": True}
        if "error" in record:
            raise RunFailedError(str(record["error"]))
        summary = dict(_mapping(record.get("summary")))
        summary["requests_per_s"] = _mapping(record.get("workload")).get("mean_rate_rps")
        return summary

    try:
        found = find_capacity(probe, target=plan.goodput_target, iterations=iterations)
    except RunFailedError as exc:
        return CapacityFound(rate_scale=None, requests_per_s=None, probes=(), error=str(exc))
    target = plan.goodput_target

    def failing(summary: Mapping[str, object]) -> tuple[str, ...]:
        overall = ("overall",) if attainment(summary) < target else ()
        return (*overall, *failing_classes(summary, target))

    probes = tuple(
        (rate_key(start * s), attainment(summary), failing(summary)) for s, summary in found.probes
    )
    if found.rate_scale is None or found.summary is None:
        return CapacityFound(rate_scale=None, requests_per_s=None, probes=probes)
    rps = found.summary.get("requests_per_s")
    return CapacityFound(
        rate_scale=rate_key(start * found.rate_scale),
        requests_per_s=float(rps) if isinstance(rps, int | float) else None,
        probes=probes,
    )


def best_baseline(
    plan: Plan,
    capacity: Mapping[tuple[Cell, int], CapacityFound],
    scenario: Scenario,
    mechanism: str = KV_TRANSFER,
) -> tuple[Cell, dict[int, float]] | None:
    """The baseline with the highest median capacity (calibrated alpha) under ``mechanism`` (a
    non-migrating baseline counts with its kv-transfer runs, which the mechanism does not
    touch), and its capacity per seed; None when no baseline found one."""
    alpha = plan.alphas[0]
    best: tuple[float, str, Cell, dict[int, float]] | None = None
    for policy in plan.scenario_policies(scenario, alpha):
        if policy not in plan.roles.baselines:
            continue
        mechs = plan.mechanisms(scenario, policy, alpha)
        mech = mechanism if mechanism in mechs else KV_TRANSFER
        if mech != mechanism and policy.partition(":")[0] in plan.roles.migrating:
            continue  # a migrating baseline not run with this mechanism: not comparable
        cell = Cell(scenario=scenario, alpha=alpha, mechanism=mech, policy=policy)
        per_seed = {
            seed: found.rate_scale
            for seed in plan.seeds
            if (found := capacity.get((cell, seed))) is not None and found.rate_scale is not None
        }
        if not per_seed:
            continue
        median = statistics.median(per_seed.values())
        if best is None or (median, best[1]) > (best[0], policy):
            best = (median, policy, cell, per_seed)
    return None if best is None else (best[2], best[3])


def at_capacity_specs(
    plan: Plan, capacity: Mapping[tuple[Cell, int], CapacityFound]
) -> list[RunSpec]:
    """The subject at the best baseline's capacity, per seed and mechanism: where EVALUATION's
    "at the best baseline's capacity" latencies are measured."""
    out: list[RunSpec] = []
    alpha = plan.alphas[0]
    if not plan.capacity or plan.roles.subject not in plan.policies:
        return out
    for sc in plan.scenarios:
        for mech in plan.mechanisms(sc, plan.roles.subject, alpha):
            if mech == STORE:
                continue  # compared by capacity only
            found = best_baseline(plan, capacity, sc, mech)
            if found is None:
                continue
            subject = Cell(scenario=sc, alpha=alpha, mechanism=mech, policy=plan.roles.subject)
            out.extend(plan.spec(subject, rate, seed) for seed, rate in found[1].items())
    return out


def make_pool(jobs: int) -> Executor:
    """Worker processes (spawned: the parent runs threads), or one in-process worker for 1 job."""
    if jobs < 1:
        raise ValidationError(f"--jobs must be >= 1, got {jobs}")
    if jobs == 1:
        return ThreadPoolExecutor(max_workers=1)
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))


@dataclass(slots=True, kw_only=True)
class SuiteData:
    """Everything the report reads: the plan, every run record, every capacity search."""

    plan: Plan
    records: dict[str, Record]
    capacity: dict[tuple[Cell, int], CapacityFound] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (run label, error)
    errors: dict[str, str] = field(default_factory=dict)  # key id -> error of a failed run
    simulated: int = 0
    wall_s: float = 0.0


def execute(
    plan: Plan,
    cache: RunCache,
    jobs: int,
    on_record: OnRecord,
    *,
    timeout_s: float | None = None,
) -> SuiteData:
    """Run the sweeps and the capacity searches of ``plan`` (cached runs are not redone);
    ``timeout_s`` bounds the wall time of one run."""
    t0 = time.perf_counter()
    pool = make_pool(jobs)
    # Search threads only wait on pool futures; enough of them keep every worker busy.
    threads = ThreadPoolExecutor(max_workers=max(8, 4 * jobs))
    scheduler = Scheduler(pool, cache, on_record, timeout_s=timeout_s)
    try:
        sweep = [scheduler.submit(spec) for spec in plan.sweep_specs()]
        searches = {
            (cell, seed): threads.submit(
                search_capacity, scheduler, plan, cell, seed, iterations=plan.capacity_iterations
            )
            for cell in (plan.cells() if plan.capacity else [])
            if plan.searched(cell)
            for seed in plan.seeds
        }
        for future in sweep:
            future.result()
        capacity = {key: future.result() for key, future in searches.items()}
        followups = [scheduler.submit(spec) for spec in at_capacity_specs(plan, capacity)]
        for future in followups:
            future.result()
    except BaseException:
        threads.shutdown(wait=False, cancel_futures=True)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        threads.shutdown(wait=True)
        # After this every done-callback (cache writes, progress) has run.
        pool.shutdown(wait=True)
    records: dict[str, Record] = {}
    failures: list[tuple[str, str]] = []
    errors: dict[str, str] = {}
    for spec, record in scheduler.finished():
        if "error" in record:
            failures.append((spec.label(), str(record["error"])))
            errors[spec.key_id()] = str(record["error"])
        else:
            records[spec.key_id()] = record
    return SuiteData(
        plan=plan,
        records=records,
        capacity=capacity,
        failures=sorted(failures),
        errors=errors,
        simulated=scheduler.simulated,
        wall_s=time.perf_counter() - t0,
    )


# ----------------------------------------------------------------------------- aggregation

# name -> path into the summary of l4.metrics.summarize
METRICS: dict[str, tuple[str, ...]] = {
    "e2e_mean_s": ("e2e_s", "mean"),
    "e2e_p99_s": ("e2e_s", "p99"),
    "ttft_mean_s": ("ttft_s", "mean"),
    "ttft_p99_s": ("ttft_s", "p99"),
    "tpot_mean_s": ("tpot_s", "mean"),
    "itl_p99_s": ("itl_s", "p99"),
    "throughput_rps": ("throughput", "requests_per_s"),
    "goodput_rps": ("goodput_requests_per_s",),
    "slo_attainment": ("slo_attainment",),
    "output_tokens_cv": ("output_tokens_cv",),
    "migrations": ("migrations",),
    "failed_migrations": ("failed_migrations",),
    "preemptions": ("preemptions",),
    "completed": ("completed",),
    "unfinished": ("unfinished",),
}
WORKLOAD_METRICS: tuple[str, ...] = ("requests", "mean_rate_rps", "span_s", "clipped_requests")


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def metric(record: Mapping[str, object], name: str) -> float | None:
    if name in WORKLOAD_METRICS:
        return _number(_mapping(record.get("workload")).get(name))
    node: object = record.get("summary")
    for key in METRICS[name]:
        node = _mapping(node).get(key)
    return _number(node)


@dataclass(frozen=True, slots=True, kw_only=True)
class Stat:
    """Median over seeds, with the range; ``n`` seeds had a value."""

    median: float
    lo: float
    hi: float
    n: int

    def as_json(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.lo, "max": self.hi, "n": self.n}


def stat(values: Iterable[float | None]) -> Stat | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return Stat(median=statistics.median(present), lo=min(present), hi=max(present), n=len(present))


class Results:
    """Read access to a ``SuiteData`` by cell, rate and seed."""

    def __init__(self, data: SuiteData) -> None:
        self.data = data
        self.plan = data.plan

    def record(self, cell: Cell, rate: float, seed: int) -> Record | None:
        return self.data.records.get(self.plan.spec(cell, rate, seed).key_id())

    def values(self, cell: Cell, rate: float, name: str) -> list[float | None]:
        out: list[float | None] = []
        for seed in self.plan.seeds:
            record = self.record(cell, rate, seed)
            out.append(None if record is None else metric(record, name))
        return out

    def point(self, cell: Cell, rate: float, name: str) -> Stat | None:
        return stat(self.values(cell, rate, name))

    def capacity(self, cell: Cell) -> tuple[Stat | None, Stat | None]:
        """(rate multiplier, req/s) at capacity over seeds; seeds without one are left out."""
        found = [self.data.capacity.get((cell, seed)) for seed in self.plan.seeds]
        return (
            stat(f.rate_scale if f else None for f in found),
            stat(f.requests_per_s if f else None for f in found),
        )

    def failed(self, cell: Cell, rate: float) -> bool:
        """Some seed's run at this point failed (raised, or hit the wall-clock limit)."""
        return any(
            self.plan.spec(cell, rate, seed).key_id() in self.data.errors
            for seed in self.plan.seeds
        )

    def capacity_failed(self, cell: Cell) -> bool:
        return any(f is not None and f.error is not None for f in self.capacity_runs(cell))

    def capacity_runs(self, cell: Cell) -> Sequence[CapacityFound | None]:
        return [self.data.capacity.get((cell, seed)) for seed in self.plan.seeds]

    def has(self, policy: str) -> bool:
        return policy in self.plan.policies

    def has_in(self, scenario: Scenario, policy: str, alpha: float | None = None) -> bool:
        """The policy runs in this scenario at this alpha (the calibrated one by default)."""
        a = self.plan.alphas[0] if alpha is None else alpha
        return policy in self.plan.scenario_policies(scenario, a)

    def best_baseline(self, scenario: Scenario, mechanism: str = KV_TRANSFER) -> Cell | None:
        found = best_baseline(self.plan, self.data.capacity, scenario, mechanism)
        return None if found is None else found[0]
