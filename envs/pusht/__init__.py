"""Push-T: push a T-shaped block onto a goal pose (the Diffusion Policy benchmark task).

- :mod:`envs.pusht.geometry`: T shape, keypoints, goal, coverage, frame transforms
- :mod:`envs.pusht.sim`: ``PushTSim``, the pymunk physics (no gym)
- :mod:`envs.pusht.render`: headless OpenCV rendering matching the original frames
- :mod:`envs.pusht.env`: ``PushTEnv``, the gymnasium environment
- :mod:`envs.pusht.recording`: ``EpisodeRecorder``, episodes as numpy arrays in the human data's layout
- :mod:`envs.pusht.starts`: start states beyond the benchmark reset (the T by a wall or in a corner)
- :mod:`envs.pusht.expert`: ``ScriptedExpert``, the scripted expert (a package)
- :mod:`envs.pusht.teleop`: ``TeleopSession``, mouse teleoperation in a pygame window
"""

from envs.pusht.env import PushTEnv
from envs.pusht.geometry import GOAL_POSE, KEYPOINTS_BODY, coverage
from envs.pusht.render import render_state
from envs.pusht.sim import PushTSim

__all__ = ["GOAL_POSE", "KEYPOINTS_BODY", "PushTEnv", "PushTSim", "coverage", "render_state"]
