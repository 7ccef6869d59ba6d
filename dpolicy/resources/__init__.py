"""Files that ship with the package: the hydra ``configs/`` and the embedded ``data/`` datasets.

In a checkout these are links to the repository's top-level folders; a built wheel holds copies.
"""
