"""Point reaching: a 2-D point driven to a goal in the unit box (a toy task for quick tests).

- :mod:`envs.point.env`: ``PointReachEnv``, the gymnasium environment (``envs/PointReach-v0``)
- :mod:`envs.point.expert`: ``expert_action``, the scripted expert (straight to the goal)
"""

from envs.point.env import PointReachEnv
from envs.point.expert import expert_action

__all__ = ["PointReachEnv", "expert_action"]
