"""Fidelity of the estimators: error against full-bank accuracy on held-out subjects.

Used by the tests (error shrinks with n) and by benchmarks/bench_fitness.py (the tables).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import kendalltau

from evomerge.errors import ConfigError
from evomerge.fitness.irt.anchors import cluster_anchors
from evomerge.fitness.irt.calibration import Calibration, fit_calibration
from evomerge.fitness.irt.estimators import ESTIMATORS, NEEDS_PARENTS, EstimationContext


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


def predict(
    calibration: Calibration,
    heldout: np.ndarray,
    n: int | dict[str, int],
    estimators: Sequence[str],
    *,
    parents: Sequence[str] = (),
    seed: int = 0,
) -> dict[str, tuple[str, int, dict[str, np.ndarray]]]:
    """Per estimator: (anchor method, anchors scored, {task: estimate per held-out subject}).

    `mean` is evaluated on stratified random anchors (the subsample baseline); every other
    estimator on k-means anchors in IRT space. Estimators that need parents are skipped without.
    """
    index = calibration.item_index
    parent_thetas = np.array([calibration.theta_of(p) for p in parents]) if parents else None
    anchor_sets = {
        "random": cluster_anchors(calibration, n, "random", seed),
        "irt": cluster_anchors(calibration, n, "irt", seed),
    }
    out = {}
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
        out[name] = (method, anchors.n_items(), {t: np.array(v) for t, v in predicted.items()})
    return out


def summarize(
    name: str,
    method: str,
    n: int,
    predicted: dict[str, np.ndarray],
    truth: dict[str, np.ndarray],
    items_scored: int,
    items_full: int,
) -> FidelityRow:
    errors = [np.abs(predicted[t] - truth[t]) for t in truth]
    taus = [kendalltau(predicted[t], truth[t]).statistic for t in truth]
    return FidelityRow(
        name, method, n, float(np.mean(errors)), float(np.nanmean(taus)), items_scored, items_full
    )


def evaluate_estimators(
    calibration: Calibration,
    heldout: np.ndarray,
    n_values: Sequence[int],
    estimators: Sequence[str],
    *,
    parents: Sequence[str] = (),
    seed: int = 0,
) -> list[FidelityRow]:
    """`heldout`: (subjects, calibration items) 0/1 responses of subjects not in the calibration."""
    truth = full_accuracy(calibration, heldout)
    items_full = sum(map(len, calibration.tasks.values()))
    rows = []
    for n in n_values:
        for name, (method, scored, predicted) in predict(
            calibration, heldout, n, estimators, parents=parents, seed=seed
        ).items():
            rows.append(summarize(name, method, n, predicted, truth, scored, items_full))
    return rows


def cross_validate(
    full: Calibration,
    n_values: Sequence[int | dict[str, int]],
    estimators: Sequence[str],
    *,
    leave_out: int = 1,
    parents: Sequence[str] = (),
    keep: Sequence[str] = (),
    dims: Sequence[int] = (1, 2, 3, 5),
    seed: int = 0,
) -> tuple[list[FidelityRow], int]:
    """Leave-`leave_out`-subjects-out: refit the IRT model (dimension chosen again) without each
    fold's subjects, estimate them from anchors chosen on the refit, and pool every fold's held-out
    predictions before computing MAE and Kendall tau. An n as large as a task is left out
    (no saving). `parents` (for mp-IRT) and `keep` stay in every training fold and are never held
    out. An n is a count for every task or {task: count}. Returns the rows and the number of
    held-out subjects."""
    names = full.subject_names()
    unknown = [p for p in [*parents, *keep] if p not in names]
    if unknown:
        raise ConfigError(f"{unknown} are not subjects of the calibration; subjects: {names}")
    pool = [j for j, name in enumerate(names) if name not in {*parents, *keep}]
    order = np.random.default_rng(seed).permutation(pool)
    folds = [order[k : k + leave_out] for k in range(0, len(order), leave_out)]
    items_full = sum(map(len, full.tasks.values()))
    per_task = lambda n, task: n[task] if isinstance(n, dict) else n  # noqa: E731
    n_values = [n for n in n_values if all(per_task(n, t) < len(ids) for t, ids in full.tasks.items())]
    pooled: dict[tuple[str, int], tuple[str, int, dict[str, list[np.ndarray]]]] = {}
    truths: dict[str, list[np.ndarray]] = {task: [] for task in full.tasks}
    for fold in folds:
        train = [j for j in range(len(names)) if j not in set(fold)]
        calibration = fit_calibration(
            full.responses[train],
            full.item_ids,
            full.tasks,
            [full.subjects[j] for j in train],
            dims=dims,
            groups=full.groups,
            seed=seed,
        )
        heldout = full.responses[fold]
        for task, values in full_accuracy(calibration, heldout).items():
            truths[task].append(values)
        for k, n in enumerate(n_values):
            for name, (method, scored, predicted) in predict(
                calibration, heldout, n, estimators, parents=parents, seed=seed
            ).items():
                entry = pooled.setdefault((name, k), (method, scored, {t: [] for t in full.tasks}))
                for task, values in predicted.items():
                    entry[2][task].append(values)
    truth = {task: np.concatenate(v) for task, v in truths.items()}
    rows = [
        summarize(
            name,
            method,
            min(n_values[k].values()) if isinstance(n_values[k], dict) else n_values[k],
            {t: np.concatenate(v) for t, v in preds.items()},
            truth,
            scored,
            items_full,
        )
        for (name, k), (method, scored, preds) in pooled.items()
    ]
    return rows, len(order)


AUTO_CANDIDATES = ("mean", "pirt", "gpirt")  # what `estimator: auto` chooses among


@dataclass(frozen=True)
class EstimatorChoice:
    estimator: str
    rows: list[FidelityRow]  # every candidate's leave-subjects-out error
    heldout: int  # subjects held out, over all folds


def choose_estimator(
    calibration: Calibration, n: dict[str, int], seed: int = 0, folds: int = 6
) -> EstimatorChoice:
    """`estimator: auto`: the candidate with the lowest leave-subjects-out MAE at the suite's
    anchors per task (the calibration's subjects in `folds` folds; the IRT model refit without
    each fold at the calibration's dimension). The subsample mean is a candidate, so the choice
    never loses to it on this check. Made once per search, by its evaluation plan (`plan.py`)."""
    leave_out = max(1, round(len(calibration.subjects) / folds))
    dims = (calibration.thetas.shape[1],)
    rows, heldout = cross_validate(
        calibration, [n], AUTO_CANDIDATES, leave_out=leave_out, dims=dims, seed=seed
    )
    best = min(rows, key=lambda row: (row.mae, AUTO_CANDIDATES.index(row.estimator)))
    return EstimatorChoice(best.estimator, rows, heldout)
