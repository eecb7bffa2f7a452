"""Step-time cost model and calibration profiles (L4.md section 8)."""

from l4.costmodel.profile import (
    AlphaTable,
    DecodeAttention,
    ModelConstants,
    PiecewiseLinear,
    PrefillAttention,
    Profile,
    available_profiles,
    load_profile,
)
from l4.costmodel.step import PrefillChunk, StepCostModel

__all__ = [
    "AlphaTable",
    "DecodeAttention",
    "ModelConstants",
    "PiecewiseLinear",
    "PrefillAttention",
    "PrefillChunk",
    "Profile",
    "StepCostModel",
    "available_profiles",
    "load_profile",
]
