"""Receding-horizon control shared by simulation rollouts and real-time runners."""

from dpolicy.control.controller import VECTOR_OBS_KEY, ChunkController, observation_dict

__all__ = ["ChunkController", "VECTOR_OBS_KEY", "observation_dict"]
