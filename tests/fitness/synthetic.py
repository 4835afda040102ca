"""Synthetic 2PL populations with known parameters (shared by tests and the benchmark)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit


@dataclass
class Population:
    a: np.ndarray  # (items, D)
    b: np.ndarray  # (items,)
    theta: np.ndarray  # (subjects, D)
    prob: np.ndarray  # (subjects, items)
    responses: np.ndarray  # 0/1 floats, NaN where missing


def make_population(
    n_subjects: int, n_items: int, dim: int = 1, missing: float = 0.0, seed: int = 0
) -> Population:
    rng = np.random.default_rng(seed)
    # Positive-leaning discriminations, as on real benchmarks (better models do better).
    a = (
        np.abs(rng.normal(1.0, 0.4, (n_items, dim))) / np.sqrt(dim)
        if dim == 1
        else rng.normal(0.8, 0.5, (n_items, dim))
    )
    b = rng.normal(0.0, 1.0, n_items)
    theta = rng.normal(0.0, 1.0, (n_subjects, dim))
    prob = expit(theta @ a.T - b)
    responses = (rng.random(prob.shape) < prob).astype(float)
    responses[rng.random(prob.shape) < missing] = np.nan
    return Population(a, b, theta, prob, responses)
