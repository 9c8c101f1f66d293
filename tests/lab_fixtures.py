"""Small synthetic datasets for the lab tests (fast to train on, separable enough to learn in a few epochs)."""

from __future__ import annotations

import numpy as np


def write_npz(path, n: int = 150, features: int = 40, classes: int = 3, seed: int = 0, label_key: str = "label"):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centers = rng.normal(size=(classes, features))
    x = centers[y] + 0.8 * rng.normal(size=(n, features))
    np.savez(path, x=x, **{label_key: y})
    return path
