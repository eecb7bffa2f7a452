"""Workloads: bundled and user traces, arrival processes, cutting and clipping.

``build_workload(WorkloadSpec(...))`` turns a trace name or path plus rate, cut and context
options into a deterministic, sorted tuple of ``RequestSpec``. Formats and bundled traces are
described in ``formats.py`` and ``traces.py``; provenance of the data in ``data/LICENSES.md``.
"""

from __future__ import annotations

from l4.workload.traces import BundledTrace, bundled_trace, bundled_traces
from l4.workload.workload import Workload, WorkloadSpec, build_workload

__all__ = [
    "BundledTrace",
    "Workload",
    "WorkloadSpec",
    "build_workload",
    "bundled_trace",
    "bundled_traces",
]
