"""Recording a Push-T episode as numpy arrays, in the layout of the original human dataset.

:class:`EpisodeRecorder` is used by the teleoperation window (:mod:`envs.pusht.teleop`) and by the
collection code of the library (``dpolicy.collect``), which writes the finished episodes to zarr.
An episode is ``{"state": (L, 5), "action": (L, 2), "keypoint": (L, 9, 2), "n_contacts": (L, 1)}``
plus ``"img": (L, 96, 96, 3)`` with images, all float32.
"""

from __future__ import annotations

import numpy as np

from envs.pusht.sim import clip_action

#: Arrays of a recorded episode (``img`` only with images).
LOWDIM_KEYS = ("state", "action", "keypoint", "n_contacts")
IMAGE_KEY = "img"
IMAGE_SIZE = 96


class EpisodeRecorder:
    """Accumulates one episode in the human dataset's layout while it is being played.

    Call :meth:`step` instead of ``env.step``: it records the observation (state, keypoints and,
    with ``images``, the 96 x 96 frame) *before* the action, then the action and the step's contacts.
    """

    def __init__(self, images: bool = False):
        self.images = images
        self.clear()

    def clear(self) -> None:
        self._rows: dict[str, list] = {key: [] for key in self.keys}

    @property
    def keys(self) -> tuple[str, ...]:
        return LOWDIM_KEYS + ((IMAGE_KEY,) if self.images else ())

    def __len__(self) -> int:
        return len(self._rows["action"])

    def step(self, env, action, label=None):
        """Record the current observation and ``action``, then step ``env`` (a PushTEnv) with it.

        ``label``: record this action instead of the executed one (relabelling, as in DAgger: the
        expert's action at a state that another controller visited). Returns what ``env.step`` returned.
        """
        sim = env.unwrapped.sim
        state = sim.get_state()
        self._rows["state"].append(state)
        self._rows["keypoint"].append(sim.keypoints())
        if self.images:
            self._rows[IMAGE_KEY].append(env.unwrapped.renderer.render(state, IMAGE_SIZE))
        # The simulator clips targets to the workspace: record what was actually commanded.
        commanded = clip_action(action)
        result = env.step(commanded)
        self._rows["action"].append(commanded if label is None else clip_action(label))
        self._rows["n_contacts"].append([result[4]["n_contacts"]])
        return result

    def episode(self) -> dict[str, np.ndarray]:
        """The recorded arrays, float32 like the human data: {key: (L, *shape)}."""
        if not len(self):
            raise ValueError("no steps recorded")
        return {key: np.asarray(rows, dtype=np.float32) for key, rows in self._rows.items()}
