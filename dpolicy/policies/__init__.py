"""Policies: one interface (:class:`~dpolicy.policies.base.Policy`) and its methods.

:data:`POLICIES` is the registry that configs and checkpoints name a policy by (``policy.name``):
the package decides which classes exist, a file never supplies an import path.
"""

from __future__ import annotations

from dpolicy.policies.base import Policy
from dpolicy.policies.diffusion import DiffusionPolicy
from dpolicy.policies.ibc import IbcPolicy
from dpolicy.policies.regression import MseRegressionPolicy

#: Policy name (``policy.name`` in a config) -> class.
POLICIES: dict[str, type[Policy]] = {
    "diffusion": DiffusionPolicy,
    "ibc": IbcPolicy,
    "regression": MseRegressionPolicy,
}

__all__ = ["POLICIES", "DiffusionPolicy", "IbcPolicy", "MseRegressionPolicy", "Policy"]
