"""Anchor items: the few items per task a candidate is actually scored on.

Clustering (tinyBenchmarks, Polo et al. 2024, sec. 3.1): k-means on item features, either the
IRT parameters [a_i, b_i] ("irt") or the item's correctness across calibration subjects
("responses"); the anchor of a cluster is the member nearest its centre, its weight the cluster's
share of the task's items. Baseline ("random"): a seeded random sample stratified by item group,
each anchor weighted by its stratum's share over the anchors drawn from it.

For gp-IRT, the mixing weight lambda* = b^2 / (b^2 + v / (4n)) (tinyBenchmarks sec. 3.3) is
computed here, where the anchors and the calibration subjects are both at hand: b is the mean
absolute error of the IRT prediction of the non-anchor items of the task over the calibration
subjects (their abilities estimated from the anchors alone), v the mean over subjects of
p_j (1 - p_j), the across-item variance of correctness, and n the number of anchors.
"""

from __future__ import annotations

import random
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from evomerge.atomic import write_json_atomic
from evomerge.errors import ConfigError
from evomerge.fitness.irt.calibration import Calibration, read_json
from evomerge.fitness.irt.model import estimate_ability

FORMAT = "evomerge-anchors/1"
METHODS = ("irt", "responses", "random")


@dataclass
class AnchorSet:
    method: str
    seed: int
    ids: dict[str, list[str]]  # task -> anchor item ids
    weights: dict[str, list[float]]  # task -> weights (sum to 1 per task)
    gp_lambda: dict[str, float] = field(default_factory=dict)
    calibration_sha: str | None = None

    def n_items(self) -> int:
        return sum(map(len, self.ids.values()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "method": self.method,
            "seed": self.seed,
            "calibration_sha256": self.calibration_sha,
            "tasks": {
                task: {
                    "ids": self.ids[task],
                    "weights": self.weights[task],
                    "gp_lambda": self.gp_lambda.get(task),
                }
                for task in self.ids
            },
        }

    def save(self, path: str | Path) -> Path:
        write_json_atomic(self.to_dict(), Path(path))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, calibration: Calibration | None = None) -> AnchorSet:
        path = Path(path)
        data = read_json(path, "anchors")
        if data.get("format") != FORMAT:
            raise ConfigError(f"{path}: not an evomerge anchors file (make one with `evomerge irt anchors`)")
        return cls.from_dict(data, calibration, f"anchors {path}")

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], calibration: Calibration | None = None, where: str = "the anchors"
    ) -> AnchorSet:
        """The anchors `to_dict` wrote; refused when selected on another calibration than `calibration`."""
        anchors = cls(
            method=data["method"],
            seed=data["seed"],
            ids={t: list(v["ids"]) for t, v in data["tasks"].items()},
            weights={t: list(v["weights"]) for t, v in data["tasks"].items()},
            gp_lambda={t: v["gp_lambda"] for t, v in data["tasks"].items() if v.get("gp_lambda") is not None},
            calibration_sha=data.get("calibration_sha256"),
        )
        if calibration is not None and anchors.calibration_sha not in (None, calibration.sha256()):
            raise ConfigError(
                f"{where} were selected on another calibration than {calibration.path}; "
                "re-run evomerge irt anchors on this calibration"
            )
        return anchors


def _check_n(task: str, n: int, available: int) -> None:
    if n < 1 or n > available:
        raise ConfigError(f"n={n} anchors for task {task!r}: must be between 1 and its {available} items")


def stratified_random(
    tasks: dict[str, list[str]], n: int | dict[str, int], groups: dict[str, str], seed: int
) -> AnchorSet:
    """Seeded random anchors, allocated to groups in proportion to their size (largest remainder)."""
    rng = random.Random(seed)
    ids: dict[str, list[str]] = {}
    weights: dict[str, list[float]] = {}
    for task, items in tasks.items():
        want = n[task] if isinstance(n, dict) else n
        _check_n(task, want, len(items))
        strata: dict[str, list[str]] = defaultdict(list)
        for item in items:
            strata[groups.get(item, "")].append(item)
        names = sorted(strata)
        quotas = {g: want * len(strata[g]) / len(items) for g in names}
        take = {g: int(quotas[g]) for g in names}
        for g in sorted(names, key=lambda g: (-(quotas[g] - take[g]), g))[: want - sum(take.values())]:
            take[g] += 1
        chosen, chosen_weights = [], []
        for g in names:
            if take[g]:
                picked = rng.sample(strata[g], take[g])
                chosen += picked
                chosen_weights += [len(strata[g]) / len(items) / take[g]] * take[g]
        ids[task], weights[task] = chosen, chosen_weights
    return AnchorSet("random", seed, ids, weights)


