"""`dpolicy bench eval`: wall-clock of the paper protocol for several vector-env setups."""

from dpolicy.evaluation.bench import configure, run  # noqa: F401
