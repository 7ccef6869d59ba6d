"""A scripted Push-T expert: push primitives screened analytically, then checked in a replica.

Every decision the expert

1. lists candidate pushes: contact points along the 8 edges of the T's outline (every 10 px,
   every 5 px near the goal), each pushed along the inward normal or at +-0.35 rad from it;
2. screens them with the frictionless quasi-static model (a push of normal depth ``s`` at a contact
   moves the block along the normal and turns it by the lever arm, through the inverse mass matrix
   ``diag(1, 1, 3000)``): the best depth has a closed form, so every candidate gets a predicted pose
   error; adding a travel-distance cost ranks them;
3. builds, for the best dozen or two, a path for the agent: around the T through waypoints of the T
   grown by a safety margin, to an entry point in front of the contact, to the pre-contact point,
   then the push itself;
4. drives a private :class:`~envs.pusht.sim.PushTSim` replica along each path with a *carrot*
   follower (the target is a look-ahead point on the path; its motion is limited per step, so the
   commanded targets never jump), and scores every prefix of the simulated push;
5. executes the chosen prefix in the real environment, re-planning when it is done or when the
   real state departs from the prediction. When two plans in a row made no progress, the search is
   widened (twice the candidates) and, far from the goal, a push among the best few is taken whole.

Diversity is deliberate: the expert draws per-episode parameters (look-aheads, stand-off gap,
travel weight) from its own seed and, far from the goal, samples among the simulated candidates
with a softmax over their scores, so the same start can be solved along several routes. Near the
goal it always takes the best candidate, where precision matters more than variety.

Units are pixels, radians and control steps (10 Hz); all poses are ``(x, y, theta)`` of the body origin.

Modules, in the order of the steps above:

- :mod:`~envs.pusht.expert.candidates`: candidate pushes: contacts, directions, pre-contact and entry points (step 1);
- :mod:`~envs.pusht.expert.push_model`: the pose error and the analytic push model (step 2);
- :mod:`~envs.pusht.expert.routing`: waypoints and transit paths around the T (step 3);
- :mod:`~envs.pusht.expert.follower`: the carrot follower, the step limit and the arena walls (step 4);
- :mod:`~envs.pusht.expert.expert`: ``ExpertParams`` and ``ScriptedExpert``, which plan and execute.

The T's outline and signed distance live in :mod:`envs.pusht.geometry`.
"""

from envs.pusht.expert.candidates import PUSH_ANGLES
from envs.pusht.expert.candidates import _push_set as _push_set
from envs.pusht.expert.expert import NEAR_GOAL_ERROR, ExpertParams, ScriptedExpert
from envs.pusht.expert.follower import ARENA_MARGIN, CarrotPath, clip_to_arena, limit_step
from envs.pusht.expert.push_model import ROTATION_RADIUS_SQ, pose_error, predict_pushes, wrap_angle
from envs.pusht.expert.routing import CLEARANCE, WAYPOINT_DISTANCE
from envs.pusht.geometry import T_OUTLINE, t_signed_distance

__all__ = [
    "ARENA_MARGIN",
    "CLEARANCE",
    "NEAR_GOAL_ERROR",
    "PUSH_ANGLES",
    "ROTATION_RADIUS_SQ",
    "T_OUTLINE",
    "WAYPOINT_DISTANCE",
    "CarrotPath",
    "ExpertParams",
    "ScriptedExpert",
    "clip_to_arena",
    "limit_step",
    "pose_error",
    "predict_pushes",
    "t_signed_distance",
    "wrap_angle",
]