def cluster_anchors(
    calibration: Calibration, n: int | dict[str, int], method: str = "irt", seed: int = 0
) -> AnchorSet:
    """k-means anchors on IRT parameters or on response columns, per task."""
    if method == "random":
        anchors = stratified_random(calibration.tasks, n, calibration.groups, seed)
    elif method in ("irt", "responses"):
        index = calibration.item_index
        ids: dict[str, list[str]] = {}
        weights: dict[str, list[float]] = {}
        for task, items in calibration.tasks.items():
            want = n[task] if isinstance(n, dict) else n
            _check_n(task, want, len(items))
            columns = np.array([index[i] for i in items])
            features = _features(calibration, columns, method)
            ids[task], weights[task] = _kmeans_anchors(items, features, want, seed)
        anchors = AnchorSet(method, seed, ids, weights)
    else:
        raise ConfigError(f"anchor method {method!r} is not one of {METHODS}")
    anchors.calibration_sha = calibration.sha256()
    anchors.gp_lambda = gp_lambdas(calibration, anchors)
    return anchors


def _kmeans_anchors(
    items: list[str], features: np.ndarray, n: int, seed: int
) -> tuple[list[str], list[float]]:
    """Nearest member to each centre; weight = cluster share.

    Items with identical features (few calibration subjects) can leave fewer distinct clusters
    than n: the largest clusters then give further members (next nearest to their centre), and
    share the cluster's weight equally, so there are always n distinct anchors.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate points: handled below
        kmeans = KMeans(n_clusters=n, n_init=10, random_state=seed).fit(features)
    ranked: list[list[int]] = []  # per non-empty cluster, members by distance to the centre
    for k in range(n):
        members = np.flatnonzero(kmeans.labels_ == k)
        if len(members):
            distance = np.linalg.norm(features[members] - kmeans.cluster_centers_[k], axis=1)
            ranked.append([int(m) for m in members[np.argsort(distance, kind="stable")]])
    taken = [1] * len(ranked)
    while sum(taken) < n:
        k = max(range(len(ranked)), key=lambda c: (len(ranked[c]) - taken[c] > 0, len(ranked[c]) / taken[c]))
        taken[k] += 1
    chosen, chosen_weights = [], []
    for members, count in zip(ranked, taken, strict=True):
        chosen += [items[m] for m in members[:count]]
        chosen_weights += [len(members) / len(items) / count] * count
    return chosen, chosen_weights


def _features(calibration: Calibration, columns: np.ndarray, method: str) -> np.ndarray:
    if method == "irt":
        return np.column_stack([calibration.irt.a[columns], calibration.irt.b[columns]])
    block = calibration.responses[:, columns]
    means = np.where(np.isnan(block).all(0), 0.5, np.nanmean(np.where(np.isnan(block), 0.5, block), axis=0))
    return np.where(np.isnan(block), means, block).T  # one row per item


def gp_lambdas(calibration: Calibration, anchors: AnchorSet) -> dict[str, float]:
    """lambda* per task from the calibration subjects (see the module docstring)."""
    index = calibration.item_index
    anchor_cols = np.array([index[i] for ids in anchors.ids.values() for i in ids])
    # Each subject's ability from the anchors it answered (all tasks), as the estimators do.
    thetas: list[np.ndarray | None] = []
    for row in calibration.responses:
        seen = anchor_cols[~np.isnan(row[anchor_cols])]
        thetas.append(estimate_ability(calibration.irt, seen, row[seen]) if len(seen) else None)
    lambdas = {}
    for task, items in calibration.tasks.items():
        cols = np.array([index[i] for i in items])
        rest = np.setdiff1d(cols, anchor_cols)
        errors, variances = [], []
        for row, theta in zip(calibration.responses, thetas, strict=True):
            observed = cols[~np.isnan(row[cols])]
            if theta is None or len(observed) == 0:
                continue
            accuracy = float(np.mean(row[observed]))
            variances.append(accuracy * (1 - accuracy))
            known = rest[~np.isnan(row[rest])]
            if len(known):
                predicted = float(np.mean(calibration.irt.prob(theta, known)))
                errors.append(abs(predicted - float(np.mean(row[known]))))
        bias = float(np.mean(errors)) if errors else 0.0
        variance = float(np.mean(variances)) if variances else 0.25
        n = len(anchors.ids[task])
        denominator = bias**2 + variance / (4 * n)
        lambdas[task] = bias**2 / denominator if denominator > 0 else 0.0
    return lambdas


def select_for_suite(
    task_ids: dict[str, list[str]],
    n: dict[str, int],
    groups: dict[str, str],
    calibration: Calibration | None,
    seed: int,
    method: str = "irt",
) -> AnchorSet:
    """Anchors of a suite's tasks: clustered on the calibration when there is one, else random."""
    if calibration is None:
        return stratified_random(task_ids, n, groups, seed)
    sub = Calibration(
        item_ids=calibration.item_ids,
        tasks={task: list(ids) for task, ids in task_ids.items()},
        subjects=calibration.subjects,
        responses=calibration.responses,
        irt=calibration.irt,
        thetas=calibration.thetas,
        groups={**calibration.groups, **groups},
        path=calibration.path,
    )
    anchors = cluster_anchors(sub, n, method, seed)
    anchors.calibration_sha = calibration.sha256()
    return anchors
