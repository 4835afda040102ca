"""IRT: parameter recovery on synthetic 2PL data, dimension choice, abilities, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr
from synthetic import make_population

from evomerge.errors import ConfigError
from evomerge.fitness.irt.model import IRTModel, choose_dim, estimate_ability, estimate_mixture, fit_2pl


def test_unidimensional_recovery_with_missing_cells() -> None:
    pop = make_population(250, 120, dim=1, missing=0.15, seed=1)
    model, theta = fit_2pl(pop.responses, dim=1)
    assert pearsonr(model.b, pop.b)[0] > 0.95
    assert pearsonr(np.abs(model.a[:, 0]), pop.a[:, 0])[0] > 0.8
    assert abs(pearsonr(theta[:, 0], pop.theta[:, 0])[0]) > 0.9
    assert pearsonr(model.prob(theta).ravel(), pop.prob.ravel())[0] > 0.95


def test_multidimensional_recovery_up_to_rotation() -> None:
    pop = make_population(300, 150, dim=2, seed=2)
    model, theta = fit_2pl(pop.responses, dim=2)
    assert model.dim == 2
    assert pearsonr(model.b, pop.b)[0] > 0.95
    # Discrimination vectors are identified up to a rotation; their norms are not affected.
    assert pearsonr(np.linalg.norm(model.a, axis=1), np.linalg.norm(pop.a, axis=1))[0] > 0.75
    assert pearsonr(model.prob(theta).ravel(), pop.prob.ravel())[0] > 0.93


def test_dimension_chosen_by_heldout_likelihood() -> None:
    one = make_population(200, 100, dim=1, seed=3)
    two = make_population(300, 150, dim=2, seed=4)
    assert choose_dim(one.responses, dims=(1, 2))[0] == 1
    assert choose_dim(two.responses, dims=(1, 2))[0] == 2


def test_ability_estimation_from_a_subset() -> None:
    pop = make_population(60, 200, dim=1, seed=5)
    truth = IRTModel(a=pop.a, b=pop.b)
    subset = np.arange(0, 200, 2)
    estimates = [estimate_ability(truth, subset, pop.responses[j, subset])[0] for j in range(60)]
    assert pearsonr(estimates, pop.theta[:, 0])[0] > 0.85
    # Every anchor right or wrong: the prior keeps the ability finite, and ordered.
    high = estimate_ability(truth, subset[:10], np.ones(10))
    low = estimate_ability(truth, subset[:10], np.zeros(10))
    assert np.isfinite(high).all() and np.isfinite(low).all() and high[0] > 0 > low[0]


def test_mixture_of_parent_abilities() -> None:
    pop = make_population(2, 300, dim=2, seed=6)
    truth = IRTModel(a=pop.a, b=pop.b)
    parents = np.array([[1.5, -1.0], [-1.0, 1.5]])
    merged = 0.8 * parents[0] + 0.2 * parents[1]
    rng = np.random.default_rng(0)
    answers = (rng.random(300) < truth.prob(merged)).astype(float)
    theta, lambdas = estimate_mixture(truth, np.arange(300), answers, parents)
    assert lambdas[0] > lambdas[1]
    assert np.linalg.norm(theta - merged) < 0.5


def test_bad_response_values_are_errors() -> None:
    with pytest.raises(ConfigError, match=r"responses\[0, 1\] = 2.0: responses must be 0, 1 or empty"):
        fit_2pl(np.array([[0.0, 2.0], [1.0, 0.0]]))
    with pytest.raises(ConfigError, match="non-empty"):
        fit_2pl(np.zeros((0, 3)))
