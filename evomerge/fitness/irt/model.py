"""Item response theory: (multidimensional) 2PL fitted by regularized MAP, abilities by MAP.

Model (tinyBenchmarks, Polo et al. 2024, eq. 3.1; multidimensional 2PL):
    P(subject j answers item i) = sigmoid(a_i . theta_j - b_i),  a_i, theta_j in R^D.
Fit: joint MAP over (a, b, theta) on the observed cells of a subjects x items 0/1 matrix
(NaN = missing) with priors theta ~ N(0, I), a ~ N(0, s_a^2 I), b ~ N(0, s_b^2), by full-batch
L-BFGS (scipy) from a deterministic SVD start. tinyBenchmarks used variational inference
(py-irt); MAP with these weak priors is the regularized MLE they mention as an alternative.
D is chosen by the log-likelihood of held-out cells (a seeded 10% of the observed ones).
Ability of a new subject: argmin of the negative Bernoulli log-likelihood of the items it
answered plus the N(0, I) prior, BFGS from 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from evomerge.errors import ConfigError

PRIOR_A_SD = 2.0
PRIOR_B_SD = 4.0


@dataclass
class IRTModel:
    """Item parameters of a fitted (multidimensional) 2PL model."""

    a: np.ndarray  # (n_items, D) discriminations
    b: np.ndarray  # (n_items,) difficulties

    @property
    def dim(self) -> int:
        return int(self.a.shape[1])

    def prob(self, theta: np.ndarray, items: np.ndarray | slice = slice(None)) -> np.ndarray:
        """P(correct) for abilities `theta` ((D,) or (S, D)) on the selected items."""
        return expit(np.asarray(theta) @ self.a[items].T - self.b[items])

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a.tolist(), "b": self.b.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IRTModel:
        return cls(a=np.asarray(data["a"], dtype=float).reshape(len(data["b"]), -1), b=np.asarray(data["b"]))


def check_responses(responses: np.ndarray) -> np.ndarray:
    """A float (subjects, items) matrix of 0, 1 and NaN (missing); anything else is an error."""
    matrix = np.asarray(responses, dtype=float)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ConfigError(f"responses must be a non-empty subjects x items matrix, got shape {matrix.shape}")
    bad = ~np.isnan(matrix) & (matrix != 0) & (matrix != 1)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise ConfigError(
            f"responses[{row}, {col}] = {float(matrix[row, col])!r}: responses must be 0, 1 or empty"
        )
    return matrix


def _svd_start(matrix: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic start: b from item means, (theta, a) from the top singular vectors of residuals."""
    observed = ~np.isnan(matrix)
    counts = observed.sum(0)
    item_mean = np.where(counts > 0, np.nansum(matrix, 0) / np.maximum(counts, 1), 0.5)
    p = np.clip(item_mean, 0.02, 0.98)
    b = -np.log(p / (1 - p))
    residual = np.where(observed, matrix, item_mean) - item_mean
    u, s, vt = np.linalg.svd(residual, full_matrices=False)
    k = min(dim, len(s))
    theta = np.zeros((matrix.shape[0], dim))
    a = np.zeros((matrix.shape[1], dim))
    scale = np.sqrt(max(matrix.shape[0], 1))
    theta[:, :k] = u[:, :k] * scale  # unit variance abilities
    # A logistic slope is about 4x a linear-probability slope near p = 0.5.
    a[:, :k] = 4.0 * (vt[:k].T * s[:k]) / scale
    return theta, a, b


