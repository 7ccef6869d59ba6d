"""A kinematic 7-DoF arm with a gripper and two cameras grasping a cube (no physics simulator).

- :mod:`envs.arm.env`: ``ToyArmEnv``, the gymnasium environment (``envs/ToyArm-v0``)
- :mod:`envs.arm.kinematics`: the chain's forward kinematics, Jacobian and damped-least-squares IK
- :mod:`envs.arm.render`: the two orthographic cameras, drawn with numpy
- :mod:`envs.arm.expert`: ``ArmExpert``, the scripted expert (approach from above, descend, close)
"""

from envs.arm.env import ToyArmEnv
from envs.arm.expert import ArmExpert

__all__ = ["ArmExpert", "ToyArmEnv"]
