"""Fixtures of the fitness tests: a small synthetic calibration shared by several modules."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import Population, make_population

from evomerge.fitness.irt.calibration import Calibration, fit_calibration


@pytest.fixture(scope="session")
def synthetic_population() -> Population:
    return make_population(230, 240, dim=1, seed=11)


@pytest.fixture(scope="session")
def synthetic_calibration(synthetic_population: Population) -> Calibration:
    """First 180 subjects calibrate; two tasks of 120 items, two groups each."""
    ids = [f"q{k:03d}" for k in range(240)]
    return fit_calibration(
        synthetic_population.responses[:180],
        ids,
        {"alpha": ids[:120], "beta": ids[120:]},
        [{"name": f"s{j}"} for j in range(180)],
        dims=(1, 2),
        groups={i: ("even" if k % 2 == 0 else "odd") for k, i in enumerate(ids)},
    )


@pytest.fixture(scope="session")
def heldout(synthetic_population: Population) -> np.ndarray:
    return synthetic_population.responses[180:]