def fit_2pl(
    responses: np.ndarray,
    dim: int = 1,
    *,
    max_iter: int = 500,
    prior_a_sd: float = PRIOR_A_SD,
    prior_b_sd: float = PRIOR_B_SD,
) -> tuple[IRTModel, np.ndarray]:
    """MAP fit of a D-dimensional 2PL; returns the item model and the subjects' abilities."""
    matrix = check_responses(responses)
    if dim < 1:
        raise ConfigError(f"dim={dim}: the IRT dimension must be at least 1")
    observed = ~np.isnan(matrix)
    theta0, a0, b0 = _svd_start(matrix, dim)
    n_subjects, n_items = matrix.shape
    y = np.nan_to_num(matrix)
    mask = observed.astype(float)
    sizes = np.cumsum([theta0.size, a0.size])

    def unpack(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            x[: sizes[0]].reshape(n_subjects, dim),
            x[sizes[0] : sizes[1]].reshape(n_items, dim),
            x[sizes[1] :],
        )

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        theta, a, b = unpack(x)
        logits = theta @ a.T - b
        nll = np.sum(mask * (np.logaddexp(0.0, logits) - y * logits))
        prior = 0.5 * (np.sum(theta**2) + np.sum(a**2) / prior_a_sd**2 + np.sum(b**2) / prior_b_sd**2)
        residual = mask * (expit(logits) - y)  # d nll / d logits
        grad = np.concatenate(
            [
                (residual @ a + theta).ravel(),
                (residual.T @ theta + a / prior_a_sd**2).ravel(),
                -residual.sum(0) + b / prior_b_sd**2,
            ]
        )
        return nll + prior, grad

    x0 = np.concatenate([theta0.ravel(), a0.ravel(), b0])
    solution = minimize(
        objective, x0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter, "ftol": 1e-10}
    )
    theta, a, b = unpack(solution.x)
    return IRTModel(a=a.copy(), b=b.copy()), theta.copy()


def heldout_loglik(responses: np.ndarray, dim: int, *, fraction: float = 0.1, seed: int = 0) -> float:
    """Mean log-likelihood of a seeded `fraction` of the observed cells, hidden while fitting."""
    matrix = check_responses(responses)
    cells = np.argwhere(~np.isnan(matrix))
    rng = np.random.default_rng(seed)
    hidden = cells[rng.choice(len(cells), size=max(1, int(fraction * len(cells))), replace=False)]
    train = matrix.copy()
    train[hidden[:, 0], hidden[:, 1]] = np.nan
    model, theta = fit_2pl(train, dim)
    p = np.clip(
        np.einsum("nd,nd->n", theta[hidden[:, 0]], model.a[hidden[:, 1]]) - model.b[hidden[:, 1]], -30, 30
    )
    prob = expit(p)
    y = matrix[hidden[:, 0], hidden[:, 1]]
    return float(np.mean(y * np.log(prob) + (1 - y) * np.log1p(-prob)))


def choose_dim(
    responses: np.ndarray, dims: Sequence[int] = (1, 2, 3, 5), seed: int = 0
) -> tuple[int, dict[int, float]]:
    """The dimension with the best held-out log-likelihood (ties go to the smaller D)."""
    scores = {dim: heldout_loglik(responses, dim, seed=seed) for dim in dims}
    best = max(dims, key=lambda d: (round(scores[d], 6), -d))
    return best, scores


def estimate_ability(
    model: IRTModel, items: np.ndarray, answers: np.ndarray, prior_sd: float = 1.0
) -> np.ndarray:
    """MAP ability from the answered `items` (indices) and their 0/1 `answers`; BFGS from 0."""
    a, b, y = model.a[items], model.b[items], np.asarray(answers, dtype=float)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        logits = a @ theta - b
        # log(1 + e^z) - y z is the Bernoulli NLL with p = sigmoid(z).
        nll = np.sum(np.logaddexp(0.0, logits) - y * logits)
        grad = a.T @ (expit(logits) - y)
        return nll + 0.5 * theta @ theta / prior_sd**2, grad + theta / prior_sd**2

    return minimize(objective, np.zeros(model.dim), jac=True, method="BFGS").x


def estimate_mixture(
    model: IRTModel, items: np.ndarray, answers: np.ndarray, parent_thetas: np.ndarray, prior_sd: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """mp-IRT (MERGE^3, Mencattini et al. 2025): theta = sum_m lambda_m theta_m, lambdas by MAP.

    The prior lambda ~ N(1/M, prior_sd^2) keeps a merge near the parents' average when few
    anchors speak; returns (theta, lambdas).
    """
    parents = np.asarray(parent_thetas, dtype=float)  # (M, D)
    a, b, y = model.a[items], model.b[items], np.asarray(answers, dtype=float)
    centre = np.full(len(parents), 1.0 / len(parents))
    basis = a @ parents.T  # (n_items, M): logits are basis @ lambda - b

    def objective(lam: np.ndarray) -> tuple[float, np.ndarray]:
        logits = basis @ lam - b
        nll = np.sum(np.logaddexp(0.0, logits) - y * logits)
        diff = lam - centre
        return nll + 0.5 * diff @ diff / prior_sd**2, basis.T @ (expit(logits) - y) + diff / prior_sd**2

    lam = minimize(objective, centre, jac=True, method="BFGS").x
    return lam @ parents, lam
