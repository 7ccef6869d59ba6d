"""Vectorized rollouts of a policy, metrics, videos and reports (``dpolicy eval``)."""

from dpolicy.evaluation.metrics import EpisodeResult, summarize, wilson_interval
from dpolicy.evaluation.protocols import PROTOCOLS, protocol_seeds
from dpolicy.evaluation.rollout import EvaluationInterrupted, RolloutRun, evaluate

__all__ = ["PROTOCOLS", "EpisodeResult", "EvaluationInterrupted", "RolloutRun", "evaluate", "protocol_seeds",
           "summarize", "wilson_interval"]
