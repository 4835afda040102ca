"""Pareto fronts on an (n_trials, n_objectives) array, pure numpy.

Every function here takes objectives already normalized to "minimize" (see `to_minimize`):
one convention, decided once, so dominance, knee and hypervolume never branch on direction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Rows compared at once in the O(n^2) dominance test; bounds memory at BLOCK * n * d booleans.
_BLOCK = 1024


def to_minimize(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Flip the sign of every "maximize" column so that smaller is better everywhere."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(directions):
        raise ValueError(f"values of shape {values.shape} do not match {len(directions)} directions")
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    bad = [d for d in directions if d not in ("maximize", "minimize")]
    if bad:
        raise ValueError(f"unknown direction(s) {bad}; use 'maximize' or 'minimize'")
    return values * signs


def _dominated(points: np.ndarray, by: np.ndarray) -> np.ndarray:
    """For each row of `points`: is some row of `by` at least as good everywhere and better somewhere?"""
    dominated = np.zeros(len(points), dtype=bool)
    for start in range(0, len(by), _BLOCK):
        block = by[start : start + _BLOCK, None, :]  # (b, 1, d) against (1, n, d)
        no_worse = np.all(block <= points[None, :, :], axis=2)
        better = np.any(block < points[None, :, :], axis=2)
        dominated |= np.any(no_worse & better, axis=0)
    return dominated


def non_dominated_mask(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows no other row dominates (duplicates are all kept)."""
    points = np.asarray(points, dtype=float)
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    return ~_dominated(points, points)


def non_dominated_ranks(points: np.ndarray) -> np.ndarray:
    """Front index of every row: 0 for the Pareto front, 1 for the front once 0 is removed, ..."""
    points = np.asarray(points, dtype=float)
    ranks = np.full(len(points), -1, dtype=int)
    remaining = np.arange(len(points))
    rank = 0
    while len(remaining):
        mask = non_dominated_mask(points[remaining])
        ranks[remaining[mask]] = rank
        remaining = remaining[~mask]
        rank += 1
    return ranks


def knee_point(points: np.ndarray, weights: Sequence[float] | None = None) -> int:
    """Index (into `points`) of the front point nearest the ideal point, in the objectives' units.

    The ideal is the best value any point reached on each objective; the distance is
    sqrt(sum_t w_t (x_t - ideal_t)^2) in the objectives' own units (accuracy points here, the
    same for every task), with task weights w (all 1 by default). No rescaling by the points'
    range: a task on which every trial is within two points of the others would otherwise weigh
    as much as one spanning forty, and its noise would choose the knee. Ties go to the lowest
    index.
    """
    points = np.asarray(points, dtype=float)
    if len(points) == 0:
        raise ValueError("the knee point of an empty set is undefined")
    w = np.ones(points.shape[1]) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (points.shape[1],) or np.any(w < 0) or not np.any(w > 0):
        raise ValueError(f"knee weights {list(w)} must be {points.shape[1]} numbers >= 0, one positive")
    front = np.flatnonzero(non_dominated_mask(points))
    gap = points[front] - points.min(axis=0)
    return int(front[np.argmin(np.sqrt(gap**2 @ w))])


def hypervolume(points: np.ndarray, reference: Sequence[float]) -> float:
    """Volume dominated by `points` and bounded by `reference` (minimization).

    Exact, by slicing along the last objective (the HSO scheme of While et al., 2006):
    HV_d(P) = sum_i (z_{i+1} - z_i) * HV_{d-1}({p[:-1] : p in P, p_d <= z_i}), with the two
    objective case solved by a sorted sweep. Points not strictly better than the reference in
    every objective add nothing and are dropped.
    """
    points = np.asarray(points, dtype=float)
    reference = np.asarray(reference, dtype=float)
    if points.ndim != 2 or points.shape[1] != reference.shape[0]:
        raise ValueError(f"points of shape {points.shape} do not match a reference of {reference.shape[0]}")
    inside = points[np.all(points < reference, axis=1)]
    if len(inside) == 0:
        return 0.0
    return _hso(inside[non_dominated_mask(inside)], reference)


def _hso(points: np.ndarray, reference: np.ndarray) -> float:
    dims = points.shape[1]
    if dims == 1:
        return float(reference[0] - points[:, 0].min())
    if dims == 2:
        order = np.lexsort((points[:, 1], points[:, 0]))  # x ascending, then y
        xs, ys = points[order, 0], points[order, 1]
        best_y = np.minimum.accumulate(ys)  # the lowest y seen so far bounds each x-slab
        widths = np.diff(np.append(xs, reference[0]))
        return float(np.sum(widths * (reference[1] - best_y)))
    order = np.argsort(points[:, -1], kind="stable")
    points = points[order]
    bounds = np.append(points[1:, -1], reference[-1])
    volume = 0.0
    for i in range(len(points)):
        depth = bounds[i] - points[i, -1]
        if depth <= 0:
            continue
        head = points[: i + 1, :-1]
        volume += depth * _hso(head[non_dominated_mask(head)], reference[:-1])
    return volume


def hypervolume_history(points: np.ndarray, reference: Sequence[float]) -> np.ndarray:
    """Hypervolume of the first k rows, for every k (rows in the order trials completed).

    Incremental: a new point p adds its exclusive volume, the box [p, reference] minus the part
    of it the current front already covers, which is the hypervolume of the front's points
    clipped to p (max(q, p)); clipped sets are small, so each step stays cheap.
    """
    points = np.asarray(points, dtype=float)
    reference = np.asarray(reference, dtype=float)
    history = np.zeros(len(points))
    front = np.empty((0, len(reference)))
    current = 0.0
    for k, point in enumerate(points):
        inside = bool(np.all(point < reference))
        # A point dominated by the current front (or outside the box) cannot change the volume.
        if inside and not _dominated(point[None, :], front)[0]:
            box = float(np.prod(reference - point))
            current += box - hypervolume(np.maximum(front, point), reference)
            front = np.vstack([front, point])
            front = front[non_dominated_mask(front)]
        history[k] = current
    return history
