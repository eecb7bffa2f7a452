"""Global scheduling policies (L4 and the baselines), registered by CLI name."""

from l4.policies.base import (
    Policy,
    make_policy,
    parse_policy_list,
    policy_names,
    register_policy,
)
from l4.views import ClusterView, InstanceView, PolicyContext

__all__ = [
    "ClusterView",
    "InstanceView",
    "Policy",
    "PolicyContext",
    "make_policy",
    "parse_policy_list",
    "policy_names",
    "register_policy",
]
