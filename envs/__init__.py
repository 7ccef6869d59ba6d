"""Gymnasium environments of the package. Importing ``envs`` registers:

- ``envs/PushT-v0``: Push-T with state observations (5,)
- ``envs/PushTKeypoints-v0``: Push-T with keypoint observations (20,)
- ``envs/PushTImage-v0``: Push-T with image observations {"image": (96, 96, 3) uint8, "agent_pos": (2,)}
- ``envs/PointReach-v0``: a 2-D point reaching a goal, observations (4,) (a toy task, :mod:`envs.point`)
- ``envs/ToyArm-v0``: a kinematic 7-DoF arm grasping a cube, observations {"joint_pos": (7,), "gripper": (1,),
  "cam_front": (32, 32, 3) uint8, "cam_top": (32, 32, 3) uint8}, actions (8,) (:mod:`envs.arm`)

``gymnasium.make("envs/PushT-v0", render_mode="rgb_array")`` then works; in a fresh process
(e.g. a spawned vector-env worker) ``gymnasium.make("envs:envs/PushT-v0")`` imports ``envs`` first.
Episodes are truncated by the environments themselves (no TimeLimit wrapper): after 300 steps for
Push-T, 30 for point reaching, 100 for the arm.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

_PUSHT_IDS = {
    "envs/PushT-v0": "state",
    "envs/PushTKeypoints-v0": "keypoints",
    "envs/PushTImage-v0": "image",
}

for _env_id, _obs_type in _PUSHT_IDS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point="envs.pusht.env:PushTEnv", kwargs={"obs_type": _obs_type})

if "envs/PointReach-v0" not in registry:
    register(id="envs/PointReach-v0", entry_point="envs.point.env:PointReachEnv")

if "envs/ToyArm-v0" not in registry:
    register(id="envs/ToyArm-v0", entry_point="envs.arm.env:ToyArmEnv")
