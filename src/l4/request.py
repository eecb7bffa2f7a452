"""The request as a workload describes it: immutable, shared by simulator, engine and gateway."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestSpec:
    """One request of a workload.

    ``output_tokens`` is the number of tokens the request will generate (known to the simulator,
    unknown to policies: policies must not read it).
    """

    request_id: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
