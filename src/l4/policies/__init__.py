"""Global scheduling policies (L4 and the baselines), registered by CLI name."""

from l4.policies.base import (
    ClusterView,
    InstanceView,
    Policy,
    PolicyContext,
    make_policy,
    parse_policy_list,
    policy_names,
    register_policy,
)

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
