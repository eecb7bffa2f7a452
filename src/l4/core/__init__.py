"""Core algorithms of L4: length grid, workload summaries, QoE stage model and DP planner.

Pure and clock-free: nothing here imports the simulator, the engine, the gateway or the CLI, and
nothing reads files or the environment (``l4.planning_cli`` is the I/O edge of ``l4 plan``).
"""

from l4.core.grid import LengthGrid, exponential_grid
from l4.core.migration import MigrationModel
from l4.core.objective import QoeWeights
from l4.core.planner import Plan, PlannedStage, brute_force, plan_stages, solve_dp
from l4.core.qoe import StageCosts, StageModel
from l4.core.summary import (
    RangeTable,
    WorkloadSummary,
    summarize_lengths,
    summarize_requests,
    summarize_workload,
    summary_from_histogram,
)

__all__ = [
    "LengthGrid",
    "MigrationModel",
    "Plan",
    "PlannedStage",
    "QoeWeights",
    "RangeTable",
    "StageCosts",
    "StageModel",
    "WorkloadSummary",
    "brute_force",
    "exponential_grid",
    "plan_stages",
    "solve_dp",
    "summarize_lengths",
    "summarize_requests",
    "summarize_workload",
    "summary_from_histogram",
]
