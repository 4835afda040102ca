"""Anchor selection: k-means (IRT or response space) and stratified random; seeded; stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evomerge.errors import ConfigError
from evomerge.fitness.irt.anchors import AnchorSet, cluster_anchors, stratified_random
from evomerge.fitness.irt.calibration import Calibration


@pytest.mark.parametrize("method", ["irt", "responses", "random"])
def test_anchors_per_task_weighted_and_seeded(synthetic_calibration: Calibration, method: str) -> None:
    first = cluster_anchors(synthetic_calibration, 12, method, seed=3)
    again = cluster_anchors(synthetic_calibration, 12, method, seed=3)
    assert first.ids == again.ids and first.weights == again.weights
    for task, items in synthetic_calibration.tasks.items():
        assert len(first.ids[task]) == len(set(first.ids[task])) == 12
        assert set(first.ids[task]) <= set(items)
        assert sum(first.weights[task]) == pytest.approx(1.0)
        assert 0.0 <= first.gp_lambda[task] <= 1.0
    other = cluster_anchors(synthetic_calibration, 12, method, seed=4)
    assert other.ids != first.ids


def test_kmeans_anchor_is_nearest_to_its_cluster_centre(synthetic_calibration: Calibration) -> None:
    anchors = cluster_anchors(synthetic_calibration, 6, "irt", seed=0)
    index = synthetic_calibration.item_index
    b = synthetic_calibration.irt.b
    chosen = sorted(b[index[i]] for i in anchors.ids["alpha"])
    spread = np.ptp(b[[index[i] for i in synthetic_calibration.tasks["alpha"]]])
    # Six clusters over the items' (a, b): anchors spread across the difficulty range.
    assert chosen[-1] - chosen[0] > 0.5 * spread


def test_stratified_random_is_proportional() -> None:
    tasks = {"t": [f"a{k}" for k in range(30)] + [f"b{k}" for k in range(10)]}
    groups = {i: i[0] for i in tasks["t"]}
    anchors = stratified_random(tasks, 8, groups, seed=1)
    picked = [groups[i] for i in anchors.ids["t"]]
    assert picked.count("a") == 6 and picked.count("b") == 2
    assert sum(anchors.weights["t"]) == pytest.approx(1.0)


def test_too_many_anchors_is_an_error(synthetic_calibration: Calibration) -> None:
    with pytest.raises(
        ConfigError, match="n=121 anchors for task 'alpha': must be between 1 and its 120 items"
    ):
        cluster_anchors(synthetic_calibration, 121, "irt")
    with pytest.raises(ConfigError, match="not one of"):
        cluster_anchors(synthetic_calibration, 5, "spectral")


def test_stored_anchors_round_trip_and_stale_detection(
    synthetic_calibration: Calibration, tmp_path: Path
) -> None:
    anchors = cluster_anchors(synthetic_calibration, 5, "irt", seed=0)
    path = anchors.save(tmp_path / "anchors.json")
    loaded = AnchorSet.load(path, synthetic_calibration)
    assert loaded.ids == anchors.ids and loaded.weights == anchors.weights
    assert loaded.gp_lambda == pytest.approx(anchors.gp_lambda)
    other = Calibration(**{**synthetic_calibration.__dict__, "thetas": synthetic_calibration.thetas + 1})
    with pytest.raises(ConfigError, match="selected on another calibration"):
        AnchorSet.load(path, other)


def test_duplicate_features_still_give_n_distinct_anchors(synthetic_calibration: Calibration) -> None:
    few = Calibration(**{**synthetic_calibration.__dict__, "responses": synthetic_calibration.responses[:2]})
    anchors = cluster_anchors(few, 10, "responses", seed=0)  # 2 subjects: at most 4 distinct columns
    for task in few.tasks:
        assert len(set(anchors.ids[task])) == 10
        assert sum(anchors.weights[task]) == pytest.approx(1.0)
