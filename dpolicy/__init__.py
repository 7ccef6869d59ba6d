"""dpolicy: Diffusion Policy for robot learning.

Data flows one way: zarr episodes -> replay buffer -> windows -> normalizer -> policy ->
checkpoint -> receding-horizon controller -> environment or robot.
"""

__version__ = "0.1.0"
