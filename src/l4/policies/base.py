"""What a global scheduling policy sees and does, and the registry keyed by CLI name.

A policy is a plain object with the clock injected: the simulator and the gateway call `route`
for each arrival and `on_tick` every `tick_interval_s`, passing a `ClusterView` (`l4.views`) that
exposes read-only instance state and one action, `migrate`. Policies hold no global state; every
run constructs its own from a `PolicyContext`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

from l4.errors import UnknownNameError
from l4.instance.sequence import Sequence as Seq
from l4.request import RequestSpec
from l4.views import ClusterView, PolicyContext


class Policy(Protocol):
    tick_interval_s: float | None

    def route(self, request: RequestSpec, cluster: ClusterView, now_s: float) -> int: ...

    def on_tick(self, cluster: ClusterView, now_s: float) -> None: ...

    def groups(self) -> list[list[int]]:
        """Instance groups for balance metrics (one group for single-group policies)."""
        ...


@runtime_checkable
class AdmissionObserver(Protocol):
    """Optional: a policy that wants the serving handle of each request it routed.

    Called right after the request joins the instance's queue; a gateway has the same handle (the
    proxied stream), so policies may follow the request's length from it.
    """

    def admitted(self, seq: Seq, instance_id: int, now_s: float) -> None: ...


@runtime_checkable
class StatsReporter(Protocol):
    """Optional: a policy with counters worth reporting (moves, trades, messages)."""

    def stats(self) -> dict[str, object]: ...


PolicyFactory = Callable[[PolicyContext], Policy]
# A policy family with an option in its CLI name, ``family:OPTION`` (e.g. ``pd_disagg:4``).
OptionFactory = Callable[[PolicyContext, str], Policy]
_REGISTRY: dict[str, PolicyFactory] = {}
_OPTIONS: dict[str, OptionFactory] = {}


def register_policy(name: str) -> Callable[[PolicyFactory], PolicyFactory]:
    def deco(factory: PolicyFactory) -> PolicyFactory:
        if name in _REGISTRY:
            raise ValueError(f"policy {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


def register_policy_option(family: str) -> Callable[[OptionFactory], OptionFactory]:
    """Register ``family:OPTION`` names; the factory validates the option (``ValidationError``)."""

    def deco(factory: OptionFactory) -> OptionFactory:
        if family in _OPTIONS:
            raise ValueError(f"policy family {family!r} registered twice")
        _OPTIONS[family] = factory
        return factory

    return deco


def policy_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def option_families() -> list[str]:
    """Families that take ``family:OPTION`` names."""
    _load_builtin()
    return sorted(_OPTIONS)


def _known(name: str) -> bool:
    family, sep, option = name.partition(":")
    return name in _REGISTRY or (bool(sep) and bool(option) and family in _OPTIONS)


def _listed() -> list[str]:
    return [*_REGISTRY, *(f"{f}:OPTION" for f in sorted(_OPTIONS))]


def make_policy(name: str, ctx: PolicyContext) -> Policy:
    _load_builtin()
    if not _known(name):
        raise UnknownNameError("policy", name, _listed())
    if name in _REGISTRY:
        return _REGISTRY[name](ctx)
    family, _, option = name.partition(":")
    return _OPTIONS[family](ctx, option)


def parse_policy_list(text: str) -> list[str]:
    _load_builtin()
    names = [p.strip() for p in text.split(",") if p.strip()]
    known = _listed()
    for name in names:
        if not _known(name):
            raise UnknownNameError("policy", name, known)
    if not names:
        raise UnknownNameError("policy", text, known)
    return names


def _load_builtin() -> None:
    # Importing the modules registers their policies (the registry is filled once, at import).
    from l4.policies import (  # noqa: F401
        baselines,
        least_prefill,
        length_aware,
        length_buckets,
        llumnix,
        pd_disagg,
    )


def one_group(num_instances: int) -> list[list[int]]:
    return [list(range(num_instances))]


def available(cluster: ClusterView, ids: Iterable[int]) -> list[int]:
    """The instances of ``ids`` in service."""
    return [i for i in ids if cluster.instance(i).available]


def least_loaded(cluster: ClusterView, ids: Iterable[int]) -> int:
    """vLLM's data-parallel rule over ``ids``: fewest ``4 x waiting + running``, ties to the
    first listed."""
    best_i, best = -1, -1
    for i in ids:
        inst = cluster.instance(i)
        score = 4 * inst.num_waiting + inst.num_running
        if best < 0 or score < best:
            best, best_i = score, i
    return best_i
