"""Small, self-contained experiments that illustrate a claim of the package (see docs/)."""
