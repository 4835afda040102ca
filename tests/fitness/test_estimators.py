"""Estimators: registry, exactness at full coverage, error shrinking with n, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.errors import ConfigError, EvomergeError
from evomerge.fitness.irt.anchors import AnchorSet, cluster_anchors
from evomerge.fitness.irt.calibration import Calibration, fit_calibration
from evomerge.fitness.irt.estimators import ESTIMATORS, EstimationContext, merge_endpoints
from evomerge.fitness.irt.fidelity import cross_validate, evaluate_estimators

ALL = ["mean", "anchor", "pirt", "gpirt", "mpirt", "gmpirt"]


def _context(
    calibration: Calibration, anchors: AnchorSet, parents: np.ndarray | None = None
) -> EstimationContext:
    return EstimationContext(calibration.tasks, anchors, calibration.irt, calibration.item_index, parents)


def test_registry() -> None:
    assert ESTIMATORS.names() == sorted(ALL)
    with pytest.raises(ConfigError, match="unknown estimator 'tiny'; available: anchor, gmpirt"):
        ESTIMATORS.get("tiny")


def test_every_estimator_is_exact_when_every_item_is_an_anchor(
    synthetic_calibration: Calibration, heldout: np.ndarray
) -> None:
    tasks = synthetic_calibration.tasks
    anchors = AnchorSet(
        "all",
        0,
        {t: list(v) for t, v in tasks.items()},
        {t: [1 / len(v)] * len(v) for t, v in tasks.items()},
        gp_lambda={t: 0.3 for t in tasks},
    )
    ctx = _context(synthetic_calibration, anchors, synthetic_calibration.thetas[:2])
    row = heldout[0]
    answers = {i: int(row[k]) for k, i in enumerate(synthetic_calibration.item_ids)}
    truth = {t: np.mean([answers[i] for i in v]) for t, v in tasks.items()}
    for name in ALL:
        assert ESTIMATORS.get(name)(ctx, answers) == pytest.approx(truth), name


def test_error_shrinks_with_n_and_irt_beats_subsampling(
    synthetic_calibration: Calibration, heldout: np.ndarray
) -> None:
    rows = evaluate_estimators(synthetic_calibration, heldout, [5, 40], ALL, parents=["s0", "s1"], seed=0)
    mae = {(r.estimator, r.n): r.mae for r in rows}
    for name in ALL:
        assert mae[(name, 40)] < mae[(name, 5)], name
    assert mae[("pirt", 5)] < mae[("mean", 5)]
    assert mae[("gpirt", 5)] < mae[("mean", 5)]
    tau = {(r.estimator, r.n): r.tau for r in rows}
    assert tau[("pirt", 40)] > 0.6


def test_subject_without_answered_anchors(synthetic_calibration: Calibration) -> None:
    anchors = cluster_anchors(synthetic_calibration, 4, "irt", seed=0)
    only_alpha = {i: 1 for i in anchors.ids["alpha"]}
    for name in ("mean", "anchor", "pirt"):
        with pytest.raises(EvomergeError, match="no answered anchors for task 'beta'"):
            ESTIMATORS.get(name)(_context(synthetic_calibration, anchors), only_alpha)


def test_irt_estimators_need_calibration_and_parents(synthetic_calibration: Calibration) -> None:
    anchors = cluster_anchors(synthetic_calibration, 4, "irt", seed=0)
    answers = {i: 1 for ids in anchors.ids.values() for i in ids}
    bare = EstimationContext(synthetic_calibration.tasks, anchors)
    with pytest.raises(ConfigError, match="needs a calibration"):
        ESTIMATORS.get("gpirt")(bare, answers)
    with pytest.raises(ConfigError, match="parents' abilities"):
        ESTIMATORS.get("mpirt")(_context(synthetic_calibration, anchors), answers)


def test_cross_validation_refits_without_each_fold(synthetic_calibration: Calibration) -> None:
    small = fit_calibration(
        synthetic_calibration.responses[:31],
        synthetic_calibration.item_ids,
        synthetic_calibration.tasks,
        synthetic_calibration.subjects[:31],
        dims=(1,),
    )
    rows, n_heldout = cross_validate(
        small, [10, 500], ["mean", "pirt", "mpirt"], leave_out=10, parents=["s0"], dims=(1,)
    )
    assert n_heldout == 30  # every subject but the parent, in 3 folds of 10
    assert {(r.estimator, r.n) for r in rows} == {
        ("mean", 10),
        ("pirt", 10),
        ("mpirt", 10),
    }  # 500 > task size
    assert all(r.items_scored == 20 and r.items_full == 240 and 0 <= r.mae < 0.3 for r in rows)
    with pytest.raises(ConfigError, match="not subjects"):
        cross_validate(small, [10], ["mpirt"], parents=["nobody"])
    _, n_heldout = cross_validate(small, [10], ["mean"], leave_out=10, keep=["s1", "s2"], dims=(1,))
    assert n_heldout == 29  # `keep` subjects are always in the training folds


def test_mp_irt_combines_the_base_and_the_parents() -> None:
    assert merge_endpoints("base", ["p1", "p2"]) == ["base", "p1", "p2"]
    assert merge_endpoints(None, ["p1", "p2"]) == ["p1", "p2"]  # e.g. linear merges with no base
    assert merge_endpoints("p1", ["p1", "p2"]) == ["p1", "p2"]
