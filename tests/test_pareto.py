"""Pareto utilities, checked against brute force, hand-made cases and Monte Carlo volumes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from evomerge.pareto import (
    hypervolume,
    hypervolume_history,
    knee_point,
    non_dominated_mask,
    non_dominated_ranks,
    to_minimize,
)


def dominates(a, b) -> bool:
    """Plain-Python dominance for minimization: the definition, written out."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def brute_front(points) -> list[int]:
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


@pytest.mark.parametrize("dims", [2, 3, 4])
@pytest.mark.parametrize("seed", range(5))
def test_front_matches_brute_force(dims: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Rounded values create ties and duplicates, the cases where dominance is easy to get wrong.
    points = np.round(rng.random((60, dims)), 1)
    assert np.flatnonzero(non_dominated_mask(points)).tolist() == brute_front(points.tolist())


def test_hand_made_front() -> None:
    points = np.array([[1, 5], [2, 2], [5, 1], [3, 3], [2, 2], [1, 6], [6, 6]], dtype=float)
    # [3,3] is dominated by [2,2]; [1,6] by [1,5]; [6,6] by all; the duplicate [2,2] stays.
    assert np.flatnonzero(non_dominated_mask(points)).tolist() == [0, 1, 2, 4]
    assert non_dominated_ranks(points).tolist() == [0, 0, 0, 1, 0, 1, 2]


def test_ranks_are_successive_fronts() -> None:
    rng = np.random.default_rng(7)
    points = rng.random((40, 3)).tolist()
    ranks = non_dominated_ranks(np.array(points))
    remaining = list(range(len(points)))
    for rank in itertools.count():
        if not remaining:
            break
        sub = [points[i] for i in remaining]
        front = {remaining[i] for i in brute_front(sub)}
        assert {i for i in range(len(points)) if ranks[i] == rank} == front
        remaining = [i for i in remaining if i not in front]


def test_to_minimize_flips_maximized_columns() -> None:
    values = np.array([[0.2, 3.0], [0.5, 1.0]])
    assert to_minimize(values, ["maximize", "minimize"]).tolist() == [[-0.2, 3.0], [-0.5, 1.0]]
    with pytest.raises(ValueError, match="sideways"):
        to_minimize(values, ["maximize", "sideways"])


def test_hypervolume_hand_computed() -> None:
    # Staircase of three points against (4, 4), cut into horizontal strips:
    # [1,4]x[3,4] + [2,4]x[2,3] + [3,4]x[1,2] = 3 + 2 + 1 = 6.
    points = np.array([[1, 3], [2, 2], [3, 1]], dtype=float)
    assert hypervolume(points, [4, 4]) == pytest.approx(6.0)
    # A dominated point and a point outside the reference box change nothing.
    more = np.vstack([points, [[3, 3], [5, 0]]])
    assert hypervolume(more, [4, 4]) == pytest.approx(6.0)
    # Two boxes in 3-D: [0,2]^3 (8) and [1,2]x[1,2]x[-1,2] (3), overlapping in [1,2]x[1,2]x[0,2] (2): 9.
    cubes = np.array([[0, 0, 0], [1, 1, -1]], dtype=float)
    assert hypervolume(cubes, [2, 2, 2]) == pytest.approx(9.0)
    assert hypervolume(np.array([[1.0]]), [3.0]) == pytest.approx(2.0)
    assert hypervolume(np.empty((0, 2)), [1, 1]) == 0.0


@pytest.mark.parametrize("dims", [2, 3, 4])
def test_hypervolume_matches_monte_carlo(dims: int) -> None:
    rng = np.random.default_rng(dims)
    points = rng.random((25, dims))
    reference = np.ones(dims)
    samples = rng.random((200_000, dims))
    covered = np.zeros(len(samples), dtype=bool)
    for p in points:
        covered |= np.all(samples >= p, axis=1)
    estimate = covered.mean()  # the box [0, 1]^d has volume 1
    stderr = np.sqrt(estimate * (1 - estimate) / len(samples))
    assert abs(hypervolume(points, reference) - estimate) < 5 * stderr


def test_hypervolume_history_is_prefix_volume() -> None:
    rng = np.random.default_rng(3)
    points = rng.random((30, 3))
    history = hypervolume_history(points, [1, 1, 1])
    expected = [hypervolume(points[: k + 1], [1, 1, 1]) for k in range(len(points))]
    assert history == pytest.approx(expected)
    assert np.all(np.diff(history) >= -1e-12)


def test_knee_point() -> None:
    # The middle of a convex front is nearest the ideal (the best value on each objective).
    points = np.array([[0.0, 0.5], [0.1, 0.1], [0.5, 0.0], [0.45, 0.45]])
    assert knee_point(points) == 1
    # The knee is always on the front even when a dominated point is near the ideal.
    assert knee_point(np.array([[0.5, 0.5], [0.4, 0.4], [0.0, 1.0]])) == 1
    # On a two-point front, the point a little short on one task beats the one far short on the
    # other (6 points against 56).
    assert knee_point(-np.array([[0.44, 1.0], [1.0, 0.94], [0.25, 0.25]])) == 1
    # Accuracy units, not the points' range: 2 points short on a task where every trial is within
    # 2 points beats 5 short on a task spanning 40 (each rescaled to [0, 1], point 1 would win).
    narrow = -np.array([[0.90, 0.79], [0.85, 0.81], [0.50, 0.80]])
    assert knee_point(narrow) == 0
    # Task weights move the knee: the narrow task at 10 times the other (sqrt(10) * 2 > 5).
    assert knee_point(narrow, weights=[1.0, 10.0]) == 1
    with pytest.raises(ValueError, match="weights"):
        knee_point(narrow, weights=[0.0, 0.0])
    with pytest.raises(ValueError):
        knee_point(np.empty((0, 2)))
