"""Fidelity of the estimators: error against full-bank accuracy on held-out subjects.

Used by the tests (error shrinks with n) and by benchmarks/bench_fitness.py (the tables).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import kendalltau

from evomerge.fitness.anchors import cluster_anchors
from evomerge.fitness.calibration import Calibration
from evomerge.fitness.estimators import ESTIMATORS, NEEDS_PARENTS, EstimationContext


@dataclass(frozen=True)
class FidelityRow:
    estimator: str
    anchors: str  # anchor method
    n: int  # anchors per task
    mae: float  # mean absolute error over held-out subjects and tasks
    tau: float  # Kendall tau of the subjects' ranking, averaged over tasks
    items_scored: int  # anchors scored per subject, all tasks
    items_full: int  # eval items per subject, all tasks


def full_accuracy(calibration: Calibration, responses: np.ndarray) -> dict[str, np.ndarray]:
    """Per task, each held-out subject's accuracy on all of the task's items (missing ignored)."""
    index = calibration.item_index
    return {
        task: np.nanmean(responses[:, [index[i] for i in items]], axis=1)
        for task, items in calibration.tasks.items()
    }


def evaluate_estimators(
    calibration: Calibration,
    heldout: np.ndarray,
    n_values: Sequence[int],
    estimators: Sequence[str],
    *,
    parents: Sequence[str] = (),
    seed: int = 0,
) -> list[FidelityRow]:
    """`heldout`: (subjects, calibration items) 0/1 responses of subjects not in the calibration.

    `mean` is evaluated on stratified random anchors (the subsample baseline); every other
    estimator on k-means anchors in IRT space.
    """
    truth = full_accuracy(calibration, heldout)
    index = calibration.item_index
    parent_thetas = np.array([calibration.theta_of(p) for p in parents]) if parents else None
    items_full = sum(map(len, calibration.tasks.values()))
    rows = []
    for n in n_values:
        anchor_sets = {
            "random": cluster_anchors(calibration, n, "random", seed),
            "irt": cluster_anchors(calibration, n, "irt", seed),
        }
        for name in estimators:
            if name in NEEDS_PARENTS and parent_thetas is None:
                continue
            method = "random" if name == "mean" else "irt"
            anchors = anchor_sets[method]
            ctx = EstimationContext(calibration.tasks, anchors, calibration.irt, index, parent_thetas)
            estimate = ESTIMATORS.get(name)
            predicted: dict[str, list[float]] = {task: [] for task in calibration.tasks}
            for row in heldout:
                answers = {
                    i: int(row[index[i]])
                    for ids in anchors.ids.values()
                    for i in ids
                    if not np.isnan(row[index[i]])
                }
                for task, value in estimate(ctx, answers).items():
                    predicted[task].append(value)
            errors = [np.abs(np.array(predicted[t]) - truth[t]) for t in calibration.tasks]
            taus = [kendalltau(predicted[t], truth[t]).statistic for t in calibration.tasks]
            rows.append(
                FidelityRow(
                    name,
                    method,
                    n,
                    float(np.mean(errors)),
                    float(np.nanmean(taus)),
                    anchors.n_items(),
                    items_full,
                )
            )
    return rows
