"""Demonstration data: zarr replay buffer, training windows, datasets and the normalizer.

- :mod:`dpolicy.data.replay_buffer`: read, validate and atomically write zarr episode stores.
- :mod:`dpolicy.data.windows`: padded training windows and the seeded episode split.
- :mod:`dpolicy.data.datasets`: the generic windowed dataset and the Push-T presets (imports torch).
- :mod:`dpolicy.data.normalizer`: per-key min-max normalisation saved with a policy.
- :mod:`dpolicy.data.synthetic`: step-encoded synthetic Push-T datasets for benchmarks and checks.

Submodules are imported explicitly (``from dpolicy.data.replay_buffer import ReplayBuffer``) so
that importing the normalizer, as every policy does, does not pull in zarr.
"""
