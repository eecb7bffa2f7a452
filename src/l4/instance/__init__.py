"""One vLLM-v1-like engine instance: scheduler, paged KV accounting, closed-form decode steps."""

from l4.instance.config import InstanceConfig
from l4.instance.engine import Instance, StepPlan, StepResult
from l4.instance.sequence import SeqState, Sequence

__all__ = ["Instance", "InstanceConfig", "SeqState", "Sequence", "StepPlan", "StepResult"]
