"""`estimator: auto`: chosen by leave-subjects-out error on the calibration, cached, and on a
held-out population no worse than the random-subsample mean it is checked against."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import make_population

import evomerge.fitness.fidelity as fidelity
from evomerge.fitness.calibration import fit_calibration
from evomerge.fitness.fidelity import AUTO_CANDIDATES, choose_estimator, evaluate_estimators

IDS = [f"q{k:03d}" for k in range(160)]
TASKS = {"alpha": IDS[:80], "beta": IDS[80:]}


@pytest.fixture(scope="module")
def population():
    return make_population(100, 160, dim=2, seed=5)


@pytest.fixture(scope="module")
def calibration(population):
    return fit_calibration(
        population.responses[:60], IDS, TASKS, [{"name": f"s{j}"} for j in range(60)], dims=(2,)
    )


def test_auto_picks_the_lowest_leave_subjects_out_error_and_caches_it(calibration, tmp_path, monkeypatch):
    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path))
    n = {"alpha": 10, "beta": 10}
    choice = choose_estimator(calibration, n, seed=0)
    assert [row.estimator for row in choice.rows] == list(AUTO_CANDIDATES)
    assert choice.heldout == 60  # every subject held out once, over the folds
    assert choice.estimator == min(choice.rows, key=lambda r: r.mae).estimator
    assert list(tmp_path.glob("estimators/*.json"))

    def no_refit(*args, **kwargs):
        raise AssertionError("the cached choice was computed again")

    monkeypatch.setattr(fidelity, "cross_validate", no_refit)
    assert choose_estimator(calibration, n, seed=0) == choice
    with pytest.raises(AssertionError):  # other anchors: another check
        choose_estimator(calibration, {"alpha": 12, "beta": 10}, seed=0)


def test_the_choice_does_not_lose_to_the_subsample_mean_on_held_out_subjects(
    calibration, population, tmp_path, monkeypatch
):
    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path))
    choice = choose_estimator(calibration, {"alpha": 10, "beta": 10}, seed=0)
    rows = evaluate_estimators(calibration, population.responses[60:], [10], list(AUTO_CANDIDATES))
    mae = {row.estimator: row.mae for row in rows}
    assert mae[choice.estimator] <= mae["mean"]
    assert np.isfinite(list(mae.values())).all()
